"""Repetition / degeneration: repeated 4-grams and distinct-n (emoexp.eval.repetition)."""

import datasets
import evaluate

from emoexp.eval.repetition import repetition


class Repetition(evaluate.Metric):
    """Per-text ``repetition`` (share of repeated n-grams), ``distinct_1``, ``distinct_2``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Welleck et al. 2020, Neural Text Generation with Unlikelihood Training",
            inputs_description="predictions: texts. n: n-gram size of `repetition` (4).",
            features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions, n=4):
        return {k: v.tolist() for k, v in repetition(predictions, n).items()}
