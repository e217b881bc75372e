"""Repetition / degeneration: distinct-n and the share of repeated n-grams.

Text is lower-cased and split into words and single punctuation marks (``\\w+|[^\\w\\s]``).
For the n-grams g_1 … g_M of one text: ``distinct_n = |{g_i}| / M`` (NaN when M = 0) and
``repetition = 1 - distinct_4``, the share of 4-grams that repeat an earlier 4-gram of the same
text (0 when the text has fewer than 4 tokens). Looping output ("so so so so …") scores near 1.

Example:
    >>> repetition(["a b c a b c a b c", "one two three"])["repetition"].round(2).tolist()
    [0.5, 0.0]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["distinct", "repetition", "tokens"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _TOKEN.findall(text.lower())


def distinct(toks: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams (NaN with no n-gram)."""
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition(texts: Sequence[str], n: int = 4) -> dict[str, np.ndarray]:
    """Per text: ``repetition`` (share of repeated n-grams), ``distinct_1``, ``distinct_2``."""
    toks = [tokens(t) for t in texts]
    rep = [0.0 if math.isnan(d := distinct(t, n)) else 1.0 - d for t in toks]
    return {"repetition": np.array(rep, dtype=float), "distinct_1": np.array([distinct(t, 1) for t in toks]),
            "distinct_2": np.array([distinct(t, 2) for t in toks])}
