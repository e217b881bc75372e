"""``score()``: the paper's metrics for a list of responses, one DataFrame row per response.

Columns: ``p_<emotion>``, ``p_neutral`` and ``intensity`` (EPS), ``tec`` and ``tec_top`` (with
targets), ``topic`` (with queries), ``perplexity``, ``repetition``, ``distinct_1``,
``distinct_2``, ``eas_<emotion>`` (with a judge), then ``issues`` (why a score is missing or odd),
``truncated`` (the metrics that cut this text) and ``<metric>_backend`` (``backend:model``).
``df.attrs["backends"]`` holds each metric's configuration. Judge metrics run last: if the
judge stops answering, :class:`ScoringInterrupted` carries every finished score in ``.partial``.

Example:
    >>> df = score(["I am thrilled!!", "The bus leaves at 9."], targets=["joy", None])  # doctest: +SKIP
    >>> df[["p_joy", "intensity", "tec", "repetition"]]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..vocab import EMOTIONS, METRICS
from .backends import Backends
from .emotion import emotion_probabilities, resolve_target, target_confidence
from .judge import JudgeError
from .repetition import repetition
from .topic import topic_consistency

__all__ = ["METRICS", "ScoringInterrupted", "score"]

_ORDER = (*(f"p_{e}" for e in EMOTIONS), "p_neutral", "intensity", "tec", "tec_top", "topic", "perplexity",
          "repetition", "distinct_1", "distinct_2", *(f"eas_{e}" for e in EMOTIONS))


class ScoringInterrupted(RuntimeError):
    """A judge became unreachable or rejected a request; ``partial`` holds every finished score."""

    def __init__(self, message: str, partial: pd.DataFrame):
        super().__init__(message)
        self.partial = partial


def _as_list(x: Any, what: str) -> list:
    if isinstance(x, (str, bytes, Mapping)) or not (hasattr(x, "__len__") and hasattr(x, "__iter__")):
        raise TypeError(f"{what} must be a list of texts, not {type(x).__name__}")
    return list(x)


def _choose(metrics: Sequence[str] | None, b: Backends, has_q: bool, has_t: bool) -> list[str]:
    if metrics is None:
        return ["repetition", "eps", "perplexity"] + ["tec"] * has_t + ["topic"] * has_q + ["eas"] * bool(b.eas)
    chosen = ["topic" if m == "topic_consistency" else m for m in metrics]
    bad = [m for m in chosen if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}: choose from {list(METRICS)}")
    for metric, ok, need in (("topic", has_q, "queries="), ("tec", has_t, "targets=")):
        if metric in chosen and not ok:
            raise ValueError(f"metric {metric!r} needs {need}")
    if "eas" in chosen and not b.eas:
        raise ValueError("metric 'eas' needs an LLM judge: backend={'eas': 'judge'} with EMOEXP_JUDGE_BASE_URL "
                         "and EMOEXP_JUDGE_MODEL set, or {'eas': 'hf:<model>'}; it has no offline stand-in")
    return chosen


class _Table:
    """The columns being filled, per-row notes, and each metric's configuration."""

    def __init__(self, n: int):
        self.n = n
        self.cols: dict[str, np.ndarray] = {}
        self.issues: list[list[str]] = [[] for _ in range(n)]
        self.cut: list[list[str]] = [[] for _ in range(n)]
        self.info: dict[str, dict[str, Any]] = {}

    def put(self, col: str, values: Sequence[Any], rows: Sequence[int]) -> None:
        arr = self.cols.setdefault(col, np.full(self.n, np.nan))
        arr[list(rows)] = [np.nan if v is None else float(v) for v in values]

    def note(self, rows: Sequence[int], flags: Sequence[Any], text: str) -> None:
        for i, f in zip(rows, flags):
            if f:
                self.issues[i].append(text.format(f))

    def flag(self, metric: str, truncated: Sequence[bool], rows: Sequence[int]) -> None:
        for i, t in zip(rows, truncated):
            if t:
                self.cut[i].append(metric)

    def frame(self, settings: dict[str, Any]) -> pd.DataFrame:
        first = [c for c in _ORDER if c in self.cols]
        df = pd.DataFrame({c: self.cols[c] for c in first + [c for c in self.cols if c not in first]},
                          index=range(self.n))
        df["issues"] = ["; ".join(x) for x in self.issues]
        df["truncated"] = [",".join(x) for x in self.cut]
        for metric, d in self.info.items():
            df[f"{metric}_backend"] = f"{d.get('backend')}:{d.get('model')}" if d.get("model") else d.get("backend")
        counts = {m: sum(m in x for x in self.cut) for m in self.info}
        df.attrs.update(backends=self.info, truncated=counts, settings=settings)
        for m, k in counts.items():
            if k:
                warnings.warn(f"{m}: {k} of {self.n} texts were longer than the model's context and were truncated "
                              "(see the 'truncated' column)", stacklevel=3)
        return df


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
    b = Backends.resolve(backend)
    responses = _as_list(responses, "responses")
    n = len(responses)
    qs = _as_list(queries, "queries") if queries is not None else [None] * n
    ts = _as_list(targets, "targets") if targets is not None else [None] * n
    for name, other in (("queries", qs), ("targets", ts)):
        if len(other) != n:
            raise ValueError(f"{len(other)} {name} for {n} responses: they must align one to one")
    chosen = _choose(metrics, b, queries is not None, targets is not None)
    t = _Table(n)
    valid = [i for i, r in enumerate(responses) if isinstance(r, str) and r.strip()]
    for i, r in enumerate(responses):
        if i not in valid:
            t.issues[i].append(f"response is {type(r).__name__}, not text" if not isinstance(r, str)
                               else "empty response")
    texts = [responses[i] for i in valid]
    if "repetition" in chosen:
        for col, vals in repetition(texts).items():
            t.put(col, vals, valid)
        t.info["repetition"] = {"backend": "ngram", "model": None, "n": 4}
    if ("eps" in chosen or "tec" in chosen) and texts:
        eps = emotion_probabilities(texts, b.eps, progress=b.progress)
        for k, lab in enumerate(eps["labels"]):
            t.put(f"p_{lab}", eps["probs"][:, k], valid)
        t.put("intensity", eps["intensity"], valid)
        t.flag("eps", eps["truncated"], valid)
        t.info["eps"] = eps["config"]
        if "tec" in chosen:
            resolved = [resolve_target(ts[i]) for i in valid]
            t.note(valid, [note for _, note in resolved], "tec: {}")
            for col, vals in target_confidence(eps["probs"], eps["labels"], [r for r, _ in resolved]).items():
                t.put(col, vals, valid)
    topic_rows = [i for i in valid if isinstance(qs[i], str) and qs[i].strip()] if "topic" in chosen else []
    if "topic" in chosen:
        t.cols.setdefault("topic", np.full(n, np.nan))
        t.note(sorted(set(valid) - set(topic_rows)), [True] * n, "topic: query missing or not text")
    judged_topic = b.topic not in ("minilm",) and not b.topic.startswith("embed:")
    if topic_rows and not judged_topic:
        out = topic_consistency([responses[i] for i in topic_rows], [qs[i] for i in topic_rows], b.topic)
        t.put("topic", out["topic"], topic_rows)
        t.flag("topic", out["truncated"], topic_rows)
        t.info["topic"] = out["config"]
    if "perplexity" in chosen and texts:
        from .perplexity import get_reference_lm

        lm = get_reference_lm(b.perplexity, b.max_length, b.batch_size)
        res = lm.perplexity(texts, progress=b.progress)
        t.put("perplexity", res.values, valid)
        t.flag("perplexity", res.truncated, valid)
        t.info["perplexity"] = {"backend": "causal-lm", "model": lm.model_id, "max_length": lm.max_length}
    settings = b.settings()
    if topic_rows and judged_topic:  # judges run after every local metric
        _judged(t, "topic", topic_rows, b, settings, responses=[responses[i] for i in topic_rows],
                queries=[qs[i] for i in topic_rows])
    if "eas" in chosen:
        for e in EMOTIONS:
            t.cols.setdefault(f"eas_{e}", np.full(n, np.nan))
        _judged(t, "eas", valid, b, settings, texts=texts)
    return t.frame(settings)


def _judged(t: _Table, metric: str, rows: list[int], b: Backends, settings: dict[str, Any], **inputs: Any) -> None:
    """A judge metric; on a dead judge, the finished ratings are kept and ScoringInterrupted raised."""
    from .judge import get_judge, rate_emotions, rate_topic

    judge = None
    try:
        judge = get_judge(b.topic if metric == "topic" else str(b.eas), b.judge)
        ratings = (rate_topic(judge, inputs["queries"], inputs["responses"], progress=b.progress) if metric == "topic"
                   else rate_emotions(judge, inputs["texts"], progress=b.progress))
        failure = None
    except JudgeError as e:
        ratings, failure = e.completed, e
    done = rows[:len(ratings)]
    if metric == "topic":
        t.put("topic", [r.scores["topic"] / 100 if r.scores else None for r in ratings], done)
    else:
        for e in EMOTIONS:
            t.put(f"eas_{e}", [r.scores[e] if r.scores else None for r in ratings], done)
    t.note(done, [r.error for r in ratings], f"{metric}: {{}}")
    t.note(done, [r.clamped for r in ratings], f"{metric}: judge score clamped to 0-100")
    t.flag(metric, [r.truncated for r in ratings], done)
    t.info[metric] = judge.describe() if judge is not None else {
        "backend": "llm-judge", "model": b.judge.model if b.judge else None}
    if failure is not None:
        t.note(rows[len(ratings):], [True] * len(rows), f"{metric}: not scored, judge failed ({type(failure).__name__})")
        raise ScoringInterrupted(f"{metric}: {failure} ({len(ratings)} of {len(rows)} scored; other scores kept)",
                                 partial=t.frame(settings)) from failure

