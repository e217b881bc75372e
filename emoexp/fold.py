"""The hook-free fast path: fold a steering direction into the bias of each block's last
output projection.

Adding ``v`` to a block's attention output equals adding ``v`` to the bias of the attention's
output projection; adding it to the MLP output (and, where the MLP output is added straight
to the residual stream, to the block output) equals adding it to the MLP's down projection
bias. No hooks run, so the folded model works under ``torch.compile``, static KV caches and
CUDA graphs. It steers every position (``positions="all"``).

Equivalence is not assumed: on entry the folded model's logits are checked against the hook
path on a probe input, and a model where the two differ (e.g. a norm after the MLP, as in
Gemma 2) is refused with the layer named.

Example:
    >>> with fold_into_bias(model, 2.0 * evs.combine({"joy": 1.0})):   # doctest: +SKIP
    ...     fast = torch.compile(model)
    ...     out = fast.generate(**batch, max_new_tokens=40)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .layers import find_layers, resolve_layers, site_module
from .steering import _hidden_size, _validate, steer

__all__ = ["NotFoldable", "fold_into_bias", "output_projection"]


class NotFoldable(RuntimeError):
    """The bias fold is not exactly equivalent to the hook path for this model/site."""


def _out_features(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # GPT-2 style transposed linear
        return int(m.nf)
    return None


def output_projection(block: nn.Module, site: str, hidden: int) -> nn.Module:
    """The last linear layer (registration order) of the site's module that writes ``hidden``
    features: ``o_proj``/``c_proj``/``dense`` for attn, ``down_proj``/``fc2`` for mlp/residual."""
    owner = site_module(block, "attn" if site == "attn" else "mlp")
    found = [m for m in owner.modules() if _out_features(m) == hidden]
    if not found:
        raise NotFoldable(f"no linear layer writing {hidden} features in {type(owner).__name__}")
    return found[-1]


@contextlib.contextmanager
def fold_into_bias(
    model: nn.Module,
    directions: torch.Tensor,
    *,
    layers: Sequence[int] | int | None = None,
    site: str = "residual",
    layers_path: str | None = None,
    verify: bool = True,
) -> Iterator[list[nn.Module]]:
    """Add ``directions[l]`` to the bias of block ``l``'s output projection while open.

    Args:
        model: an eager model (compile it inside the context, after folding).
        directions: [num_layers, hidden_size].
        layers: layers to steer (``None`` = all).
        site: ``residual``, ``attn`` or ``mlp``.
        verify: compare logits with the hook path on a probe input first (one extra pair of
            forward passes); raise :class:`NotFoldable` if they differ.

    Yields:
        The projection modules whose biases were changed. Original biases (or their absence)
        are restored bit-exactly on exit.
    """
    blocks = find_layers(model, layers_path)
    _validate(model, directions, blocks)
    hidden = _hidden_size(model) or directions.shape[1]
    chosen = resolve_layers(layers, len(blocks))
    projs = [output_projection(blocks[l], site, hidden) for l in chosen]
    probe = None
    if verify:
        vocab = model.get_input_embeddings().weight.shape[0]
        probe = torch.arange(3, 3 + 6, device=next(model.parameters()).device).remainder(vocab).unsqueeze(0)
        with torch.no_grad(), steer(model, directions, layers=chosen, site=site, layers_path=layers_path):
            expected = model(probe).logits
    saved: list[tuple[nn.Module, torch.Tensor | None]] = []
    try:
        for l, proj in zip(chosen, projs):
            old = proj.bias
            saved.append((proj, None if old is None else old.detach().clone()))
            ref = proj.weight
            v = directions[l].to(device=ref.device, dtype=ref.dtype)
            new = v.clone() if old is None else old.detach() + v
            proj.bias = nn.Parameter(new, requires_grad=False)
        if probe is not None:
            with torch.no_grad():
                got = model(probe).logits
            err = float((got - expected).abs().max())
            scale = float(expected.abs().max()) or 1.0
            if err > 1e-4 * max(1.0, scale):
                raise NotFoldable(
                    f"folding into {type(projs[0]).__name__} biases at site {site!r} differs from the hook path "
                    f"(max logit error {err:.2e}) for {type(blocks[0]).__name__}: use steer() for this model")
        yield projs
    finally:
        for proj, old in saved:
            if old is None:
                proj.bias = None
            else:
                proj.bias = nn.Parameter(old, requires_grad=False)
