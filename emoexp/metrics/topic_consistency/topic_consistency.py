"""Topic consistency between each response and its query (emoexp.eval.topic)."""

import evaluate

from emoexp.eval.topic import topic_consistency
from emoexp.metrics import metric_info


class TopicConsistency(evaluate.Metric):
    """Per-pair topic consistency: embedding cosine (``minilm``) or a judge's rating / 100."""

    def _info(self):
        return metric_info(__doc__, "arXiv 2502.04075 (topic consistency)",
                           "predictions: responses. references: their queries. backend: 'minilm' | "
                           "'embed:<encoder>' | 'judge' | 'hf:<model>'. judge_config: emoexp.eval.judge.JudgeConfig.",
                           references="string")

    def _compute(self, predictions, references, backend="minilm", judge_config=None, progress=False):
        out = topic_consistency(predictions, references, backend, judge_config=judge_config, progress=progress)
        return {**out, "topic": out["topic"].tolist()}
