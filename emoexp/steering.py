"""Add a per-layer direction to a model's hidden states while a context is open.

``steer(model, directions)`` registers forward hooks on the chosen site of the chosen
decoder blocks and removes them in ``finally``. Positions are absolute (read from the KV
cache length, never from the current call's length), so cached and uncached decoding
steer the same tokens.

Example:
    >>> with steer(model, 2.0 * evs.combine({"joy": 1.0})):           # doctest: +SKIP
    ...     out = model.generate(**batch, max_new_tokens=40)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import as_tokens, call_shape, find_layers, hidden_of, replace_hidden, resolve_layers, site_module
from .vocab import POSITIONS, SITES

__all__ = ["POSITIONS", "Steering", "check_finite", "self_test", "steer"]



def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf (names ``what`` and where)."""
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise ValueError(f"{what} contains NaN or inf (first at index {idx}, {int(bad.sum())} values)")


def _past_length(kwargs: dict) -> int | None:
    """Tokens already in the KV cache before this call; ``None`` if no cache was passed."""
    for key in ("cache", "past_key_values", "past_key_value"):
        cache = kwargs.get(key)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            first = cache[0][0] if isinstance(cache[0], (tuple, list)) else cache[0]
            if isinstance(first, torch.Tensor):
                return int(first.shape[-2])
    cp = kwargs.get("cache_position")
    if isinstance(cp, torch.Tensor) and cp.numel():
        return int(cp.reshape(-1)[0])
    return None


@dataclass
class _Positions:
    """Tracks absolute positions across forward calls of one model.

    A call that starts with an empty cache is a new prompt, unless (uncached decoding) its
    ``input_ids`` strictly extend the previous call's: then it is the same sequence grown.
    """

    prompt_len: int = 0
    past_len: int = 0
    uncached: bool = False
    last_ids: torch.Tensor | None = None
    _mask: torch.Tensor | None = None
    _mask_key: tuple | None = None

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        emb = kwargs.get("inputs_embeds")
        x = ids if ids is not None else emb
        if x is None:
            return
        t = int(x.shape[1])
        past = _past_length(kwargs)
        if past:  # a non-empty cache: this call continues the current sequence
            self.past_len = past
            self.uncached = False
        else:
            # No cache at all (use_cache=False): a call whose ids strictly extend the
            # previous uncached call's ids is the same sequence recomputed one token longer.
            extends = (
                past is None and self.uncached and ids is not None and self.last_ids is not None
                and ids.shape[0] == self.last_ids.shape[0] and t > self.last_ids.shape[1]
                and torch.equal(ids[:, : self.last_ids.shape[1]], self.last_ids)
            )
            if not extends:
                self.prompt_len = t
            self.past_len = 0
            self.uncached = past is None
            self.last_ids = ids.detach() if ids is not None else None

    def mask(self, t: int, device: torch.device) -> torch.Tensor:
        """[t] bool: which of this call's positions are at or after the last prompt token
        (computed once per forward call and device, not once per steered layer)."""
        key = (self.prompt_len, self.past_len, t, device)
        if self._mask is None or self._mask_key != key:
            absolute = torch.arange(self.past_len, self.past_len + t, device=device)
            self._mask, self._mask_key = absolute >= self.prompt_len - 1, key
        return self._mask


@dataclass
class Steering:
    """Handle returned by :func:`steer`: the resolved layers and the recorded doses."""

    layers: list[int]
    site: str
    positions: str
    record_dose: bool = False
    _total: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: dose summed over counted tokens
    _count: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: counted tokens (all rows)
    _rows: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: [B] dose sums per row
    _row_n: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: [B] counted tokens per row
    _rows_valid: bool = True  # False once calls of different batch sizes were seen
    _attention: torch.Tensor | None = None  # the current forward call's attention mask

    def doses(self) -> dict[int, float]:
        """Mean relative dose ‖d_l‖ / ‖h_l‖ per steered layer, over the steered real tokens of
        all rows (padding is not counted)."""
        return {l: float(self._total[l]) / float(self._count[l]) for l in self._total if float(self._count[l])}

    def row_doses(self) -> list[float]:
        """Mean relative dose per batch row (over steered layers and the row's steered real tokens).

        Raises:
            RuntimeError: the context saw batches of different sizes (rows are not defined).
        """
        if not self._rows_valid:
            raise RuntimeError("row doses need every call in the context to have the same batch size")
        per_layer = [self._rows[l].double().cpu() / self._row_n[l].double().cpu().clamp_min(1) for l in self._rows]
        return torch.stack(per_layer).mean(0).tolist() if per_layer else []

    def _attention_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._attention = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _record(self, layer: int, v: torch.Tensor, h: torch.Tensor, positions: torch.Tensor | None) -> None:
        """``v``: [H] or [B, 1, H]; ``h``: [B, T, H]; ``positions``: [T] steered positions or
        ``None`` (all). Left padding is excluded through the call's attention mask. No host sync."""
        b, t = h.shape[0], h.shape[-2]
        am = self._attention
        if am is not None and am.shape[0] == b and am.shape[1] >= t:
            w = am[:, -t:].to(device=h.device, dtype=torch.float64)
        else:
            w = torch.ones(b, t, device=h.device, dtype=torch.float64)
        if positions is not None:
            w = w * positions.to(w.dtype)
        # float64 from here on: a row's dose is then the same whatever its batch-mates or the call split
        ratio = v.double().norm(dim=-1, keepdim=v.dim() == 1) / h.double().norm(dim=-1).clamp_min(1e-12)  # [B, T]
        weighted = ratio * w
        self._total[layer] = self._total.get(layer, 0) + weighted.sum()
        self._count[layer] = self._count.get(layer, 0) + w.sum()
        prev = self._rows.get(layer)
        if prev is not None and prev.shape[0] != b:
            self._rows_valid = False
        if self._rows_valid:
            self._rows[layer] = weighted.sum(-1) + (0 if prev is None else prev)
            self._row_n[layer] = w.sum(-1) + self._row_n.get(layer, 0)


def _validate(model: nn.Module, directions: torch.Tensor, blocks: list[nn.Module], per_row: bool = False) -> None:
    shape = "[batch, num_layers, hidden_size]" if per_row else "[num_layers, hidden_size]"
    if not isinstance(directions, torch.Tensor):
        raise TypeError(f"directions must be a torch.Tensor {shape}, got {type(directions).__name__}")
    if directions.dim() != (3 if per_row else 2):
        raise ValueError(f"directions must be {shape}, got shape {tuple(directions.shape)}")
    hidden = _hidden_size(model)
    if directions.shape[-2] != len(blocks):
        raise ValueError(f"directions have {directions.shape[-2]} layers but the model has {len(blocks)}")
    if hidden is not None and directions.shape[-1] != hidden:
        raise ValueError(f"directions have hidden size {directions.shape[-1]} but the model's hidden size is {hidden}")
    check_finite(directions, "directions")


def _hidden_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    with contextlib.suppress(Exception):
        cfg = cfg.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return None


def _refuse_compiled(model: nn.Module, blocks: list[nn.Module]) -> None:
    compiled = [m for m in (model, *blocks) if getattr(m, "_compiled_call_impl", None) is not None]
    if hasattr(model, "_orig_mod") or compiled:
        raise RuntimeError(
            "steer() cannot hook a torch.compile'd model: hooks registered after compiling are "
            "silently ignored. Steer the eager model, or fold the vector in with "
            "emoexp.fold_into_bias() before compiling."
        )
    if getattr(model, "_compiled_call", None) is not None:
        raise RuntimeError(
            "steer() cannot hook this model: generate() has compiled its decoding step (a static KV cache "
            "triggers transformers' auto-compile), and hooks added after that are silently ignored there. "
            "Pass disable_compile=True to generate() on a fresh model, or steer with emoexp.fold.BiasSlots."
        )


@contextlib.contextmanager
def steer(
    model: nn.Module,
    directions: torch.Tensor,
    *,
    layers: Sequence[int] | int | None = None,
    site: str = "residual",
    positions: str = "all",
    layers_path: str | None = None,
    record_dose: bool = False,
    per_row: bool = False,
) -> Iterator[Steering]:
    """Add ``directions[l]`` to the output of ``site`` in each chosen decoder block ``l``.

    Args:
        model: a causal LM (eager, not ``torch.compile``'d).
        directions: [num_layers, hidden_size]; row ``l`` is added at layer ``l``. Scale it
            yourself (``alpha * evs.combine(...)``). With ``per_row``: [batch, num_layers,
            hidden_size], one direction per batch row (zeros leave a row bit-identical), so
            one batch can hold many targets and alphas.
        layers: indices to steer (``None`` = all; negative counts from the end).
        site: ``residual`` (block output), ``attn`` (attention output) or ``mlp``.
        positions: ``all`` or ``generated`` (last prompt token and every generated one).
        layers_path: dotted path of the block list, overriding discovery.
        record_dose: record ‖directions[l]‖ / ‖h_l‖, read with ``.doses()`` (per layer) or
            ``.row_doses()`` (per batch row).
        per_row: ``directions`` has a leading batch dimension; every forward call must then
            have that many rows.

    Yields:
        A :class:`Steering` handle. Contexts nest and add up; hooks are removed on exit,
        also when the body raises.

    Example:
        >>> with steer(model, torch.zeros(n_layers, hidden), layers=[-1]) as s:  # doctest: +SKIP
        ...     model(input_ids)
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; valid: {', '.join(POSITIONS)}")
    blocks = find_layers(model, layers_path)
    _refuse_compiled(model, blocks)
    _validate(model, directions, blocks, per_row)
    chosen = resolve_layers(layers, len(blocks))
    modules = [site_module(blocks[l], site) for l in chosen]
    rows = directions.shape[0] if per_row else None
    handle = Steering(layers=chosen, site=site, positions=positions, record_dose=record_dose)
    tracker = _Positions()
    cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def vector(like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in cast:  # moved once per dtype/device, not per call
            cast[key] = directions.detach().to(device=like.device, dtype=like.dtype)
        return cast[key]

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            flat = hidden_of(output)
            h = as_tokens(flat, *shape[0]) if flat.dim() == 2 and shape[0] else flat
            if rows is None:
                v = vector(h)[layer]  # [H]
            else:
                if h.shape[0] != rows:
                    raise RuntimeError(f"steer(per_row=True) holds directions for {rows} rows but a forward call "
                                       f"has {h.shape[0]}")
                v = vector(h)[:, layer].unsqueeze(-2)  # [B, 1, H]
            if positions == "all":
                mask = None
            else:
                mask = tracker.mask(h.shape[-2], h.device)
                if not bool(mask.any()):
                    return None
            if record_dose:
                handle._record(layer, v, h, mask)
            if mask is None:
                new = h + v
            else:
                new = h + mask.to(h.dtype).unsqueeze(-1) * v
            return replace_hidden(output, new.view_as(flat))

        return hook

    shape: list[tuple[int, int] | None] = [None]  # (batch, length) of the current forward call

    def record_shape(module: nn.Module, args: tuple, kwargs: dict) -> None:
        shape[0] = call_shape(args, kwargs)

    hooks = []
    try:
        hooks.append(model.register_forward_pre_hook(record_shape, with_kwargs=True))
        if positions == "generated":
            hooks.append(model.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True))
        if record_dose:
            hooks.append(model.register_forward_pre_hook(handle._attention_hook, with_kwargs=True))
        for l, m in zip(chosen, modules):
            hooks.append(m.register_forward_hook(make_hook(l)))
        yield handle
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def self_test(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    site: str = "residual",
    layers: Sequence[int] | None = None,
    scale: float = 1.0,
    layers_path: str | None = None,
) -> dict[int, float]:
    """Check that steering each targeted layer alone changes the logits.

    Steers one layer at a time with a random direction of norm ``scale`` times the hidden
    state's typical norm and returns the max abs logit change per layer.

    Raises:
        RuntimeError: some layer's steering left the logits unchanged (a silent no-op).
    """
    blocks = find_layers(model, layers_path)
    hidden = _hidden_size(model)
    if hidden is None:
        raise ValueError("cannot tell the model's hidden size from its config")
    base = model(input_ids).logits
    gen = torch.Generator().manual_seed(0)
    out: dict[int, float] = {}
    for l in resolve_layers(layers, len(blocks)):
        d = torch.zeros(len(blocks), hidden)
        d[l] = torch.randn(hidden, generator=gen) * scale
        with steer(model, d, layers=[l], site=site, layers_path=layers_path):
            out[l] = float((model(input_ids).logits - base).abs().max())
    dead = [l for l, v in out.items() if not v > 0]
    if dead:
        raise RuntimeError(f"steering at site {site!r} did not change the logits at layers {dead}")
    return out
