"""emoexp: controllable emotion generation with Emotion Vectors (arXiv 2502.04075 and beyond).

Public surface::

    emoexp.find_layers(model)                      # decoder blocks, found by structure
    emoexp.EmotionVectors.load(path) / .save(path) / .combine({"joy": 2.0})
    emoexp.steer(model, directions, layers=None, site="residual", positions="all")
    emoexp.capture(model, input_ids, attention_mask, token_mask, site=...)
    emoexp.score(responses, queries=None, targets=None, metrics=None, backend=None)
    emoexp.fold_into_bias(model, directions)       # hook-free fast path (torch.compile-safe)
"""

from __future__ import annotations

from typing import Any

from .capture import SCOPES, ActivationSums, capture, scope_mask
from .fold import NotFoldable, fold_into_bias
from .layers import SITES, find_layers
from .steering import POSITIONS, self_test, steer
from .vectors import EMOTIONS, EmotionVectors, VectorFileError, import_official

__version__ = "0.1.0"

__all__ = [
    "EMOTIONS", "POSITIONS", "SCOPES", "SITES", "ActivationSums", "EmotionVectors", "VectorFileError",
    "NotFoldable", "capture", "find_layers", "fold_into_bias", "import_official", "scope_mask", "score",
    "self_test", "steer",
]


def score(*args: Any, **kwargs: Any) -> Any:
    """Score responses with the paper's metrics; see :func:`emoexp.scoring.score`."""
    from .scoring import score as _score

    return _score(*args, **kwargs)

