"""``emoexp extract``: emotion vectors from neutral / emotion-conditioned responses.

Batches are formed globally and dealt to ranks; each rank saves its float64 partial sums
after every batch (so a killed run resumes), then one all-reduce (sum) gives every rank the
same vectors and rank 0 writes the safetensors file.

Example:
    emoexp extract --model smollm2 --data emotionquery --limit 10 --out outputs/evs.safetensors
    emoexp extract --model tiny-random-llama --limit 2 --accelerator cpu --devices 2 --out /tmp/evs.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..config import ExtractConfig, add_dataclass_arguments, config_from_args, fingerprint

__all__ = ["add_arguments", "extract", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ExtractConfig)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExtractConfig, args)
    extract(cfg)
    return 0


def extract(cfg: ExtractConfig) -> Path:
    """Run extraction for ``cfg`` (launching ``devices`` processes) and return the EV file."""
    from ..runtime import check_resources, make_fabric
    from ..workdir import WorkDir

    check_resources(cfg, outputs=[cfg.out])
    WorkDir(cfg.out).claim(fingerprint(cfg))  # refuse a different config's partial result early
    fabric = make_fabric(cfg)
    fabric.launch(_launched, cfg)
    return Path(cfg.out)


def _worker(fabric: Any, cfg: ExtractConfig, loaded: tuple[Any, Any] | None = None) -> None:
    """One rank's work; ``loaded`` is an already loaded ``(model, tokenizer)`` (from ``emoexp run``)."""
    from tqdm.auto import tqdm

    from ..datasets import dataset_fingerprint, load_queries
    from ..extraction import Accumulator, activation_norms, extract_batch, extraction_items, vectors_from
    from ..generation import make_batches
    from ..layers import find_layers
    from ..models import describe, load_model
    from ..prompts import Conditioning, encode_prompts, render_prompt
    from ..runtime import Preemption, all_reduce_sum, model_dtype, my_batches
    from ..vectors import EmotionVectors, library_versions
    from ..workdir import WorkDir

    rank, world = fabric.global_rank, fabric.world_size
    preempt = Preemption()
    wd = WorkDir(cfg.out)
    wd.claim(fingerprint(cfg))
    queries = load_queries(cfg.data, limit=cfg.limit, seed=cfg.seed, emotions=cfg.emotions, duplicates="drop")
    items = extraction_items(queries, cfg.emotions)
    if loaded is None:
        model, tok = load_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model.to(device=fabric.device, dtype=model_dtype(cfg))
    else:
        model, tok = loaded
    cond = Conditioning(strategy=cfg.conditioning)
    texts = [render_prompt(tok, it.query.query, it.emotion if it.condition == "emotional" else None, cond)
             for it in items]
    prompts = encode_prompts(tok, texts)
    batches = make_batches([len(p) for p in prompts], cfg.batch_size)
    num_layers = len(find_layers(model, cfg.layers_path))
    hidden = model.get_input_embeddings().weight.shape[-1]
    acc = Accumulator.empty(items, num_layers, hidden)
    state = wd.load_state(rank, world)
    done: list[int] = []
    if state is not None:
        acc.load_packed(state["packed"])
        done = list(state["done"])
    todo = [b for b in my_batches(len(batches), rank, world) if b not in done]
    bar = tqdm(total=len(my_batches(len(batches), rank, world)), initial=len(done), disable=rank != 0,
               desc=f"extract ({world} proc)", unit="batch")
    t0 = time.time()
    for b in todo:
        idx = batches[b]
        sums, rows = extract_batch(
            model, tok, [items[i] for i in idx], [prompts[i] for i in idx], site=cfg.site, scope=cfg.scope,
            max_new_tokens=cfg.max_new_tokens, layers_path=cfg.layers_path, seed=cfg.seed + b,
            capture=cfg.capture,
        )
        for key, s in sums.items():
            acc.add(key, s)
        wd.append_rows(rank, [{"batch": b, "item": i, **r} for i, r in zip(idx, rows)])
        done.append(b)
        wd.save_state(rank, world, {"packed": acc.pack(), "done": done})
        bar.update(1)
        preempt.stop_if_asked(rank)
    bar.close()
    total = all_reduce_sum(fabric, acc.pack())
    acc.load_packed(total)
    evs, stability = vectors_from(acc, cfg.emotions, cfg.weighting)
    if rank == 0:
        n_queries = {e: {c: sum(acc.sums[k].n_rows for k in acc.keys if k.startswith(f"{e}/{c}/"))
                         for c in ("neutral", "emotional")} for e in cfg.emotions}
        meta = {
            **describe(model, tok, cfg.model, cfg.revision),
            "site": cfg.site, "token_scope": cfg.scope, "weighting": cfg.weighting, "capture": cfg.capture,
            "layers_path": cfg.layers_path,
            "conditioning": cond.describe(), "data": cfg.data, "data_fingerprint": dataset_fingerprint(queries),
            "limit": cfg.limit, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size, "n_queries": n_queries, "split_half_cosine": stability,
            "activation_norms": activation_norms(acc),
            "world_size": world, "library_versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "extract_seconds": round(time.time() - t0, 2),
        }
        EmotionVectors(evs, meta).save(cfg.out)
        rows = sorted(wd.read_rows(), key=lambda r: r["item"])
        uniq = {r["item"]: r for r in rows}  # a batch redone after a kill wrote its rows twice
        resp = Path(cfg.out).with_suffix(".responses.jsonl")
        resp.write_text("".join(json.dumps(uniq[i], ensure_ascii=False) + "\n" for i in sorted(uniq)))
        print(f"[emoexp] wrote {cfg.out} ({len(evs)} emotions x {num_layers} layers x {hidden}) and {resp}")
    if world > 1:
        fabric.barrier()  # later stages on other ranks read the file rank 0 just wrote


def _launched(fabric: Any, cfg: Any) -> None:
    from ..runtime import finish

    _worker(fabric, cfg)
    finish(fabric)
