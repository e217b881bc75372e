"""Topic consistency between each query and its response.

Backends: ``minilm`` (offline) or ``embed:<encoder>``: ``topic = cos(e(query), e(response))``
with mean-pooled, unit-norm sentence embeddings (range −1…1; on-topic answers score
≈0.4–0.8, unrelated text ≈0–0.2). ``judge`` (an OpenAI-compatible endpoint, configured by
``EMOEXP_JUDGE_*`` or ``judge_config``) or ``hf:<model>`` (a local chat model): the judge's
0–100 rating divided by 100. The two scales differ: compare numbers from one backend only.
"""

import datasets
import evaluate

from emoexp.encoders import MINILM, get_encoder
from emoexp.judge import get_judge, rate_topic


class TopicConsistency(evaluate.Metric):
    """Per-pair topic consistency."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="arXiv 2502.04075 (topic consistency)",
            inputs_description=(
                "predictions: responses. references: the queries they answer. backend: 'minilm' | "
                "'embed:<encoder>' | 'judge' | 'hf:<model>'. judge_config: emoexp.judge.JudgeConfig."
            ),
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions, references, backend="minilm", judge_config=None, progress=False):
        if backend == MINILM or backend.startswith("embed:"):
            enc = get_encoder(backend.removeprefix("embed:"))
            r = enc.encode(predictions, progress=progress)
            q = enc.encode(references)
            topic = (r.embeddings * q.embeddings).sum(-1).tolist()
            truncated = [a or b for a, b in zip(r.truncated, q.truncated)]
            return {"topic": topic, "truncated": truncated, "errors": [None] * len(topic),
                    "backend": "embedding-cosine", "model": enc.model_id}
        judge = get_judge(backend, judge_config)
        ratings = rate_topic(judge, references, predictions, progress=progress)
        return {
            "topic": [r.scores["topic"] / 100.0 if r.scores else float("nan") for r in ratings],
            "truncated": [r.truncated for r in ratings],
            "errors": [r.error for r in ratings],
            "clamped": [r.clamped for r in ratings],
            "backend": judge.backend,
            "model": judge.model_id,
        }
