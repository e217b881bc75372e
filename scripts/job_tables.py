"""Markdown tables of a finished `emoexp run` (its own scores, or a re-scoring under
``rescored/<scorer>/``): the target emotion's probability per target under unsteered, the prompt
baseline and each α; the best gain per target within topic >= 0.8x and repetition <= 1.5x
unsteered; topic consistency relative to unsteered per α. For README.md and docs/families.md.

Run: .venv/bin/python scripts/job_tables.py outputs/run/<folder> --scorer minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from emoexp.recipes.sweep import best_per_target

ORDER = ("joy", "sadness", "disgust", "anger", "fear")


def tables(folder: Path, scorer: str | None) -> str:
    agg = pd.read_csv(folder / "rescored" / scorer / "aggregate.csv" if scorer else folder / "aggregate.csv")
    unst = agg[agg["condition"] == "unsteered"].iloc[0]
    steered = agg[agg["condition"] == "steered"]
    alphas = sorted(steered["alpha"].dropna().unique())
    rows, best_rows = [], []
    best = {b["target"]: b for b in best_per_target(agg)}
    for t in ORDER:
        col = f"p_{t}"
        pr = agg[(agg["condition"] == "prompt") & (agg["target"] == t)]
        rows.append({"target": t, "unsteered": unst[col], "prompt baseline": pr[col].iloc[0] if len(pr) else None,
                     **{f"α = {a:g}": steered[(steered["target"] == t) & (steered["alpha"] == a)][col].iloc[0]
                        for a in alphas}})
        b = best[t]
        best_rows.append({"target": t, "best in limits": f"{b['gain']:+.2f} (α = {b['alpha']:g})" if b["within_limits"]
                          and b["gain"] > 0 else "none", "topic": f"{b['topic_ratio']:.2f}×",
                          "repetition": f"{b['rep_ratio']:.2f}×", "prompt": f"{b['prompt_gain']:+.2f}"})
    topic = {f"α = {a:g}": steered[steered["alpha"] == a]["topic"].mean() / unst["topic"] for a in alphas}
    return "\n\n".join([pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"),
                        pd.DataFrame(best_rows).to_markdown(index=False),
                        "topic / unsteered (mean over targets): " + ", ".join(f"{k} {v:.2f}×" for k, v in topic.items())])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--scorer", default=None, help="a re-scoring under rescored/<scorer>/ (default: the run's own)")
    a = p.parse_args()
    print(tables(Path(a.folder), a.scorer))


if __name__ == "__main__":
    main()
