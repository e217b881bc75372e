"""Repetition / degeneration: distinct-n and the share of repeated n-grams.

Text is lower-cased and split into words and single punctuation marks (``\\w+|[^\\w\\s]``).
For n-grams g_1 … g_M of one text: ``distinct_n = |{g_i}| / M`` (NaN when M = 0) and
``repetition = 1 - distinct_4``: the share of 4-grams that repeat an earlier 4-gram of the
same text (0 when the text has fewer than 4 tokens). Looping output ("so so so so …")
scores near 1.
"""

import math
import re

import datasets
import evaluate

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _TOKEN.findall(text.lower())


def distinct(toks: list[str], n: int) -> float:
    """Unique n-grams over all n-grams (NaN with no n-gram)."""
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeated_share(toks: list[str], n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same text (0 with none)."""
    d = distinct(toks, n)
    return 0.0 if math.isnan(d) else 1.0 - d


class Repetition(evaluate.Metric):
    """Per-text distinct-1, distinct-2 and repeated 4-gram share."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Welleck et al. 2020, Neural Text Generation with Unlikelihood Training (rep-n)",
            inputs_description="predictions: list of generated texts. n: n-gram size of `repetition` (4).",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n=4):
        toks = [tokens(t) for t in predictions]
        rep = [repeated_share(t, n) for t in toks]
        return {
            "repetition": rep,
            "distinct_1": [distinct(t, 1) for t in toks],
            "distinct_2": [distinct(t, 2) for t in toks],
            "mean_repetition": sum(rep) / len(rep) if rep else math.nan,
            "n": n,
            "backend": "ngram",
            "model": None,
        }
