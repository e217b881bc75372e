"""Extraction of emotion vectors, one batch at a time (plain PyTorch, no Fabric).

For each query of emotion ``e`` two responses are generated: one under the neutral
instruction, one under the emotion-conditioned instruction. The site's activations over the
token scope are summed while the responses are generated (``capture="decode"``, the default:
prompt tokens in the prefill, each response token when it is fed back, one extra decoding
step for the last) or, with ``capture="forward"``, in one extra forward pass over
``prompt + response`` afterwards. The two agree up to floating-point reassociation. Sums are
kept per (emotion, condition, half) where ``half`` is the query's position parity, so the EV
and a split-half EV for stability come from the same pass.

    EV_e[l] = mean_q h_l(q, e-conditioned) - mean_q h_l(q, neutral)

With ``method="pca"`` sums are kept per query too, and the EV is the first principal direction
``v_l`` of the paired differences ``d_q[l] = h_l(q, e) - h_l(q, neutral)`` (uncentred, so the
direction along which the pairs differ most, mean shift included), scaled to the mean
difference's projection: ``EV_e[l] = (mean_q d_q[l] . v_l) v_l`` (sign-free; equal to the mean
EV when every pair differs along one direction).

Example:
    >>> items = extraction_items(queries, ["joy", "anger"])             # doctest: +SKIP
    >>> acc = Accumulator.empty(items, num_layers=30, hidden=576)        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .activations import ActivationSums, DecodeCapture, capture_groups, scope_mask
from .datasets import DatasetError, Query
from .generation import capture_batch, eos_ids, generate, left_pad
from .vocab import CAPTURES, METHODS

__all__ = ["CAPTURES", "METHODS", "Accumulator", "ExtractItem", "activation_norms", "extract_batch",
           "extraction_items", "principal_direction", "vectors_from"]

CONDITIONS = ("neutral", "emotional")


@dataclass(frozen=True)
class ExtractItem:
    """One response to generate: a query under the neutral or the emotion-conditioned prompt."""

    query: Query
    emotion: str
    condition: str  # neutral | emotional
    half: int  # 0 or 1: parity of the query's rank within its emotion
    rank: int | None = None  # the query's rank within its emotion, when sums are kept per query

    @property
    def key(self) -> str:
        half = f"{self.emotion}/{self.condition}/{self.half}"
        return half if self.rank is None else f"{half}/{self.rank}"


def extraction_items(queries: Sequence[Query], emotions: Sequence[str], *, per_query: bool = False) -> list[ExtractItem]:
    """Two items (neutral, emotional) per query whose label is in ``emotions``, in dataset order
    (``per_query``: keyed per query, as ``method="pca"`` needs)."""
    items: list[ExtractItem] = []
    seen: dict[str, int] = {}
    for q in queries:
        if q.emotion not in emotions:
            continue
        rank = seen.get(q.emotion, 0)
        seen[q.emotion] = rank + 1
        for cond in CONDITIONS:
            items.append(ExtractItem(q, q.emotion, cond, rank % 2, rank if per_query else None))
    missing = [e for e in emotions if e not in seen]
    if missing:
        present = sorted({str(q.emotion) for q in queries})
        raise DatasetError(f"emotions: no queries labelled {', '.join(missing)} in the data (labels there: "
                           f"{', '.join(present)}); extract only those present with --emotions")
    return items


class Accumulator:
    """ActivationSums per key, packable into one float64 tensor in a fixed key order."""

    def __init__(self, keys: Sequence[str], num_layers: int, hidden: int):
        self.keys = sorted(set(keys))
        self.num_layers, self.hidden = num_layers, hidden
        self.sums = {k: ActivationSums.zeros(num_layers, hidden) for k in self.keys}

    @classmethod
    def empty(cls, items: Sequence[ExtractItem], num_layers: int, hidden: int) -> Accumulator:
        return cls([i.key for i in items], num_layers, hidden)

    def add(self, key: str, sums: ActivationSums) -> None:
        self.sums[key] = self.sums[key] + sums

    def pack(self) -> torch.Tensor:
        return torch.cat([self.sums[k].pack() for k in self.keys])

    def load_packed(self, flat: torch.Tensor) -> Accumulator:
        n = flat.numel() // len(self.keys)
        for i, k in enumerate(self.keys):
            self.sums[k] = ActivationSums.unpack(flat[i * n: (i + 1) * n], self.num_layers, self.hidden)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "packed": self.pack()}


def extract_batch(
    model: Any,
    tok: Any,
    items: Sequence[ExtractItem],
    prompts: Sequence[Sequence[int]],
    *,
    site: str,
    scope: str,
    max_new_tokens: int,
    layers_path: str | None = None,
    seed: int | None = None,
    capture: str = "decode",
    on_step: Any = None,
    stop_ids: Sequence[int] = (),
    responses: Any = None,
) -> tuple[dict[str, ActivationSums], list[dict[str, Any]]]:
    """Generate the batch's responses and capture their activations.

    ``responses(prompts)``, when given, writes the replies instead (another engine, e.g. vLLM:
    a list of :class:`~emoexp.generation.Generated`); the activations are then read in one
    teacher-forced pass (``capture="forward"``).

    Returns:
        Sums per item key and one JSON-able row per item.
    """
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    keys = sorted({it.key for it in items})
    groups = torch.tensor([keys.index(it.key) for it in items])
    if capture == "decode" and getattr(model.generation_config, "forced_eos_token_id", None) is not None:
        capture = "forward"  # a forced stop token at the limit would move with feed_last; the forward pass is exact
    if responses is not None:
        capture = "forward"
    if capture == "decode":
        _, prompt_mask = left_pad(prompts, pad, device)
        stops = sorted(set(eos_ids(model, tok)) | set(stop_ids))
        with DecodeCapture(model, prompt_mask, scope, stops, max_response=max_new_tokens, site=site,
                           layers_path=layers_path) as cap:
            gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, feed_last=True,
                            on_step=on_step, stop_ids=stop_ids)
        sums = cap.groups(groups, len(keys))
    elif capture == "forward":
        gens = responses(prompts) if responses is not None else generate(
            model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, on_step=on_step, stop_ids=stop_ids)
        ids, mask, width = capture_batch(prompts, [g.response_ids for g in gens], pad, device)
        sums = capture_groups(model, ids, mask, scope_mask(mask, width, scope), groups, len(keys), site=site,
                              layers_path=layers_path)
    else:
        raise ValueError(f"unknown capture {capture!r}; valid: {', '.join(CAPTURES)}")
    out = dict(zip(keys, sums))
    rows_out = [
        {"id": it.query.id, "index": it.query.index, "emotion": it.emotion, "condition": it.condition,
         "query": it.query.query, "response": g.text, "n_tokens": len(g.response_ids), "finished": g.finished}
        for it, g in zip(items, gens)
    ]
    return out, rows_out


def vectors_from(acc: Accumulator, emotions: Sequence[str], weighting: str = "query", method: str = "mean") -> tuple[
        dict[str, torch.Tensor], dict[str, list[float]]]:
    """EVs per emotion and the per-layer cosine between the two split-half EVs (formed the same way)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    evs: dict[str, torch.Tensor] = {}
    stability: dict[str, list[float]] = {}
    for e in emotions:
        evs[e] = _vector(acc, e, None, weighting, method).float()
        halves = [_vector(acc, e, h, weighting, method) for h in (0, 1) if _summed(acc, f"{e}/neutral/{h}").n_rows]
        if len(halves) == 2:
            stability[e] = torch.nn.functional.cosine_similarity(halves[0], halves[1], dim=-1).tolist()
    return evs, stability


def _summed(acc: Accumulator, *prefixes: str) -> ActivationSums:
    """The sums of every key equal to a prefix or below it (``joy/neutral/0`` holds ``joy/neutral/0/4``)."""
    total = ActivationSums.zeros(acc.num_layers, acc.hidden)
    for k in acc.keys:
        if any(k == p or k.startswith(p + "/") for p in prefixes):
            total = total + acc.sums[k]
    return total


def _vector(acc: Accumulator, emotion: str, half: int | None, weighting: str, method: str) -> torch.Tensor:
    """[L, H] float64 EV of one emotion from both halves (``half=None``) or one."""
    halves = (0, 1) if half is None else (half,)
    if method == "mean":
        mean = {c: _summed(acc, *(f"{emotion}/{c}/{h}" for h in halves)).mean(weighting) for c in CONDITIONS}
        return mean["emotional"] - mean["neutral"]
    diffs = []
    for k in acc.keys:  # per-query keys: emotion/condition/half/rank
        parts = k.split("/")
        if parts[:2] != [emotion, "neutral"] or len(parts) != 4 or int(parts[2]) not in halves:
            continue
        pair = acc.sums[k], acc.sums[f"{emotion}/emotional/{parts[2]}/{parts[3]}"]
        if all(s.n_rows and int(s.n_tokens.min()) for s in pair):  # a pair with an empty response has no difference
            diffs.append(pair[1].mean(weighting) - pair[0].mean(weighting))
    if not diffs:
        raise ValueError(f"method pca: no per-query sums with tokens in scope for {emotion} (extract with method=pca)")
    return principal_direction(torch.stack(diffs))


def principal_direction(diffs: torch.Tensor) -> torch.Tensor:
    """[Q, L, H] paired differences -> [L, H]: per layer, the mean difference projected onto the
    first right-singular vector of the (uncentred) differences."""
    _, _, vh = torch.linalg.svd(diffs.transpose(0, 1), full_matrices=False)  # [L, Q, H] -> vh [L, k, H]
    v = vh[:, 0, :]
    return (diffs.mean(0) * v).sum(-1, keepdim=True) * v


def activation_norms(acc: Accumulator) -> list[float]:
    """[L] mean activation norm over all neutral responses (the scale of relative doses)."""
    keys = [k for k in acc.keys if "/neutral/" in k]
    total = acc.sums[keys[0]]
    for k in keys[1:]:
        total = total + acc.sums[k]
    return total.mean_norm().tolist()
