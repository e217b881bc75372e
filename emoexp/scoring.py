"""``score()``: the paper's metrics for a list of responses, one DataFrame row per response.

Each metric runs through its ``evaluate`` module (:mod:`emoexp.metrics`). Columns:
``p_<emotion>`` and ``p_neutral`` and ``intensity = 1 - p_neutral`` (EPS), ``tec`` and
``tec_top`` (with targets), ``topic`` (with queries), ``perplexity``, ``repetition``,
``distinct_1``, ``distinct_2``, ``eas_<emotion>`` (with a judge), then ``issues`` (why a
score is missing or odd: empty or non-text response, judge failure, clamping),
``truncated`` (the metrics that cut this text) and ``<metric>_backend``
(``backend:model``). ``df.attrs["backends"]`` holds each metric's full configuration.
Judge metrics run last: if the judge becomes unreachable, :class:`ScoringInterrupted`
carries every finished score in ``.partial``.

Example:
    >>> df = score(["I am thrilled!!", "The bus leaves at 9."], targets=["joy", None])  # doctest: +SKIP
    >>> df[["p_joy", "intensity", "tec", "repetition"]]
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .aggregate import aggregate
from .backends import PRESETS, Backends
from .judge import ENV_MODEL, JudgeError
from .vectors import EMOTIONS

__all__ = ["METRICS", "PRESETS", "Backends", "ScoringInterrupted", "aggregate", "resolve_target", "score"]

#: Metric names accepted by ``score(metrics=...)`` (``topic_consistency`` is an alias of ``topic``).
METRICS = ("eps", "tec", "topic", "perplexity", "repetition", "eas")
_NO_TARGET = ("base", "none", "")
_ORDER = (*(f"p_{e}" for e in EMOTIONS), "p_neutral", "intensity", "tec", "tec_top", "topic", "perplexity",
          "repetition", "distinct_1", "distinct_2", *(f"eas_{e}" for e in EMOTIONS))


class ScoringInterrupted(RuntimeError):
    """A judge became unreachable or rejected a request; ``partial`` holds every finished score."""

    def __init__(self, message: str, partial: pd.DataFrame):
        super().__init__(message)
        self.partial = partial


def resolve_target(target: str | Mapping[str, float] | None, labels: Sequence[str] = EMOTIONS) -> tuple[str | None, str | None]:
    """The single emotion TEC scores for a target, and a note when there is none.

    An emotion name is itself; ``None``, ``"base"`` and ``"none"`` have no target; a mix
    (``{"joy": 1.0, "anger": -1.0}`` or ``"joy+anger"``, equal weights) targets the emotion with
    the largest positive weight; a tie or no positive weight gives no target (with a note).

    Raises:
        ValueError: an emotion name not in ``labels``.

    Example:
        >>> resolve_target({"joy": 1.0, "anger": -1.0})
        ('joy', None)
    """
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return None, None
    if isinstance(target, str):
        if target.lower() in _NO_TARGET:
            return None, None
        target = dict.fromkeys(target.split("+"), 1.0) if "+" in target else {target: 1.0}
    if not isinstance(target, Mapping):
        raise TypeError(f"a target is an emotion name, a mix dict or None, not {type(target).__name__}")
    unknown = [k for k in target if k not in labels and k != "base"]
    if unknown:
        raise ValueError(f"unknown target emotion(s) {unknown}: use {list(labels)}")
    weights = {k: float(v) for k, v in target.items() if k in labels}
    best = max(weights.values(), default=0.0)
    if best <= 0:
        return None, "target mix has no positive emotion weight"
    top = [k for k, v in weights.items() if v == best]
    if len(top) > 1:
        return None, f"target mix ties {top}"
    return top[0], None


def _as_list(x: Any, what: str) -> list:
    if isinstance(x, (str, bytes, Mapping)) or not (hasattr(x, "__len__") and hasattr(x, "__iter__")):
        raise TypeError(f"{what} must be a list of texts, not {type(x).__name__}")
    return list(x)


def _choose(metrics: Sequence[str] | None, b: Backends, has_q: bool, has_t: bool) -> list[str]:
    if metrics is None:
        chosen = ["repetition", "eps", "perplexity"] + ["tec"] * has_t + ["topic"] * has_q + ["eas"] * bool(b.eas)
    else:
        chosen = ["topic" if m == "topic_consistency" else m for m in metrics]
        bad = [m for m in chosen if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}: choose from {list(METRICS)}")
        if "topic" in chosen and not has_q:
            raise ValueError("metric 'topic' needs queries=")
        if "tec" in chosen and not has_t:
            raise ValueError("metric 'tec' needs targets=")
        if "eas" in chosen and not b.eas:
            raise ValueError("metric 'eas' needs an LLM judge: backend={'eas': 'judge'} with EMOEXP_JUDGE_BASE_URL "
                             "and EMOEXP_JUDGE_MODEL set, or {'eas': 'hf:<model>'}; it has no offline stand-in")
    return chosen


def score(responses: Sequence[Any], queries: Sequence[Any] | None = None,
          targets: Sequence[str | Mapping[str, float] | None] | None = None, *,
          metrics: Sequence[str] | None = None,
          backend: str | Mapping[str, Any] | Backends | None = None) -> pd.DataFrame:
    """Score each response with the paper's metrics (one row per response, input order).

    Args:
        responses: generated texts. Empty or non-text entries keep their row with NaN scores
            and a note in ``issues``.
        queries: the query each response answers (enables ``topic``); same length.
        targets: per response, an emotion, a mix dict, or None (enables ``tec``); same length.
        metrics: subset of :data:`METRICS` (default: all that the inputs and backends allow;
            ``tec`` also fills the EPS columns).
        backend: ``"offline"`` (default), ``"paper"``, a dict of :class:`Backends` fields, or a Backends.

    Raises:
        ValueError: mismatched lengths, unknown metric or target, a metric without its input.
        ScoringInterrupted: the judge stopped answering or rejected a request (``.partial`` has the
            finished scores).

    Example:
        >>> score(["So happy!!"], targets=["joy"], metrics=["tec"])["tec"]   # doctest: +SKIP
    """
    from .metrics import load_metric

    b = Backends.resolve(backend)
    responses = _as_list(responses, "responses")
    n = len(responses)
    qs = _as_list(queries, "queries") if queries is not None else [None] * n
    ts = _as_list(targets, "targets") if targets is not None else [None] * n
    for name, other in (("queries", qs), ("targets", ts)):
        if len(other) != n:
            raise ValueError(f"{len(other)} {name} for {n} responses: they must align one to one")
    chosen = _choose(metrics, b, queries is not None, targets is not None)
    issues: list[list[str]] = [[] for _ in range(n)]
    cut: list[list[str]] = [[] for _ in range(n)]
    valid = []
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            issues[i].append(f"response is {type(r).__name__}, not text")
        elif not r.strip():
            issues[i].append("empty response")
        else:
            valid.append(i)
    texts = [responses[i] for i in valid]
    cols: dict[str, list[float]] = {}
    info: dict[str, dict[str, Any]] = {}

    def put(col: str, values: Sequence[Any], rows: Sequence[int]) -> None:
        cols.setdefault(col, [math.nan] * n)
        for i, v in zip(rows, values):
            cols[col][i] = math.nan if v is None else float(v)

    def flag(metric: str, truncated: Sequence[bool], rows: Sequence[int]) -> None:
        for i, t in zip(rows, truncated):
            if t:
                cut[i].append(metric)

    def compute(name: str, **kw: Any) -> dict[str, Any]:
        if not kw.get("predictions"):
            return {}
        if name not in ("repetition", "tec"):
            kw["progress"] = b.progress
        return load_metric(name).compute(**kw)

    def run_judged(metric: str, rows: list[int], **kw: Any) -> None:
        try:
            out = compute("topic_consistency" if metric == "topic" else "eas", **kw)
        except JudgeError as e:
            done = e.completed
            out = {"scores": [r.scores for r in done], "errors": [r.error for r in done],
                   "clamped": [r.clamped for r in done], "truncated": [r.truncated for r in done]}
            if metric == "topic":
                out["topic"] = [r.scores["topic"] / 100 if r.scores else None for r in done]
            fill_judged(metric, out, rows[:len(done)])
            info[metric] = {"backend": "llm-judge", "model": b.judge.model if b.judge else os.environ.get(ENV_MODEL)}
            for i in rows[len(done):]:
                issues[i].append(f"{metric}: not scored, judge failed ({type(e).__name__})")
            frame = _frame(n, cols, issues, cut, info, b)
            raise ScoringInterrupted(f"{metric}: {e} ({len(done)} of {len(rows)} scored; other scores kept)",
                                     partial=frame) from e
        fill_judged(metric, out, rows)
        if out:
            info[metric] = {"backend": out["backend"], "model": out["model"]}

    def fill_judged(metric: str, out: dict[str, Any], rows: list[int]) -> None:
        if not out:
            return
        if metric == "topic":
            put("topic", out["topic"], rows)
        else:
            for e in EMOTIONS:
                put(f"eas_{e}", [s[e] if s else None for s in out["scores"]], rows)
        for i, err, cl in zip(rows, out["errors"], out.get("clamped", [False] * len(rows))):
            if err:
                issues[i].append(f"{metric}: {err}")
            if cl:
                issues[i].append(f"{metric}: judge score clamped to 0-100")
        flag(metric, out["truncated"], rows)

    if "repetition" in chosen:
        out = compute("repetition", predictions=texts)
        for col in ("repetition", "distinct_1", "distinct_2"):
            put(col, out.get(col, []), valid)
        info["repetition"] = {"backend": "ngram", "model": None, "n": 4}
    if "eps" in chosen or "tec" in chosen:
        out = compute("eps", predictions=texts, backend=b.eps, labels=list(b.labels), template=b.template)
        labels = out.get("labels") or list(b.labels) + ["neutral"]
        probs = out.get("probabilities", [])
        for k, lab in enumerate(labels):
            put(f"p_{lab}", [p[k] for p in probs], valid)
        put("intensity", out.get("intensity", []), valid)
        flag("eps", out.get("truncated", []), valid)
        if out:
            info["eps"] = out["config"]
        if "tec" in chosen:
            resolved = []
            for i in valid:
                t, note = resolve_target(ts[i], b.labels)
                resolved.append(t)
                if note:
                    issues[i].append(f"tec: {note}")
            tec = compute("tec", predictions=probs, references=[t or "" for t in resolved], labels=labels) if probs else {}
            put("tec", tec.get("tec", []), valid)
            put("tec_top", tec.get("tec_top", []), valid)
    topic_rows: list[int] = []
    if "topic" in chosen:
        for i in valid:
            q = qs[i]
            if isinstance(q, str) and q.strip():
                topic_rows.append(i)
            else:
                issues[i].append("topic: query missing or not text")
        cols.setdefault("topic", [math.nan] * n)
    topic_kw: dict[str, Any] = {}
    if topic_rows:
        topic_kw = {"predictions": [responses[i] for i in topic_rows], "references": [qs[i] for i in topic_rows],
                    "backend": b.topic, "judge_config": b.judge}
    if topic_rows and (b.topic == "minilm" or b.topic.startswith("embed:")):
        out = compute("topic_consistency", **topic_kw)
        put("topic", out["topic"], topic_rows)
        flag("topic", out["truncated"], topic_rows)
        info["topic"] = {"backend": out["backend"], "model": out["model"]}
    if "perplexity" in chosen:
        out = compute("perplexity", predictions=texts, model_id=b.perplexity, max_length=b.max_length,
                      batch_size=b.batch_size)
        put("perplexity", out.get("perplexities", []), valid)
        flag("perplexity", out.get("truncated", []), valid)
        if out:
            info["perplexity"] = {"backend": out["backend"], "model": out["model"], "max_length": out["max_length"]}
    if topic_rows and "topic" not in info:  # a judge: runs after every local metric
        run_judged("topic", topic_rows, **topic_kw)
    if "eas" in chosen:
        for e in EMOTIONS:
            cols.setdefault(f"eas_{e}", [math.nan] * n)
        run_judged("eas", valid, predictions=texts, judge=b.eas, judge_config=b.judge)
    return _frame(n, cols, issues, cut, info, b)


def _frame(n: int, cols: dict[str, list[float]], issues: list[list[str]], cut: list[list[str]],
           info: dict[str, dict[str, Any]], b: Backends) -> pd.DataFrame:
    first = [c for c in _ORDER if c in cols] + [c for c in cols if c.startswith("p_") and c not in _ORDER]
    df = pd.DataFrame({c: cols[c] for c in first + [c for c in cols if c not in first]}, index=range(n))
    df["issues"] = ["; ".join(x) for x in issues]
    df["truncated"] = [",".join(x) for x in cut]
    for metric, d in info.items():
        df[f"{metric}_backend"] = f"{d.get('backend')}:{d.get('model')}" if d.get("model") else d.get("backend")
    counts = {m: sum(m in x for x in cut) for m in info}
    df.attrs["backends"] = info
    df.attrs["truncated"] = counts
    df.attrs["settings"] = {k: v for k, v in dataclasses.asdict(b).items() if k != "judge"}
    for m, k in counts.items():
        if k:
            warnings.warn(f"{m}: {k} of {n} texts were longer than the model's context and were truncated "
                          "(see the 'truncated' column)", stacklevel=3)
    return df
