"""Summarise an ablation (scripts/ablation.sh, scripts/ablation_gemma3.sh) into a doc's results section.

Reads <sweeps>/<axis>/sweep.csv (written by `emoexp sweep`) and writes, between the doc's
<!-- MARKER:begin --> and <!-- MARKER:end --> lines:
per point, the mean target-probability gain over unsteered at each target's best alpha
(within topic >= 0.8x and repetition <= 1.5x unsteered), how many of the five emotions gain
>= +0.3, and how many beat the prompt baseline; then the best point per emotion.

With --curves anger,sadness --plot FILE it also draws, per emotion, the gain and the topic
ratio against alpha of the points that raise that emotion most within the limits (from each
point's run folder, aggregate.csv), with the limits marked: the best curves, and where they bend.

Run: .venv/bin/python scripts/ablation_report.py   (SmolLM2: outputs/ablation into docs/ablation.md)
     .venv/bin/python scripts/ablation_report.py --sweeps outputs/ablation-gemma3 --doc docs/families.md \
         --marker ablation-gemma3
     --only a,b  reads only those sweep folders (docs/ablation.md has one section per group of axes)
     --scorer minilm-smollm2  each point as re-scored by that scorer (`emoexp evaluate <folder> --eps NAME`
         wrote <folder>/rescored/NAME/aggregate.csv): the best alpha per target is chosen again under it
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=ROOT / "outputs" / "ablation", help="folder of sweep folders")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "ablation.md", help="the doc to rewrite")
    parser.add_argument("--marker", default="ablation", help="the doc's <!-- MARKER:begin/end --> section")
    parser.add_argument("--curves", default="", help="comma-separated emotions whose best curves to plot")
    parser.add_argument("--plot", type=Path, default=None, help="where the curves go (png)")
    parser.add_argument("--top", type=int, default=4, help="curves per emotion")
    parser.add_argument("--per_emotion", action="store_true",
                        help="also a point x emotion table of the best gain within the limits (0.00: none)")
    parser.add_argument("--only", default="", help="comma-separated sweep folders to read (default: all of them)")
    parser.add_argument("--scorer", default="", help="read each point's re-scoring by this scorer (rescored/NAME)")
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    frames = []
    for csv in sorted(args.sweeps.glob("*/sweep.csv")):
        if only and csv.parent.name not in only:
            continue
        df = pd.read_csv(csv)
        if df.empty:
            continue
        if args.scorer:
            df = _rescored(df, args.scorer)
        axes = [c for c in df.columns if c not in {"target", "unsteered", "prompt_gain", "alpha", "gain",
                                                   "within_limits", "topic_ratio", "rep_ratio", "beats_prompt",
                                                   "folder"}]
        axes = [a for a in axes if a not in ("condition", "generate.conditions")]  # the condition column says it
        labels = df[axes].astype(object).fillna("all layers").astype(str)  # null layers: every layer
        df["point"] = labels.apply(lambda r: " ".join(map(str, r)), axis=1) if axes else "base"
        if "condition" in df:
            df["point"] = df["point"] + df["condition"].map({"steered": "", "prompt_steered": " (prompt + EV)"})
        df["sweep"] = csv.parent.name
        frames.append(df)
    if not frames:
        raise SystemExit(f"no sweep results under {args.sweeps}" + (f" named {sorted(only)}" if only else ""))
    all_ = pd.concat(frames, ignore_index=True)
    all_["in_limits_03"] = all_["within_limits"].astype(bool) & (all_["gain"] >= 0.3)
    points = all_.groupby(["sweep", "point"], sort=False).agg(
        mean_gain=("gain", "mean"), emotions_03=("in_limits_03", "sum"), beats_prompt=("beats_prompt", "sum"),
        topic_ratio=("topic_ratio", "mean"), rep_ratio=("rep_ratio", "mean"), n=("target", "count")).reset_index()
    points["emotions ≥ +0.3 (in limits)"] = points["emotions_03"].astype(int).astype(str) + "/" + points["n"].astype(str)
    points["beats prompt"] = points["beats_prompt"].astype(int).astype(str) + "/" + points["n"].astype(str)
    table = points[["sweep", "point", "mean_gain", "emotions ≥ +0.3 (in limits)", "beats prompt", "topic_ratio",
                    "rep_ratio"]].rename(columns={"mean_gain": "mean gain", "topic_ratio": "mean topic ratio",
                                                  "rep_ratio": "mean rep. ratio"})
    ok = all_[all_["within_limits"].astype(bool)]
    best = (ok if len(ok) else all_).sort_values("gain").groupby("target").tail(1).sort_values("target")
    best = best[["target", "sweep", "point", "alpha", "unsteered", "gain", "prompt_gain", "topic_ratio",
                 "rep_ratio"]].rename(columns={"target": "emotion", "prompt_gain": "prompt gain",
                                               "topic_ratio": "topic ratio", "rep_ratio": "rep. ratio"})
    lines = [table.to_markdown(index=False, floatfmt=("", "", "+.3f", "", "", ".2f", ".2f")), "",
             "Best point per emotion (largest gain within the limits):", "",
             best.to_markdown(index=False, floatfmt=("", "", "", "g", ".3f", "+.3f", "+.3f", ".2f", ".2f"))]
    if args.per_emotion:
        cell = all_["gain"].where(all_["within_limits"].astype(bool), 0.0).clip(lower=0.0)
        grid = all_.assign(cell=cell).pivot_table(index=["sweep", "point"], columns="target", values="cell",
                                                  sort=False).reset_index()
        emotions = [e for e in ("anger", "disgust", "fear", "joy", "sadness") if e in grid]
        grid["mean"] = grid[emotions].mean(axis=1)
        lines += ["", "Per emotion (best gain within the limits; 0.00: no α beat unsteered within them):", "",
                  grid[["sweep", "point", *emotions, "mean"]].to_markdown(
                      index=False, floatfmt=("", "", *["+.2f"] * (len(emotions) + 1)))]
    doc = args.doc
    text = doc.read_text()
    begin, end = f"<!-- {args.marker}:begin -->", f"<!-- {args.marker}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} section")
    a, b = text.index(begin) + len(begin), text.index(end)
    doc.write_text(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])
    print("\n".join(lines))
    if args.curves and args.plot:
        plot_curves(all_, [e for e in args.curves.split(",") if e], args.plot, args.top, args.scorer)
        print(f"wrote {args.plot}")


def _aggregate(folder: str, scorer: str = "") -> pd.DataFrame:
    """A point's aggregate.csv: the run's own, or its re-scoring by ``scorer``."""
    path = ROOT / folder / ("rescored/" + scorer if scorer else "") / "aggregate.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `emoexp evaluate {folder} --eps {scorer}` first" if scorer
                         else f"{path} is missing")
    return pd.read_csv(path)


def _rescored(df: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """A sweep's rows (one per point, condition and target) recomputed from each point's re-scoring."""
    from emoexp.eval.stats import best_per_target

    fixed = [c for c in df.columns if c not in {"target", "unsteered", "prompt_gain", "alpha", "gain", "within_limits",
                                                 "topic_ratio", "rep_ratio", "beats_prompt", "condition"}]
    if "condition" not in df:
        df = df.assign(condition="steered")
    rows = []
    for (_, condition), g in df.groupby(["folder", "condition"], sort=False):
        point = g.iloc[0][fixed].to_dict()
        rows += [{**point, **b} for b in best_per_target(_aggregate(point["folder"], scorer), condition=condition)]
    return pd.DataFrame(rows)


def _curve(folder: str, target: str, condition: str, scorer: str = "") -> pd.DataFrame:
    """One point's gain and topic ratio over unsteered, per alpha, for ``target`` under ``condition``."""
    agg = _aggregate(folder, scorer)
    base = agg[agg["condition"] == "unsteered"].iloc[0]
    rows = agg[(agg["condition"] == condition) & (agg["target"] == target)].sort_values("alpha")
    return pd.DataFrame({"alpha": rows["alpha"], "gain": rows[f"p_{target}"] - base[f"p_{target}"],
                         "topic_ratio": rows["topic"] / base["topic"]})


def plot_curves(all_: pd.DataFrame, emotions: list[str], out: Path, top: int, scorer: str = "") -> None:
    """Per emotion: gain and topic ratio against alpha for its ``top`` best points within the limits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2 * len(emotions)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(emotions), 2, squeeze=False)
    for (ax_gain, ax_topic), emotion in zip(axes, emotions):
        rows = all_[(all_["target"] == emotion) & all_["within_limits"].astype(bool)]
        for _, r in rows.sort_values("gain", ascending=False).head(top).iterrows():
            c = _curve(r["folder"], emotion, r["condition"], scorer)  # steered, or prompt_steered (sweep.csv says which)
            label = f"{r['sweep']}: {r['point']}"[:60]
            ax_gain.plot(c["alpha"], c["gain"], marker="o", label=label)
            ax_topic.plot(c["alpha"], c["topic_ratio"], marker="o", label=label)
        ax_gain.axhline(0.3, color="grey", ls="--", lw=0.8)
        ax_topic.axhline(0.8, color="grey", ls="--", lw=0.8)
        ax_gain.set(title=f"{emotion}: gain in P({emotion}) over unsteered", xlabel="α (the point's own unit)", ylabel="gain")
        ax_topic.set(title=f"{emotion}: topic consistency / unsteered", xlabel="α (the point's own unit)", ylabel="ratio")
        ax_gain.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
