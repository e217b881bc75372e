"""Emotion Probability Score (EPS): emotion probabilities per text (emoexp.eval.emotion)."""

import evaluate

from emoexp.eval.emotion import emotion_probabilities
from emoexp.metrics import metric_info
from emoexp.vocab import DEFAULT_EPS


class EmotionProbabilityScore(evaluate.Metric):
    """Per-text probabilities over the five emotions and neutral, and ``intensity = 1 - p_neutral``."""

    def _info(self):
        return metric_info(__doc__, "arXiv 2502.04075 (EPS)",
                           "predictions: texts. backend: an emoexp.eval.classifiers spec (default 'minilm-smollm2').")

    def _compute(self, predictions, backend=DEFAULT_EPS, progress=False):
        out = emotion_probabilities(predictions, backend, progress=progress)
        return {"probabilities": out["probs"].tolist(), "labels": out["labels"], "intensity": out["intensity"].tolist(),
                "truncated": out["truncated"], "config": out["config"]}
