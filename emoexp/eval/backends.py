"""Which backend computes each metric: the :class:`Backends` settings and named presets.

``offline`` (default) needs no network: the trained emotion head over MiniLM and SmolLM2
states for EPS (``minilm-smollm2``; the MiniLM-only head is ``eps: minilm``, the old zero-shot
scorer ``eps: minilm-zeroshot``), MiniLM cosine for topic, SmolLM2-135M-Instruct
perplexity (the pipeline sets it to the studied model), no EAS. ``paper`` is the paper's setup:
bart-large-mnli EPS (by hub id) and an LLM judge for topic and EAS (``EMOEXP_JUDGE_*``).

Example:
    >>> Backends.resolve({"preset": "paper", "perplexity": "Qwen/Qwen2.5-7B-Instruct"}).eps
    'nli:facebook/bart-large-mnli'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..vocab import DEFAULT_EPS
from .judge import JudgeConfig

__all__ = ["PRESETS", "Backends"]

#: Named backend sets. ``paper`` needs a hub connection (bart-large-mnli) and an LLM judge.
PRESETS: dict[str, dict[str, Any]] = {
    "offline": {},
    "paper": {"eps": "nli:facebook/bart-large-mnli", "topic": "judge", "eas": "judge"},
}


@dataclass
class Backends:
    """Which backend computes each metric.

    Attributes:
        eps: ``minilm`` | ``minilm-smollm2`` | ``minilm-written`` | ``minilm-zeroshot`` |
            ``minilm-ensemble`` | ``minilm-proto`` | ``embed:<encoder>`` | ``nli:<model>``
            (:mod:`emoexp.eval.classifiers`).
        topic: ``minilm`` | ``embed:<encoder>`` | ``judge`` | ``hf:<model>``.
        perplexity: reference LM, any :func:`emoexp.models.load_model` spec (the paper: the
            unsteered model being studied).
        eas: ``None`` (EAS not computed) | ``judge`` | ``hf:<model>``.
        judge: endpoint settings (default: ``EMOEXP_JUDGE_*`` variables).
        max_length: perplexity context cap in tokens (default: the model's context).
        batch_size: perplexity batch size.
        progress: show progress bars.
    """

    eps: str = DEFAULT_EPS
    topic: str = "minilm"
    perplexity: str = "smollm2"
    eas: str | None = None
    judge: JudgeConfig | None = None
    max_length: int | None = None
    batch_size: int = 8
    progress: bool = False

    @classmethod
    def resolve(cls, backend: str | Mapping[str, Any] | Backends | None) -> Backends:
        """``None``/``"offline"``, ``"paper"``, a dict of overrides (may hold ``preset``), or a Backends."""
        if isinstance(backend, Backends):
            return backend
        if backend is None or isinstance(backend, str):
            backend = {"preset": backend or "offline"}
        over = dict(backend)
        preset = over.pop("preset", "offline")
        if preset not in PRESETS:
            raise ValueError(f"unknown backend preset {preset!r}: use one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(over) - fields)
        if unknown:
            raise ValueError(f"unknown backend settings {unknown}: known are {sorted(fields)}")
        return cls(**{**PRESETS[preset], **over})

    def settings(self) -> dict[str, Any]:
        """The settings that shape numbers (for provenance and the score cache), judge key excluded."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("judge", "progress")} | (
            {"judge_model": self.judge.model} if self.judge else {})
