"""Batched generation with left padding, and deterministic global batching.

Plain PyTorch + transformers; no Fabric. Batches are formed from the whole item list
(sorted by prompt length, then index) before any rank sees them, so every item meets the
same batch-mates whatever the world size.

Example:
    >>> batches = make_batches([len(p) for p in prompts], batch_size=8)   # doctest: +SKIP
    >>> outs = generate(model, tok, [prompts[i] for i in batches[0]], max_new_tokens=40)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BAR_FORMAT", "Generated", "bar_stepper", "capture_batch", "compile_options", "eos_ids", "generate",
           "left_pad", "make_batches"]


@dataclass
class Generated:
    """One generated response: token ids without the stop token, its text, and whether it stopped."""

    response_ids: list[int]
    text: str
    finished: bool


def make_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Deterministic batches of item indices (length-sorted so padding is small).

    Example:
        >>> make_batches([3, 9, 4, 8], 2)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def eos_ids(model: Any, tok: Any) -> list[int]:
    """All stop token ids known to the tokenizer and the generation config."""
    ids: set[int] = set()
    for v in (getattr(tok, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


@torch.no_grad()
def generate(
    model: Any,
    tok: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 0.6,
    top_p: float = 0.9,
    seed: int | None = None,
    feed_last: bool = False,
    compiled: dict[str, Any] | None = None,
    on_step: Callable[[float], None] | None = None,
    stop_ids: Sequence[int] = (),
) -> list[Generated]:
    """Generate one response per prompt (token ids), batched with left padding.

    Greedy by default; with ``do_sample`` the RNG is seeded with ``seed`` right before the
    call, so a batch's samples do not depend on what ran before it.

    ``feed_last`` runs one decoding step more and drops its token, so the last kept token is
    fed back through the model (what :class:`emoexp.activations.DecodeCapture` needs). The kept
    tokens are the same as without it: each step's choice depends only on the tokens before.

    ``on_step(fraction)`` is called after each decoding step with the fraction of the batch's
    steps it stands for (progress bars; the scores are passed through untouched).

    ``stop_ids`` are extra stop tokens (e.g. line breaks for a base model's plain prompt,
    :meth:`emoexp.prompts.Conditioning.stop_ids`): a reply ends before the first one, and has at
    least one token (stop tokens are suppressed at the first step).

    ``compiled`` (from :func:`compile_options`) decodes with a static KV cache and a
    ``torch.compile``'d step; without it transformers' auto-compile is switched off, so hooks
    (steering, capture) always run.
    """
    if feed_last and getattr(model.generation_config, "forced_eos_token_id", None) is not None:
        raise ValueError("feed_last would move this model's forced stop token (generation_config.forced_eos_token_id) "
                         "one step later; capture with a forward pass instead (capture='forward')")
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad, device)
    stops = sorted(set(eos_ids(model, tok)) | set(stop_ids))
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens + int(feed_last), "do_sample": do_sample,
                          "pad_token_id": pad, "eos_token_id": stops or None}
    if stop_ids:
        kw["min_new_tokens"] = 1
    kw.update(compiled if compiled is not None else {"disable_compile": True})
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    if on_step is not None:
        from transformers import LogitsProcessor, LogitsProcessorList

        class _Step(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                on_step(1 / kw["max_new_tokens"])
                return scores

        kw["logits_processor"] = LogitsProcessorList([_Step()])
    out = model.generate(input_ids=ids, attention_mask=mask, **kw)
    new = out[:, ids.shape[1]: ids.shape[1] + max_new_tokens].tolist()
    results = []
    stop_set = set(stops)
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stop_set), None)
        resp = row if cut is None else row[:cut]
        results.append(Generated(resp, tok.decode(resp, skip_special_tokens=True), cut is not None))
    return results


#: A tqdm format for bars that move by fractions of a response (see :func:`bar_stepper`).
BAR_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}]"


def bar_stepper(bar: Any, rows: int) -> Callable[[float], None] | None:
    """An ``on_step`` for :func:`generate` that moves a tqdm ``bar`` by ``rows`` responses spread
    over the batch's decoding steps, so progress shows per row even when one batch of 64 takes
    minutes (the caller sets the exact count at the batch's end)."""
    if bar.disable:
        return None

    def step(fraction: float) -> None:
        if bar.n + rows * fraction <= bar.total:
            bar.update(rows * fraction)

    return step


def compile_options(mode: str | None = "reduce-overhead", backend: str = "inductor",
                    device: Any = "cuda") -> dict[str, Any]:
    """``generate`` options for a static KV cache and a compiled decoding step.

    ``mode`` is torch.compile's (``default``, ``reduce-overhead`` = CUDA graphs,
    ``max-autotune``); it is only passed to the inductor backend. On CPU, transformers does not
    compile by itself; it is asked to explicitly (useful for tests, rarely faster).
    """
    from transformers import CompileConfig

    cc = CompileConfig(backend=backend, mode=mode if backend == "inductor" else None)
    if torch.device(device).type == "cpu":
        cc._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": cc}


def capture_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[left-padded prompt | right-padded response]`` ids and mask, and the prompt width.

    This is the layout :func:`emoexp.activations.scope_mask` expects.
    """
    p_ids, p_mask = left_pad(prompts, pad_id)
    rw = max((len(r) for r in responses), default=0)
    r_ids = torch.full((len(responses), rw), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(responses), rw), dtype=torch.long)
    for i, r in enumerate(responses):
        if len(r):
            r_ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            r_mask[i, : len(r)] = 1
    ids = torch.cat([p_ids, r_ids], 1).to(device)
    mask = torch.cat([p_mask, r_mask], 1).to(device)
    return ids, mask, p_ids.shape[1]

