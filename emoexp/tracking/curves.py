"""α curves as MLflow metric histories, so the chart view draws emotion against α.

MLflow plots a metric's history against its integer ``step``. A parent run logs, per target
emotion ``t``, four histories over the α grid with **step = round(100·α)** (α = -1, 0, 1, 2, 4 →
steps -100, 0, 100, 200, 400; the order of α is kept) — the metric names say so:

- ``<t>/p_target_by_alpha_x100``: the mean probability of ``t`` in replies steered towards ``t``;
- ``<t>/gain_by_alpha_x100``: that minus unsteered, paired by query;
- ``<t>/topic_ratio_by_alpha_x100`` and ``<t>/repetition_ratio_by_alpha_x100``: topic consistency
  and repetition over unsteered (the limits are 0.8× and 1.5×);

and the same four over the relative dose the steered tokens received (``<t>/<quantity>_by_dose_x100``,
step = round(100·dose), negative for negative α), which puts families with different activation
scales on one axis. The UI groups charts by the part before ``/``: one section per emotion, its
effect beside its costs; chart titles start with the emotion, which stays visible when cut. α = 0 is the unsteered point (gain 0, ratios 1) when the grid has no α = 0.
Selecting several parents in the chart view overlays their curves.

Pure pandas: :mod:`emoexp.tracking.study` logs what :func:`curves` returns.

Example:
    >>> import pandas as pd
    >>> agg = pd.DataFrame({"condition": ["unsteered", "steered"], "target": [None, "joy"], "alpha": [None, 2.0],
    ...                     "p_joy": [0.1, 0.5], "gain": [None, 0.4]})
    >>> curves(agg)[:2]
    [('joy/p_target_by_alpha_x100', 0.1, 0), ('joy/p_target_by_alpha_x100', 0.5, 200)]
"""

from __future__ import annotations

import math
from typing import Any

from ..vocab import EMOTIONS
from .meta import finite

__all__ = ["CURVES", "curves", "step_of"]

#: The quantities logged per target emotion (metric ``<target>/<name>_by_<axis>``).
CURVES = ("p_target", "gain", "topic_ratio", "repetition_ratio")


def step_of(x: float) -> int:
    """MLflow's integer step for an α or a dose: round(100·x)."""
    return round(100 * float(x))


def curves(agg: Any) -> list[tuple[str, float, int]]:
    """``(metric name, value, step)`` for every α-grid point of every single-emotion target in
    the aggregate (``condition``, ``target``, ``alpha``, ``p_<e>``, and where present ``gain``,
    ``topic_ratio``, ``repetition_ratio``, ``dose``), ordered by target then α."""
    out: list[tuple[str, float, int]] = []
    unst = agg[agg["condition"] == "unsteered"]
    steered = agg[agg["condition"] == "steered"]
    for t in [e for e in EMOTIONS if e in set(steered["target"].dropna())]:
        rows = steered[steered["target"] == t].sort_values("alpha")
        points: list[tuple[float, dict[str, Any], float | None]] = []
        for _, r in rows.iterrows():
            a = finite(r["alpha"])
            if a is None:
                continue
            dose = finite(r.get("dose"))
            points.append((a, {"p_target": r.get(f"p_{t}"), "gain": r.get("gain"), "topic_ratio": r.get("topic_ratio"),
                               "repetition_ratio": r.get("repetition_ratio")},
                           None if dose is None else math.copysign(dose, a)))
        if len(unst) and not any(a == 0 for a, _, _ in points):
            points.append((0.0, {"p_target": unst.iloc[0].get(f"p_{t}"), "gain": 0.0, "topic_ratio": 1.0,
                                 "repetition_ratio": 1.0}, 0.0))
        points.sort(key=lambda p: p[0])
        for axis in ("alpha_x100", "dose_x100"):
            for name in CURVES:
                for a, values, dose in points:
                    x = a if axis == "alpha_x100" else dose
                    v = finite(values[name])
                    if x is not None and v is not None:
                        out.append((f"{t}/{name}_by_{axis}", v, step_of(x)))
    return out
