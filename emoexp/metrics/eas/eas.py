"""Emotion Absolute Score (EAS): an LLM judge rates each of the five emotions 0–100 (emoexp.eval.judge)."""

import evaluate

from emoexp.eval.judge import get_judge, rate_emotions
from emoexp.metrics import metric_info


class EmotionAbsoluteScore(evaluate.Metric):
    """Per-text 0–100 judge rating of anger, disgust, fear, joy and sadness (no offline stand-in)."""

    def _info(self):
        return metric_info(__doc__, "arXiv 2502.04075 (EAS)",
                           "predictions: texts. judge: 'judge' (HTTP endpoint) | 'hf:<model>'. "
                           "judge_config: emoexp.eval.judge.JudgeConfig (default: EMOEXP_JUDGE_* variables).")

    def _compute(self, predictions, judge="judge", judge_config=None, progress=False):
        if judge != "judge" and not judge.startswith("hf:"):
            raise ValueError(f"EAS needs an LLM judge ('judge' or 'hf:<model>'), not {judge!r}")
        j = get_judge(judge, judge_config)
        ratings = rate_emotions(j, predictions, progress=progress)
        return {"scores": [r.scores for r in ratings], "errors": [r.error for r in ratings],
                "clamped": [r.clamped for r in ratings], "truncated": [r.truncated for r in ratings], **j.describe()}
