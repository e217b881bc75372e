"""The steered grid on the vLLM engine: consecutive batches of ``emoexp generate`` go to vLLM in one
call (each row with its own direction) and come back per batch, so they are saved, counted and
resumed batch by batch exactly as on the transformers path (``recipes/generate.py:run_stage``)."""

from __future__ import annotations

import itertools
from typing import Any

from ..vocab import STEERED_CONDITIONS

__all__ = ["ENGINE_ROWS", "engine_groups", "grid_outputs"]

#: Rows per vLLM call: enough for its continuous batching to fill, few enough that a kill loses little.
ENGINE_ROWS = 256


def engine_groups(todo: list[int], jobs: list[list[tuple[int, int]]]) -> dict[int, list[int]]:
    """Each batch's group: consecutive batches sent to vLLM in one call, about :data:`ENGINE_ROWS` rows."""
    groups: list[list[int]] = []
    for b in todo:
        if not groups or sum(len(jobs[x]) for x in groups[-1]) >= ENGINE_ROWS:
            groups.append([])
        groups[-1].append(b)
    return {b: g for g in groups for b in g}


def grid_outputs(engine: Any, job: Any, jobs: list[list[tuple[int, int]]], group: list[int],
                 direction_of: Any) -> dict[int, list[Any]]:
    """One vLLM call for ``group``'s batches (each row with its own direction); the replies per batch."""
    from ..prompts import Conditioning
    from .vllm_engine import stop_tokens

    cfg, entries = job.cfg, job.entries
    cells = [c for b in group for c in jobs[b]]
    prompts = [job.prompts_for(entries[e])[i] for e, i in cells]
    dirs = [direction_of(entries[e]) if entries[e]["condition"] in STEERED_CONDITIONS else None for e, _ in cells]
    outs = engine.generate(prompts, dirs, max_new_tokens=cfg.max_new_tokens,
                           stop_ids=Conditioning.of(cfg).stop_ids(job.tok), eos_ids=stop_tokens(cfg.model, job.tok),
                           do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed + group[0], decode=lambda r: job.tok.decode(r, skip_special_tokens=True))
    starts = list(itertools.accumulate((len(jobs[b]) for b in group), initial=0))
    return {b: outs[a:z] for b, (a, z) in zip(group, itertools.pairwise(starts))}
