"""Resume bookkeeping: a batch counts as done only when all its rows are on disk, and a line
cut by a kill neither breaks reading nor swallows the next row written."""

from __future__ import annotations

import json

from emoexp.workdir import WorkDir


def test_a_batch_cut_mid_write_is_redone(tmp_path):
    wd = WorkDir(tmp_path / "gen.jsonl")
    wd.path.mkdir(parents=True, exist_ok=True)
    wd.append_rows(0, [{"batch": 0, "entry": 0, "index": i} for i in range(3)])
    # a kill in the middle of batch 1's write: one whole row and half of the next
    with open(wd.shard(0), "a", encoding="utf-8") as f:
        f.write(json.dumps({"batch": 1, "entry": 0, "index": 3}) + "\n" + '{"batch": 1, "entr')
    assert wd.done_batches() == {0, 1}  # without sizes: any row counts (the old rule)
    assert wd.done_batches([3, 3]) == {0}  # batch 1 has 1 of 3 rows: redo it
    wd.append_rows(0, [{"batch": 1, "entry": 0, "index": i} for i in range(3, 6)])
    rows = wd.read_rows()
    assert sorted(r["index"] for r in rows if r["batch"] == 1) == [3, 3, 4, 5]  # nothing swallowed by the cut line
    assert wd.done_batches([3, 3]) == {0, 1}
