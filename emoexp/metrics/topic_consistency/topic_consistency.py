"""Topic consistency between each response and its query (emoexp.eval.topic)."""

import datasets
import evaluate

from emoexp.eval.topic import topic_consistency


class TopicConsistency(evaluate.Metric):
    """Per-pair topic consistency: embedding cosine (``minilm``) or a judge's rating / 100."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="arXiv 2502.04075 (topic consistency)",
            inputs_description="predictions: responses. references: their queries. backend: 'minilm' | "
                               "'embed:<encoder>' | 'judge' | 'hf:<model>'. judge_config: emoexp.eval.judge.JudgeConfig.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, backend="minilm", judge_config=None, progress=False):
        out = topic_consistency(predictions, references, backend, judge_config=judge_config, progress=progress)
        return {**out, "topic": out["topic"].tolist()}
