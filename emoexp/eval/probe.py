"""A language model's reading of a text: the mean over its tokens of one layer's hidden state.

The ``minilm-smollm2`` scorer (:mod:`emoexp.eval.classifiers`) reads each text twice: with the
MiniLM sentence encoder and with SmolLM2-135M-Instruct, whose residual stream is where steering
works. This module is the second reader: the text (no chat template, no special tokens added
beyond the tokenizer's own), cut to ``max_length`` tokens, through the unsteered model; the
output is the mean over the text's tokens of ``hidden_states[layer]`` (0 = the embeddings, the
model's layer count = the last block's output as transformers returns it).

Example:
    >>> reader = get_reader("smollm2", layer=30)                              # doctest: +SKIP
    >>> reader.encode(["I am furious!"]).embeddings.shape                       # doctest: +SKIP
    torch.Size([1, 576])
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch

from .encoders import CachedReader, Encoded

__all__ = ["HiddenMeans", "get_reader"]


class HiddenMeans(CachedReader):
    """Mean-pooled hidden states of one layer of a causal LM (not normalised).

    Args:
        spec: any :func:`emoexp.models.load_model` spec (``smollm2``, ``tiny-random-llama``, a folder).
        layer: which ``hidden_states`` entry (0 to the number of layers).
        max_length: tokens kept per text (longer texts are cut and flagged).
        batch_size: texts per forward pass (padding on the right; the mask keeps pads out of the mean).
        device: where the model runs (default: CUDA when available, else CPU).
        cache_size: the most recent texts' readings kept.
    """

    def __init__(self, spec: str = "smollm2", *, layer: int, max_length: int = 256, batch_size: int = 16,
                 device: str | None = None, cache_size: int = 50_000):
        from ..models import load_model

        self.spec, self.layer, self.max_length, self.batch_size = spec, int(layer), int(max_length), int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(spec, dtype="float32")
        self.model.to(self.device)
        n = int(self.model.config.num_hidden_layers)
        if not 0 <= self.layer <= n:
            raise ValueError(f"{spec!r} has hidden states 0 to {n}, not layer {self.layer}")
        self.tokenizer.padding_side = "right"  # this reader's own tokenizer (load_model returns a fresh one)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()

    def __repr__(self) -> str:
        return f"HiddenMeans({self.spec!r}, layer={self.layer}, max_length={self.max_length})"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def _encode(self, texts: list[str], *, progress: bool) -> Encoded:
        """``[N, hidden]`` means (float32, CPU) and per-text truncation flags; an empty text reads as one space."""
        texts = [t or " " for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = torch.zeros(len(texts), int(self.model.config.hidden_size))
        starts = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"hidden states ({self.spec}, layer {self.layer})", unit="batch")
        for s in starts:
            idx = order[s:s + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length).to(self.device)
            # the base model (no language-model head: its logits would be a fifth of the work, unused)
            hidden = self.model.base_model(**batch, output_hidden_states=True).hidden_states[self.layer].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu()
        return Encoded(out, [n > self.max_length for n in lengths])


@functools.lru_cache(maxsize=2)
def get_reader(spec: str = "smollm2", layer: int = 30, max_length: int = 256) -> HiddenMeans:
    """A cached :class:`HiddenMeans` (the model loads once per process)."""
    return HiddenMeans(spec, layer=layer, max_length=max_length)
