"""Emotion classifiers: text -> probabilities over the five emotions and ``neutral``.

Backends (the ``eps`` spec of :class:`emoexp.eval.backends.Backends`):

- ``minilm-smollm2`` (offline default since 2026-12-07): a softmax layer over two readings of
  the normalised text (emoji named, loops shortened: :mod:`emoexp.eval.normalise`): its
  all-MiniLM-L6-v2 embedding and the mean over its tokens of SmolLM2-135M-Instruct's last hidden
  layer (layer 30, 256 tokens, :mod:`emoexp.eval.probe`), standardised on the training text;
  in ``emoexp/data/emotion_head_smollm2.safetensors``, trained on emoexp's written replies and on
  hand-labelled real model text (:mod:`emoexp.eval.real_text`) by :mod:`emoexp.eval.training`,
  the second reader chosen by nested cross-validation grouped by model family, never fitted on
  Qwen2.5 text (held out: docs/evaluation.md). It runs a 135M model over every text (on CUDA when
  there is one): about 10x MiniLM's time on a CPU.
- ``minilm`` (the default from 2026-12-06 to 2026-12-07): the same without the second reader
  (``emoexp/data/emotion_head_real.safetensors``).
- ``minilm-written`` (the default before 2026-12-06): the same layer over raw-text embeddings,
  trained on the written replies only (``emoexp/data/emotion_head.safetensors``).
- ``minilm-zeroshot`` (the former default, kept for comparison): cosine between the text and
  ``"This text expresses {emotion}."``; neutral is the larger of the cosine to ``"This text
  expresses no emotion."`` and τ = 0.15; ``p = softmax(cos / 0.05)``.
- ``minilm-ensemble``: the same with several hypothesis templates and label descriptions, cosines
  averaged over templates and descriptions.
- ``minilm-proto``: cosine to each label's centroid (prototype) of the training embeddings.
- ``embed:<encoder>``: ``minilm-zeroshot`` with another sentence encoder.
- ``nli:<model>`` (the paper's, e.g. ``nli:facebook/bart-large-mnli``): the text is the premise,
  ``template.format(label)`` the hypothesis; ``p = softmax`` of the entailment logits over labels.

Example:
    >>> clf = get_classifier("minilm")                               # doctest: +SKIP
    >>> clf.predict(["I am furious!"]).probs.argmax(1)                # 0 = anger
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..vocab import DEFAULT_EPS, EMOTIONS
from .encoders import MINILM, get_encoder, minilm_path

if TYPE_CHECKING:  # it loads a language model: imported when a head with a probe first reads
    from .probe import HiddenMeans

__all__ = [
    "DEFAULT_TEMPLATE", "HEAD_PATH", "LABELS", "NEUTRAL", "PROBE_HEAD_PATH", "REAL_HEAD_PATH", "EmotionHead",
    "EmotionResult", "NLIZeroShot", "Prototypes", "ZeroShot", "get_classifier", "load_labelled", "scorer_identity",
]

NEUTRAL = "neutral"
#: The classifiers' labels: the five emotions, then neutral.
LABELS = (*EMOTIONS, NEUTRAL)
DEFAULT_TEMPLATE = "This text expresses {}."
#: The head trained on written replies only (``minilm-written``).
HEAD_PATH = Path(__file__).resolve().parents[1] / "data" / "emotion_head.safetensors"
#: The default head (``minilm``): written replies and labelled real model text.
REAL_HEAD_PATH = HEAD_PATH.with_name("emotion_head_real.safetensors")
#: ``minilm-smollm2``: the default head's data, MiniLM beside SmolLM2's hidden states.
PROBE_HEAD_PATH = HEAD_PATH.with_name("emotion_head_smollm2.safetensors")
#: Several ways to say each label, for ``minilm-ensemble``.
DESCRIPTIONS = {
    "anger": ("anger", "irritation and outrage", "frustration and resentment"),
    "disgust": ("disgust", "revulsion and being grossed out", "contempt for something vile"),
    "fear": ("fear", "worry and anxiety", "dread and nervousness"),
    "joy": ("joy", "happiness and delight", "excitement and gratitude"),
    "sadness": ("sadness", "grief and sorrow", "disappointment and loneliness"),
    NEUTRAL: ("no emotion", "a calm, factual tone", "neutral information"),
}
ENSEMBLE_TEMPLATES = ("This text expresses {}.", "The writer feels {}.", "This reply is full of {}.")


@dataclass
class EmotionResult:
    """Probabilities ``[N, len(labels)]`` (rows sum to 1), per-text truncation flags, and the
    classifier's configuration (for provenance)."""

    labels: tuple[str, ...]
    probs: np.ndarray
    truncated: list[bool]
    config: dict


def load_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a labelled JSONL file (``text`` and ``label`` per line)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = sorted({r["label"] for r in rows} - set(LABELS))
    if bad:
        raise ValueError(f"{path}: unknown labels {bad}; valid: {', '.join(LABELS)}")
    return [r["text"] for r in rows], [r["label"] for r in rows]


class ZeroShot:
    """Cosine to label hypotheses (``templates`` x ``descriptions`` averaged), softmax with
    temperature; neutral floored at ``neutral_threshold``."""

    def __init__(self, encoder: str = MINILM, *, templates: Sequence[str] = (DEFAULT_TEMPLATE,),
                 descriptions: dict[str, Sequence[str]] | None = None, temperature: float = 0.05,
                 neutral_threshold: float | None = 0.15, name: str = "minilm-zeroshot"):
        self.encoder = get_encoder(encoder)
        self.model_id = self.encoder.model_id
        self.labels = LABELS
        self.name, self.templates, self.temperature, self.neutral_threshold = name, tuple(templates), temperature, \
            neutral_threshold
        self.descriptions = descriptions or {e: (e,) for e in EMOTIONS} | {NEUTRAL: ("no emotion",)}
        hyp = []
        for label in self.labels:
            phrases = [t.format(d) for t in self.templates for d in self.descriptions[label]]
            hyp.append(torch.nn.functional.normalize(self.encoder.encode(phrases).embeddings.mean(0), dim=-1))
        self._hyp = torch.stack(hyp)

    def config(self) -> dict:
        return {"backend": self.name, "model": self.model_id, "templates": list(self.templates),
                "descriptions": {k: list(v) for k, v in self.descriptions.items()}, "temperature": self.temperature,
                "neutral_threshold": self.neutral_threshold, "fingerprint": scorer_identity(self.name)}

    def predict(self, texts: Sequence[str], *, progress: bool = False) -> EmotionResult:
        enc = self.encoder.encode(texts, progress=progress)
        cos = enc.embeddings @ self._hyp.T
        if self.neutral_threshold is not None:
            cos[:, -1] = cos[:, -1].clamp(min=float(self.neutral_threshold))
        probs = torch.softmax(cos / self.temperature, dim=-1).numpy().astype(np.float64)
        return EmotionResult(self.labels, probs, enc.truncated, self.config())


class Prototypes:
    """Cosine to each label's mean training embedding (unit-normed), softmax with temperature."""

    def __init__(self, texts: Sequence[str], labels: Sequence[str], encoder: str = MINILM, temperature: float = 0.05):
        self.encoder = get_encoder(encoder)
        self.model_id, self.labels, self.temperature = self.encoder.model_id, LABELS, temperature
        emb = self.encoder.encode(list(texts)).embeddings
        y = np.array([self.labels.index(lab) for lab in labels])
        self._proto = torch.nn.functional.normalize(
            torch.stack([emb[torch.from_numpy(y == k)].mean(0) for k in range(len(self.labels))]), dim=-1)

    def config(self) -> dict:
        return {"backend": "minilm-proto", "model": self.model_id, "temperature": self.temperature,
                "fingerprint": scorer_identity("minilm-proto")}

    def predict(self, texts: Sequence[str], *, progress: bool = False) -> EmotionResult:
        enc = self.encoder.encode(texts, progress=progress)
        probs = torch.softmax(enc.embeddings @ self._proto.T / self.temperature, dim=-1).numpy().astype(np.float64)
        return EmotionResult(self.labels, probs, enc.truncated, self.config())


def standardise(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float) -> torch.Tensor:
    """A probe's reading ``[N, hidden]`` as head features: ``(raw - mean) / std / sqrt(hidden) * scale``."""
    return (raw - mean) / std / raw.shape[1] ** 0.5 * scale


class EmotionHead:
    """A softmax layer over sentence embeddings: ``p = softmax((W x + b) / T)``, where ``x`` is the
    embedding of the text (normalised first when ``meta["normalise"]``), followed by its
    :func:`~emoexp.eval.normalise.style_features` when ``meta["style"]``, then by a language
    model's reading of it when ``meta["probe"]`` (:mod:`emoexp.eval.probe`: ``(h - mean) / std /
    sqrt(dims) * scale``, with the mean and deviation of the training text); ``T`` is
    ``meta["temperature"]`` (1 when absent).

    Args:
        weight: ``[6, D]`` (``D`` = embedding size, + 5 with style features, + the LM's hidden
            size with a probe); bias: ``[6]``.
        meta: how it was fitted (data fingerprint, encoder, regularisation, CV scores, features;
            ``probe``: ``{"model", "layer", "max_length", "scale"}``).
        name: the backend name it is selected by.
        probe_stats: the probe's ``(mean, std)`` over the training text, ``[hidden]`` each.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, meta: dict | None = None, encoder: str = MINILM,
                 name: str = MINILM, probe_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.weight, self.bias, self.meta = weight.float(), bias.float(), dict(meta or {})
        self.encoder = get_encoder(encoder)
        self.model_id, self.labels, self.name = self.encoder.model_id, LABELS, name
        if bool(self.meta.get("probe")) != (probe_stats is not None):
            raise ValueError("a head with a probe needs its mean and std, and only such a head has them")
        self.probe_stats = None if probe_stats is None else (probe_stats[0].float(), probe_stats[1].float())

    def probe_reader(self) -> HiddenMeans:
        """The language model reader of ``meta["probe"]`` (loaded on first use)."""
        from .probe import get_reader

        p = self.meta["probe"]
        return get_reader(p["model"], int(p["layer"]), int(p["max_length"]))

    def features(self, texts: Sequence[str], *, progress: bool = False,
                 probe_raw: torch.Tensor | None = None) -> tuple[torch.Tensor, list[bool]]:
        """The head's input ``[N, D]`` for ``texts`` and each text's truncation flag (by either
        reader). ``probe_raw``: the probe reader's output for these texts, if already computed."""
        from .normalise import normalise, style_features

        texts = list(texts)
        read = [normalise(t) for t in texts] if self.meta.get("normalise") else texts
        enc = self.encoder.encode(read, progress=progress)
        x, truncated = enc.embeddings, enc.truncated
        if self.meta.get("style"):
            x = torch.cat([x, torch.from_numpy(style_features(texts))], dim=1)
        if self.probe_stats is not None:
            if probe_raw is None:
                got = self.probe_reader().encode(read, progress=progress)
                probe_raw, truncated = got.embeddings, [a or b for a, b in zip(truncated, got.truncated)]
            x = torch.cat([x, self.standardise(probe_raw)], dim=1)
        return x, truncated

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """The probe's part of the features from its raw reading ``[N, hidden]``."""
        assert self.probe_stats is not None
        return standardise(raw, *self.probe_stats, float(self.meta["probe"]["scale"]))

    @classmethod
    def load(cls, path: str | Path = REAL_HEAD_PATH, name: str = MINILM) -> EmotionHead:
        """The head saved by :meth:`save` (default: the one shipped in the package)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("emoexp", "{}"))
            names = set(f.keys())
            stats = (f.get_tensor("probe_mean"), f.get_tensor("probe_std")) if "probe_mean" in names else None
            return cls(f.get_tensor("weight"), f.get_tensor("bias"), meta, name=name, probe_stats=stats)

    def save(self, path: str | Path = REAL_HEAD_PATH) -> Path:
        from safetensors.torch import save_file

        from ..vectors import default_mode

        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        if self.probe_stats is not None:
            tensors |= {"probe_mean": self.probe_stats[0].contiguous(), "probe_std": self.probe_stats[1].contiguous()}
        save_file(tensors, str(path), metadata={"emoexp": json.dumps(self.meta, sort_keys=True)})
        default_mode(Path(path))
        return Path(path)

    def config(self) -> dict:
        keep = ("train_fingerprint", "l2", "n_train", "version", "normalise", "style", "held_out", "temperature",
                "probe")
        return {"backend": self.name, "model": self.model_id, **{k: self.meta.get(k) for k in keep},
                "fingerprint": scorer_identity(self.name)}

    def predict(self, texts: Sequence[str], *, progress: bool = False) -> EmotionResult:
        x, truncated = self.features(texts, progress=progress)
        logits = (x @ self.weight.T + self.bias) / float(self.meta.get("temperature", 1.0))
        return EmotionResult(self.labels, torch.softmax(logits, -1).numpy().astype(np.float64), truncated,
                             self.config())


class NLIZeroShot:
    """Zero-shot emotion with an NLI model (premise = text, hypothesis per label).

    Args:
        model: NLI model id or folder (``facebook/bart-large-mnli``, ``roberta-large-mnli``, ...).
        template: hypothesis template with one ``{}``; ``neutral`` uses the phrase ``"no emotion"``.
        max_length: premise + hypothesis tokens kept (the premise is truncated and flagged).
        batch_size: pairs per forward pass.
    """

    def __init__(self, model: str, *, template: str = DEFAULT_TEMPLATE, max_length: int | None = None,
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
        self.labels = LABELS
        self.hypotheses = [template.format(x) for x in (*EMOTIONS, "no emotion")]
        self.template = template
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        self.max_length = int(min(max_length or 1024, limit, self.tokenizer.model_max_length or limit))
        self.batch_size = batch_size
        # BERT-style tokenizers return token_type_ids that BART-style models do not take.
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def config(self) -> dict:
        return {"backend": "nli-zeroshot", "model": self.model_id, "template": self.template,
                "hypotheses": list(self.hypotheses), "fingerprint": scorer_identity(f"nli:{self.model_id}")}

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], *, progress: bool = False) -> EmotionResult:
        texts = list(texts)
        k = len(self.hypotheses)
        hyp_len = max(len(self.tokenizer(h)["input_ids"]) for h in self.hypotheses)
        prem_len = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        truncated = [n + hyp_len + 2 > self.max_length for n in prem_len]  # a pair's special tokens: at most 4
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
        return EmotionResult(self.labels, probs, truncated, self.config())


@functools.lru_cache(maxsize=8)
def get_classifier(spec: str = DEFAULT_EPS) -> ZeroShot | Prototypes | EmotionHead | NLIZeroShot:
    """A cached emotion classifier from a spec (see the module doc).

    Example:
        >>> get_classifier("minilm-zeroshot").config()["backend"]        # doctest: +SKIP
        'minilm-zeroshot'
    """
    if spec == MINILM:
        return EmotionHead.load()
    if spec == "minilm-written":
        return EmotionHead.load(HEAD_PATH, name="minilm-written")
    if spec == "minilm-smollm2":
        return EmotionHead.load(PROBE_HEAD_PATH, name="minilm-smollm2")
    if spec == "minilm-zeroshot":
        return ZeroShot(MINILM)
    if spec == "minilm-ensemble":
        return ZeroShot(MINILM, templates=ENSEMBLE_TEMPLATES, descriptions=DESCRIPTIONS, name="minilm-ensemble")
    if spec == "minilm-proto":
        return Prototypes(*load_labelled(HEAD_PATH.with_name("emotion_text_train.jsonl")))
    kind, sep, name = spec.partition(":")
    if sep and kind == "embed":
        return ZeroShot(name, name=f"embed:{name}")
    if sep and kind == "nli":
        return NLIZeroShot(name)
    raise ValueError(f"unknown EPS backend {spec!r}: use 'minilm', 'minilm-smollm2', 'minilm-written', "
                     "'minilm-zeroshot', 'minilm-ensemble', 'minilm-proto', 'embed:<encoder>' or 'nli:<model>'")


#: Bumped when a backend's code changes what it computes from the same weights.
_BACKEND_CODE = {"minilm": 2, "minilm-smollm2": 1, "minilm-written": 1, "minilm-zeroshot": 1, "minilm-ensemble": 1,
                 "minilm-proto": 1}


@functools.lru_cache(maxsize=32)
def scorer_identity(spec: str = DEFAULT_EPS) -> str:
    """``<name>@<12 hex digits>``: the scorer's name and a hash of everything that shapes its
    numbers (its weight or training file, its encoder's files, its code version), without
    loading a model. Two scorers never share an identity; scores carry it (``scorer`` column,
    MLflow, the run's identity) so that scores of two scorers are never mixed.

    Example:
        >>> scorer_identity("minilm").startswith("minilm@")                     # doctest: +SKIP
        True
    """
    from ..fingerprint import digest, file_sha256, folder_sha256

    def encoder_fp(enc: str) -> str:
        folder = minilm_path() if enc == MINILM else Path(enc)
        return folder_sha256(folder) if folder.is_dir() else enc

    kind, sep, name = spec.partition(":")
    if spec not in _BACKEND_CODE and not (sep and name and kind in ("embed", "nli")):
        raise ValueError(f"unknown EPS backend {spec!r}: use {', '.join(map(repr, _BACKEND_CODE))}, "
                         "'embed:<encoder>' or 'nli:<model>'")
    parts: dict[str, object] = {"spec": spec, "code": _BACKEND_CODE.get(spec, 1)}
    if spec in (MINILM, "minilm-smollm2", "minilm-written"):
        weights = {MINILM: REAL_HEAD_PATH, "minilm-smollm2": PROBE_HEAD_PATH, "minilm-written": HEAD_PATH}[spec]
        parts |= {"weights": file_sha256(weights), "encoder": encoder_fp(MINILM)}
        if spec == "minilm-smollm2":  # the second reader: SmolLM2's files (converted once from its GGUF)
            from ..models import smollm2_dir

            parts["probe_model"] = folder_sha256(smollm2_dir())
        if spec != "minilm-written":  # it names emoji with the emoji package: its version shapes the text it reads
            from importlib.metadata import PackageNotFoundError, version

            try:
                parts["emoji"] = version("emoji")
            except PackageNotFoundError:
                parts["emoji"] = None
    elif spec == "minilm-proto":
        parts |= {"train": file_sha256(HEAD_PATH.with_name("emotion_text_train.jsonl")), "encoder": encoder_fp(MINILM)}
    elif spec.startswith("minilm"):
        parts |= {"encoder": encoder_fp(MINILM), "descriptions": DESCRIPTIONS, "templates": ENSEMBLE_TEMPLATES}
    else:
        parts |= {"model": encoder_fp(name) if kind == "embed" else
                  (folder_sha256(name) if Path(name).is_dir() else name)}
    return f"{spec}@{digest(parts)[:12]}"
