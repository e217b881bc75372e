"""Target Emotion Confidence (TEC) from EPS probabilities (emoexp.eval.emotion)."""

import evaluate
import numpy as np

from emoexp.eval.emotion import target_confidence
from emoexp.metrics import metric_info


class TargetEmotionConfidence(evaluate.Metric):
    """Per-text ``tec`` (the target's probability) and ``tec_top`` (1 if it is the top emotion)."""

    def _info(self):
        return metric_info(__doc__, "arXiv 2502.04075 (TEC)",
                           "predictions: EPS probability rows. references: target emotion per row ('' for none). "
                           "labels: the label of each probability column.",
                           predictions="float64 rows", references="string")

    def _compute(self, predictions, references, labels):
        out = target_confidence(np.asarray(predictions, dtype=float), labels, [r or None for r in references])
        return {k: v.tolist() for k, v in out.items()}
