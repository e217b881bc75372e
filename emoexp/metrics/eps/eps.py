"""Emotion Probability Score (EPS): zero-shot emotion probabilities per text.

Backends: ``minilm`` (offline; cosine to "This text expresses {emotion}." with a neutral
label), ``embed:<encoder>``, or ``nli:<model>`` (the paper's: ``nli:facebook/bart-large-mnli``;
entailment logits softmaxed over the labels). Each row of ``probabilities`` follows
``labels`` (the emotions, then ``neutral``) and sums to 1. ``intensity = 1 - p_neutral``.
"""

import datasets
import evaluate

from emoexp.vectors import EMOTIONS
from emoexp.zeroshot import DEFAULT_TEMPLATE, NEUTRAL, get_classifier


class EmotionProbabilityScore(evaluate.Metric):
    """Per-text emotion probabilities and intensity."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="arXiv 2502.04075 (EPS)",
            inputs_description=(
                "predictions: list of texts. backend: 'minilm' | 'embed:<encoder>' | 'nli:<model>'. "
                "labels: emotion labels. template: hypothesis template with one {}."
            ),
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, backend="minilm", labels=EMOTIONS, template=DEFAULT_TEMPLATE, progress=False):
        clf = get_classifier(backend, tuple(labels), template)
        res = clf.predict(predictions, progress=progress)
        labels_out = list(res.labels)
        k = labels_out.index(NEUTRAL) if NEUTRAL in labels_out else None
        intensity = [float(1.0 - p[k]) if k is not None else float("nan") for p in res.probs]
        return {
            "probabilities": res.probs.tolist(),
            "labels": labels_out,
            "intensity": intensity,
            "truncated": res.truncated,
            "backend": clf.backend,
            "model": clf.model_id,
            "config": clf.config(),
        }
