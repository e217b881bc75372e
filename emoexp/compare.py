"""``emoexp compare``: a cross-family table (Markdown and CSV) and plots, built from MLflow alone.

Rows are model families (the parent run's ``model_id`` tag); columns are ``metric@α`` for the
chosen condition, plus the ``metric@unsteered`` and ``metric@prompt`` baselines, like the paper's
tables. With several targets the target goes in brackets: ``intensity[joy]@2``. Values are the
child runs' logged means (search_runs over the experiments' FINISHED children).

Example:
    emoexp compare --experiment paper --metrics intensity topic --target base --out outputs/compare
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_arguments", "build_table", "compare_table", "main", "to_markdown"]

_NOT_METRICS = {"alpha", "n", "start_time"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``emoexp compare`` flags."""
    parser.add_argument("--experiment", action="append", required=True, metavar="NAME",
                        help="MLflow experiment (one per study); repeat to compare several")
    parser.add_argument("--metrics", nargs="+", default=None, help="metrics to show (default: all logged)")
    parser.add_argument("--condition", default="steered", choices=("steered", "prompt", "unsteered"),
                        help="the condition whose alpha sweep fills the columns (default: steered)")
    parser.add_argument("--target", default=None, help="one steering target, e.g. base or joy (default: all)")
    parser.add_argument("--out", default=None, help="folder for compare.md, compare.csv and compare_<metric>.png")
    parser.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the Markdown table")


def _metrics_of(long: pd.DataFrame) -> list[str]:
    names = set(long.columns)
    cols = [c for c in long.columns if c not in _NOT_METRICS and not re.search(r"_ci_(low|high)$", c)
            and not (c.endswith("_n") and c[:-2] in names)]
    fixed = {"experiment", "parent_run_id", "parent_name", "model", "config_hash", "run_id", "condition", "target"}
    return sorted(c for c in cols if c not in fixed)


def _label_models(long: pd.DataFrame) -> pd.DataFrame:
    """Row labels: the model id; ``model (hash8)`` when one model has several parents (a sweep)."""
    long = long.copy()
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


def main(args: argparse.Namespace) -> int:
    """Print the table; with ``--out`` also write compare.md, compare.csv and one plot per metric."""
    from .tracking import TrackingError, load_children

    try:
        long = load_children(args.experiment, uri=args.uri)
        table = build_table(long, args.metrics, args.condition, args.target)
    except (TrackingError, ValueError) as e:
        print(f"emoexp compare: error: {e}", file=sys.stderr)
        return 2
    md = to_markdown(table, args.digits)
    print(md)
    if args.out:
        from .plots import compare_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        what = f"condition={args.condition}, target={args.target or 'all'}"
        (out / "compare.md").write_text(f"# emoexp compare: {', '.join(args.experiment)} ({what})\n\n{md}")
        table.to_csv(out / "compare.csv")
        sel = _label_models(long)
        if args.target is not None:
            sel = sel[(sel["target"] == args.target) | (sel["condition"] == "unsteered")]
        shown = sorted({c.split("@")[0].split("[")[0] for c in table.columns})
        for m in shown:
            compare_figure(sel, m).savefig(out / f"compare_{m}.png", dpi=110)
        print(f"[emoexp] wrote {out}/compare.md, compare.csv and {len(shown)} plots", file=sys.stderr)
    return 0
