"""Scores cached by content: a rerun never re-scores a response it has scored.

The key of a row is the sha256 of (scorer settings, response, query, target), where the
settings name every model and template that shapes a number (and a version bumped when the
scoring code changes), so a cached score is reused only where it would be recomputed
identically. Rows are appended to a JSONL file (one writer per output folder: the run's lock).

Example:
    >>> cache = ScoreCache("outputs/run/x/scores.cache.jsonl", {"eps": "minilm"})   # doctest: +SKIP
    >>> df = cache.score(responses, queries, targets, metrics=["eps"], backend="offline")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SCORER_VERSION", "ScoreCache"]

#: Bumped whenever scoring code changes what a score is: older cached rows are then not reused.
SCORER_VERSION = 3


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _clean(v.item())
    return v


class ScoreCache:
    """Score rows by content, stored as JSONL at ``path``.

    Args:
        path: the cache file (created on first write).
        settings: everything besides the texts that shapes a score (backends, model fingerprints).
    """

    def __init__(self, path: str | Path, settings: Mapping[str, Any]):
        from ..fingerprint import digest

        self.path = Path(path)
        self.salt = digest({"version": SCORER_VERSION, **dict(settings)})
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._rows[rec["key"]] = rec["row"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill

    def key(self, response: Any, query: Any, target: Any) -> str:
        from ..fingerprint import digest

        return digest([self.salt, response, query, target])

    def __len__(self) -> int:
        return len(self._rows)

    def score(self, responses: Sequence[Any], queries: Sequence[Any] | None = None,
              targets: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """:func:`emoexp.score` for the rows not cached yet; cached rows are read back. Same
        columns and order as :func:`emoexp.score`."""
        import pandas as pd

        from .scoring import score

        n = len(responses)
        qs = list(queries) if queries is not None else [None] * n
        ts = list(targets) if targets is not None else [None] * n
        keys = [self.key(r, q, t) for r, q, t in zip(responses, qs, ts)]
        todo = [i for i, k in enumerate(keys) if k not in self._rows]
        if todo:
            fresh = score([responses[i] for i in todo], [qs[i] for i in todo] if queries is not None else None,
                          [ts[i] for i in todo] if targets is not None else None, **kwargs)
            new = {keys[i]: {c: _clean(v) for c, v in row.items()}
                   for i, row in zip(todo, fresh.to_dict(orient="records"))}
            self._rows.update(new)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"key": k, "row": r}, ensure_ascii=False) + "\n" for k, r in new.items()))
        return pd.DataFrame([self._rows[k] for k in keys], index=range(n))
