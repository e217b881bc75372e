"""A scored run in brief: the tables ``emoexp run`` prints and the metrics its MLflow parent gets.

Both read a run's aggregate (:func:`emoexp.eval.stats.aggregate` by condition, target and α);
``emoexp run`` and ``emoexp evaluate`` (re-scoring) use the same two, so a re-scored run reads
like a fresh one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["results_table", "summary_metrics"]


def summary_metrics(agg: Any, n_generations: int) -> dict[str, float]:
    """Parent-run metrics: per target the best target-probability gain within the topic and
    repetition limits (and its alpha), the prompt baseline's gain; counts."""
    from .stats import best_per_target

    out: dict[str, float] = {"n_generations": float(n_generations)}
    for b in best_per_target(agg):
        t = b["target"]
        out.update({f"gain.{t}": b["gain"], f"best_alpha.{t}": b["alpha"], f"prompt_gain.{t}": b["prompt_gain"],
                    f"topic_ratio.{t}": b["topic_ratio"], f"repetition_ratio.{t}": b["rep_ratio"]})
    return out


def results_table(agg: Any) -> str:
    """Markdown tables for the terminal: the target emotion's probability per target under
    unsteered, the prompt baseline and each alpha; then topic consistency, repetition and
    perplexity per alpha (mean over targets)."""
    import pandas as pd

    steered = agg[agg["condition"] == "steered"]
    alphas = sorted(steered["alpha"].dropna().unique())
    unst = agg[agg["condition"] == "unsteered"]

    def cell(frame: Any, col: str) -> float:
        return float(frame[col].iloc[0]) if len(frame) and col in frame and pd.notna(frame[col].iloc[0]) else float("nan")

    rows = []
    for tgt in sorted(steered["target"].dropna().unique()):
        col = f"p_{tgt}"
        pr = agg[(agg["condition"] == "prompt") & (agg["target"] == tgt)]
        rows.append({"target": tgt, "unsteered": cell(unst, col), "prompt": cell(pr, col),
                     **{f"α={a:g}": cell(steered[(steered["target"] == tgt) & (steered["alpha"] == a)], col)
                        for a in alphas}})
    parts = ["P(target emotion) — offline EPS", "",
             pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f", missingval="—")]
    metrics = [m for m in ("topic", "repetition", "perplexity", "intensity") if m in agg.columns]
    if metrics:
        groups = [("unsteered", unst), ("prompt", agg[agg["condition"] == "prompt"])]
        groups += [(f"steered α={a:g}", steered[steered["alpha"] == a]) for a in alphas]
        table = pd.DataFrame([{"condition": name, **{m: frame[m].mean() for m in metrics}}
                              for name, frame in groups if len(frame)])
        parts += ["", table.to_markdown(index=False, floatfmt=".3f")]
    return "\n".join(parts)
