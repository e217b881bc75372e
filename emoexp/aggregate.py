"""Group means of per-response scores with seeded percentile-bootstrap 95% intervals.

For each group and metric: ``mean`` over the rows where the metric is not NaN, ``n`` of
those rows, and ``[lo, hi]`` = the 2.5th and 97.5th percentiles of ``n_boot`` means of
resamples (with replacement, size n) of those rows. A group with one value has lo = hi.
Columns: the group keys, ``n`` (rows), and per metric ``<m>``, ``<m>_ci_low``, ``<m>_ci_high``
and ``<m>_n`` (rows where ``<m>`` is not NaN).

Example:
    >>> agg = aggregate(df, by=["model", "condition", "target", "alpha"])  # doctest: +SKIP
    >>> print(to_markdown(agg, ["intensity", "topic"]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_METRICS", "TABLE_METRICS", "aggregate", "bootstrap_ci", "to_markdown"]

#: Score columns aggregated by default (those present in the frame).
DEFAULT_METRICS = ("intensity", "tec", "tec_top", "topic", "perplexity", "repetition", "distinct_2",
                   "p_anger", "p_disgust", "p_fear", "p_joy", "p_sadness", "p_neutral",
                   "eas_anger", "eas_disgust", "eas_fear", "eas_joy", "eas_sadness")

#: Columns shown by :func:`to_markdown` by default (the CSV has them all).
TABLE_METRICS = ("intensity", "tec", "tec_top", "topic", "perplexity", "repetition",
                 "eas_anger", "eas_disgust", "eas_fear", "eas_joy", "eas_sadness")


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                 rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the finite ``values``; NaNs for no value.

    Example:
        >>> bootstrap_ci(np.array([1.0, 1.0, 1.0]))
        (1.0, 1.0, 1.0)
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    rng = rng or np.random.default_rng(0)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - ci) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(x.mean()), float(lo), float(hi)


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

    Example:
        >>> aggregate(pd.DataFrame({"alpha": [0, 0, 1], "intensity": [0.1, 0.3, 0.9]}), by=["alpha"])
        ... # doctest: +SKIP
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
    out.attrs["bootstrap"] = {"n_boot": n_boot, "ci": ci, "seed": seed, "method": "percentile"}
    return out


def to_markdown(agg: pd.DataFrame, metrics: Sequence[str] | None = None, *, digits: int = 3) -> str:
    """A Markdown table: the group columns, ``n``, and ``mean [lo, hi]`` per metric.

    Example:
        >>> print(to_markdown(agg, ["intensity"]))                       # doctest: +SKIP
    """
    metrics = [m for m in (metrics or TABLE_METRICS) if m in agg.columns]
    keys = list(agg.attrs.get("by", []))
    head = [*keys, "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in agg.iterrows():
        cells = ["" if pd.isna(r[k]) else str(r[k]) for k in keys] + [str(int(r["n"]))]
        for m in metrics:
            if pd.isna(r[m]):
                cells.append("–")
            else:
                lo, hi = r[f"{m}_ci_low"], r[f"{m}_ci_high"]
                cells.append(f"{r[m]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
