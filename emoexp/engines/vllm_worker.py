"""Inside vLLM's workers: per-request steering that is part of the model's traced graph.

vLLM compiles the model (Dynamo + inductor, CUDA graphs on GPU); forward hooks registered on
a compiled model are silently skipped. So steering is not a hook: right after the weights
load, and before vLLM's first (compiling) forward, each steered site module (the attention or
MLP block, or the whole decoder block for ``residual``) is wrapped in :class:`SteeredSite`,
whose forward adds ``table[slots[token]]`` to the site's output. ``table`` ([slots, hidden],
row 0 zeros) and ``slots`` ([max tokens], one slot per token of the flattened batch) are
buffers rewritten in place, so one compiled graph serves every direction.

Each step, after vLLM lays out its batch (``_prepare_inputs``), the runner writes every
token's slot: the slot its request asked for (``SamplingParams.extra_args["emoexp_slot"]``),
or 0 where ``positions == "generated"`` and the token comes before the last prompt token,
exactly as :func:`emoexp.steer` counts positions. The slot tables are written by the engine
through ``collective_rpc("emoexp_write", ...)`` on every worker (tensor and pipeline ranks
alike; each owns its layers).

This module is imported by vLLM in each worker process (it is the ``worker_extension_cls``),
which is when the two runner methods are wrapped; the wrap does nothing for an engine built
without ``additional_config["emoexp_steering"]``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CONFIG_KEY", "POSITIONS_KEY", "SLOT_KEY", "SteerWorkerExtension", "SteeredSite", "install"]

from .keys import CONFIG_KEY, POSITIONS_KEY, SLOT_KEY

_SITE_CHILD = {"attn": ("self_attn", "attn", "attention", "self_attention"), "mlp": ("mlp", "feed_forward", "ffn")}


class SteeredSite(nn.Module):
    """``inner``'s output plus ``table[slots[token]]`` (the first element where it returns a tuple)."""

    def __init__(self, inner: nn.Module, table: torch.Tensor, slots: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("slots", slots, persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h = h + torch.index_select(self.table, 0, self.slots[: h.shape[0]])
        return (h, *out[1:]) if isinstance(out, tuple) else h


def _hook(module: nn.Module, args: Any, out: Any, *, table: torch.Tensor, slots: torch.Tensor) -> Any:
    h = out[0] if isinstance(out, tuple) else out
    h = h + torch.index_select(table, 0, slots[: h.shape[0]])
    return (h, *out[1:]) if isinstance(out, tuple) else h


class _State:
    """What one worker holds: the spec, the per-layer tables and the shared slot buffer."""

    def __init__(self, spec: dict[str, Any], tables: dict[int, torch.Tensor], slots: torch.Tensor) -> None:
        self.spec = spec
        self.tables = tables
        self.slots = slots
        self.used = 0  # tokens written by the last step (the tail beyond is zeroed lazily)


def _decoder(model: nn.Module) -> tuple[nn.ModuleList, int, int]:
    """The decoder block list and this rank's [start, end) layers (pipeline ranks hold a part)."""
    for _, m in model.named_modules():
        layers = getattr(m, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(m, "start_layer") and hasattr(m, "end_layer"):
            return layers, int(m.start_layer), int(m.end_layer)
    raise RuntimeError(f"emoexp: cannot find the decoder layers of vLLM's {type(model).__name__} (no "
                       ".layers with start_layer/end_layer): this architecture cannot be steered in vLLM")


def _site_parent(block: nn.Module, site: str) -> tuple[nn.Module, str]:
    """(parent, attribute) of the module whose output is steered."""
    if site == "residual":
        raise ValueError("residual is wrapped at the block itself")
    for name in _SITE_CHILD[site]:
        if isinstance(getattr(block, name, None), nn.Module):
            return block, name
    raise RuntimeError(f"emoexp: vLLM's {type(block).__name__} has no {site} child "
                       f"(looked for {', '.join(_SITE_CHILD[site])}): site {site!r} cannot be steered in this engine")


def install(runner: Any, spec: dict[str, Any]) -> _State:
    """Wrap the chosen sites of ``runner``'s loaded model; returns the worker's steering state."""
    model = runner.get_model()
    layers, start, end = _decoder(model)
    param = next(model.parameters())
    hidden, n_slots = int(spec["hidden_size"]), int(spec["slots"])
    slots = torch.zeros(int(runner.max_num_tokens), dtype=torch.long, device=param.device)
    tables: dict[int, torch.Tensor] = {}
    for l in spec["layers"]:
        if not start <= l < end:
            continue  # another pipeline rank's layer
        table = torch.zeros(n_slots, hidden, dtype=param.dtype, device=param.device)
        if spec.get("mechanism") == "late_hook":
            pass  # hooks come after vLLM compiled the model (emoexp_late_hooks): the trap the self-test must catch
        elif spec["site"] == "residual":
            layers[l] = SteeredSite(layers[l], table, slots)
        else:
            parent, name = _site_parent(layers[l], spec["site"])
            setattr(parent, name, SteeredSite(getattr(parent, name), table, slots))
        tables[l] = table
    return _State(spec, tables, slots)


def _write_slots(runner: Any, state: _State, scheduler_output: Any) -> None:
    """Every scheduled token's slot, in the order vLLM flattened the batch."""
    total = int(scheduler_output.total_num_scheduled_tokens)
    num_reqs = runner.input_batch.num_reqs
    per_req = np.zeros(num_reqs, dtype=np.int64)
    first = np.zeros(num_reqs, dtype=np.int64)  # the first steered position of each request
    default_generated = state.spec["positions"] == "generated"
    generated = False
    for i, rid in enumerate(runner.input_batch.req_ids[:num_reqs]):
        req = runner.requests.get(rid)
        params = getattr(req, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        per_req[i] = int(extra.get(SLOT_KEY, 0))
        if extra.get(POSITIONS_KEY, "generated" if default_generated else "all") == "generated":
            first[i] = max(int(req.num_prompt_tokens) - 1, 0)
            generated = True
    req_idx = runner.req_indices.np[:total]
    token_slots = per_req[req_idx]
    if generated:
        pos = runner.input_batch.num_computed_tokens_cpu[req_idx] + runner.query_pos.np[:total]
        token_slots = np.where(pos >= first[req_idx], token_slots, 0)
    state.slots[:total].copy_(torch.from_numpy(token_slots), non_blocking=True)
    if state.used > total:
        state.slots[total: state.used].zero_()
    state.used = total


def _with_install(load: Any) -> Any:
    @functools.wraps(load)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = load(self, *args, **kwargs)
        spec = (self.vllm_config.additional_config or {}).get(CONFIG_KEY)
        if spec is not None and getattr(self, "_emoexp", None) is None:
            self._emoexp = install(self, spec)
        return out

    return load_model


def _with_slots(prepare: Any) -> Any:
    @functools.wraps(prepare)
    def _prepare_inputs(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        out = prepare(self, scheduler_output, *args, **kwargs)
        state = getattr(self, "_emoexp", None)
        if state is not None:
            _write_slots(self, state, scheduler_output)
        return out

    return _prepare_inputs


def _patch_runner(cls: type) -> None:
    """Wrap the methods ``cls`` defines itself (a subclass inherits its base's wrapped ones)."""
    for name, wrap in (("load_model", _with_install), ("_prepare_inputs", _with_slots)):
        fn = vars(cls).get(name)
        if fn is not None and not getattr(fn, "_emoexp", False):
            wrapped = wrap(fn)
            wrapped._emoexp = True
            setattr(cls, name, wrapped)


def _patch_all() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _patch_runner(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a GPU build without the CPU runner
        return
    _patch_runner(CPUModelRunner)


class SteerWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): the calls the engine makes
    through ``collective_rpc``."""

    def emoexp_write(self, slots: list[int], rows: bytes, shape: list[int]) -> int:
        """Set slot ``slots[i]`` to row ``i`` of ``rows`` (float32 bytes of [k, chosen layers, hidden]); returns
        the layers written here."""
        state = self.model_runner._emoexp
        chosen = state.spec["layers"]
        data = torch.from_numpy(np.frombuffer(rows, dtype=np.float32).reshape(shape).copy())
        for j, l in enumerate(chosen):
            table = state.tables.get(l)
            if table is None:
                continue
            for i, s in enumerate(slots):
                table[int(s)].copy_(data[i, j].to(table.dtype))
        return len(state.tables)

    def emoexp_late_hooks(self) -> int:
        """Register the steering as plain forward hooks on the running model (what a hook-based
        steering library would do). vLLM's compiled graph never calls them; kept for the test
        that the self-test catches exactly that."""
        state = self.model_runner._emoexp
        layers, _, _ = _decoder(self.model_runner.get_model())
        for l, table in state.tables.items():
            site = state.spec["site"]
            target = layers[l] if site == "residual" else getattr(*_site_parent(layers[l], site))
            target.register_forward_hook(functools.partial(_hook, table=table, slots=state.slots))
        return len(state.tables)

    def emoexp_layers(self) -> list[int]:
        """The layers this worker steers (its pipeline stage's share of the chosen layers)."""
        return sorted(self.model_runner._emoexp.tables)


_patch_all()
