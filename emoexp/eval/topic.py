"""Topic consistency between each query and its response.

Backends: ``minilm`` (offline) or ``embed:<encoder>``: ``topic = cos(e(query), e(response))``
with mean-pooled, unit-norm sentence embeddings (range −1…1; on-topic answers score ≈0.4–0.8,
unrelated text ≈0–0.2). ``judge`` (an OpenAI-compatible endpoint) or ``hf:<model>`` (a local chat
model): the judge's 0–100 rating divided by 100. The two scales differ: compare numbers from one
backend only.

Example:
    >>> topic_consistency(["Knead the dough."], ["How do I bake bread?"])["topic"]   # doctest: +SKIP
    array([0.52])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .encoders import MINILM, get_encoder

__all__ = ["topic_consistency"]


def topic_consistency(responses: Sequence[str], queries: Sequence[str], backend: str = MINILM, *,
                      judge_config: Any = None, progress: bool = False) -> dict[str, Any]:
    """``{"topic", "truncated", "config"}`` (and for a judge ``errors``, ``clamped``) per pair.

    Raises:
        emoexp.eval.judge.JudgeError: the judge stopped answering or rejected a request
            (``.completed`` holds the ratings finished before).
    """
    if backend == MINILM or backend.startswith("embed:"):
        enc = get_encoder(backend.removeprefix("embed:"))
        r, q = enc.encode(responses, progress=progress), enc.encode(queries)
        return {"topic": (r.embeddings * q.embeddings).sum(-1).numpy().astype(float),
                "truncated": [a or b for a, b in zip(r.truncated, q.truncated)],
                "config": {"backend": "embedding-cosine", "model": enc.model_id}}
    from .judge import get_judge, rate_topic

    judge = get_judge(backend, judge_config)
    ratings = rate_topic(judge, queries, responses, progress=progress)
    return {"topic": np.array([r.scores["topic"] / 100.0 if r.scores else np.nan for r in ratings]),
            "truncated": [r.truncated for r in ratings], "errors": [r.error for r in ratings],
            "clamped": [r.clamped for r in ratings], "config": judge.describe()}
