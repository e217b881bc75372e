"""Find the decoder blocks of a causal LM, and the site modules inside them.

Blocks are found by *structure*: the module list whose length equals the model's
number of hidden layers (or, failing that, the longest list of identical modules).
No class names are matched, so renamed classes upstream do not break discovery.

Example:
    >>> blocks = find_layers(model)            # doctest: +SKIP
    >>> site_module(blocks[0], "attn")         # doctest: +SKIP
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

from .vocab import SITES

__all__ = ["SITES", "LayerDiscoveryError", "as_tokens", "call_shape", "find_layers", "hidden_of", "layer_path",
           "replace_hidden", "resolve_layers", "site_module"]


# Attribute names (not class names) of the attention and MLP children of a decoder block,
# across the families we test. The first one present wins.
_SITE_CHILDREN = {
    "attn": ("self_attn", "attn", "attention", "self_attention", "mixer"),
    "mlp": ("mlp", "ffn", "feed_forward", "block_sparse_moe", "fc2"),
}


class LayerDiscoveryError(ValueError):
    """No decoder block list could be found (or the override does not name one)."""


def _module_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]


def _homogeneous(ml: nn.ModuleList) -> bool:
    return len({type(m) for m in ml}) == 1


def _describe(cands: Sequence[tuple[str, nn.ModuleList]]) -> str:
    if not cands:
        return "  (the model has no nn.ModuleList at all)"
    return "\n".join(f"  {n or '<root>'}: {len(m)} x {type(m[0]).__name__}" for n, m in cands)


def layer_path(model: nn.Module) -> str:
    """Dotted path of the decoder block list found by :func:`find_layers`.

    Args:
        model: a causal LM (any ``nn.Module``).

    Returns:
        The dotted attribute path, e.g. ``"model.layers"`` or ``"transformer.h"``.
    """
    cands = _module_lists(model)
    n_layers = _num_hidden_layers(model)
    homog = [(n, m) for n, m in cands if _homogeneous(m)]
    if n_layers is not None:
        exact = [(n, m) for n, m in homog if len(m) == n_layers]
        if exact:
            # Outermost first: the shortest path is the model's own block list,
            # not a list nested inside a block.
            return min(exact, key=lambda c: c[0].count("."))[0]
    if homog:
        longest = max(len(m) for _, m in homog)
        if longest > 1:
            best = [(n, m) for n, m in homog if len(m) == longest]
            return min(best, key=lambda c: c[0].count("."))[0]
    raise LayerDiscoveryError(
        "could not find the decoder blocks of "
        f"{type(model).__name__} (config says {n_layers} layers). Candidate module lists:\n"
        f"{_describe(cands)}\nPass the dotted path of the block list, e.g. layers_path='model.layers'."
    )


def _num_hidden_layers(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    for getter in (lambda c: c.get_text_config(), lambda c: c):
        try:
            c = getter(cfg)
        except Exception:  # noqa: BLE001, S112 - configs without get_text_config
            continue
        for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
            v = getattr(c, key, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def find_layers(model: nn.Module, layers_path: str | None = None) -> list[nn.Module]:
    """Return the decoder blocks of ``model`` in order.

    Args:
        model: a Hugging Face causal LM or any module holding a list of blocks.
        layers_path: dotted path overriding discovery, e.g. ``"model.layers"``.

    Returns:
        The blocks as a list (the modules themselves, not copies).

    Raises:
        LayerDiscoveryError: nothing found, or ``layers_path`` is not a module list;
            the message lists the candidate module lists.

    Example:
        >>> len(find_layers(model)) == model.config.num_hidden_layers  # doctest: +SKIP
        True
    """
    if layers_path:
        try:
            ml = operator.attrgetter(layers_path)(model)
        except AttributeError:
            ml = None
        if not isinstance(ml, (nn.ModuleList, nn.Sequential)) or len(ml) == 0:
            raise LayerDiscoveryError(
                f"layers_path={layers_path!r} does not name a non-empty module list in "
                f"{type(model).__name__}. Candidate module lists:\n{_describe(_module_lists(model))}"
            )
        return list(ml)
    return list(operator.attrgetter(layer_path(model))(model))


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Normalise layer indices (``None`` = all; negative indices count from the end).

    Raises:
        IndexError: an index outside ``[-num_layers, num_layers)``; names the range.
    """
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    out: list[int] = []
    for i in layers:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"layer indices must be ints, got {i!r}")
        if not -num_layers <= i < num_layers:
            raise IndexError(f"layer index {i} out of range for a model with {num_layers} layers "
                             f"(valid: {-num_layers}..{num_layers - 1})")
        j = i % num_layers
        if j not in out:
            out.append(j)
    return sorted(out)


def site_module(block: nn.Module, site: str) -> nn.Module:
    """The module whose output is the given site of ``block``.

    ``residual`` is the block itself; ``attn`` and ``mlp`` are its attention / MLP child.

    Raises:
        ValueError: unknown site (lists the valid ones) or no such child (lists children).
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")
    if site == "residual":
        return block
    for name in _SITE_CHILDREN[site]:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return child
    children = ", ".join(n for n, _ in block.named_children())
    raise ValueError(f"no {site!r} module in block {type(block).__name__} (children: {children})")


def hidden_of(output: object) -> torch.Tensor:
    """The hidden-state tensor inside a module output (a bare tensor or a tuple's first item).

    transformers 5.x blocks mostly return a bare tensor; some (Bloom, MPT) return tuples.
    Indexing ``output[0]`` on a bare tensor would silently take batch row 0.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def as_tokens(h: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``h`` as [batch, length, hidden]. Some sites flatten the tokens (OPT's ``fc2`` returns
    [batch * length, hidden]); reading position ``t`` of such an output as row ``t`` would
    silently mix rows and positions.

    Raises:
        ValueError: a 2-D output that is not [batch * length, hidden].
    """
    if h.dim() != 2:
        return h
    if h.shape[0] != batch * length:
        raise ValueError(f"a site output of shape {tuple(h.shape)} is neither [batch, length, hidden] nor "
                         f"[batch * length, hidden] for batch {batch}, length {length}")
    return h.view(batch, length, h.shape[-1])


def call_shape(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """(batch, length) of a causal LM forward call, from ``input_ids`` or ``inputs_embeds``."""
    x = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
    return (int(x.shape[0]), int(x.shape[1])) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None


def replace_hidden(output: object, hidden: torch.Tensor) -> object:
    """Return ``output`` with its hidden-state tensor replaced (same container type)."""
    if isinstance(output, torch.Tensor):
        return hidden
    assert isinstance(output, (tuple, list))
    return type(output)((hidden, *output[1:]))
