"""Cross-family analysis of logged studies (pure pandas): steering gains with bootstrap CIs, in
each family's own α and in relative-dose units, and where families differ beyond the CIs.

Input: the child runs of :func:`emoexp.tracking.load_children` (one row per child), whose metrics
include ``gain`` / ``gain_ci_low`` / ``gain_ci_high`` (the target emotion's probability minus
unsteered's, paired by query, bootstrap 95% CI), ``topic_ratio``, ``repetition_ratio`` and
``dose`` (the mean relative dose ‖α·EV_l‖ / ‖h_l‖ the steered tokens received).

- :func:`gains` — one row per (model, target, condition, α): gain [CI], dose, ratios;
- :func:`at_dose` — each (model, target)'s gain linearly interpolated at common doses, so that
  "the same push" compares families whose raw α mean different things;
- :func:`best` — per (model, target) the α with the largest gain that keeps topic ≥ 0.8× and
  repetition ≤ 1.5× unsteered, and the prompt baseline's gain;
- :func:`differences` — per target, which families' best gains have non-overlapping CIs.

Example:
    >>> rows = gains(load_children(["families"]))                    # doctest: +SKIP
    >>> differences(best(rows))                                       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["at_dose", "best", "differences", "gains"]

_COLS = ["model", "target", "condition", "alpha", "n", "dose", "gain", "gain_ci_low", "gain_ci_high", "topic_ratio",
         "repetition_ratio"]


def gains(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, target, condition, α) of the steered and prompt children that have a gain."""
    if "gain" not in long:
        raise ValueError("these runs logged no 'gain' metric (logged by emoexp >= this version's `emoexp run`)")
    rows = long[long["condition"].isin(["steered", "prompt", "prompt_steered"]) & long["gain"].notna()].copy()
    for c in _COLS:
        if c not in rows:
            rows[c] = np.nan
    return rows[_COLS].sort_values(["model", "target", "condition", "alpha"], na_position="first").reset_index(drop=True)


def at_dose(rows: pd.DataFrame, doses: Sequence[float]) -> pd.DataFrame:
    """Gain (and its CI bounds) of each (model, target) interpolated at ``doses`` from the steered
    children with α >= 0 (α = 0 is dose 0, gain 0); NaN beyond the largest dose measured."""
    out = []
    steered = rows[(rows["condition"] == "steered") & (rows["alpha"] >= 0)]
    for (model, target), g in steered.groupby(["model", "target"], sort=True):
        g = g.assign(dose=g["dose"].where(g["alpha"] > 0, 0.0)).dropna(subset=["dose"]).sort_values("dose")
        if len(g) < 2:
            continue
        for d in doses:
            inside = g["dose"].min() <= d <= g["dose"].max()
            row: dict[str, Any] = {"model": model, "target": target, "dose": d}
            for c in ("gain", "gain_ci_low", "gain_ci_high"):
                row[c] = float(np.interp(d, g["dose"], g[c])) if inside else math.nan
            out.append(row)
    return pd.DataFrame(out, columns=["model", "target", "dose", "gain", "gain_ci_low", "gain_ci_high"])


def best(rows: pd.DataFrame, min_topic_ratio: float = 0.8, max_rep_ratio: float = 1.5) -> pd.DataFrame:
    """Per (model, target): the steered α with the largest gain within the topic and repetition
    limits (flagged ``within_limits=False`` if none qualifies), and the prompt baseline's gain."""
    out = []
    for (model, target), g in rows.groupby(["model", "target"], sort=True):
        steered = g[g["condition"] == "steered"]
        if not len(steered):
            continue
        ok = steered[(steered["topic_ratio"].fillna(1) >= min_topic_ratio)
                     & (steered["repetition_ratio"].fillna(1) <= max_rep_ratio)]
        pick = (ok if len(ok) else steered).sort_values("gain").iloc[-1]
        prompt = g[g["condition"] == "prompt"]
        out.append({"model": model, "target": target, "alpha": pick["alpha"], "dose": pick["dose"],
                    "gain": pick["gain"], "gain_ci_low": pick["gain_ci_low"], "gain_ci_high": pick["gain_ci_high"],
                    "topic_ratio": pick["topic_ratio"], "repetition_ratio": pick["repetition_ratio"],
                    "within_limits": bool(len(ok)),
                    "prompt_gain": float(prompt["gain"].iloc[0]) if len(prompt) else math.nan,
                    "prompt_ci_low": float(prompt["gain_ci_low"].iloc[0]) if len(prompt) else math.nan,
                    "prompt_ci_high": float(prompt["gain_ci_high"].iloc[0]) if len(prompt) else math.nan})
    return pd.DataFrame(out)


def differences(b: pd.DataFrame) -> pd.DataFrame:
    """Per target and pair of families: whether their best gains' 95% CIs overlap (if not, the
    families differ beyond the sampling noise of these query sets)."""
    out = []
    for target, g in b.groupby("target", sort=True):
        for (_, x), (_, y) in itertools.combinations(g.iterrows(), 2):
            apart = x["gain_ci_low"] > y["gain_ci_high"] or y["gain_ci_low"] > x["gain_ci_high"]
            out.append({"target": target, "a": x["model"], "b": y["model"], "gain a": x["gain"], "gain b": y["gain"],
                        "difference": x["gain"] - y["gain"], "beyond CIs": bool(apart)})
    return pd.DataFrame(out, columns=["target", "a", "b", "gain a", "gain b", "difference", "beyond CIs"])
