"""Target Emotion Confidence (TEC), from EPS probabilities.

For a text with target emotion e and EPS probabilities p over (emotions…, neutral):
``tec = p_e`` (neutral stays in the denominator, so a flat, unemotional text scores low) and
``tec_top = 1`` if e has the highest probability among the emotions (neutral excluded), else 0.
A text without a target (None or "") gets NaN for both. Means over texts: ``mean_tec`` and
``top_rate``.
"""

import math

import datasets
import evaluate


class TargetEmotionConfidence(evaluate.Metric):
    """Per-text target probability and target-is-top indicator."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="arXiv 2502.04075 (TEC)",
            inputs_description=(
                "predictions: EPS probability rows. references: target emotion per row (None or '' for none). "
                "labels: the label of each probability column (neutral last, optional)."
            ),
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions, references, labels=None):
        if labels is None:
            raise ValueError("tec needs labels=, the label of each probability column")
        labels = list(labels)
        emotions = [i for i, lab in enumerate(labels) if lab != "neutral"]
        tec, top = [], []
        for p, target in zip(predictions, references):
            if not target:
                tec.append(math.nan)
                top.append(math.nan)
                continue
            if target not in labels or target == "neutral":
                raise ValueError(f"target {target!r} is not one of the emotion labels {labels}")
            if len(p) != len(labels):
                raise ValueError(f"{len(p)} probabilities for {len(labels)} labels")
            k = labels.index(target)
            tec.append(float(p[k]))
            top.append(float(max(emotions, key=lambda i: p[i]) == k))
        done = [x for x in tec if not math.isnan(x)]
        return {
            "tec": tec,
            "tec_top": top,
            "mean_tec": sum(done) / len(done) if done else math.nan,
            "top_rate": sum(x for x in top if not math.isnan(x)) / len(done) if done else math.nan,
        }
