"""Perplexity of texts under a reference causal LM (the fluency score).

``PPL(x) = exp(-(1/T) * sum_t log p(x_t | x_<t))`` over the text's T tokens (tokenized without
special tokens), each predicted from a BOS (or EOS) token plus the tokens before it. Texts
longer than the context are cut to their first ``max_length - 1`` tokens and flagged.

Example:
    >>> lm = get_reference_lm("smollm2")                             # doctest: +SKIP
    >>> lm.perplexity(["The cat sat on the mat.", "mat the on sat cat The"]).values
    array([ 40.1, 2203.7])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["PerplexityResult", "ReferenceLM", "get_reference_lm"]


@dataclass
class PerplexityResult:
    """Per-text perplexity (NaN for a text with no tokens), scored tokens, truncation flags."""

    values: np.ndarray
    n_tokens: list[int]
    truncated: list[bool]


class ReferenceLM:
    """A causal LM that scores text.

    Args:
        spec: any :func:`emoexp.models.load_model` spec (``smollm2``, ``tiny-random-llama``,
            a folder, a hub id).
        max_length: tokens per text including the BOS context (default: the model's context).
        batch_size: texts per forward pass.
    """

    def __init__(self, spec: str = "smollm2", *, max_length: int | None = None, batch_size: int = 8):
        from ..models import ALIASES, load_model

        self.spec = spec
        self.model, self.tokenizer = _LOADED.get(spec) or load_model(spec)
        self.model_id = ALIASES[spec].hub_id if spec in ALIASES else spec
        context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(min(max_length or context, context))
        self.batch_size = batch_size
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise ValueError(f"{spec!r}: the tokenizer has neither a BOS nor an EOS token to start from")
        self.start_id = int(start)

    def __repr__(self) -> str:
        return f"ReferenceLM({self.model_id!r}, max_length={self.max_length})"

    @torch.inference_mode()
    def perplexity(self, texts: Sequence[str], *, progress: bool = False) -> PerplexityResult:
        """Perplexity of each text.

        Args:
            texts: strings to score.
            progress: show a tqdm bar.
        """
        texts = list(texts)
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        keep = self.max_length - 1
        truncated = [len(x) > keep for x in ids]
        seqs = [[self.start_id] + list(x[:keep]) for x in ids]
        values = np.full(len(texts), np.nan)
        batches = self._batches(sorted((i for i in range(len(seqs)) if len(seqs[i]) > 1), key=lambda i: len(seqs[i])),
                                [len(x) for x in seqs])
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"perplexity ({self.model_id.split('/')[-1]})", unit="batch")
        for idx in batches:
            width = max(len(seqs[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.start_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: positions are the same as unpadded
                input_ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, :len(seqs[i])] = 1
            device = next(self.model.parameters()).device
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            m = mask[:, 1:].float()
            mean_nll = (nll * m).sum(1) / m.sum(1)
            values[idx] = torch.exp(mean_nll).cpu().numpy()
        return PerplexityResult(values, [len(x) - 1 for x in seqs], truncated)

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive runs of ``order`` (ascending length): at most ``batch_size`` texts, and no more
        padded tokens than keep the batch's logits under :data:`LOGITS_BUDGET` floats (a long text
        goes alone: a batch of 8 texts of 4,000 tokens would need 8 × 4,000 × 49,152 floats, 6 GB,
        for SmolLM2's logits, twice over with the log-softmax)."""
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        tokens = max(1, LOGITS_BUDGET // vocab)
        batches: list[list[int]] = []
        for i in order:
            b = batches[-1] if batches else None
            if b is not None and len(b) < self.batch_size and (len(b) + 1) * lengths[i] <= tokens:
                b.append(i)
            else:
                batches.append([i])
        return batches


#: Most logits (floats) one perplexity batch may hold: 512 MB in float32.
LOGITS_BUDGET = 2**27


#: Models already in memory, by spec (the pipeline registers the model it studies, so
#: perplexity under "the unsteered model being studied" does not load a second copy).
_LOADED: dict[str, tuple[Any, Any]] = {}


def register_loaded(spec: str, model: Any, tokenizer: Any) -> None:
    """Let :class:`ReferenceLM` reuse an already loaded ``(model, tokenizer)`` for ``spec``
    (on whatever device and dtype it is). Call it only while no steering context is open."""
    _LOADED[spec] = (model, tokenizer)
    get_reference_lm.cache_clear()


@functools.lru_cache(maxsize=2)
def get_reference_lm(spec: str = "smollm2", max_length: int | None = None, batch_size: int = 8) -> ReferenceLM:
    """A cached :class:`ReferenceLM`.

    Example:
        >>> get_reference_lm("tiny-random-llama").perplexity(["hello"]).n_tokens  # doctest: +SKIP
        [1]
    """
    return ReferenceLM(spec, max_length=max_length, batch_size=batch_size)
