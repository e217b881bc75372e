"""An LLM judge (EAS and judged topic): an OpenAI-compatible endpoint, or a local HF chat model.

:mod:`.client` reaches the judge (configuration, transport, errors); :mod:`.rating` asks it (the
paper's prompts, strict replies, retries, concurrent requests).

Example:
    >>> judge = get_judge("judge")                     # reads EMOEXP_JUDGE_*  # doctest: +SKIP
    >>> rate_emotions(judge, ["I am thrilled!"])[0].scores
    {'anger': 0.0, 'disgust': 0.0, 'fear': 0.0, 'joy': 95.0, 'sadness': 0.0}
"""

from .client import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    HTTPJudge,
    JudgeConfig,
    JudgeError,
    JudgeItemRejected,
    JudgeReplyError,
    JudgeUnavailableError,
    LocalJudge,
    get_judge,
)
from .rating import EAS_PROMPT, REJECTED_LIMIT, TOPIC_PROMPT, Rating, parse_scores, rate, rate_emotions, rate_topic

__all__ = ["EAS_PROMPT", "ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "REJECTED_LIMIT", "TOPIC_PROMPT", "HTTPJudge",
           "JudgeConfig", "JudgeError", "JudgeItemRejected", "JudgeReplyError", "JudgeUnavailableError", "LocalJudge",
           "Rating", "get_judge", "parse_scores", "rate", "rate_emotions", "rate_topic"]
