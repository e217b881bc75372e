"""Perplexity of each text under a reference causal LM (emoexp.eval.perplexity)."""

import evaluate

from emoexp.eval.perplexity import get_reference_lm
from emoexp.metrics import metric_info


class Perplexity(evaluate.Metric):
    """Per-text perplexity under ``model_id`` (an emoexp.models.load_model spec)."""

    def _info(self):
        return metric_info(__doc__, "",
                           "predictions: texts. model_id: model spec (default 'smollm2'). max_length, batch_size.")

    def _compute(self, predictions, model_id="smollm2", max_length=None, batch_size=8, progress=False):
        lm = get_reference_lm(model_id, max_length, batch_size)
        res = lm.perplexity(predictions, progress=progress)
        return {"perplexities": res.values.tolist(), "n_tokens": res.n_tokens, "truncated": res.truncated,
                "max_length": lm.max_length, "model": lm.model_id}
