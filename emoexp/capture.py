"""Capture per-layer activations over chosen token positions, as exact float64 sums.

One forward pass with your own hooks (never ``output_hidden_states``, which may not show
hook edits in transformers 5.x). Padding is never counted. The result is a sum plus counts,
so shards computed on different ranks add up exactly.

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

from .layers import find_layers, hidden_of, resolve_layers, site_module

__all__ = ["SCOPES", "ActivationSums", "capture", "capture_groups", "forward_kwargs", "scope_mask"]

#: ``response``: tokens after the prompt; ``prompt``: the prompt's tokens; ``all``: both;
#: ``last``: the last prompt token only (whose output predicts the first response token).
SCOPES = ("response", "prompt", "all", "last")


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
            flat[:n].reshape(num_layers, hidden).clone(), int(round(float(flat[n]))),
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
            h = hidden_of(output)
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
    hidden = next(iter(captured.values())).shape[-1]
    groups = groups.cpu()
    has = per_row > 0
    denom = per_row.clamp_min(1).double().unsqueeze(-1)
    outs = []
    for g in range(n_groups):
        sel = groups == g
        out = ActivationSums.zeros(len(blocks), hidden)
        for l, row_sum in captured.items():
            out.token_sum[l] = row_sum[sel].sum(0)
            out.row_mean_sum[l] = (row_sum / denom)[sel & has].sum(0)
            out.n_tokens[l] = int(per_row[sel].sum())
            out.norm_sum[l] = norms[l][sel].sum()
        out.n_rows = int((sel & has).sum())
        outs.append(out)
    return outs
