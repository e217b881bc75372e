"""Perplexity of each text under a reference causal LM (fluency).

``PPL = exp(mean over the text's tokens of -log p(token | BOS, earlier tokens))``; texts
longer than the model's context (or ``max_length``) are cut and flagged in ``truncated``.
The default model is SmolLM2-135M-Instruct (offline, ``smollm2``); the paper's choice is
the unsteered model being studied: pass its id or folder as ``model_id``.
"""

import math

import datasets
import evaluate

from emoexp.perplexity import get_reference_lm


class Perplexity(evaluate.Metric):
    """Per-text perplexity under ``model_id``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=(
                "predictions: list of texts. model_id: emoexp.models.load_model spec (default 'smollm2'). "
                "max_length: context cap in tokens. batch_size: texts per forward pass."
            ),
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id="smollm2", max_length=None, batch_size=8, progress=False):
        lm = get_reference_lm(model_id, max_length, batch_size)
        res = lm.perplexity(predictions, progress=progress)
        vals = [float(v) for v in res.values]
        finite = [v for v in vals if not math.isnan(v)]
        return {
            "perplexities": vals,
            "mean_perplexity": sum(finite) / len(finite) if finite else math.nan,
            "n_tokens": res.n_tokens,
            "truncated": res.truncated,
            "max_length": lm.max_length,
            "backend": "causal-lm",
            "model": lm.model_id,
        }
