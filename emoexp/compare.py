"""``emoexp compare``: cross-family tables (Markdown and CSV) and plots, built from MLflow alone.

The terminal shows, for the studies of the chosen experiments (default: all that hold emoexp
studies): the target-emotion gain over unsteered with bootstrap 95% CIs at each family's best α
(within topic and repetition limits) next to the prompt baseline's gain; where two families
differ beyond the CIs; the gains at equal relative dose (``α`` means different pushes in
different models, a dose means the same one); and the target emotion's probability by α.
``--out`` also writes ``compare.csv`` (every logged metric, one row per model: ``metric@α``,
``metric[target]@prompt``, ``metric@unsteered``, like the paper's tables), the frames behind
the sections, and plots (gain vs α and vs dose per target, metric vs α per family).

Example:
    emoexp compare --experiment families --out outputs/compare
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse.typing import NonNegativeInt

from .vocab import Condition

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Args", "build_table", "compare_table", "main", "target_table", "to_markdown"]

_NOT_METRICS = {"alpha", "n", "start_time"}


@dataclass
class Args:
    """``emoexp compare``: tables and plots across model families, read from MLflow."""

    experiment: list[str] | None = field(default=None, metadata={"append": True})
    """An MLflow experiment to compare, repeatable (default: every experiment that holds emoexp studies)."""
    metrics: list[str] | None = None
    """Metrics for compare.csv and the plots (default: all logged); the terminal shows p_target, topic, repetition."""
    condition: Condition = "steered"
    """The condition whose alpha sweep fills the columns."""
    target: str | None = None
    """One steering target, e.g. base or joy (default: all, one row per model and target)."""
    out: str | None = None
    """Folder for compare.md, compare.csv and compare_<metric>.png."""
    uri: str | None = None
    """Tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."""
    scorer: str | None = None
    """Compare the scores of this emotion scorer (a name such as minilm-written, or name@hash; default: each run's own)."""
    digits: NonNegativeInt = 3
    """Decimals in the Markdown tables."""
    doses: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    """Relative doses at which the families' gains are compared (interpolated between the α measured)."""


def _metrics_of(long: pd.DataFrame) -> list[str]:
    names = set(long.columns)
    cols = [c for c in long.columns if c not in _NOT_METRICS and not re.search(r"_ci_(low|high)$", c)
            and not (c.endswith("_n") and c[:-2] in names)]
    fixed = {"experiment", "parent_run_id", "parent_name", "model", "run_label", "config_hash", "run_id", "condition", "target",
             "scorer"}
    return sorted(c for c in cols if c not in fixed)


def _label_models(long: pd.DataFrame) -> pd.DataFrame:
    """Row labels: the parent's name (``smollm2 · centre · limit 4``: family alias and the config
    fields that differ from the main job, as in the MLflow runs table), else the model id; then
    ``(hash8)`` where two parents still read alike, and ``[experiment]`` after that."""
    long = long.copy()
    if "run_label" in long:
        long["model"] = long["run_label"].fillna(long["model"])
    parents = long.groupby("model")["parent_run_id"].nunique()
    dup = long["model"].map(parents) > 1
    long.loc[dup, "model"] = long.loc[dup, "model"] + " (" + long.loc[dup, "config_hash"].str[:8] + ")"
    again = long.groupby("model")["parent_run_id"].nunique()
    dup = long["model"].map(again) > 1
    long.loc[dup, "model"] = long.loc[dup, "model"] + " [" + long.loc[dup, "experiment"] + "]"
    return long


def _alpha(a: float) -> str:
    return format(a, "g")


def build_table(long: pd.DataFrame, metrics: Sequence[str] | None = None, condition: str = "steered",
                target: str | None = None) -> pd.DataFrame:
    """The wide table from :func:`emoexp.tracking.load_children` rows (pure pandas).

    Args:
        long: one row per child run (``model, condition, target, alpha`` and metric columns).
        metrics: metric names (default: every logged metric, sorted).
        condition: whose α values make the columns.
        target: keep one target (e.g. ``base``); None keeps all and brackets them in the column names.

    Returns:
        DataFrame indexed by model; per metric the columns ``m@unsteered``, ``m@prompt`` (when
        logged) then ``m@α`` ascending.

    Raises:
        ValueError: unknown metric, or no run of that condition/target (the message lists what exists).

    Example:
        >>> build_table(long, ["intensity"], target="joy").columns.tolist()  # doctest: +SKIP
        ['intensity@unsteered', 'intensity@prompt', 'intensity@-1', 'intensity@0', 'intensity@2']
    """
    import pandas as pd

    if not len(long):
        raise ValueError("no finished child runs in these experiments")
    long = _label_models(long)
    known = _metrics_of(long)
    metrics = list(metrics) if metrics else known
    bad = [m for m in metrics if m not in known]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}; logged: {', '.join(known)}")
    sel = long[long["condition"] == condition]
    if target is not None:
        sel = sel[sel["target"] == target]
    if not len(sel):
        raise ValueError(f"no runs with condition={condition!r}, target={target!r}; conditions: "
                         f"{sorted(long['condition'].dropna().unique())}, targets: "
                         f"{sorted(long['target'].dropna().unique())}")
    targets = (sorted(sel["target"].dropna().unique()) or [None]) if target is None else [target]
    multi = len(targets) > 1
    cells: dict[str, dict[str, float]] = {}
    order: list[str] = []

    def put(col: str, rows: pd.DataFrame, metric: str) -> None:
        if not len(rows):
            return
        order.append(col)
        cells[col] = {m: float(v) for m, v in zip(rows["model"], rows[metric], strict=True) if v is not None}

    for m in metrics:
        if condition != "unsteered":
            put(f"{m}@unsteered", long[long["condition"] == "unsteered"], m)
        for t in targets:
            br = f"[{t}]" if multi else ""
            if condition == "steered":
                put(f"{m}{br}@prompt", long[(long["condition"] == "prompt") & (long["target"] == t)], m)
            part = sel[sel["target"] == t] if t is not None else sel
            alphas = sorted(part["alpha"].dropna().unique())
            if not alphas:
                put(f"{m}{br}@{condition}", part, m)
            for a in alphas:
                put(f"{m}{br}@{_alpha(a)}", part[part["alpha"] == a], m)
    models = sorted(long["model"].unique())
    table = pd.DataFrame({c: [cells[c].get(mod, math.nan) for mod in models] for c in order}, index=models)
    table.index.name = "model"
    return table


def compare_table(experiments: str | Sequence[str], metrics: Sequence[str] | None = None,
                  condition: str = "steered", target: str | None = None, uri: str | None = None) -> pd.DataFrame:
    """The cross-family table read from MLflow (see :func:`build_table` for the layout).

    Example:
        >>> compare_table(["paper"], metrics=["intensity"], target="base")  # doctest: +SKIP
    """
    from .tracking import load_children

    names = [experiments] if isinstance(experiments, str) else list(experiments)
    return build_table(load_children(names, uri=uri), metrics, condition, target)


def _head(suffix: str) -> str:
    """``@2`` -> ``α=2``; ``[joy]@prompt`` -> ``joy prompt``; ``@unsteered`` -> ``unsteered``."""
    target, _, where = suffix.partition("@")
    where = where if where in ("unsteered", "prompt", "steered") else f"α={where}"
    return f"{target.strip('[]')} {where}" if target else where


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """One Markdown table per metric (rows models, columns the baselines and each α); NaN as —."""
    groups: dict[str, list[str]] = {}
    for col in table.columns:
        groups.setdefault(col.split("@")[0].split("[")[0], []).append(col)
    out = []
    for metric, cols in groups.items():
        heads = [_head(c[len(metric):]) for c in cols]
        lines = [f"### {metric}", "", "| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(cols)]
        for model, row in table[cols].iterrows():
            vals = ["—" if math.isnan(v) else f"{v:.{digits}f}" for v in row.tolist()]
            lines.append(f"| {model} | " + " | ".join(vals) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def target_table(long: pd.DataFrame, metric: str = "p_target", condition: str = "steered") -> pd.DataFrame:
    """One row per (model, target): ``metric`` unsteered, under the prompt baseline and at each α.

    ``p_target`` is the target emotion's own probability (``p_<target>`` of each row's target).
    """
    import pandas as pd

    long = _label_models(long)
    rows = []
    steered = long[long["condition"] == condition]
    for (model, target), part in steered.groupby(["model", "target"], sort=True):
        col = f"p_{target}" if metric == "p_target" else metric
        if col not in long:
            continue
        mine = long[long["model"] == model]
        unst = mine[mine["condition"] == "unsteered"][col]
        prompt = mine[(mine["condition"] == "prompt") & (mine["target"] == target)][col]
        row: dict[str, Any] = {"model": model, "target": target,
                               "unsteered": float(unst.iloc[0]) if len(unst) else math.nan,
                               "prompt": float(prompt.iloc[0]) if len(prompt) else math.nan}
        for a, r in part.sort_values("alpha").groupby("alpha", sort=True):
            row[f"α={_alpha(a)}"] = float(r[col].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(v: float, lo: float, hi: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f} [{lo:+.2f}, {hi:+.2f}]"


def gain_sections(long: pd.DataFrame, doses: Sequence[float], digits: int = 3) -> tuple[list[str], dict[str, Any]]:
    """Markdown sections on steering gains (best per family and target, differences beyond the
    CIs, gains at equal dose) and the frames behind them."""
    from . import families

    rows = families.gains(_label_models(long))
    b = families.best(rows)
    if not len(b):
        return [], {}
    shown = b.assign(**{
        "gain [95% CI]": [_ci(r.gain, r.gain_ci_low, r.gain_ci_high, digits) for r in b.itertuples()],
        "prompt gain [95% CI]": [_ci(r.prompt_gain, r.prompt_ci_low, r.prompt_ci_high, digits) for r in b.itertuples()],
    })[["target", "model", "alpha", "dose", "gain [95% CI]", "prompt gain [95% CI]", "topic_ratio",
        "repetition_ratio", "within_limits"]].sort_values(["target", "model"])
    parts = ["### Target-emotion gain over unsteered: best α per family (topic ≥ 0.8×, repetition ≤ 1.5×)", "",
             shown.to_markdown(index=False, floatfmt=".3f")]
    diff = families.differences(b)
    if len(diff):
        beyond = diff[diff["beyond CIs"]]
        parts += ["", "### Where families differ beyond the 95% CIs", "",
                  diff.to_markdown(index=False, floatfmt="+.3f"), "",
                  (f"{len(beyond)} of {len(diff)} target comparisons differ beyond the CIs: "
                   + ", ".join(f"{r.target} ({r.a} {r.difference:+.2f} vs {r.b})" for r in beyond.itertuples())
                   if len(beyond) else "No difference between families exceeds the 95% CIs.")]
    at = families.at_dose(rows, doses)
    if len(at):
        at["cell"] = [_ci(r.gain, r.gain_ci_low, r.gain_ci_high, digits) for r in at.itertuples()]
        wide = at.pivot_table(index=["target", "dose"], columns="model", values="cell", aggfunc="first").reset_index()
        parts += ["", "### Gain at equal relative dose (‖α·EV_l‖ / ‖h_l‖; interpolated between the α measured)", "",
                  wide.to_markdown(index=False, missingval="—")]
    return parts, {"gains": rows, "best": b, "differences": diff, "at_dose": at}


def _experiments(uri: str | None) -> list[str]:
    from mlflow.tracking import MlflowClient

    from .tracking import check_store, search_all

    client = MlflowClient(check_store(uri, create=False))
    names = []
    for exp in client.search_experiments():
        if search_all(client, [exp.experiment_id], "tags.`emoexp.kind` = 'parent'"):
            names.append(exp.name)
    return names


def main(args: Args) -> int:
    """Print readable tables; with ``out`` also write compare.md, compare.csv and plots."""
    from .tracking import TrackingError, load_children

    try:
        experiments = args.experiment or _experiments(args.uri)
        if not experiments:
            raise TrackingError("no experiment holds emoexp studies yet: run `emoexp run` first")
        long = load_children(experiments, uri=args.uri, scorer=args.scorer)
        table = build_table(long, args.metrics, args.condition, args.target)
    except (TrackingError, ValueError) as e:
        print(f"emoexp compare: error: {e}", file=sys.stderr)
        return 2
    sel = long if args.target is None else long[(long["target"] == args.target) | (long["condition"] == "unsteered")]
    parts = [f"emoexp compare: {', '.join(experiments)} (condition={args.condition})"]
    sections, frames = gain_sections(sel, args.doses, args.digits) if "gain" in long else ([], {})
    parts += ["", *sections] if sections else []
    t = target_table(sel, "p_target", args.condition)
    if len(t):
        parts += ["", "### P(target emotion) by α", "", t.to_markdown(index=False, floatfmt=f".{args.digits}f",
                                                                    missingval="—")]
    text = "\n".join(parts) + "\n"
    print(text)
    if args.out:
        from .plots import compare_figure, gain_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text + "\n## All metrics\n\n" + to_markdown(table, args.digits))
        table.to_csv(out / "compare.csv")
        for name, frame in frames.items():
            frame.to_csv(out / f"compare_{name}.csv", index=False)
        labelled = _label_models(sel)
        metrics = sorted({c.split("@")[0].split("[")[0] for c in table.columns})
        for m in metrics:
            compare_figure(labelled, m).savefig(out / f"compare_{m}.png", dpi=110)
        if frames:
            for x in ("alpha", "dose"):
                gain_figure(frames["gains"], x).savefig(out / f"compare_gain_vs_{x}.png", dpi=110)
        print(f"[emoexp] wrote {out}/compare.md, compare*.csv and plots", file=sys.stderr)
    return 0
