"""emoexp: controllable emotion generation with Emotion Vectors (arXiv 2502.04075 and beyond).

Public surface::

    emoexp.find_layers(model)                      # decoder blocks, found by structure
    emoexp.EmotionVectors.load(path) / .save(path) / .combine({"joy": 2.0})
    emoexp.steer(model, directions, layers=None, site="residual", positions="all")
    emoexp.capture(model, input_ids, attention_mask, token_mask, site=...)
    emoexp.score(responses, queries=None, targets=None, metrics=None, backend=None)
    emoexp.fold_into_bias(model, directions)       # hook-free fast path (torch.compile-safe)

Names are imported on first use (PEP 562), so ``import emoexp`` and ``emoexp --help`` do not
load torch.
"""

from __future__ import annotations

from typing import Any

from ._lazy import lazy_getattr
from .vocab import EMOTIONS, POSITIONS, SCOPES, SITES

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "ActivationSums": "activations", "capture": "activations", "scope_mask": "activations",
    "NotFoldable": "fold", "fold_into_bias": "fold",
    "find_layers": "layers",
    "self_test": "steering", "steer": "steering",
    "EmotionVectors": "vectors", "VectorFileError": "vectors", "import_official": "vectors",
}

__all__ = [
    "EMOTIONS", "POSITIONS", "SCOPES", "SITES", "ActivationSums", "EmotionVectors", "NotFoldable", "VectorFileError",
    "capture", "find_layers", "fold_into_bias", "import_official", "scope_mask", "score", "self_test", "steer",
]


__getattr__ = lazy_getattr(__name__, _LAZY)


def score(*args: Any, **kwargs: Any) -> Any:
    """Score responses with the paper's metrics; see :func:`emoexp.eval.scoring.score`."""
    from .eval.scoring import score as _score

    return _score(*args, **kwargs)
