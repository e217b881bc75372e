"""EmotionVectors: per-emotion [num_layers, hidden_size] tensors plus metadata, in one
safetensors file.

The file holds one float32 tensor per emotion, named by the emotion; the header's
``__metadata__`` holds ``{"format": "emoexp-ev/1", "emoexp": "<JSON>"}`` where the JSON has
the model id, site, token scope, conditioning, queries per emotion, per-layer norms and
library versions.

Example:
    >>> evs = EmotionVectors.load("evs.safetensors")                 # doctest: +SKIP
    >>> d = evs.combine({"joy": 2.0, "anger": -1.0})                 # [L, H]
    >>> d_base = evs.combine({"base": 1.0})                          # mean of the emotions
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .vocab import EMOTIONS

__all__ = ["EMOTIONS", "FORMAT", "EmotionVectors", "VectorFileError", "VectorMismatch", "check_compatible",
           "import_official", "library_versions"]

FORMAT = "emoexp-ev/1"


class VectorFileError(ValueError):
    """A vector file is missing, corrupt, foreign or inconsistent."""


class VectorMismatch(ValueError):
    """Emotion vectors that do not fit a model (shape, or extracted from another model)."""


def check_compatible(evs: EmotionVectors, info: Any, *, allow_foreign: bool = False, path: str | Path = "vectors") -> None:
    """Refuse vectors that cannot steer the model ``info`` (an :class:`emoexp.models.ModelInfo`),
    before its weights load: other layers or hidden size always; vectors extracted from another
    model (by the model fingerprint they record, else by model id) unless ``allow_foreign``.

    Raises:
        VectorMismatch: names both shapes or both models, and the flag that allows foreign vectors.
    """
    if (evs.num_layers, evs.hidden_size) != (info.num_layers, info.hidden_size):
        raise VectorMismatch(f"{path} holds vectors of {evs.num_layers} layers x {evs.hidden_size}, but {info.spec} "
                             f"has {info.num_layers} layers x {info.hidden_size}: extract vectors for this model")
    if allow_foreign:
        return
    theirs, their_id = evs.metadata.get("model_fingerprint"), evs.metadata.get("model_id")
    if (theirs == info.fingerprint) if theirs else (their_id == info.model_id):
        return
    said = f"{their_id} ({theirs[:24]}…)" if theirs else f"{their_id!r} (no fingerprint recorded)"
    raise VectorMismatch(f"{path} was extracted from {said}, not from {info.model_id} ({info.fingerprint[:24]}…): "
                         "pass --allow_foreign_vectors true to steer with it anyway")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (for metadata and provenance)."""
    import importlib.metadata as md

    out = {}
    for name in ("emoexp", "torch", "transformers", "lightning-fabric", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def default_mode(path: Path) -> None:
    """Give a freshly written file the mode the umask allows (0644 usually), like every other
    output; safetensors writes 0600."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


class EmotionVectors:
    """Per-emotion steering vectors for one model.

    Attributes:
        emotions: the stored emotion names (sorted).
        num_layers, hidden_size: the tensors' shape.
        metadata: a JSON-able dict (model id, site, scope, conditioning, counts, ...).
    """

    def __init__(self, vectors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None):
        if not vectors:
            raise ValueError("EmotionVectors needs at least one emotion")
        shapes = {tuple(v.shape) for v in vectors.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"all vectors must share one [num_layers, hidden_size] shape, got {sorted(shapes)}")
        if "base" in vectors:
            raise ValueError("'base' is reserved for the mean of the stored emotions")
        for name, v in vectors.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"invalid emotion name {name!r}")
            if not torch.isfinite(v).all():
                raise ValueError(f"vector for {name!r} contains NaN or inf")
        self._vectors = {k: vectors[k].detach().float().cpu().contiguous() for k in sorted(vectors)}
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def emotions(self) -> list[str]:
        return list(self._vectors)

    @property
    def num_layers(self) -> int:
        return next(iter(self._vectors.values())).shape[0]

    @property
    def hidden_size(self) -> int:
        return next(iter(self._vectors.values())).shape[1]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name == "base":
            return torch.stack(list(self._vectors.values())).mean(0)
        if name not in self._vectors:
            raise KeyError(f"unknown emotion {name!r}; stored: {', '.join(self.emotions)} (and 'base')")
        return self._vectors[name]

    def __repr__(self) -> str:
        return (f"EmotionVectors({', '.join(self.emotions)}; {self.num_layers} layers x {self.hidden_size}; "
                f"site={self.metadata.get('site')!r}, model={self.metadata.get('model_id')!r})")

    def combine(self, weights: Mapping[str, float]) -> torch.Tensor:
        """Σ_k weights[k] · EV_k as a float32 [num_layers, hidden_size] tensor.

        ``base`` names the mean of the stored emotions.

        Raises:
            KeyError: unknown emotion (lists the valid ones).
            ValueError: a NaN or infinite weight.

        Example:
            >>> evs.combine({"joy": 2.0, "anger": -1.0})  # doctest: +SKIP
        """
        out = torch.zeros(self.num_layers, self.hidden_size)
        for name, w in weights.items():
            if not math.isfinite(float(w)):
                raise ValueError(f"weight for {name!r} is {w}: weights must be finite")
            out += float(w) * self[name]
        return out

    def reliable_layers(self, min_cosine: float) -> EmotionVectors:
        """A copy in which each emotion keeps only the layers whose split-half cosine (recorded at
        extraction: the EVs of the two halves of the queries) reaches ``min_cosine``; the other
        layers are zero, so steering skips them.

        Raises:
            ValueError: the metadata records no split-half cosine for some emotion.
        """
        split = self.metadata.get("split_half_cosine") or {}
        missing = [e for e in self.emotions if e not in split]
        if missing:
            raise ValueError(f"no split-half cosine recorded for {missing}: extract with at least 2 queries per emotion")
        keep = {e: torch.tensor(split[e]) >= min_cosine for e in self.emotions}
        masked = {e: v * keep[e].unsqueeze(-1).to(v.dtype) for e, v in self._vectors.items()}
        return EmotionVectors(masked, {**self.metadata, "reliable_layers": {e: keep[e].nonzero().flatten().tolist()
                                                                            for e in self.emotions}})

    def centred(self) -> EmotionVectors:
        """A copy in which each emotion's EV has the mean of the stored EVs (``base``) subtracted.

        Emotional-vs-neutral EVs share a large common part (on SmolLM2 the mean per-layer cosines
        between emotions are 0.5-0.9 with 32 queries per emotion): centring keeps what tells one
        emotion from the others (mean-centring).
        The centred EVs sum to zero, so ``base`` of the copy is zero.

        Raises:
            ValueError: fewer than two emotions are stored.
        """
        if len(self.emotions) < 2:
            raise ValueError(f"centring needs at least 2 emotions; these vectors hold {self.emotions}")
        mean = self["base"]
        return EmotionVectors({e: v - mean for e, v in self._vectors.items()}, {**self.metadata, "centred": True})

    def relative_doses(self) -> dict[str, list[float]]:
        """Per-layer ‖EV_l‖ / mean ‖h_l‖ (needs ``activation_norms`` in the metadata)."""
        scale = self.metadata.get("activation_norms")
        if not scale or len(scale) != self.num_layers:
            raise ValueError("these vectors carry no activation_norms metadata (extract them with emoexp >= 0.1)")
        s = torch.tensor(scale, dtype=torch.float32).clamp_min(1e-12)
        return {k: (v.norm(dim=-1) / s).tolist() for k, v in self._vectors.items()}

    def at_dose(self, weights: Mapping[str, float], dose: float) -> torch.Tensor:
        """The combined direction rescaled per layer so that ‖d_l‖ = dose · mean ‖h_l‖.

        Makes α comparable across layers and models: ``dose=0.1`` adds a vector a tenth
        the size of a typical activation at every layer.
        """
        self.relative_doses()  # validates the metadata
        d = self.combine(weights)
        scale = torch.tensor(self.metadata["activation_norms"], dtype=torch.float32)
        return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12) * (dose * scale).unsqueeze(-1)

    def fingerprint(self) -> str:
        """sha256 of the tensors (names, shapes and float32 bytes), not of the file: the same
        vectors saved twice (other metadata, other time) have the same fingerprint."""
        import hashlib

        h = hashlib.sha256()
        for name, v in self._vectors.items():
            h.update(f"{name}:{tuple(v.shape)};".encode())
            h.update(v.numpy().tobytes())
        return "sha256:" + h.hexdigest()

    def norms(self) -> dict[str, list[float]]:
        """Per-layer L2 norms of each emotion's vector."""
        return {k: v.norm(dim=-1).tolist() for k, v in self._vectors.items()}

    def cosine(self, layers: list[int] | None = None) -> torch.Tensor:
        """[E, E] cosine similarity between emotions over the chosen layers' concatenation."""
        idx = list(range(self.num_layers)) if layers is None else layers
        flat = torch.stack([v[idx].flatten() for v in self._vectors.values()])
        flat = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return flat @ flat.T

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (float32 tensor per emotion + JSON metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, "per_layer_norms": self.norms()}
        meta.setdefault("library_versions", library_versions())
        tmp = path.with_name(path.name + ".tmp")
        save_file(dict(self._vectors), str(tmp), metadata={"format": FORMAT, "emoexp": json.dumps(meta)})
        default_mode(tmp)
        tmp.replace(path)  # atomic: a killed run never leaves half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read a file written by :meth:`save`.

        Raises:
            VectorFileError: missing, corrupt, foreign (not emoexp), or inconsistent file.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"no vector file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as e:  # safetensors raises several types for bad bytes
            raise VectorFileError(f"{path} is not a readable safetensors file: {e}") from e
        if header.get("format") != FORMAT or "emoexp" not in header:
            raise VectorFileError(
                f"{path} is a safetensors file but not an emoexp vector file (format={header.get('format')!r}); "
                "use emoexp.import_official() for the paper authors' JSON vectors"
            )
        try:
            meta = json.loads(header["emoexp"])
        except json.JSONDecodeError as e:
            raise VectorFileError(f"{path}: metadata is not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise VectorFileError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
        try:
            return cls(tensors, meta)
        except ValueError as e:
            raise VectorFileError(f"{path}: {e}") from e


def import_official(source: str | Path, *, model_id: str | None = None) -> EmotionVectors:
    """Import the paper authors' released EV JSON files (``{"<layer>": [[h floats]]}`` each).

    Args:
        source: a directory of ``*_<emotion>.json`` files, or one such file.
        model_id: the model the vectors belong to (e.g. ``Qwen/Qwen2.5-7B-Instruct``).

    Returns:
        EmotionVectors marked ``site="attn"``, ``positions="generated"`` and
        ``source="official"``: they are attention-output deltas, not residual ones.

    Raises:
        VectorFileError: no files, malformed JSON, missing layers or ragged shapes.
    """
    source = Path(source)
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise VectorFileError(f"no authors' EV JSON files at {source}")
    vectors: dict[str, torch.Tensor] = {}
    for f in files:
        emotion = f.stem.rsplit("_", 1)[-1].lower()
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise VectorFileError(f"{f}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        if not isinstance(data, dict) or not data:
            raise VectorFileError(f"{f}: expected an object {{'<layer>': [[floats]]}}")
        try:
            keys = sorted(data, key=int)
        except ValueError as e:
            raise VectorFileError(f"{f}: layer keys must be integers ({e})") from e
        if [int(k) for k in keys] != list(range(len(keys))):
            raise VectorFileError(f"{f}: layers are not 0..{len(keys) - 1} (got {keys[:5]}...)")
        try:
            rows = [torch.tensor(data[k], dtype=torch.float32).reshape(-1) for k in keys]
            vectors[emotion] = torch.stack(rows)
        except (RuntimeError, ValueError, TypeError) as e:
            raise VectorFileError(f"{f}: ragged or non-numeric vectors ({e})") from e
    meta = {
        "model_id": model_id, "site": "attn", "positions": "generated", "token_scope": None,
        "source": "official",
        "note": "imported from the paper authors' released JSON: attention-output deltas, "
                "steer with site='attn' (their code edits the last position of each call)",
        "files": [f.name for f in files],
    }
    try:
        return EmotionVectors(vectors, meta)
    except ValueError as e:
        raise VectorFileError(f"{source}: {e}") from e
