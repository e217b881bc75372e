"""Group means of per-response scores with seeded bootstrap 95% intervals (``scipy.stats.bootstrap``).

For each group and metric: the mean over the rows where the metric is not NaN, ``n`` of those
rows, and the percentile-bootstrap interval of the mean (``n_boot`` resamples). A group with one
value, or with all values equal, has lo = hi = the value. Columns: the group keys, ``n`` (rows),
and per metric ``<m>``, ``<m>_ci_low``, ``<m>_ci_high`` and ``<m>_n``.

Example:
    >>> agg = aggregate(df, by=["model", "condition", "target", "alpha"])  # doctest: +SKIP
    >>> print(to_markdown(agg, ["intensity", "topic"]))                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_METRICS", "GAIN_COLUMNS", "TABLE_METRICS", "aggregate", "best_per_target", "bootstrap_ci", "gain", "to_markdown"]

#: The columns :func:`gain` adds to an aggregate row (paired gain, its CI, topic and repetition ratios).
GAIN_COLUMNS = ("gain", "gain_ci_low", "gain_ci_high", "topic_ratio", "repetition_ratio")

#: Score columns aggregated by default (those present in the frame).
DEFAULT_METRICS = ("intensity", "tec", "tec_top", "topic", "perplexity", "repetition", "distinct_2", "dose",
                   "p_anger", "p_disgust", "p_fear", "p_joy", "p_sadness", "p_neutral",
                   "eas_anger", "eas_disgust", "eas_fear", "eas_joy", "eas_sadness")

#: Columns shown by :func:`to_markdown` by default (the CSV has them all).
TABLE_METRICS = ("intensity", "tec", "tec_top", "topic", "perplexity", "repetition",
                 "eas_anger", "eas_disgust", "eas_fear", "eas_joy", "eas_sadness")


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                 rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the finite ``values`` (percentile bootstrap); NaNs for no value.

    Example:
        >>> bootstrap_ci(np.array([1.0, 1.0, 1.0]))
        (1.0, 1.0, 1.0)
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return mean, mean, mean
    res = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=ci, method="percentile",
                    random_state=rng or np.random.default_rng(0), vectorized=True)
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def aggregate(df: pd.DataFrame, by: Sequence[str] = ("model", "condition", "target", "alpha"), *,
              metrics: Sequence[str] | None = None, n_boot: int = 1000, ci: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """Per group: ``n`` rows, and for each metric ``<m>`` (mean), ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_n``.

    Args:
        df: per-response scores (e.g. from :func:`emoexp.score`) with the ``by`` columns.
        by: grouping columns (missing ones are ignored; None/NaN keys form their own group).
        metrics: columns to aggregate (default: those of :data:`DEFAULT_METRICS` present).
        n_boot: bootstrap resamples.
        ci: interval coverage.
        seed: the bootstrap seed (each group and metric draws from ``(seed, group, metric)``).
    """
    keys = [c for c in by if c in df.columns]
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in df.columns]
    groups = df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]
    rows = []
    for gi, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        row: dict = dict(zip(keys, key))
        row["n"] = len(g)
        for mi, m in enumerate(metrics):
            vals = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float)
            rng = np.random.default_rng([seed, gi, mi])
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(vals, n_boot=n_boot, ci=ci, rng=rng)
            row[f"{m}_n"] = int(np.isfinite(vals).sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(df.attrs)
    out.attrs["by"] = keys
    out.attrs["bootstrap"] = {"n_boot": n_boot, "ci": ci, "seed": seed, "method": "percentile (scipy)"}
    return out


def gain(rows: pd.DataFrame, base: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """The effect of one condition against its baseline on the same queries.

    ``gain`` is the mean over queries of the target emotion's probability minus the baseline's
    on the same query (paired), with a bootstrap 95% interval (``gain_ci_low``/``gain_ci_high``);
    ``topic_ratio`` and ``repetition_ratio`` are the condition's means over the baseline's.
    ``rows`` needs ``id``, ``target`` and ``p_<emotion>`` columns; a row set without one target
    emotion (unsteered, ``base``, a tie) gets NaN gains.
    """
    from .emotion import resolve_target

    out: dict[str, float] = {}
    for m in ("topic", "repetition"):
        if m in rows and m in base and float(base[m].mean()) > 0:
            out[f"{m}_ratio"] = float(rows[m].mean() / base[m].mean())
    targets = {resolve_target(t if not isinstance(w, dict) else w)[0]
               for t, w in zip(rows["target"], rows.get("weights", [None] * len(rows)))}
    target = next(iter(targets)) if len(targets) == 1 else None
    if target is None or f"p_{target}" not in rows:
        return {**out, "gain": float("nan"), "gain_ci_low": float("nan"), "gain_ci_high": float("nan")}
    col = f"p_{target}"
    paired = rows[["id", col]].merge(base[["id", col]], on="id", suffixes=("", "_base"))
    diff = (paired[col] - paired[f"{col}_base"]).to_numpy(dtype=float)
    out["gain"], out["gain_ci_low"], out["gain_ci_high"] = bootstrap_ci(diff, n_boot=n_boot,
                                                                        rng=np.random.default_rng(seed))
    return out


def to_markdown(agg: pd.DataFrame, metrics: Sequence[str] | None = None, *, digits: int = 3) -> str:
    """A Markdown table: the group columns, ``n``, and ``mean [lo, hi]`` per metric."""
    metrics = [m for m in (metrics or TABLE_METRICS) if m in agg.columns]
    keys = list(agg.attrs.get("by", []))

    def cell(r: pd.Series, m: str) -> str:
        if pd.isna(r[m]):
            return "–"
        return f"{r[m]:.{digits}f} [{r[f'{m}_ci_low']:.{digits}f}, {r[f'{m}_ci_high']:.{digits}f}]"

    table = pd.DataFrame({**{k: agg[k] for k in keys}, "n": agg["n"].astype(int),
                          **{m: [cell(r, m) for _, r in agg.iterrows()] for m in metrics}})
    return table.to_markdown(index=False, missingval="") + "\n"


def best_per_target(agg: Any, min_topic_ratio: float = 0.8, max_rep_ratio: float = 1.5,
                    condition: str = "steered") -> list[dict[str, Any]]:
    """For each target: the alpha with the largest target-probability gain over unsteered among
    those keeping topic >= ``min_topic_ratio`` x and repetition <= ``max_rep_ratio`` x unsteered
    (``condition``: ``steered``, or ``prompt_steered`` for the emotional prompt plus the EV)."""
    unst = agg[agg["condition"] == "unsteered"].iloc[0]
    out = []
    for tgt in sorted(agg.loc[agg["condition"] == condition, "target"].dropna().unique()):
        col = f"p_{tgt}"
        if col not in agg.columns:
            continue
        base = float(unst[col])
        prompt = agg[(agg["condition"] == "prompt") & (agg["target"] == tgt)]
        rows = agg[(agg["condition"] == condition) & (agg["target"] == tgt)]
        best: dict[str, Any] = {"target": tgt, "condition": condition, "unsteered": base,
                                "prompt_gain": float(prompt[col].iloc[0]) - base if len(prompt) else math.nan}
        cands = []
        for _, r in rows.iterrows():
            topic_ok = "topic" not in agg or float(r["topic"]) >= min_topic_ratio * float(unst["topic"])
            rep_ok = "repetition" not in agg or float(r["repetition"]) <= max_rep_ratio * max(float(unst["repetition"]), 1e-3)
            cands.append((topic_ok and rep_ok, float(r[col]) - base, r))
        ok = [c for c in cands if c[0]]
        pick = max(ok or cands, key=lambda c: c[1])
        best.update(alpha=float(pick[2]["alpha"]), gain=pick[1], within_limits=pick[0],
                    topic_ratio=float(pick[2]["topic"]) / float(unst["topic"]) if "topic" in agg else math.nan,
                    rep_ratio=float(pick[2]["repetition"]) / max(float(unst["repetition"]), 1e-3)
                    if "repetition" in agg else math.nan)
        best["beats_prompt"] = bool(best["gain"] > best["prompt_gain"])
        out.append(best)
    return out
