"""A judge that is a local Hugging Face chat model (greedy decoding), for EAS and topic.

It answers the same prompts as the HTTP judge (:mod:`emoexp.judge`); its replies go through
the same strict JSON parsing, retries and clamping.

Example:
    >>> from emoexp.judge import get_judge, rate_emotions
    >>> rate_emotions(get_judge("hf:Qwen/Qwen2.5-7B-Instruct"), ["Yay!"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalJudge"]


class LocalJudge:
    """A judge that is a local Hugging Face chat model (greedy decoding).

    Args:
        spec: an :func:`emoexp.models.load_model` spec with a chat template.
        max_new_tokens: reply length limit.
        max_retries: extra tries after an invalid reply.
    """

    backend = "hf-judge"

    def __init__(self, spec: str, *, max_new_tokens: int = 96, max_retries: int = 2):
        from .models import load_model

        self.model_id = spec
        self.model, self.tokenizer = load_model(spec)
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries

    def describe(self) -> dict[str, Any]:
        """Backend and model for provenance records."""
        return {"backend": self.backend, "model": self.model_id}

    def redact(self, text: str) -> str:
        """Nothing secret here: ``text`` unchanged."""
        return text

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's greedy reply to ``messages``."""
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
