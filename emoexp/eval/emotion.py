"""EPS (emotion probabilities and intensity) and TEC (the target emotion's confidence).

For a text x and a classifier (:mod:`emoexp.eval.classifiers`): ``p_anger … p_sadness`` and
``p_neutral`` sum to 1; ``intensity = 1 - p_neutral``. For a target emotion e: ``tec = p_e``
(neutral stays in the denominator, so a flat text scores low) and ``tec_top = 1`` when e has the
highest probability among the five emotions, else 0; a text without a target gets NaN.

Example:
    >>> out = emotion_probabilities(["I am thrilled!"])                        # doctest: +SKIP
    >>> target_confidence(out["probs"], out["labels"], ["joy"])["tec"]           # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..vocab import DEFAULT_EPS, EMOTIONS
from .classifiers import NEUTRAL, get_classifier

__all__ = ["emotion_probabilities", "resolve_target", "target_confidence"]

_NO_TARGET = ("base", "none", "")


def emotion_probabilities(texts: Sequence[str], backend: str = DEFAULT_EPS, *, progress: bool = False) -> dict[str, Any]:
    """``{"labels", "probs" [N, 6], "intensity" [N], "truncated", "config"}`` for each text."""
    res = get_classifier(backend).predict(list(texts), progress=progress)
    k = res.labels.index(NEUTRAL)
    return {"labels": list(res.labels), "probs": res.probs, "intensity": 1.0 - res.probs[:, k],
            "truncated": res.truncated, "config": res.config}


def resolve_target(target: str | Mapping[str, float] | None) -> tuple[str | None, str | None]:
    """The single emotion TEC scores for a target, and a note when there is none.

    An emotion name is itself; ``None``, ``"base"`` and ``"none"`` have no target; a mix
    (``{"joy": 1.0, "anger": -1.0}``, ``"joy+anger"`` with equal weights, or ``"joy=1+anger=-1"``)
    targets the emotion with the largest positive weight; a tie or no positive weight gives no
    target (with a note).

    Raises:
        ValueError: an emotion name that is not one of the five.

    Example:
        >>> resolve_target({"joy": 1.0, "anger": -1.0})
        ('joy', None)
    """
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return None, None
    if isinstance(target, str):
        if target.lower() in _NO_TARGET:
            return None, None
        parts = [p.partition("=") for p in target.replace(",", "+").split("+")]
        target = {name.strip(): float(w) if w.strip() else 1.0 for name, _, w in parts}
    if not isinstance(target, Mapping):
        raise TypeError(f"a target is an emotion name, a mix dict or None, not {type(target).__name__}")
    unknown = [k for k in target if k not in EMOTIONS and k != "base"]
    if unknown:
        raise ValueError(f"unknown target emotion(s) {unknown}: use {list(EMOTIONS)}")
    weights = {k: float(v) for k, v in target.items() if k in EMOTIONS}
    best = max(weights.values(), default=0.0)
    if best <= 0:
        return None, "target mix has no positive emotion weight"
    top = [k for k, v in weights.items() if v == best]
    if len(top) > 1:
        return None, f"target mix ties {top}"
    return top[0], None


def target_confidence(probs: np.ndarray, labels: Sequence[str], targets: Sequence[str | None]) -> dict[str, np.ndarray]:
    """``tec`` (the target's probability) and ``tec_top`` (1 if it is the top emotion) per row."""
    labels = list(labels)
    emotions = [labels.index(e) for e in EMOTIONS]
    tec, top = np.full(len(targets), np.nan), np.full(len(targets), np.nan)
    for i, t in enumerate(targets):
        if t:
            k = labels.index(t)
            tec[i] = probs[i, k]
            top[i] = float(emotions[int(np.argmax(probs[i, emotions]))] == k)
    return {"tec": tec, "tec_top": top}
