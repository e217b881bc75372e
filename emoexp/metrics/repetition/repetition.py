"""Repetition / degeneration: repeated 4-grams and distinct-n (emoexp.eval.repetition)."""

import evaluate

from emoexp.eval.repetition import repetition
from emoexp.metrics import metric_info


class Repetition(evaluate.Metric):
    """Per-text ``repetition`` (share of repeated n-grams), ``distinct_1``, ``distinct_2``."""

    def _info(self):
        return metric_info(__doc__, "Welleck et al. 2020, Neural Text Generation with Unlikelihood Training",
                           "predictions: texts. n: n-gram size of `repetition` (4).")

    def _compute(self, predictions, n=4):
        return {k: v.tolist() for k, v in repetition(predictions, n).items()}
