"""Query datasets: the bundled EmotionQuery sets, the authors' JSON files, local tables, hub ids.

Every source becomes a list of :class:`Query` in dataset order, read through the ``datasets``
library (offline for files). Sources:

- ``emotionquery`` (5 emotions x 100) and ``emotionquery_plus`` (5 x 50 emotional + 150
  neutral), written for this project and shipped in ``emoexp/data`` (see its README);
- the authors' JSON layouts by path: a dict ``emotion -> [query, ...]`` (their EmotionQuery)
  or a flat list of strings (their EmotionQuery+, which has no labels: ``emotion=None``);
- any ``.jsonl`` / ``.json`` (list of objects) / ``.csv`` / ``.parquet`` with a ``query``
  column and optional ``id``, ``emotion``, ``topic`` columns;
- a hub dataset id (when the hub is reachable), or a local dataset folder.

Bad input never vanishes silently: a missing file, malformed JSON (with line and column), a
missing ``query`` column, unknown emotion labels or duplicate ids raise :class:`DatasetError`;
records without a query or with an empty one are skipped with a :class:`DatasetWarning` that
counts them; duplicate queries (normalised text) are kept with a warning (``duplicates="drop"``
skips them, ``"error"`` refuses them). Query text is kept verbatim.

Example:
    >>> qs = load_queries("emotionquery", limit=2, seed=0)
    >>> len(qs), qs[0].emotion
    (10, 'anger')
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .vectors import EMOTIONS

__all__ = ["BUNDLED", "EMOTIONS", "LABELS", "NEUTRAL", "TOPICS", "DatasetError", "DatasetWarning", "Query",
           "bundled_path", "dataset_fingerprint", "load_queries", "normalize_query"]

BUNDLED = ("emotionquery", "emotionquery_plus")
NEUTRAL = "neutral"
#: Valid labels: the five emotions and "neutral" (None = unlabeled).
LABELS = (*EMOTIONS, NEUTRAL)
#: Topics of the bundled sets.
TOPICS = ("work", "family", "relationships", "health", "school", "money", "travel", "technology",
          "public_life", "home", "food", "nature")
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_DUPLICATES = ("warn", "drop", "error")


class DatasetError(ValueError):
    """A source that cannot be read as queries (the message names the file, line or row)."""


class DatasetWarning(UserWarning):
    """Records skipped or kept with a problem (the message counts them)."""


@dataclass(frozen=True)
class Query:
    """One query. ``emotion`` is one of EMOTIONS, "neutral", or None when the source has no label;
    ``index`` is its 0-based position in the source (skipped records keep their slots)."""

    id: str
    query: str
    emotion: str | None
    topic: str | None = None
    index: int = 0


def normalize_query(text: str) -> str:
    """Text for duplicate checks: NFKC, case-folded, punctuation dropped, whitespace collapsed.

    Example:
        >>> normalize_query("  What’s   THIS?")
        'what s this'
    """
    return " ".join(re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def bundled_path(name: str) -> Path:
    """The JSONL file of a bundled dataset (``emotionquery`` or ``emotionquery_plus``)."""
    if name not in BUNDLED:
        raise DatasetError(f"no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(__file__).parent / "data" / f"{name}.jsonl"


def dataset_fingerprint(queries: list[Query]) -> str:
    """SHA-256 (hex) of the loaded, normalised rows (id, text, label, topic), in order: the
    identity of the data a result was computed from (resume checks, provenance, MLflow).

    Example:
        >>> len(dataset_fingerprint(load_queries("emotionquery_plus")))
        64
    """
    blob = json.dumps([[q.id, q.query, q.emotion, q.topic] for q in queries], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_queries(
    source: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    emotions: Sequence[str] | None = None,
    split: str = "train",
    duplicates: str = "warn",
) -> list[Query]:
    """Load queries from a bundled name, a file, a local dataset folder or a hub dataset id.

    Args:
        source: ``emotionquery``, ``emotionquery_plus``, a path (authors' JSON layouts, ``.jsonl``,
            ``.json``, ``.csv``, ``.parquet`` with a ``query`` column) or a hub dataset id.
        limit: at most this many queries per label (each emotion, "neutral" and unlabeled count
            as separate labels), drawn deterministically from ``seed``; None keeps all.
        seed: seed of the subset draw (each label draws from its own ``Random(f"{seed}:{label}")``,
            so a label's subset does not depend on which other labels are kept).
        emotions: keep only these labels (emotions and/or "neutral").
        split: the split of a hub dataset or folder; files have the single split "train".
        duplicates: duplicate queries (normalised text): "warn" keeps them with a warning (keeps
            positions aligned with the authors' result files), "drop" skips later copies with a
            warning, "error" raises.

    Returns:
        The queries in dataset order.

    Raises:
        DatasetError: the source is missing, malformed, or has no usable queries.

    Example:
        >>> qs = load_queries("emotionquery_plus", emotions=["neutral"], limit=3, seed=1)
        >>> [q.emotion for q in qs]
        ['neutral', 'neutral', 'neutral']
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be an int >= 1 or None, got {limit!r}")
    if duplicates not in _DUPLICATES:
        raise DatasetError(f"duplicates={duplicates!r}; valid: {', '.join(_DUPLICATES)}")
    keep = None
    if emotions is not None:
        keep = [str(e).strip().lower() for e in emotions]
        bad = [e for e in keep if e not in LABELS]
        if bad or not keep:
            raise DatasetError(f"emotions={list(emotions)}; valid labels: {', '.join(LABELS)}")
    rows, origin, where = _read(source, split)
    queries = _to_queries(rows, origin, where, _slug(source), duplicates)
    if keep is not None:
        present = {q.emotion for q in queries}
        if present == {None}:
            raise DatasetError(f"{origin} has no emotion labels; cannot keep emotions={keep}")
        queries = [q for q in queries if q.emotion in keep]
        if not queries:
            raise DatasetError(f"{origin} has no queries labelled {keep}; labels present: "
                               f"{sorted(str(p) for p in present)}")
    return _subset(queries, limit, seed) if limit is not None else queries


# -- reading ---------------------------------------------------------------------------------

Where = Callable[[int], str]


def _read(source: str, split: str) -> tuple[list[dict[str, Any]], str, Where]:
    """(rows, origin for messages, row position -> 'line 3' / 'row 3')."""
    if source in BUNDLED:
        return _read_file(bundled_path(source), split)
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path, split)
    if path.is_dir():
        return _read_hub(str(path), split)
    if path.suffix.lower() in _BUILDERS or source.startswith(("/", "./", "../", "~")):
        raise DatasetError(f"file not found: {source}")
    return _read_hub(source, split)


def _read_file(path: Path, split: str) -> tuple[list[dict[str, Any]], str, Where]:
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    if split != "train":
        raise DatasetError(f"{path}: a file has the single split 'train', not {split!r}")
    if suffix == ".json":
        return _read_json(path)
    if path.stat().st_size == 0 or (suffix in (".jsonl", ".json", ".csv") and not _text(path).strip()):
        raise DatasetError(f"{path}: holds no records (the file is empty)")
    lines = _check_jsonl(path) if suffix == ".jsonl" else []
    rows = _rows(str(path), lambda ds: ds.load_dataset(_BUILDERS[suffix], data_files=str(path), split="train"))
    if suffix != ".jsonl":
        return rows, str(path), lambda i: f"row {i + 1}"
    if len(rows) != len(lines):
        raise DatasetError(f"{path}: datasets read {len(rows)} records, the file has {len(lines)}")
    return rows, str(path), lambda i: f"line {lines[i]}"


def _read_json(path: Path) -> tuple[list[dict[str, Any]], str, Where]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        # the authors' EmotionQuery: {emotion: [query, ...]}; labels are checked with the rows
        rows = [{"query": q, "emotion": label} for label, qs in data.items() for q in qs]
        pos = [f"{label!r}[{k}]" for label, qs in data.items() for k in range(len(qs))]
    elif isinstance(data, list) and data and all(isinstance(q, (str, dict)) or q is None for q in data):
        # the authors' EmotionQuery+ (strings, no labels) or a list of records
        if all(isinstance(r, dict) for r in data):
            rows = [dict(r) for r in data]
        elif not any(isinstance(r, dict) for r in data):
            rows = [{"query": q} for q in data]
        else:
            raise DatasetError(f"{path}: a list mixing query strings and objects")
        pos = [f"item {k}" for k in range(len(data))]
    else:
        raise DatasetError(f"{path}: unsupported JSON layout ({type(data).__name__}); expected "
                           "{emotion: [query, ...]}, a list of query strings, or a list of objects")
    return _rows(str(path), lambda ds: ds.Dataset.from_list(rows)), str(path), lambda i: pos[i]


def _read_hub(source: str, split: str) -> tuple[list[dict[str, Any]], str, Where]:
    try:
        rows = _rows(source, lambda ds: ds.load_dataset(source, split=split))
    except DatasetError as e:
        raise DatasetError(f"{source!r} is not a bundled dataset ({', '.join(BUNDLED)}), not an existing "
                           f"file, and loading it as a hub dataset failed (offline? HF_HUB_OFFLINE): {e}") from e
    return rows, source, lambda i: f"row {i + 1}"


def _rows(origin: str, build: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """The rows of the Dataset ``build(datasets)`` returns (progress bars off; errors -> DatasetError)."""
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds = build(datasets)
    except Exception as e:  # datasets / pyarrow / pandas raise many types; keep their message
        raise DatasetError(f"{origin}: cannot read it: {type(e).__name__}: {e}") from e
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    rows = ds.to_list()
    if not rows:
        raise DatasetError(f"{origin}: holds no records")
    feature = ds.features.get("emotion")
    if hasattr(feature, "int2str"):  # a ClassLabel column: ints -> names
        rows = [{**r, "emotion": None if r["emotion"] is None else feature.int2str(r["emotion"])} for r in rows]
    return rows


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from e


def _check_jsonl(path: Path) -> list[int]:
    """Line numbers of the records; raises with line:column on the first bad line."""
    lines = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}:{e.colno}: malformed JSON: {e.msg}") from e
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{n}: expected one JSON object per line, got {type(obj).__name__}")
        lines.append(n)
    return lines


# -- validation and subsets ------------------------------------------------------------------


def _slug(source: str) -> str:
    name = Path(source).stem if Path(source).suffix else source
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", "-plus")).strip("-") or "query"


def _to_queries(rows: list[dict[str, Any]], origin: str, where: Where, slug: str, duplicates: str) -> list[Query]:
    if not any("query" in r for r in rows):
        cols = sorted({k for r in rows for k in r})
        raise DatasetError(f"{origin}: no 'query' column (columns: {', '.join(cols) or 'none'})")
    skipped: list[int] = []
    unknown: Counter[str] = Counter()
    first_unknown: dict[str, int] = {}
    out: list[Query] = []
    per_label: Counter[str | None] = Counter()
    for i, r in enumerate(rows):
        text = r.get("query")
        if not isinstance(text, str) or not text.strip():
            skipped.append(i)
            continue
        label = _label(r.get("emotion"))
        if label is not None and label not in LABELS:
            unknown[str(label)] += 1
            first_unknown.setdefault(str(label), i)
            continue
        per_label[label] += 1
        rid = r.get("id")
        if rid is None or str(rid).strip() == "":
            rid = f"{slug}-{label}-{per_label[label]:03d}" if label else f"{slug}-{i + 1:03d}"
        topic = r.get("topic")
        out.append(Query(str(rid), text, label, None if topic in (None, "") else str(topic), i))
    if unknown:
        shown = ", ".join(f"{k!r} x{v} (first at {where(first_unknown[k])})" for k, v in unknown.most_common(5))
        raise DatasetError(f"{origin}: unknown emotion labels: {shown}; valid: {', '.join(LABELS)} "
                           "(or empty for unlabeled)")
    if skipped:
        warnings.warn(f"{origin}: skipped {len(skipped)} of {len(rows)} records with no query or an empty one "
                      f"(first at {', '.join(where(i) for i in skipped[:5])})", DatasetWarning, stacklevel=3)
    if not out:
        raise DatasetError(f"{origin}: no usable queries")
    ids = Counter(q.id for q in out)
    if dup_ids := [k for k, v in ids.items() if v > 1]:
        raise DatasetError(f"{origin}: {len(dup_ids)} duplicate ids, e.g. {dup_ids[:3]}")
    return _dedupe(out, origin, where, duplicates)


def _label(value: Any) -> Any:
    """A label normalised: stripped, lower-case; None, "" and NaN (empty CSV cells) mean unlabeled."""
    if isinstance(value, str):
        return value.strip().lower() or None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _dedupe(queries: list[Query], origin: str, where: Where, duplicates: str) -> list[Query]:
    first: dict[str, Query] = {}
    dups: list[tuple[Query, Query]] = []
    for q in queries:
        key = normalize_query(q.query)
        if key in first:
            dups.append((q, first[key]))
        else:
            first[key] = q
    if not dups:
        return queries
    eg = ", ".join(f"{where(q.index)} = {where(f.index)}" for q, f in dups[:3])
    msg = f"{origin}: {len(dups)} duplicate queries (normalised text), e.g. {eg}"
    if duplicates == "error":
        raise DatasetError(msg)
    if duplicates == "drop":
        warnings.warn(f"{msg}; skipped the {len(dups)} later copies", DatasetWarning, stacklevel=4)
        later = {id(q) for q, _ in dups}
        return [q for q in queries if id(q) not in later]
    warnings.warn(f"{msg}; kept (duplicates='drop' skips them)", DatasetWarning, stacklevel=4)
    return queries


def _subset(queries: list[Query], limit: int, seed: int) -> list[Query]:
    """At most ``limit`` per label, drawn per label from ``Random(f"{seed}:{label}")``, in dataset order."""
    groups: dict[str | None, list[int]] = {}
    for k, q in enumerate(queries):
        groups.setdefault(q.emotion, []).append(k)
    chosen: set[int] = set()
    for label, idx in groups.items():
        chosen.update(idx if len(idx) <= limit else random.Random(f"{seed}:{label}").sample(idx, limit))
    return [q for k, q in enumerate(queries) if k in chosen]
