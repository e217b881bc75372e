"""Markdown tables of a finished `emoexp run` (its own scores, or a re-scoring under
``rescored/<scorer>/``): the run's results table (the target emotion's probability under
unsteered, the prompt baseline and each α; topic, repetition, perplexity per α), then the best
gain per target within topic >= 0.8x and repetition <= 1.5x unsteered, with its 95% CI. For
README.md and docs/families.md.

Run: .venv/bin/python scripts/job_tables.py outputs/run/<folder> --scorer minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from emoexp.eval.stats import best_per_target
from emoexp.eval.summary import results_table


def best_table(agg: pd.DataFrame) -> str:
    """Per target: the best α within the limits with its gain's 95% bootstrap CI, the topic and
    repetition ratios there, and the prompt baseline's gain."""
    steered = agg[agg["condition"] == "steered"]
    rows = []
    for b in best_per_target(agg):
        r = steered[(steered["target"] == b["target"]) & (steered["alpha"] == b["alpha"])].iloc[0]
        ok = b["within_limits"] and b["gain"] > 0
        rows.append({"target": b["target"], "best in limits": f"{b['gain']:+.2f} [{r['gain_ci_low']:.2f}, "
                     f"{r['gain_ci_high']:.2f}] (α = {b['alpha']:g})" if ok else "none",
                     "topic": f"{b['topic_ratio']:.2f}×", "repetition": f"{b['rep_ratio']:.2f}×",
                     "prompt": f"{b['prompt_gain']:+.2f}"})
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--scorer", default=None, help="a re-scoring under rescored/<scorer>/ (default: the run's own)")
    a = p.parse_args()
    folder = Path(a.folder)
    agg = pd.read_csv(folder / "rescored" / a.scorer / "aggregate.csv" if a.scorer else folder / "aggregate.csv")
    print(results_table(agg) + "\n\n" + best_table(agg))


if __name__ == "__main__":
    main()
