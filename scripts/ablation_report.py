"""Summarise the SmolLM2 ablation (scripts/ablation.sh) into docs/ablation.md's results section.

Reads outputs/ablation/<axis>/sweep.csv (written by `emoexp sweep`) and writes:
per point, the mean target-probability gain over unsteered at each target's best alpha
(within topic >= 0.8x and repetition <= 1.5x unsteered), how many of the five emotions gain
>= +0.3, and how many beat the prompt baseline; then the best point per emotion.

Run: .venv/bin/python scripts/ablation_report.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    frames = []
    for csv in sorted((ROOT / "outputs" / "ablation").glob("*/sweep.csv")):
        df = pd.read_csv(csv)
        if df.empty:
            continue
        axes = [c for c in df.columns if c not in {"target", "unsteered", "prompt_gain", "alpha", "gain",
                                                   "within_limits", "topic_ratio", "rep_ratio", "beats_prompt",
                                                   "folder"}]
        df["point"] = df[axes].astype(str).apply(lambda r: " ".join(map(str, r)), axis=1) if axes else "base"
        df["sweep"] = csv.parent.name
        frames.append(df)
    if not frames:
        raise SystemExit("no sweep results under outputs/ablation")
    all_ = pd.concat(frames, ignore_index=True)
    lines = ["| sweep | point | mean gain | emotions ≥ +0.3 (in limits) | beats prompt | mean topic ratio | mean rep. ratio |",
             "|---|---|---|---|---|---|---|"]
    for (sweep, point), g in all_.groupby(["sweep", "point"], sort=False):
        ok = g[g["within_limits"].astype(bool)]
        lines.append(f"| {sweep} | {point} | {g['gain'].mean():+.3f} | {int((ok['gain'] >= 0.3).sum())}/5 | "
                     f"{int(g['beats_prompt'].astype(bool).sum())}/5 | {g['topic_ratio'].mean():.2f} | "
                     f"{g['rep_ratio'].mean():.2f} |")
    lines += ["", "Best point per emotion (largest gain within the limits):", "",
              "| emotion | sweep | point | α | unsteered | gain | prompt gain | topic ratio | rep. ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for tgt, g in all_.groupby("target"):
        ok = g[g["within_limits"].astype(bool)]
        r = (ok if len(ok) else g).sort_values("gain").iloc[-1]
        lines.append(f"| {tgt} | {r['sweep']} | {r['point']} | {r['alpha']:g} | {r['unsteered']:.3f} | "
                     f"{r['gain']:+.3f} | {r['prompt_gain']:+.3f} | {r['topic_ratio']:.2f} | {r['rep_ratio']:.2f} |")
    doc = ROOT / "docs" / "ablation.md"
    text = doc.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
