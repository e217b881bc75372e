"""A resumable work folder next to an output: the config it belongs to, per-rank JSONL
shards flushed per batch, and per-rank state saved atomically.

A rerun with the same config continues from what is there; a different config is refused,
naming the fields that differ.

Example:
    >>> wd = WorkDir.open("outputs/evs.safetensors", fp, rank=0)        # doctest: +SKIP
    >>> wd.append_rows(rank=0, rows=[{"batch": 3, ...}])                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ResumeError", "WorkDir"]


class ResumeError(RuntimeError):
    """A partial result in the work folder does not belong to this config."""


class WorkDir:
    """``<out>.work/``: ``config.json``, ``rank<r>.jsonl`` shards, ``state-rank<r>-of-<w>.pt``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".work")

    def claim(self, fingerprint: dict[str, Any]) -> None:
        """Record the config (first run) or check it matches (rerun). Call on every rank
        after rank 0 created the folder (or on one rank before launching)."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / "config.json"
        if cfg_file.is_file():
            old = json.loads(cfg_file.read_text())
            if old.get("sha") != fingerprint["sha"]:
                diff = sorted(k for k in set(old["fields"]) | set(fingerprint["fields"])
                              if old["fields"].get(k) != fingerprint["fields"].get(k))
                detail = ", ".join(f"{k}: {old['fields'].get(k)!r} -> {fingerprint['fields'].get(k)!r}" for k in diff)
                raise ResumeError(f"{self.path} holds a partial result of a different config ({detail}); "
                                  f"rerun with the old settings or delete {self.path}")
        else:
            tmp = cfg_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
            tmp.replace(cfg_file)

    def shard(self, rank: int) -> Path:
        return self.path / f"rank{rank}.jsonl"

    def append_rows(self, rank: int, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to this rank's shard and flush to disk (one write per batch)."""
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        shard = self.shard(rank)
        if shard.is_file() and shard.stat().st_size:
            with open(shard, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by a kill: start on a fresh line
                    blob = "\n" + blob
        with open(shard, "a", encoding="utf-8") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def read_rows(self) -> list[dict[str, Any]]:
        """All complete rows of all shards (a line cut by a kill is ignored)."""
        rows = []
        for shard in sorted(self.path.glob("rank*.jsonl")):
            for line in shard.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the last line of a shard killed mid-write
        return rows

    def done_batches(self, sizes: Sequence[int] | None = None) -> set[int]:
        """Batch ids whose rows are on disk: all ``sizes[b]`` of them when sizes are given (a
        batch cut by a kill mid-write is redone), else any."""
        counts: dict[int, set] = {}
        for r in self.read_rows():
            if "batch" in r:
                key = json.dumps({k: r.get(k) for k in ("entry", "index", "item")})
                counts.setdefault(int(r["batch"]), set()).add(key)
        if sizes is None:
            return set(counts)
        return {b for b, rows in counts.items() if b < len(sizes) and len(rows) >= sizes[b]}

    def state_path(self, rank: int, world: int) -> Path:
        return self.path / f"state-rank{rank}-of-{world}.pt"

    def load_state(self, rank: int, world: int) -> dict[str, Any] | None:
        """This rank's saved state, refusing states saved by a different world size."""
        others = [p.name for p in self.path.glob("state-rank*-of-*.pt") if not p.name.endswith(f"-of-{world}.pt")]
        if others:
            raise ResumeError(f"{self.path} holds partial sums from a run with another world size ({others[0]}); "
                              f"rerun with the same --devices/--num_nodes or delete {self.path}")
        p = self.state_path(rank, world)
        return torch.load(p, weights_only=True) if p.is_file() else None

    def save_state(self, rank: int, world: int, state: dict[str, Any]) -> None:
        """Atomic save (write a temp file, then rename)."""
        p = self.state_path(rank, world)
        tmp = p.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(p)
