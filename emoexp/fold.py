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

__all__ = ["BiasSlots", "NotFoldable", "fold_into_bias", "output_projection"]


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


class BiasSlots:
    """Steering biases that stay installed, set in place.

    Each chosen block's output projection keeps its own bias tensor (a zero bias is added where
    there was none), and :meth:`set` writes ``original + direction``
    into it in place. A model compiled after the slots were installed therefore sees every new
    direction without recompiling, and CUDA graphs replay with the new values (their inputs'
    addresses do not change).

    Example:
        >>> slots = BiasSlots(model, site="attn")                     # doctest: +SKIP
        >>> slots.verify(direction)   # the fold equals the hook path here, or NotFoldable
        >>> slots.set(2.0 * direction); model.generate(...)           # doctest: +SKIP
        >>> slots.set(None); slots.remove()                           # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, site: str = "residual", layers: Sequence[int] | int | None = None,
                 layers_path: str | None = None):
        self.model, self.site, self.layers_path = model, site, layers_path
        self.blocks = find_layers(model, layers_path)
        self.hidden = _hidden_size(model) or model.get_input_embeddings().weight.shape[-1]
        self.chosen = resolve_layers(layers, len(self.blocks))
        self.projs = [output_projection(self.blocks[l], site, self.hidden) for l in self.chosen]
        self._saved: list[torch.Tensor | None] = []
        for proj in self.projs:
            old = proj.bias
            self._saved.append(None if old is None else old.detach().clone())
            if old is None:
                ref = proj.weight
                proj.bias = nn.Parameter(torch.zeros(self.hidden, dtype=ref.dtype, device=ref.device),
                                         requires_grad=False)

    @torch.no_grad()
    def set(self, directions: torch.Tensor | None) -> None:
        """Write ``original bias + directions[l]`` (``None``: the original bias) in place."""
        if directions is not None:
            _validate(self.model, directions, self.blocks)
        for l, proj, old in zip(self.chosen, self.projs, self._saved):
            base = old.to(proj.bias.device) if old is not None else torch.zeros_like(proj.bias)
            if directions is None:
                proj.bias.copy_(base)
            else:
                proj.bias.copy_(base + directions[l].to(device=proj.bias.device, dtype=proj.bias.dtype))

    @torch.no_grad()
    def verify(self, directions: torch.Tensor) -> None:
        """Check on a probe input that the fold of ``directions`` equals the hook path.

        Raises:
            NotFoldable: the logits differ (e.g. a norm after the MLP, as in Gemma 2); the
                slots are left holding the original biases.
        """
        param = next(self.model.parameters())
        vocab = self.model.get_input_embeddings().weight.shape[0]
        probe = torch.arange(3, 3 + 6, device=param.device).remainder(vocab).unsqueeze(0)
        self.set(None)
        base = self.model(probe).logits.float()
        with steer(self.model, directions, layers=self.chosen, site=self.site, layers_path=self.layers_path):
            expected = self.model(probe).logits.float()
        self.set(directions)
        try:
            got = self.model(probe).logits.float()
        finally:
            self.set(None)
        err = float((got - expected).abs().max())
        if param.dtype in (torch.float32, torch.float64):
            ok = err <= 1e-4 * max(1.0, float(expected.abs().max()))
        else:  # half precision: the two paths round differently; compare with the change steering makes
            change = float((expected - base).abs().max())
            ok = err <= max(0.1 * change, 16 * torch.finfo(param.dtype).eps * float(expected.abs().max()))
        if not ok:
            raise NotFoldable(
                f"folding into {type(self.projs[0]).__name__} biases at site {self.site!r} differs from the hook path "
                f"(max logit error {err:.2e}) for {type(self.blocks[0]).__name__}: use steer() for this model")

    @torch.no_grad()
    def remove(self) -> None:
        """Put the original biases back, bit-exactly and into the same tensors (optimizers and
        other references keep working); biases the slots added are removed."""
        for proj, old in zip(self.projs, self._saved):
            if old is None:
                proj.bias = None
            else:
                proj.bias.copy_(old.to(proj.bias.device))


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
    _validate(model, directions, find_layers(model, layers_path))
    slots = BiasSlots(model, site=site, layers=layers, layers_path=layers_path)
    try:
        if verify:
            slots.verify(directions)
        slots.set(directions)
        yield slots.projs
    finally:
        slots.remove()
