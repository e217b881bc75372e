"""Draw the real-text sample that is read and labelled by hand (docs/labelling.md), and write it
as blind batches: each item gets a random id and only its text; the key (source, target, α,
file, row) stays in a separate file the labeller never sees.

Sources: the paper authors' per-emotion Qwen2.5 runs (α 0/1/2/4) and base-EV runs of four families
(../shared/data/official), and emoexp's own generations.jsonl files (SmolLM2, Gemma 3: every
condition, centred and not) given with --ours FAMILY=PATH.

Run (sample, then merge the readers' outputs into the bundled labels file):
  .venv/bin/python scripts/sample_for_labelling.py --out /tmp/labelling \
      --ours smollm2=outputs/run/<a>/generations.jsonl --ours smollm2-centred=outputs/run/<b>/generations.jsonl
  .venv/bin/python scripts/sample_for_labelling.py --merge /tmp/labelling --tags a,b --second k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

SHOWN = 1000  # characters shown to the labeller (MiniLM reads about as many: 256 word pieces)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def official(root: Path, rng: random.Random, per_emotion_file: dict[str, int], per_base_file: int) -> list[dict]:
    from emoexp.eval.normalise import strip_special

    items = []
    for alpha, n in per_emotion_file.items():
        for emo in ("anger", "disgust", "fear", "joy", "sadness"):
            rel = f"results/emotion/Qwen2_5/{alpha}/{emo}.json"
            answers = json.loads((root / rel).read_text(encoding="utf-8"))
            for i in sorted(rng.sample(range(len(answers)), n)):
                text = strip_special(answers[i])[0]
                items.append({"family": "qwen2.5", "run": "emotion", "file": rel, "row": i, "target": emo,
                              "alpha": float(alpha), "centre": False, "text": text})
    for fam in ("gemma", "llama3.1", "minicpm", "qwen2.5"):
        for alpha in ("-1", "0", "1", "2", "4"):
            rel = f"results/base/{fam}/{alpha}.json"
            answers = json.loads((root / rel).read_text(encoding="utf-8"))
            for i in sorted(rng.sample(range(len(answers)), per_base_file)):
                items.append({"family": fam, "run": "base", "file": rel, "row": i, "target": "base",
                              "alpha": float(alpha), "centre": False, "text": strip_special(answers[i])[0]})
    return items


def ours(name: str, path: Path, rng: random.Random, n: int) -> list[dict]:
    family, _, variant = name.partition("-")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    # stratified over (condition, target, alpha): every cell gets its share
    cells: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        cells.setdefault((r.get("condition"), str(r.get("target")), r.get("alpha")), []).append(i)
    keys = sorted(cells, key=str)
    take = {k: 0 for k in keys}
    for j in range(n):
        take[keys[j % len(keys)]] += 1
    items = []
    for k in keys:
        for i in sorted(rng.sample(cells[k], min(take[k], len(cells[k])))):
            r = rows[i]
            items.append({"family": family, "run": r.get("condition"), "file": str(path), "row": i,
                          "target": r.get("target"), "alpha": r.get("alpha"), "centre": variant == "centred",
                          "text": r["response"]})
    return items


def merge(folder: Path, tags: list[str], second: list[str]) -> None:
    """Join each tag's key with its readers' outputs (out_<tag><batch>.jsonl) into
    emoexp/data/real_text_labels.jsonl, and the second readers' (out_<second>*.jsonl) into
    real_text_labels_second.jsonl. Authors' rows keep a reference, not the text."""
    from emoexp.eval.real_text import LABELS_PATH, SECOND_PATH

    fields = ("label", "second", "strength", "degenerate")
    rows = []
    for tag in tags:
        labels = {}
        for f in sorted(folder.glob(f"out_{tag}*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    labels[r["uid"]] = {k: r[k] for k in fields}
        for line in (folder / f"key_{tag}.jsonl").read_text(encoding="utf-8").splitlines():
            it = json.loads(line)
            if it["uid"] not in labels:
                raise SystemExit(f"{it['uid']} ({tag}) has no label")
            official = it["file"].startswith("results/")
            row = {"id": it["uid"], "family": it["family"], "run": it["run"], "target": it["target"],
                   "alpha": it["alpha"], "centre": it["centre"], "file": it["file"] if official else
                   f"emoexp run ({it['family']}{', centred' if it['centre'] else ''}) generations.jsonl",
                   "row": it["row"], "sha256": it["sha256"], **labels[it["uid"]]}
            if not official:
                row["text"] = it["text"]
            rows.append(row)
    rows.sort(key=lambda r: r["id"])
    LABELS_PATH.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    sec = []
    for tag in second:
        for f in sorted(folder.glob(f"out_{tag}*.jsonl")):
            sec += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    sec = sorted(({"id": r["uid"], **{k: r[k] for k in fields}} for r in sec), key=lambda r: r["id"])
    SECOND_PATH.write_text("".join(json.dumps(r) + "\n" for r in sec), encoding="utf-8")
    print(f"{len(rows)} labelled rows -> {LABELS_PATH}; {len(sec)} second-pass rows -> {SECOND_PATH}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", default="../shared/data/official")
    p.add_argument("--ours", action="append", default=[], help="FAMILY[-centred]=generations.jsonl")
    p.add_argument("--per_ours", type=int, default=100)
    p.add_argument("--skip_official", action="store_true")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--tag", default="a")
    p.add_argument("--out", help="folder for the key and the blind batches")
    p.add_argument("--merge", help="folder of keys and readers' outputs to merge into emoexp/data")
    p.add_argument("--tags", default="a", help="comma list of first-pass tags to merge")
    p.add_argument("--second", default="k", help="comma list of second-pass tags to merge")
    p.add_argument("--seed", type=int, default=2026)
    a = p.parse_args()
    if a.merge:
        merge(Path(a.merge), a.tags.split(","), a.second.split(","))
        return
    rng = random.Random(a.seed)
    items = [] if a.skip_official else official(Path(a.official), rng, {"0": 8, "1": 16, "2": 16, "4": 16}, 10)
    for spec in a.ours:
        name, _, path = spec.partition("=")
        items += ours(name, Path(path), rng, a.per_ours)
    for it in items:
        it["sha256"] = sha(it["text"])
        it["uid"] = a.tag + hashlib.sha256(f"{a.seed}/{it['file']}/{it['row']}".encode()).hexdigest()[:8]
    rng.shuffle(items)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"key_{a.tag}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
    for b in range(a.batches):
        part = items[b::a.batches]
        with open(out / f"batch_{a.tag}{b}.jsonl", "w", encoding="utf-8") as f:
            for it in part:
                shown = it["text"] if len(it["text"]) <= SHOWN else it["text"][:SHOWN] + " …[cut]"
                f.write(json.dumps({"uid": it["uid"], "text": shown}, ensure_ascii=False) + "\n")
    print(f"{len(items)} items in {a.batches} batches under {out}")


if __name__ == "__main__":
    main()
