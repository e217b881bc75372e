"""Plain matplotlib figures (Agg canvas, no pyplot state): emotion-vector norms per layer, the
cross-emotion cosine heatmap, split-half stability, α-sweeps and cross-family comparisons.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_all_plots` writes the
study's figures to a folder, :mod:`emoexp.tracking` logs the same figures to MLflow.

Example:
    >>> fig = alpha_sweep_figure(aggregate, "intensity")            # doctest: +SKIP
    >>> save_all_plots("outputs/evs.safetensors", aggregate, "outputs/plots")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AGG_COLUMNS",
    "SWEEP_METRICS",
    "alpha_sweep_figure",
    "compare_figure",
    "cosine_figure",
    "ev_figures",
    "gain_figure",
    "metric_columns",
    "norms_figure",
    "save_all_plots",
    "split_half_figure",
    "sweep_figures",
]

#: Columns of an aggregate table that are not metrics.
AGG_COLUMNS = ("condition", "target", "alpha", "n")


def _figure(width: float = 7.6, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_outside(ax: Any) -> None:
    """The legend right of the axes, never over the data (constrained layout makes room)."""
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def metric_columns(aggregate: pd.DataFrame) -> list[str]:
    """The metric names of an aggregate table: numeric columns other than ``condition, target,
    alpha, n``, the ``<m>_ci_low`` / ``<m>_ci_high`` intervals and the ``<m>_n`` counts, in table order."""
    import pandas as pd

    cols = set(map(str, aggregate.columns))
    return [c for c in aggregate.columns
            if c not in AGG_COLUMNS and not re.search(r"_ci_(low|high)$", str(c))
            and not (str(c).endswith("_n") and str(c)[:-2] in cols)
            and pd.api.types.is_numeric_dtype(aggregate[c])]


def norms_figure(norms: Mapping[str, Sequence[float]], title: str | None = None) -> Figure:
    """‖EV_l‖ against layer l, one line per emotion."""
    fig = _figure()
    ax = fig.add_subplot()
    for emotion, values in norms.items():
        ax.plot(range(len(values)), list(values), marker=".", label=emotion)
    ax.set(xlabel="layer", ylabel="L2 norm", title=title or "Emotion-vector norm per layer")
    ax.legend(fontsize="small")
    return fig


def cosine_figure(cosine: Any, emotions: Sequence[str], title: str | None = None) -> Figure:
    """[E, E] cosine similarity heatmap with the values written in the cells."""
    import numpy as np

    mat = np.asarray(cosine.tolist() if hasattr(cosine, "tolist") else cosine, dtype=float)
    fig = _figure(max(4.8, 1.2 + 0.9 * len(emotions)), max(4.0, 0.8 + 0.9 * len(emotions)))
    ax = fig.add_subplot()
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(emotions)), list(emotions), rotation=45, ha="right")
    ax.set_yticks(range(len(emotions)), list(emotions))
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(mat[i, j]) > 0.6 else "black")
    ax.set_title((title or "Cosine between emotion vectors (all layers)").replace(" — ", "\n"), fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def split_half_figure(split_half: Mapping[str, Sequence[float]], title: str | None = None) -> Figure:
    """Per-layer cosine between the vectors extracted from two disjoint halves of the queries
    (near 1 = stable), one line per emotion."""
    fig = _figure()
    ax = fig.add_subplot()
    for emotion, values in split_half.items():
        ax.plot(range(len(values)), list(values), marker=".", label=emotion)
    ax.set(xlabel="layer", ylabel="cosine(half A, half B)", ylim=(min(-0.05, ax.get_ylim()[0]), 1.05),
           title=title or "Split-half stability of the emotion vectors")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend(fontsize="small")
    return fig


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _col(metric: str, target: Any) -> str:
    """The aggregate column behind ``metric`` for a target: ``p_target`` is the target's own ``p_<target>``."""
    return f"p_{target}" if metric == "p_target" else metric


def alpha_sweep_figure(aggregate: pd.DataFrame, metric: str, title: str | None = None) -> Figure:
    """``metric`` against α for each steered target (CI band when ``<metric>_ci_low/high`` exist);
    the prompt baseline of each target as a dashed line in the target's colour (with a marker at
    the right edge) and the unsteered mean as a dotted line (per target for ``p_target``, the
    target emotion's own probability; black otherwise)."""
    fig = _figure()
    ax = fig.add_subplot()
    colors: dict[str, Any] = {}
    steered = aggregate[aggregate["condition"] == "steered"].dropna(subset=["alpha"])
    for target, rows in steered.groupby("target", sort=True):
        col = _col(metric, target)
        if col not in rows:
            continue
        rows = rows.sort_values("alpha")
        (line,) = ax.plot(rows["alpha"], rows[col], marker="o", label=f"steered {target}")
        colors[str(target)] = line.get_color()
        lo, hi = f"{col}_ci_low", f"{col}_ci_high"
        if lo in rows and hi in rows and rows[[lo, hi]].notna().all().all():
            ax.fill_between(rows["alpha"], rows[lo], rows[hi], color=line.get_color(), alpha=0.15)
    right = steered["alpha"].max() if len(steered) else 1.0
    for _, row in aggregate[aggregate["condition"] == "prompt"].iterrows():
        col = _col(metric, row["target"])
        if col not in row or _isnan(row[col]):
            continue
        color = colors.get(str(row["target"]), "grey")
        ax.axhline(row[col], color=color, ls="--", lw=1)
        ax.plot([right], [row[col]], marker="*", ms=11, color=color, ls="none", label=f"prompt {row['target']}")
    for _, row in aggregate[aggregate["condition"] == "unsteered"].iterrows():
        if metric == "p_target":
            for target, color in colors.items():
                if f"p_{target}" in row and not _isnan(row[f"p_{target}"]):
                    ax.axhline(row[f"p_{target}"], color=color, ls=":", lw=1.2)
            ax.plot([], [], color="black", ls=":", lw=1.2, label="unsteered (per target)")
        elif metric in row and not _isnan(row[metric]):
            ax.axhline(row[metric], color="black", ls=":", lw=1.2, label="unsteered")
    label = "P(target emotion)" if metric == "p_target" else metric
    ax.set(xlabel="α (steering strength)", ylabel=label, title=title or f"{label} vs α")
    _legend_outside(ax)
    return fig


def compare_figure(long: pd.DataFrame, metric: str, title: str | None = None) -> Figure:
    """Cross-family α-sweep from :func:`emoexp.tracking.load_children` rows: ``metric`` vs α per
    (model, target) for steered runs; each model's prompt baseline (mean over its targets) dashed
    and its unsteered mean dotted, in the model's colour."""
    fig = _figure(8.4, 4.6)
    ax = fig.add_subplot()
    if metric not in long:
        ax.set_title(f"{metric}: not logged")
        return fig
    for model, rows in long.groupby("model", sort=True):
        steered = rows[rows["condition"] == "steered"].dropna(subset=["alpha", metric])
        color = None
        for target, part in steered.groupby("target", sort=True):
            part = part.sort_values("alpha")
            label = str(model) if steered["target"].nunique() == 1 else f"{model} {target}"
            (line,) = ax.plot(part["alpha"], part[metric], marker="o", label=label, color=color)
            color = color or line.get_color()
        prompt = rows[rows["condition"] == "prompt"][metric].dropna()
        if len(prompt):
            ax.axhline(float(prompt.mean()), color=color or "grey", ls="--", lw=1, label=f"{model} prompt")
        unsteered = rows[rows["condition"] == "unsteered"][metric].dropna()
        if len(unsteered):
            ax.axhline(float(unsteered.mean()), color=color or "grey", ls=":", lw=1.2, label=f"{model} unsteered")
    ax.set(xlabel="α (steering strength)", ylabel=metric, title=title or f"{metric} vs α across models")
    _legend_outside(ax)
    return fig


def gain_figure(rows: pd.DataFrame, x: str = "alpha") -> Figure:
    """Target-emotion gain over unsteered (bootstrap 95% CI band) against ``x`` (``alpha``, each
    family's own units, or ``dose``, the relative dose the steered tokens received), one panel
    per target, one line per model; each model's prompt-baseline gain as a dashed line.
    ``rows``: :func:`emoexp.families.gains`."""
    targets = sorted(rows["target"].dropna().unique())
    cols = min(3, max(1, len(targets)))
    nrows = math.ceil(len(targets) / cols) if targets else 1
    fig = _figure(4.0 * cols + 1.8, 3.0 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).flatten()
    colors: dict[str, Any] = {}
    for ax, target in zip(axes, targets):
        t = rows[rows["target"] == target]
        for model, g in t[t["condition"] == "steered"].groupby("model", sort=True):
            g = g.sort_values("alpha")
            if x == "dose":
                g = g[g["alpha"] >= 0].assign(dose=lambda d: d["dose"].where(d["alpha"] > 0, 0.0))
            (line,) = ax.plot(g[x], g["gain"], marker="o", color=colors.get(model), label=str(model))
            colors[model] = line.get_color()
            ax.fill_between(g[x], g["gain_ci_low"], g["gain_ci_high"], color=line.get_color(), alpha=0.15)
        for model, g in t[t["condition"] == "prompt"].groupby("model", sort=True):
            ax.axhline(float(g["gain"].iloc[0]), color=colors.get(model, "grey"), ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=str(target), xlabel="α" if x == "alpha" else "relative dose ‖α·EV‖/‖h‖",
               ylabel="P(target) − unsteered")
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles + [axes[0].plot([], [], color="grey", ls="--")[0]], labels + ["prompt baseline"],
               loc="outside right upper", fontsize="x-small", frameon=False)
    return fig


def ev_figures(ev_path: str | Path) -> dict[str, Figure]:
    """``{"ev_norms.png", "ev_cosine.png", "ev_split_half.png" (if recorded)}`` for an EV file."""
    from .vectors import EmotionVectors

    evs = EmotionVectors.load(ev_path)
    name = evs.metadata.get("model_id") or Path(ev_path).stem
    site = evs.metadata.get("site")
    suffix = f" — {name}" + (f" ({site})" if site else "")
    figs = {"ev_norms.png": norms_figure(evs.norms(), "Emotion-vector norm per layer" + suffix),
            "ev_cosine.png": cosine_figure(evs.cosine(), evs.emotions, "Cosine between emotion vectors" + suffix)}
    split = evs.metadata.get("split_half_cosine") or {}
    if split:
        figs["ev_split_half.png"] = split_half_figure(split, "Split-half stability" + suffix)
    return figs


#: The α-sweep plots of a study: the target emotion's probability, then quality metrics.
SWEEP_METRICS = ("p_target", "intensity", "topic", "perplexity", "repetition")


def sweep_figures(aggregate: pd.DataFrame) -> dict[str, Figure]:
    """``{"alpha_sweep_<metric>.png": figure}`` for :data:`SWEEP_METRICS` present in the aggregate
    (``p_target`` when it has ``p_<emotion>`` columns)."""
    if aggregate is None or not len(aggregate):
        return {}
    present = [m for m in SWEEP_METRICS
               if (m == "p_target" and any(str(c).startswith("p_") for c in aggregate.columns)) or m in aggregate]
    return {f"alpha_sweep_{m}.png": alpha_sweep_figure(aggregate, m) for m in present}


def save_all_plots(ev_path: str | Path | None, aggregate: pd.DataFrame | None, out_dir: str | Path) -> list[Path]:
    """Write the EV figures (when ``ev_path`` is given) and one α-sweep per metric as PNG files.

    Args:
        ev_path: an emoexp EV safetensors file, or None.
        aggregate: one row per (condition, target, alpha) with metric means and CIs, or None.
        out_dir: the folder to write (created).

    Returns:
        The written paths, sorted.

    Example:
        >>> save_all_plots("outputs/evs.safetensors", agg, "outputs/plots")  # doctest: +SKIP
        [PosixPath('outputs/plots/alpha_sweep_intensity.png'), ...]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {**(ev_figures(ev_path) if ev_path else {}), **(sweep_figures(aggregate) if aggregate is not None else {})}
    paths = []
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
        paths.append(out / name)
    return sorted(paths)
