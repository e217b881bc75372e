"""Zero-shot emotion probabilities (the EPS backends).

Two backends give, per text, a probability distribution over the emotion labels plus
``neutral``:

- ``minilm`` (offline): cosine similarity between the text's embedding and one hypothesis
  per emotion (``"This text expresses {}."``); the ``neutral`` score is the larger of the
  cosine to ``"This text expresses no emotion."`` and a threshold τ = 0.15;
  ``p = softmax([cos_1 … cos_K, neutral] / T)`` with T = 0.05. Emotional sentences reach
  cosines of 0.2–0.5 to their emotion's hypothesis, plain factual ones stay under 0.1.
- ``nli:<model>`` (the paper's, e.g. ``nli:facebook/bart-large-mnli``): the text is the
  premise, ``template.format(phrase)`` the hypothesis for each label (``neutral`` uses the
  phrase ``"no emotion"``); ``p = softmax`` over labels of the entailment logits (the
  single-label mode of Hugging Face's zero-shot pipeline).

Example:
    >>> clf = get_classifier("minilm")                               # doctest: +SKIP
    >>> clf.predict(["I am furious!"]).probs.argmax(1)                # 0 = anger
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .encoders import MINILM, get_encoder
from .vectors import EMOTIONS

__all__ = [
    "DEFAULT_TEMPLATE", "NEUTRAL", "EmbeddingZeroShot", "NLIZeroShot", "ZeroShotResult", "get_classifier",
]

NEUTRAL = "neutral"
DEFAULT_TEMPLATE = "This text expresses {}."
#: Phrase put in the template for the neutral label.
NLI_NEUTRAL_PHRASE = "no emotion"


@dataclass
class ZeroShotResult:
    """Probabilities ``[N, len(labels)]`` (rows sum to 1) and per-text truncation flags."""

    labels: tuple[str, ...]
    probs: np.ndarray
    truncated: list[bool]


class EmbeddingZeroShot:
    """Zero-shot emotion by cosine similarity to label hypotheses (offline).

    Args:
        encoder: sentence-encoder spec (``minilm`` or a folder/hub id).
        labels: emotion labels; each is put in ``template``.
        template: hypothesis template with one ``{}``.
        temperature: softmax temperature T over cosines.
        neutral_phrase: phrase for the ``neutral`` hypothesis (``None``: threshold only).
        neutral_threshold: the least cosine score of ``neutral``; ``None`` with no
            ``neutral_phrase`` means no neutral label.
    """

    backend = "minilm-zeroshot"

    def __init__(self, encoder: str = MINILM, labels: Sequence[str] = EMOTIONS, *,
                 template: str = DEFAULT_TEMPLATE, temperature: float = 0.05,
                 neutral_phrase: str | None = NLI_NEUTRAL_PHRASE, neutral_threshold: float | None = 0.15):
        self.encoder = get_encoder(encoder)
        self.model_id = self.encoder.model_id
        self.emotions = tuple(labels)
        has_neutral = neutral_phrase is not None or neutral_threshold is not None
        self.labels = self.emotions + ((NEUTRAL,) if has_neutral else ())
        self.template = template
        self.temperature = temperature
        self.neutral_phrase = neutral_phrase
        self.neutral_threshold = neutral_threshold
        self._hyp = self.encoder.encode([template.format(e) for e in self.emotions]).embeddings
        self._neutral = (self.encoder.encode([template.format(neutral_phrase)]).embeddings
                         if neutral_phrase is not None else None)

    def config(self) -> dict:
        """What produced the numbers (for provenance records)."""
        return {"backend": self.backend, "model": self.model_id, "template": self.template,
                "temperature": self.temperature, "neutral_phrase": self.neutral_phrase,
                "neutral_threshold": self.neutral_threshold}

    def predict(self, texts: Sequence[str], *, progress: bool = False) -> ZeroShotResult:
        """Label probabilities for each text."""
        enc = self.encoder.encode(texts, progress=progress)
        cos = enc.embeddings @ self._hyp.T
        if len(self.labels) > len(self.emotions):
            neutral = torch.full((cos.shape[0], 1), -1.0)
            if self._neutral is not None:
                neutral = enc.embeddings @ self._neutral.T
            if self.neutral_threshold is not None:
                neutral = neutral.clamp(min=float(self.neutral_threshold))
            cos = torch.cat([cos, neutral], dim=1)
        probs = torch.softmax(cos / self.temperature, dim=-1).numpy().astype(np.float64)
        return ZeroShotResult(self.labels, probs, enc.truncated)


class NLIZeroShot:
    """Zero-shot emotion with an NLI model (premise = text, hypothesis per label).

    Args:
        model: NLI model id or folder (``facebook/bart-large-mnli``, ``roberta-large-mnli``, ...).
        labels: emotion labels.
        template: hypothesis template with one ``{}``.
        neutral_phrase: phrase for an extra ``neutral`` label; ``None`` for no neutral.
        max_length: premise + hypothesis tokens kept (the premise is truncated and flagged).
        batch_size: pairs per forward pass.
    """

    backend = "nli-zeroshot"

    def __init__(self, model: str, labels: Sequence[str] = EMOTIONS, *, template: str = DEFAULT_TEMPLATE,
                 neutral_phrase: str | None = NLI_NEUTRAL_PHRASE, max_length: int | None = None,
                 batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_id = model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model).eval().requires_grad_(False)
        names = {i: str(n).lower() for i, n in self.model.config.id2label.items()}
        ent = [i for i, n in names.items() if n.startswith("entail")]
        if not ent:
            raise ValueError(f"{model!r} is not an NLI model: labels {sorted(names.values())} have no 'entailment'")
        self.entail = int(ent[0])
        self.emotions = tuple(labels)
        self.labels = self.emotions + ((NEUTRAL,) if neutral_phrase is not None else ())
        self.hypotheses = [template.format(x) for x in self.emotions + ((neutral_phrase,) if neutral_phrase else ())]
        self.template = template
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        self.max_length = int(min(max_length or 1024, limit, self.tokenizer.model_max_length or limit))
        self.batch_size = batch_size
        # BERT-style tokenizers return token_type_ids that BART-style models do not take.
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def config(self) -> dict:
        """What produced the numbers (for provenance records)."""
        return {"backend": self.backend, "model": self.model_id, "template": self.template,
                "hypotheses": list(self.hypotheses)}

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], *, progress: bool = False) -> ZeroShotResult:
        """Label probabilities for each text."""
        texts = list(texts)
        k = len(self.hypotheses)
        hyp_len = max(len(self.tokenizer(h)["input_ids"]) for h in self.hypotheses)
        prem_len = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        # Special tokens of a pair: at most 4 for BERT/BART/RoBERTa-style tokenizers.
        truncated = [n + hyp_len + 2 > self.max_length for n in prem_len]
        pairs = [(t, h) for t in texts for h in self.hypotheses]
        logits = torch.zeros(len(pairs))
        starts = range(0, len(pairs), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"nli ({self.model_id.split('/')[-1]})", unit="batch")
        for s in starts:
            chunk = pairs[s:s + self.batch_size]
            batch = self.tokenizer([p for p, _ in chunk], [h for _, h in chunk], padding=True,
                                   truncation="only_first", max_length=self.max_length, return_tensors="pt")
            batch = {k: v for k, v in batch.items() if k in self._inputs}
            logits[s:s + len(chunk)] = self.model(**batch).logits[:, self.entail].float()
        probs = torch.softmax(logits.view(len(texts), k), dim=-1).numpy().astype(np.float64)
        return ZeroShotResult(self.labels, probs, truncated)


@functools.lru_cache(maxsize=4)
def get_classifier(spec: str = MINILM, labels: tuple[str, ...] = EMOTIONS,
                   template: str = DEFAULT_TEMPLATE) -> EmbeddingZeroShot | NLIZeroShot:
    """A cached EPS backend from a spec.

    Args:
        spec: ``minilm`` (offline), ``embed:<encoder>`` (another sentence encoder), or
            ``nli:<model id or folder>``.
        labels: emotion labels (``neutral`` is always added).
        template: hypothesis template with one ``{}``.

    Example:
        >>> get_classifier("nli:facebook/bart-large-mnli")               # doctest: +SKIP
    """
    if spec == MINILM:
        return EmbeddingZeroShot(MINILM, labels, template=template)
    kind, sep, name = spec.partition(":")
    if sep and kind == "embed":
        return EmbeddingZeroShot(name, labels, template=template)
    if sep and kind == "nli":
        return NLIZeroShot(name, labels, template=template)
    raise ValueError(f"unknown EPS backend {spec!r}: use 'minilm', 'embed:<encoder>' or 'nli:<model>'")
