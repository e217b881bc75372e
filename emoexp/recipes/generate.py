"""``emoexp generate``: steered generation over a grid of targets x alphas x conditions.

The grid is: one ``unsteered`` pass, one ``prompt`` baseline pass per single-emotion target
(the emotional instruction in the prompt, no steering), and one ``steered`` pass per
(target, alpha). Batches (left-padded, length-sorted) pool the (entry, query) cells of all
entries, each row steered by its own direction (``steer(per_row=True)``), so batches are full
however short the query list; they are numbered globally and dealt to ranks; each rank appends
its rows to its own JSONL shard, flushed per batch; rank 0 merges them in grid and dataset
order and checks there are no gaps.
Steered rows at alpha = 0 are the unsteered rows (a zero direction is bit-identical), reused
rather than recomputed.

With ``compile`` set (GPU), decoding uses a static KV cache and a ``torch.compile``'d step, and
steering is folded into output-projection biases that are rewritten in place per batch
(:class:`emoexp.fold.BiasSlots`), so one compiled graph serves every (target, alpha); the fold
is checked against the hook path before the first batch. Doses are not recorded on this path.

Example:
    emoexp generate --model smollm2 --vectors outputs/evs.safetensors --limit 4 --alphas=-1,0,1,2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, GenerateConfig, add_dataclass_arguments, config_from_args, fingerprint, parse_target

__all__ = ["add_arguments", "generate", "grid", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, GenerateConfig)


def main(args: argparse.Namespace) -> int:
    generate(config_from_args(GenerateConfig, args))
    return 0


def grid(cfg: GenerateConfig) -> list[dict[str, Any]]:
    """The grid entries, in output order."""
    entries: list[dict[str, Any]] = []
    if "unsteered" in cfg.conditions:
        entries.append({"condition": "unsteered", "target": None, "weights": None, "alpha": None})
    for t in cfg.targets:
        w = parse_target(t)
        single = len(w) == 1 and next(iter(w)) != "base" and next(iter(w.values())) == 1.0
        if "prompt" in cfg.conditions and single:
            entries.append({"condition": "prompt", "target": t, "weights": None, "alpha": None})
        if "steered" in cfg.conditions:
            for a in cfg.alphas:
                entries.append({"condition": "steered", "target": t, "weights": w, "alpha": a})
    return entries


def generate(cfg: GenerateConfig) -> Path:
    """Run the grid for ``cfg`` (launching ``devices`` processes); returns the merged JSONL."""
    from ..runtime import check_resources, make_fabric
    from ..vectors import EmotionVectors
    from ..workdir import WorkDir

    check_resources(cfg, outputs=[cfg.out])
    if "steered" in cfg.conditions:  # a missing or corrupt file, or a target it lacks, fails before any model loads
        evs = EmotionVectors.load(cfg.vectors)
        for t in cfg.targets:
            try:
                evs.combine(parse_target(t))
            except KeyError as err:
                raise ConfigError(f"target {t!r}: {err.args[0]} in {cfg.vectors}") from None
    WorkDir(cfg.out).claim(fingerprint(cfg))
    fabric = make_fabric(cfg)
    fabric.launch(_launched, cfg)
    return Path(cfg.out)


def _worker(fabric: Any, cfg: GenerateConfig, loaded: tuple[Any, Any] | None = None) -> None:
    """One rank's work; ``loaded`` is an already loaded ``(model, tokenizer)`` (from ``emoexp run``)."""
    from tqdm.auto import tqdm

    from ..datasets import load_queries
    from ..fold import BiasSlots
    from ..generation import compile_options
    from ..generation import generate as gen
    from ..models import describe, load_model
    from ..prompts import Conditioning, encode_prompts, generation_prompt
    from ..runtime import Preemption, model_dtype, my_batches
    from ..steering import steer
    from ..vectors import EmotionVectors
    from ..workdir import WorkDir

    rank, world = fabric.global_rank, fabric.world_size
    preempt = Preemption()
    wd = WorkDir(cfg.out)
    wd.claim(fingerprint(cfg))
    queries = load_queries(cfg.data, limit=cfg.limit, seed=cfg.seed)
    if loaded is None:
        model, tok = load_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model.to(device=fabric.device, dtype=model_dtype(cfg))
    else:
        model, tok = loaded
    info = describe(model, tok, cfg.model, cfg.revision)
    evs = EmotionVectors.load(cfg.vectors) if "steered" in cfg.conditions else None
    site = cfg.site or (evs.metadata.get("site", "residual") if evs else "residual")
    cond = Conditioning(strategy=cfg.conditioning)
    entries = grid(cfg)

    prompt_cache: dict[tuple[str, str | None], list[list[int]]] = {}

    def prompts_for(entry: dict[str, Any]) -> list[list[int]]:
        kind = "prompt" if entry["condition"] == "prompt" else "plain"
        key = (kind, entry["target"] if kind == "prompt" else None)
        if key not in prompt_cache:
            emotion = next(iter(parse_target(entry["target"]))) if kind == "prompt" else None
            texts = [generation_prompt(tok, q.query, entry["condition"], emotion, cond) for q in queries]
            prompt_cache[key] = encode_prompts(tok, texts)
        return prompt_cache[key]

    jobs = _jobs(entries, len(queries), prompts_for, cfg)
    done = wd.done_batches([len(j) for j in jobs])
    mine = my_batches(len(jobs), rank, world)

    def direction_of(entry: dict[str, Any]) -> Any:
        assert evs is not None
        return (evs.at_dose(entry["weights"], entry["alpha"]) if cfg.alpha_unit == "dose"
                else entry["alpha"] * evs.combine(entry["weights"]))

    slots = opts = None
    if cfg.compile is not None:  # fast path: steering lives in biases set in place; the compiled step never changes
        slots = BiasSlots(model, site=site, layers=cfg.layers, layers_path=cfg.layers_path)
    bar = tqdm(total=len(mine), initial=sum(b in done for b in mine), disable=rank != 0,
               desc=f"generate ({world} proc)", unit="batch")
    try:
        if slots is not None:
            opts = compile_options(cfg.compile, cfg.compile_backend, fabric.device)
            probe = next((en for en in entries if en["condition"] == "steered" and en["alpha"]), None)
            if probe is not None:
                slots.verify(direction_of(probe))  # NotFoldable before any batch runs
        for b in mine:
            if b in done:
                continue
            cells = jobs[b]
            batch_prompts = [prompts_for(entries[e])[i] for e, i in cells]
            steered = [entries[e]["condition"] == "steered" for e, _ in cells]
            doses: list[float | None] = [None] * len(cells)
            if slots is not None:  # one entry per batch on this path
                entry = entries[cells[0][0]]
                slots.set(direction_of(entry) if steered[0] else None)
                outs = _gen(gen, model, tok, batch_prompts, cfg, b, opts)
            elif any(steered):
                direction, per_row = _directions(cells, entries, direction_of)
                with steer(model, direction, layers=cfg.layers, site=site, positions=cfg.positions,
                           layers_path=cfg.layers_path, record_dose=True, per_row=per_row) as s:
                    outs = _gen(gen, model, tok, batch_prompts, cfg, b)
                doses = [d if st else None for d, st in zip(s.row_doses(), steered)]
            else:
                outs = _gen(gen, model, tok, batch_prompts, cfg, b)
            rows = [_row(b, e, entries[e], queries[i], o, site, cfg, info, d)
                    for (e, i), o, d in zip(cells, outs, doses)]
            wd.append_rows(rank, rows)
            bar.update(1)
            preempt.stop_if_asked(rank)
    finally:
        if slots is not None:
            slots.remove()
            # transformers keeps the compiled step on the model; drop it so later hooks (steer, capture) run again
            model.__dict__.pop("_compiled_call", None)
    bar.close()
    if world > 1:
        fabric.barrier()
    if rank == 0:
        _merge(wd, entries, queries, cfg)


def _jobs(entries: list[dict[str, Any]], n_queries: int, prompts_for: Any,
          cfg: GenerateConfig) -> list[list[tuple[int, int]]]:
    """Global batches of (entry index, query index) cells, numbered the same on every rank.

    Eager steering gives each row its own direction, so cells of all entries are pooled and
    cut into length-sorted batches of ``batch_size`` (full batches even when the query list is
    short). The compiled path steers through shared biases: one entry per batch there, as
    with ``pool_entries=False``.
    """
    from ..generation import make_batches

    todo = [e for e, en in enumerate(entries)
            if not (en["condition"] == "steered" and en["alpha"] == 0.0 and "unsteered" in cfg.conditions)]
    if cfg.pool_entries and cfg.compile is None:
        cells = [(e, i) for e in todo for i in range(n_queries)]
        chunks = make_batches([len(prompts_for(entries[e])[i]) for e, i in cells], cfg.batch_size)
        return [[cells[k] for k in chunk] for chunk in chunks]
    jobs = []
    for e in todo:
        lengths = [len(p) for p in prompts_for(entries[e])]
        jobs.extend([(e, i) for i in chunk] for chunk in make_batches(lengths, cfg.batch_size))
    return jobs


def _directions(cells: list[tuple[int, int]], entries: list[dict[str, Any]], direction_of: Any) -> tuple[Any, bool]:
    """The batch's steering: one shared direction if every row has the same entry, else one
    direction per row (zeros for unsteered and prompt-baseline rows)."""
    import torch

    used = {e for e, _ in cells}
    if len(used) == 1:
        return direction_of(entries[next(iter(used))]), False
    dirs = {e: direction_of(entries[e]) for e in used if entries[e]["condition"] == "steered"}
    zero = torch.zeros_like(next(iter(dirs.values())))
    return torch.stack([dirs.get(e, zero) for e, _ in cells]), True


def _gen(gen: Any, model: Any, tok: Any, prompts: list[list[int]], cfg: GenerateConfig, batch: int,
         compiled: dict[str, Any] | None = None) -> Any:
    return gen(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
               temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + batch, compiled=compiled)


def _row(b: int, e: int, entry: dict, q: Any, o: Any, site: str, cfg: GenerateConfig, info: dict,
         dose: float | None) -> dict[str, Any]:
    steered = entry["condition"] == "steered"
    return {
        "batch": b, "entry": e, "id": q.id, "index": q.index, "query": q.query, "query_emotion": q.emotion,
        "condition": entry["condition"], "target": entry["target"], "weights": entry["weights"],
        "alpha": entry["alpha"], "alpha_unit": cfg.alpha_unit if steered else None, "site": site if steered else None,
        "positions": cfg.positions if steered else None, "layers": cfg.layers if steered else None,
        "dose": dose, "model": info["model_id"], "response": o.text, "n_tokens": len(o.response_ids),
        "finished": o.finished,
    }


def _merge(wd: Any, entries: list[dict], queries: list, cfg: GenerateConfig) -> None:
    got: dict[tuple[int, int], dict] = {}
    for r in wd.read_rows():
        got[(r["entry"], r["index"])] = r  # a batch redone after a kill: same rows, kept once
    unsteered = next((i for i, en in enumerate(entries) if en["condition"] == "unsteered"), None)
    out, missing = [], []
    for e, entry in enumerate(entries):
        for q in queries:
            r = got.get((e, q.index))
            if r is None and entry["condition"] == "steered" and entry["alpha"] == 0.0 and unsteered is not None:
                base = got.get((unsteered, q.index))
                if base is not None:
                    r = {**base, "entry": e, "condition": "steered", "target": entry["target"],
                         "weights": entry["weights"], "alpha": 0.0, "dose": 0.0, "reused_from": "unsteered"}
            if r is None:
                missing.append((e, q.id))
                continue
            out.append({k: v for k, v in r.items() if k != "batch"})
    if missing:
        raise RuntimeError(f"{len(missing)} generations missing after the run (first: {missing[:3]}); "
                           f"rerun the same command to complete them")
    path = Path(cfg.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    tmp.replace(path)
    print(f"[emoexp] wrote {len(out)} generations to {path}")


def _launched(fabric: Any, cfg: Any) -> None:
    from ..runtime import finish

    _worker(fabric, cfg)
    finish(fabric)
