"""``emoexp extract``: emotion vectors from neutral / emotion-conditioned responses.

:func:`prepare` does everything that can fail before a model loads: it reads the model's shape
and content fingerprint (:func:`emoexp.models.inspect_model`), loads and fingerprints the
queries, renders and measures every prompt against the model's context, and derives the
result's identity. Then batches are formed globally and dealt to ranks; each rank saves its
float64 partial sums after every batch (so a killed run resumes), one all-reduce (sum) gives
every rank the same vectors and rank 0 writes the safetensors file.

Example:
    emoexp extract --model smollm2 --limit 10 --out outputs/evs.safetensors
    emoexp extract --model tiny-random-llama --limit 2 --accelerator cpu --devices 2 --out /tmp/evs.safetensors
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ExtractConfig
from ..fingerprint import result_identity
from ..redact import log

__all__ = ["Args", "ExtractJob", "extract", "main", "prepare"]

Args = ExtractConfig


@dataclass
class ExtractJob:
    """An extraction ready to run: its config, model info, items and encoded prompts."""

    cfg: ExtractConfig
    info: Any  # ModelInfo
    tok: Any
    queries: list[Any]
    items: list[Any]
    prompts: list[list[int]]
    data_fingerprint: str
    identity: dict[str, Any]
    out: Path


def main(cfg: ExtractConfig) -> int:
    extract(cfg)
    return 0


def prepare(cfg: ExtractConfig, *, info: Any = None, tok: Any = None, out: str | Path | None = None) -> ExtractJob:
    """Everything before the weights: model shape and fingerprint, queries, prompts (checked
    against the context), identity, output path (default: derived from the identity)."""
    from ..datasets import dataset_fingerprint, load_queries
    from ..engines import check_engine
    from ..extraction import extraction_items
    from ..models import inspect_model, load_tokenizer
    from ..prompts import Conditioning, check_lengths, encode_prompts, render_prompt

    info = info or inspect_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    check_engine(cfg, info)
    queries = load_queries(cfg.data, limit=cfg.limit, seed=cfg.seed, emotions=cfg.emotions, duplicates="drop")
    items = extraction_items(queries, cfg.emotions, per_query=cfg.method == "pca")
    tok = tok or load_tokenizer(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    cond = Conditioning.of(cfg)
    texts = [render_prompt(tok, it.query.query, it.emotion if it.condition == "emotional" else None, cond)
             for it in items]
    prompts = encode_prompts(tok, texts, cond)
    check_lengths(prompts, [it.query.id for it in items], info.context, cfg.max_new_tokens + 1,
                  cfg.max_prompt_tokens)
    data_fp = dataset_fingerprint(queries)
    identity = result_identity(cfg, {"data": data_fp, "model": info.fingerprint})
    path = Path(out or cfg.out or default_out(cfg.model, identity))
    return ExtractJob(cfg, info, tok, queries, items, prompts, data_fp, identity, path)


def default_out(model: str, identity: dict[str, Any]) -> Path:
    """``outputs/extract/<model>-<identity>/evs.safetensors``."""
    from ..workdir import slug

    return Path("outputs") / "extract" / f"{slug(model)}-{identity['sha'][:10]}" / "evs.safetensors"


def extract(cfg: ExtractConfig) -> Path:
    """Run extraction for ``cfg`` (launching ``devices`` processes) and return the EV file."""
    from ..runtime import check_resources, is_rank_zero, make_fabric
    from ..workdir import WorkDir, exclusive

    check_resources(cfg)
    job = prepare(cfg)
    check_resources(cfg, outputs=[job.out])
    wd = WorkDir(job.out)
    with exclusive(wd.path, what="output") if is_rank_zero() else _nothing():
        state = wd.claim(job.identity)
        if state == "complete":
            log(f"{job.out} is complete for this config and these inputs: nothing to do")
            return job.out
        log(f"extract: {len(job.queries)} queries x 2 conditions = {len(job.items)} responses of up to "
            f"{cfg.max_new_tokens} tokens, batch {cfg.batch_size}, {cfg.devices * cfg.num_nodes} process(es) "
            f"-> {job.out}" + (" (resuming)" if state == "resume" else ""))
        fabric = make_fabric(cfg)
        fabric.launch(_launched, job)
    return job.out


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def run_stage(fabric: Any, job: ExtractJob, model: Any, progress: Callable[[int, int], None] | None = None,
              engine: Any = None) -> None:
    """One rank's extraction with ``model`` already on its device (resumes saved batches); with
    ``engine`` (vLLM) the replies come from it and ``model`` reads their activations."""
    from tqdm.auto import tqdm

    from ..extraction import Accumulator, activation_norms, extract_batch, vectors_from
    from ..generation import BAR_FORMAT, bar_stepper, make_batches
    from ..layers import find_layers
    from ..models import describe
    from ..prompts import Conditioning
    from ..runtime import Preemption, all_reduce_sum, my_batches
    from ..vectors import EmotionVectors, library_versions
    from ..workdir import WorkDir

    cfg, items, prompts = job.cfg, job.items, job.prompts
    rank, world = fabric.global_rank, fabric.world_size
    preempt = Preemption()
    wd = WorkDir(job.out)
    wd.claim(job.identity)
    batches = make_batches([len(p) for p in prompts], cfg.batch_size)
    num_layers = len(find_layers(model, cfg.layers_path))
    hidden = model.get_input_embeddings().weight.shape[-1]
    acc = Accumulator.empty(items, num_layers, hidden)
    state = wd.load_state(rank, world)
    done: list[int] = []
    if state is not None:
        acc.load_packed(state["packed"])
        done = list(state["done"])
    mine = my_batches(len(batches), rank, world)
    todo = [b for b in mine if b not in done]
    rows_total = sum(len(batches[b]) for b in mine)
    bar = tqdm(total=rows_total, initial=sum(len(batches[b]) for b in mine if b in done), disable=rank != 0,
               desc=f"extract ({world} proc)", unit="resp", dynamic_ncols=True, bar_format=BAR_FORMAT)
    stop_ids = Conditioning.of(cfg).stop_ids(job.tok)
    responses = None
    if engine is not None:
        from ..engines.vllm_engine import stop_tokens

        eos = stop_tokens(cfg.model, job.tok)

        def responses(ps: list[list[int]]) -> list[Any]:
            return engine.generate(ps, None, max_new_tokens=cfg.max_new_tokens, stop_ids=stop_ids, eos_ids=eos,
                                   decode=lambda r: job.tok.decode(r, skip_special_tokens=True))
    t0 = time.time()
    for b in todo:
        idx = batches[b]
        sums, rows = extract_batch(
            model, job.tok, [items[i] for i in idx], [prompts[i] for i in idx], site=cfg.site, scope=cfg.scope,
            max_new_tokens=cfg.max_new_tokens, layers_path=cfg.layers_path, seed=cfg.seed + b,
            capture=cfg.capture, on_step=bar_stepper(bar, len(idx)), stop_ids=stop_ids, responses=responses,
        )
        for key, s in sums.items():
            acc.add(key, s)
        wd.append_rows(rank, [{"batch": b, "item": i, **r} for i, r in zip(idx, rows)])
        done.append(b)
        wd.save_state(rank, world, {"packed": acc.pack(), "done": done})
        bar.n = sum(len(batches[x]) for x in done if x in mine)  # exact at each batch's end
        bar.refresh()
        if progress is not None:
            progress(bar.n, rows_total)
        preempt.stop_if_asked(rank)
    bar.close()
    total = all_reduce_sum(fabric, acc.pack())
    acc.load_packed(total)
    evs, stability = vectors_from(acc, cfg.emotions, cfg.weighting, cfg.method)
    if rank == 0:
        n_queries = {e: {c: sum(acc.sums[k].n_rows for k in acc.keys if k.startswith(f"{e}/{c}/"))
                         for c in ("neutral", "emotional")} for e in cfg.emotions}
        cond = Conditioning.of(cfg)
        meta = {
            **describe(model, job.tok, cfg.model, cfg.revision, job.info),
            "site": cfg.site, "token_scope": cfg.scope, "weighting": cfg.weighting, "method": cfg.method,
            "capture": cfg.capture, "engine": cfg.engine,
            "layers_path": cfg.layers_path,
            "conditioning": cond.describe(job.tok), "data": cfg.data, "data_fingerprint": job.data_fingerprint,
            "identity": job.identity["sha"],
            "limit": cfg.limit, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size, "n_queries": n_queries, "split_half_cosine": stability,
            "activation_norms": activation_norms(acc),
            "world_size": world, "library_versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "extract_seconds": round(time.time() - t0, 2),
        }
        EmotionVectors(evs, meta).save(job.out)
        rows = sorted(wd.read_rows(), key=lambda r: r["item"])
        uniq = {r["item"]: r for r in rows}  # a batch redone after a kill wrote its rows twice
        resp = job.out.with_suffix(".responses.jsonl")
        resp.write_text("".join(json.dumps(uniq[i], ensure_ascii=False) + "\n" for i in sorted(uniq)))
        wd.mark_complete()
        log(f"wrote {job.out} ({len(evs)} emotions x {num_layers} layers x {hidden}) and {resp.name}")
    if world > 1:
        fabric.barrier()  # later stages on other ranks read the file rank 0 just wrote


def _launched(fabric: Any, job: Any) -> None:
    from ..runtime import finish, load_on_device

    model, _ = load_on_device(fabric, job.cfg)
    engine = None
    if job.cfg.engine == "vllm":
        from ..engines import build_vllm

        engine = build_vllm(job.cfg, job.info, site=job.cfg.site, layers=None)
    run_stage(fabric, job, model, engine=engine)
    finish(fabric)
