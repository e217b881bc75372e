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
from .vocab import CAPTURES

__all__ = ["CAPTURES", "Accumulator", "ExtractItem", "activation_norms", "extract_batch", "extraction_items",
           "vectors_from"]

CONDITIONS = ("neutral", "emotional")


@dataclass(frozen=True)
class ExtractItem:
    """One response to generate: a query under the neutral or the emotion-conditioned prompt."""

    query: Query
    emotion: str
    condition: str  # neutral | emotional
    half: int  # 0 or 1: parity of the query's rank within its emotion

    @property
    def key(self) -> str:
        return f"{self.emotion}/{self.condition}/{self.half}"


def extraction_items(queries: Sequence[Query], emotions: Sequence[str]) -> list[ExtractItem]:
    """Two items (neutral, emotional) per query whose label is in ``emotions``, in dataset order."""
    items: list[ExtractItem] = []
    seen: dict[str, int] = {}
    for q in queries:
        if q.emotion not in emotions:
            continue
        rank = seen.get(q.emotion, 0)
        seen[q.emotion] = rank + 1
        for cond in CONDITIONS:
            items.append(ExtractItem(q, q.emotion, cond, rank % 2))
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
) -> tuple[dict[str, ActivationSums], list[dict[str, Any]]]:
    """Generate the batch's responses and capture their activations.

    Returns:
        Sums per item key and one JSON-able row per item.
    """
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    keys = sorted({it.key for it in items})
    groups = torch.tensor([keys.index(it.key) for it in items])
    if capture == "decode" and getattr(model.generation_config, "forced_eos_token_id", None) is not None:
        capture = "forward"  # a forced stop token at the limit would move with feed_last; the forward pass is exact
    if capture == "decode":
        _, prompt_mask = left_pad(prompts, pad, device)
        stops = sorted(set(eos_ids(model, tok)) | set(stop_ids))
        with DecodeCapture(model, prompt_mask, scope, stops, max_response=max_new_tokens, site=site,
                           layers_path=layers_path) as cap:
            gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, feed_last=True,
                            on_step=on_step, stop_ids=stop_ids)
        sums = cap.groups(groups, len(keys))
    elif capture == "forward":
        gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, on_step=on_step,
                        stop_ids=stop_ids)
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


def vectors_from(acc: Accumulator, emotions: Sequence[str], weighting: str = "query") -> tuple[
        dict[str, torch.Tensor], dict[str, list[float]]]:
    """EVs per emotion and the per-layer cosine between the two split-half EVs."""
    evs: dict[str, torch.Tensor] = {}
    stability: dict[str, list[float]] = {}
    for e in emotions:
        halves = []
        full = {}
        for cond in CONDITIONS:
            s0, s1 = acc.sums[f"{e}/{cond}/0"], acc.sums.get(f"{e}/{cond}/1")
            full[cond] = (s0 + s1 if s1 is not None else s0).mean(weighting)
        evs[e] = (full["emotional"] - full["neutral"]).float()
        if f"{e}/neutral/1" in acc.sums and acc.sums[f"{e}/neutral/1"].n_rows:
            for h in (0, 1):
                halves.append(acc.sums[f"{e}/emotional/{h}"].mean(weighting) - acc.sums[f"{e}/neutral/{h}"].mean(weighting))
            stability[e] = torch.nn.functional.cosine_similarity(halves[0], halves[1], dim=-1).tolist()
    return evs, stability


def activation_norms(acc: Accumulator) -> list[float]:
    """[L] mean activation norm over all neutral responses (the scale of relative doses)."""
    keys = [k for k in acc.keys if "/neutral/" in k]
    total = acc.sums[keys[0]]
    for k in keys[1:]:
        total = total + acc.sums[k]
    return total.mean_norm().tolist()
