"""The hand-labelled real text: replies language models wrote under steering, read blind to
the target by the protocol in ``docs/labelling.md``.

``emoexp/data/real_text_labels.jsonl`` has one row per reply: ``id``, ``family`` (the model
family that wrote it), ``run``, ``target`` and ``alpha`` (how it was steered; never shown to
the labeller), ``centre``, where the text is (``file`` and ``row``) and its ``sha256`` (first 16
hex digits), then the labels ``label``, ``second``, ``strength`` (0-3) and ``degenerate``. The
paper authors' text is not copied here: their rows name a file of their release
(``results/...`` under ``../shared/data/official``) and the text is read from it and checked
against the hash. emoexp's own generations carry their ``text``.
``real_text_labels_second.jsonl`` holds a second reader's independent labels of a subset.

Example:
    >>> rows = load_labels()                                              # doctest: +SKIP
    >>> kappa([r["label"] for r in a], [r["label"] for r in b])            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .classifiers import LABELS

__all__ = ["LABELS_PATH", "OFFICIAL", "SECOND_PATH", "LabelsError", "kappa", "load_labels", "load_second",
           "target_agreement"]

DATA = Path(__file__).resolve().parents[1] / "data"
LABELS_PATH = DATA / "real_text_labels.jsonl"
SECOND_PATH = DATA / "real_text_labels_second.jsonl"
#: The paper authors' release, beside the project checkout (``shared/data/official``).
OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "official"
_LABEL_FIELDS = ("label", "second", "strength", "degenerate")


class LabelsError(ValueError):
    """A labels file that cannot be used: one line naming the file, the row and what is wrong."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_labels(where: str, r: dict[str, Any]) -> None:
    missing = [f for f in ("id", *_LABEL_FIELDS) if f not in r]
    if missing:
        raise LabelsError(f"{where}: missing field(s) {missing}")
    if r["label"] not in LABELS:
        raise LabelsError(f"{where}: unknown label {r['label']!r}; valid: {', '.join(LABELS)}")
    if r["second"] not in (*LABELS, "none"):
        raise LabelsError(f"{where}: unknown second label {r['second']!r}; valid: {', '.join(LABELS)}, none")
    if not (isinstance(r["strength"], int) and not isinstance(r["strength"], bool) and 0 <= r["strength"] <= 3):
        raise LabelsError(f"{where}: strength must be an integer 0-3, not {r['strength']!r}")
    if not isinstance(r["degenerate"], bool):
        raise LabelsError(f"{where}: degenerate must be true or false, not {r['degenerate']!r}")


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    out, seen = [], set()
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            r = json.loads(line)
        except ValueError as e:
            raise LabelsError(f"{where}: not JSON ({e})") from None
        if not isinstance(r, dict):
            raise LabelsError(f"{where}: a row is a JSON object")
        _check_labels(where, r)
        if r["id"] in seen:
            raise LabelsError(f"{where}: duplicate id {r['id']!r}")
        seen.add(r["id"])
        out.append((where, r))
    return out


def load_labels(path: str | Path = LABELS_PATH, official: str | Path | None = None) -> list[dict[str, Any]]:
    """Every labelled row with its ``text`` (read from the authors' release where not carried).

    Args:
        path: the labels file.
        official: the authors' release folder (default: ``shared/data/official`` beside the checkout).

    Raises:
        LabelsError: an unknown label, a duplicate or missing id or field, a missing source, or a
            text whose hash differs from the row's ``sha256`` (one line: file, row, reason).
    """
    from .normalise import strip_special

    root = Path(official) if official else OFFICIAL
    files: dict[str, list[Any]] = {}
    rows = []
    for where, r in _read_rows(Path(path)):
        if "text" not in r:
            rel = r.get("file")
            if not rel or "row" not in r:
                raise LabelsError(f"{where}: a row without 'text' needs 'file' and 'row' in the authors' release")
            if rel not in files:
                src = root / rel
                if not src.is_file():
                    raise LabelsError(f"{where}: source {src} not found (pass the authors' release folder)")
                files[rel] = json.loads(src.read_text(encoding="utf-8"))
            answers = files[rel]
            if not isinstance(r["row"], int) or not 0 <= r["row"] < len(answers):
                raise LabelsError(f"{where}: row {r['row']!r} is not in {rel} ({len(answers)} answers)")
            r = {**r, "text": strip_special(answers[r["row"]])[0]}
        if "sha256" in r and _sha(r["text"]) != r["sha256"]:
            raise LabelsError(f"{where}: text does not match its source (sha256 {_sha(r['text'])} != {r['sha256']})")
        rows.append(r)
    return rows


def load_second(path: str | Path = SECOND_PATH, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The second reader's labels (no texts); with ``ids``, each must be one of them.

    Raises:
        LabelsError: as :func:`load_labels`, or an id that the first pass does not have.
    """
    known = set(ids) if ids is not None else None
    out = []
    for where, r in _read_rows(Path(path)):
        if known is not None and r["id"] not in known:
            raise LabelsError(f"{where}: id {r['id']!r} is not in the first labelling pass")
        out.append(r)
    return out


def kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's κ of two label sequences over the same items (1: perfect, 0: chance).

    Example:
        >>> kappa(["joy", "anger", "joy"], ["joy", "anger", "joy"])
        1.0
    """
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two non-empty label lists of one length")
    cats = sorted(set(a) | set(b))
    x = np.array([cats.index(v) for v in a])
    y = np.array([cats.index(v) for v in b])
    po = float((x == y).mean())
    pe = float(sum((x == k).mean() * (y == k).mean() for k in range(len(cats))))
    return 1.0 if pe == 1 else (po - pe) / (1 - pe)


def target_agreement(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """How often the reader's label equals the steering target, per family, target and α
    (steered rows with an emotion target only; the authors' per-emotion runs at α = 0 are their
    unsteered answers, kept as the baseline): ``{family, target, alpha, n, match, rate,
    degenerate}``, sorted."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("target") in LABELS and r.get("run") in ("steered", "emotion") and r.get("alpha") is not None:
            key = (r["family"] + (" centred" if r.get("centre") else ""), r["target"], float(r["alpha"]))
            cells.setdefault(key, []).append(r)
    out = []
    for (fam, tgt, a), rs in sorted(cells.items()):
        m = sum(r["label"] == tgt for r in rs)
        out.append({"family": fam, "target": tgt, "alpha": a, "n": len(rs), "match": m, "rate": m / len(rs),
                    "degenerate": sum(r["degenerate"] for r in rs) / len(rs)})
    return out
