"""Capture per-layer activations over chosen token positions, as exact float64 sums.

Two ways, the same sums: :func:`capture` runs one forward pass over ``prompt + response``
with its own hooks; :class:`DecodeCapture` collects the same tokens while ``generate`` runs
(prompt tokens in the prefill call, each response token when it is fed back), so extraction
costs little more than generating. Both read with their own hooks, never
``output_hidden_states`` (which may not show hook edits in transformers 5.x). Padding is
never counted. The result is a sum plus counts, so shards computed on different ranks add up
exactly.

Example:
    >>> mask = scope_mask(batch["attention_mask"], prompt_width=12, scope="response")  # doctest: +SKIP
    >>> acts = capture(model, batch["input_ids"], batch["attention_mask"], mask)       # doctest: +SKIP
    >>> acts.mean().shape                                                               # doctest: +SKIP
    torch.Size([30, 576])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import as_tokens, find_layers, hidden_of, resolve_layers, site_module
from .vocab import SCOPES

__all__ = ["SCOPES", "ActivationSums", "DecodeCapture", "capture", "capture_groups", "forward_kwargs",
           "scope_mask"]



@dataclass
class ActivationSums:
    """Per-layer float64 sums of activations, ready to be summed across shards.

    Attributes:
        row_mean_sum: [L, H] sum over sequences of each sequence's token mean.
        n_rows: sequences that had at least one counted token.
        token_sum: [L, H] sum over all counted tokens.
        n_tokens: [L] counted tokens per layer.
        norm_sum: [L] sum over counted tokens of the activation's L2 norm (for relative doses).
    """

    row_mean_sum: torch.Tensor
    n_rows: int
    token_sum: torch.Tensor
    n_tokens: torch.Tensor
    norm_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_layers: int, hidden: int) -> ActivationSums:
        """Empty sums for ``num_layers`` x ``hidden``."""
        z = torch.zeros(num_layers, hidden, dtype=torch.float64)
        return cls(z.clone(), 0, z.clone(), torch.zeros(num_layers, dtype=torch.int64),
                   torch.zeros(num_layers, dtype=torch.float64))

    def __add__(self, other: ActivationSums) -> ActivationSums:
        return ActivationSums(
            self.row_mean_sum + other.row_mean_sum,
            self.n_rows + other.n_rows,
            self.token_sum + other.token_sum,
            self.n_tokens + other.n_tokens,
            self.norm_sum + other.norm_sum,
        )

    def mean_norm(self) -> torch.Tensor:
        """[L] mean L2 norm of the counted activations (the scale a relative dose refers to)."""
        return self.norm_sum / self.n_tokens.clamp_min(1).double()

    def mean(self, weighting: str = "query") -> torch.Tensor:
        """[L, H] float64 mean: over sequences of per-sequence means (``query``, the paper's)
        or over all tokens pooled (``token``)."""
        if weighting == "query":
            if self.n_rows == 0:
                raise ValueError("no sequence had a token in scope: nothing to average")
            return self.row_mean_sum / self.n_rows
        if weighting == "token":
            if int(self.n_tokens.min()) == 0:
                raise ValueError("no token in scope: nothing to average")
            return self.token_sum / self.n_tokens.unsqueeze(-1).double()
        raise ValueError(f"unknown weighting {weighting!r}; valid: query, token")

    def pack(self) -> torch.Tensor:
        """One flat float64 tensor (for a single all-reduce with ``sum``)."""
        return torch.cat([
            self.row_mean_sum.flatten(), torch.tensor([float(self.n_rows)], dtype=torch.float64),
            self.token_sum.flatten(), self.n_tokens.double(), self.norm_sum,
        ])

    @classmethod
    def unpack(cls, flat: torch.Tensor, num_layers: int, hidden: int) -> ActivationSums:
        """Inverse of :meth:`pack`."""
        n = num_layers * hidden
        flat = flat.double().cpu()
        return cls(
            flat[:n].reshape(num_layers, hidden).clone(), round(float(flat[n])),
            flat[n + 1: 2 * n + 1].reshape(num_layers, hidden).clone(),
            flat[2 * n + 1: 2 * n + 1 + num_layers].round().long(),
            flat[2 * n + 1 + num_layers:].clone(),
        )


def scope_mask(attention_mask: torch.Tensor, prompt_width: int, scope: str) -> torch.Tensor:
    """[B, T] bool mask of the tokens in ``scope``, padding excluded.

    The layout is ``[left-padded prompt of width prompt_width | response, right-padded]``
    with ``attention_mask`` marking the real tokens.

    Raises:
        ValueError: unknown scope (lists the valid ones).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown token scope {scope!r}; valid: {', '.join(SCOPES)}")
    real = attention_mask.bool()
    pos = torch.arange(real.shape[1], device=real.device).unsqueeze(0)
    if scope == "all":
        return real
    if scope == "prompt":
        return real & (pos < prompt_width)
    if scope == "response":
        return real & (pos >= prompt_width)
    return real & (pos == prompt_width - 1)


def forward_kwargs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Inputs for a padded forward pass, with position ids from the attention mask (as
    ``generate`` computes them) where the model takes them, so a left-padded row sees the
    same positions as the row alone."""
    kw = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kw["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return kw


@torch.no_grad()
def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    site: str = "residual",
    layers: Sequence[int] | None = None,
    layers_path: str | None = None,
) -> ActivationSums:
    """Run one forward pass and sum the site's outputs over ``token_mask`` per layer.

    Args:
        model: a causal LM (steering contexts may be open around the call).
        input_ids, attention_mask: [B, T] batch (any padding side).
        token_mask: [B, T] bool, which tokens to count (ANDed with ``attention_mask``).
        site: ``residual``, ``attn`` or ``mlp``.
        layers: which layers to capture (``None`` = all); others stay zero.
        layers_path: dotted path of the block list, overriding discovery.

    Returns:
        :class:`ActivationSums` over all layers of the model.
    """
    groups = torch.zeros(input_ids.shape[0], dtype=torch.long)
    return capture_groups(model, input_ids, attention_mask, token_mask, groups, 1, site=site, layers=layers,
                          layers_path=layers_path)[0]


@torch.no_grad()
def capture_groups(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_mask: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int,
    *,
    site: str = "residual",
    layers: Sequence[int] | None = None,
    layers_path: str | None = None,
) -> list[ActivationSums]:
    """Like :func:`capture`, with rows split into ``n_groups`` by ``groups`` [B] in one pass."""
    blocks = find_layers(model, layers_path)
    chosen = resolve_layers(layers, len(blocks))
    counted = token_mask.bool() & attention_mask.bool()
    per_row = counted.sum(1).cpu()  # [B]
    weights = counted.double().unsqueeze(-1)  # [B, T, 1]
    captured: dict[int, torch.Tensor] = {}
    norms: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            h = as_tokens(hidden_of(output), *weights.shape[:2])
            hd = h.double()
            w = weights.to(h.device)
            captured[layer] = (hd * w).sum(1).cpu()  # [B, H]
            norms[layer] = (hd.norm(dim=-1) * w.squeeze(-1)).sum(1).cpu()  # [B]

        return hook

    hooks = [site_module(blocks[l], site).register_forward_hook(make_hook(l)) for l in chosen]
    try:
        kw = forward_kwargs(model, input_ids, attention_mask)
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            kw["logits_to_keep"] = 1  # captures need no vocabulary projection over every position
        model(**kw, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return _grouped(captured, norms, per_row, groups, n_groups, len(blocks))


def _grouped(captured: dict[int, torch.Tensor], norms: dict[int, torch.Tensor], per_row: torch.Tensor,
             groups: torch.Tensor, n_groups: int, num_layers: int) -> list[ActivationSums]:
    """Per-row sums [B, H] per layer -> one :class:`ActivationSums` per group of rows."""
    hidden = next(iter(captured.values())).shape[-1]
    groups, per_row = groups.cpu(), per_row.cpu()
    has = per_row > 0
    denom = per_row.clamp_min(1).double().unsqueeze(-1)
    outs = []
    for g in range(n_groups):
        sel = groups == g
        out = ActivationSums.zeros(num_layers, hidden)
        for l, row_sum in captured.items():
            out.token_sum[l] = row_sum[sel].sum(0)
            out.row_mean_sum[l] = (row_sum / denom)[sel & has].sum(0)
            out.n_tokens[l] = int(per_row[sel].sum())
            out.norm_sum[l] = norms[l][sel].sum()
        out.n_rows = int((sel & has).sum())
        outs.append(out)
    return outs


class DecodeCapture:
    """Sum the site's outputs over the scope's tokens while ``model.generate`` runs.

    The first forward call (the prefill) holds the left-padded prompt; each later call feeds
    back one generated token per row (the last position of the call). A response token is
    counted when it is fed back, up to (not including) the row's first stop token, so padding
    and stop tokens after a row ends are never counted. The last generated token is only fed
    back if generation runs one step past it: call ``generate(..., max_new_tokens=n + 1)`` and
    keep ``n`` tokens (what :func:`emoexp.generation.generate` does with ``feed_last=True``),
    and at most ``n`` response tokens per row are counted.

    The sums equal :func:`capture` over ``prompt + response`` up to floating-point
    reassociation (a KV-cached step and a full pass add in different orders).

    Example:
        >>> with DecodeCapture(model, prompt_mask, "response", stops=[2], max_response=40) as cap:  # doctest: +SKIP
        ...     gens = generate(model, tok, prompts, max_new_tokens=40, feed_last=True)
        >>> sums = cap.groups(groups, n_groups)                                                      # doctest: +SKIP

    Args:
        model: the causal LM ``generate`` will run.
        prompt_mask: [B, P] attention mask of the left-padded prompts passed to ``generate``.
        scope: one of :data:`SCOPES`.
        stops: stop token ids (a fed-back stop token ends the row's counting).
        max_response: count at most this many response tokens per row.
        site, layers, layers_path: as in :func:`capture`.
    """

    def __init__(self, model: nn.Module, prompt_mask: torch.Tensor, scope: str, stops: Sequence[int], *,
                 max_response: int, site: str = "residual", layers: Sequence[int] | None = None,
                 layers_path: str | None = None):
        self.model = model
        self.blocks = find_layers(model, layers_path)
        self.chosen = resolve_layers(layers, len(self.blocks))
        self.prompt_mask = prompt_mask.bool()
        self.scope, self.site, self.max_response = scope, site, max_response
        self.prompt_weights = scope_mask(prompt_mask, prompt_mask.shape[1], scope)  # validates scope
        self.count_response = scope in ("response", "all")
        device = prompt_mask.device
        self.stops = torch.tensor(sorted(set(stops)) or [-1], dtype=torch.long, device=device)
        b = prompt_mask.shape[0]
        self.alive = torch.ones(b, dtype=torch.bool, device=device)
        self.per_row = torch.zeros(b, dtype=torch.long, device=device)
        self.fed = 0  # response tokens fed back so far
        self.calls = 0
        self.weights: torch.Tensor | None = None  # [B, T] float64 for the current call, None = nothing to count
        self.sums: dict[int, torch.Tensor] = {}
        self.norms: dict[int, torch.Tensor] = {}
        self._hooks: list = []

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("DecodeCapture needs generate to pass input_ids (got inputs_embeds)")
        self.calls += 1
        if self.calls == 1:
            if tuple(ids.shape) != tuple(self.prompt_mask.shape):
                raise RuntimeError(f"DecodeCapture: the first call has shape {tuple(ids.shape)}, not the prompt's "
                                   f"{tuple(self.prompt_mask.shape)} (chunked prefill is not supported)")
            w = self.prompt_weights
        else:
            # One new token per row, last in the call (a model without a KV cache is re-fed the
            # whole sequence; only its last position is new).
            tok = ids[:, -1].to(self.alive.device)
            self.alive &= ~torch.isin(tok, self.stops)
            if self.fed >= self.max_response:
                self.alive.zero_()
            self.fed += 1
            w = torch.zeros(ids.shape, dtype=torch.bool, device=self.alive.device)
            if self.count_response:
                w[:, -1] = self.alive
        self.per_row += w.sum(1)
        self.weights = w.double().unsqueeze(-1) if bool(w.any()) else None

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self.weights is None:
                return
            hd = as_tokens(hidden_of(output), *self.weights.shape[:2]).double()
            w = self.weights.to(hd.device)
            s = (hd * w).sum(1)
            n = (hd.norm(dim=-1) * w.squeeze(-1)).sum(1)
            if layer in self.sums:
                self.sums[layer] += s
                self.norms[layer] += n
            else:
                self.sums[layer], self.norms[layer] = s, n

        return hook

    def __enter__(self) -> DecodeCapture:  # noqa: PYI034
        self._hooks = [self.model.register_forward_pre_hook(self._pre, with_kwargs=True)]
        self._hooks += [site_module(self.blocks[l], self.site).register_forward_hook(self._hook(l))
                        for l in self.chosen]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def groups(self, groups: torch.Tensor, n_groups: int) -> list[ActivationSums]:
        """The captured sums, one :class:`ActivationSums` per group of rows (``groups`` [B])."""
        if self.sums:
            hidden = next(iter(self.sums.values())).shape[-1]
        else:  # nothing was counted (every response empty): zeros of the site's width
            from .steering import _hidden_size

            hidden = _hidden_size(self.model) or self.model.get_input_embeddings().weight.shape[-1]
        b = self.prompt_mask.shape[0]
        sums = {l: self.sums[l].cpu() if l in self.sums else torch.zeros(b, hidden, dtype=torch.float64)
                for l in self.chosen}
        norms = {l: self.norms[l].cpu() if l in self.norms else torch.zeros(b, dtype=torch.float64)
                 for l in self.chosen}
        return _grouped(sums, norms, self.per_row, groups, n_groups, len(self.blocks))
