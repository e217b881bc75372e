"""``emoexp generate``: steered generation over a grid of targets x alphas x conditions.

The grid is: one ``unsteered`` pass, one ``prompt`` baseline pass per single-emotion target
(the emotional instruction in the prompt, no steering), and one ``steered`` pass per
(target, alpha). :func:`prepare` checks everything before a model loads: the vectors against
the model (layers and hidden size always; the model they were extracted from unless
``allow_foreign_vectors``), the targets against the vectors, the layers against the model,
every prompt against the context. Batches (left-padded, length-sorted) pool the (entry, query)
cells of all entries, each row steered by its own direction (``steer(per_row=True)``); they
are numbered globally and dealt to ranks; each rank appends its rows to its own JSONL shard,
flushed per batch; rank 0 merges them in grid and dataset order and checks there are no gaps.
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

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, GenerateConfig, parse_target
from ..fingerprint import result_identity
from ..redact import log
from ..vocab import STEERED_CONDITIONS

__all__ = ["Args", "GenerateJob", "check_vectors", "generate", "grid", "main", "prepare"]

Args = GenerateConfig


def main(cfg: GenerateConfig) -> int:
    generate(cfg)
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
        if "prompt_steered" in cfg.conditions and single:  # the emotional prompt plus the EV
            for a in cfg.alphas:
                entries.append({"condition": "prompt_steered", "target": t, "weights": w, "alpha": a})
    return entries


def check_vectors(evs: Any, info: Any, cfg: GenerateConfig, path: str | Path) -> None:
    """Refuse vectors that cannot steer this model, before its weights load.

    Raises:
        VectorMismatch: other layers or hidden size; extracted from another model (unless
            ``allow_foreign_vectors``).
        ConfigError: a target names an emotion the file lacks.
    """
    from ..vectors import check_compatible

    check_compatible(evs, info, allow_foreign=cfg.allow_foreign_vectors, path=path)
    try:
        steering_vectors(evs, cfg)
    except ValueError as err:
        raise ConfigError(f"--vectors {path}: {err}") from None
    for t in cfg.targets:
        try:
            evs.combine(parse_target(t))
        except KeyError as err:
            raise ConfigError(f"--targets: {t!r}: {err.args[0]} in {path}") from None


def steering_vectors(evs: Any, cfg: GenerateConfig) -> Any:
    """The EVs the grid steers with: centred (``centre``), then only the reliable layers
    (``min_split_half``), as configured.

    Raises:
        ValueError: centring one emotion; no split-half cosines recorded.
    """
    if cfg.centre:
        evs = evs.centred()
    if cfg.min_split_half is not None:
        evs = evs.reliable_layers(cfg.min_split_half)
    return evs


@dataclass
class GenerateJob:
    """A generation grid ready to run (vectors attached with :meth:`with_vectors`)."""

    cfg: GenerateConfig
    info: Any  # ModelInfo
    tok: Any
    queries: list[Any]
    entries: list[dict[str, Any]]
    prompts: dict[tuple[str, str | None], list[list[int]]]
    data_fingerprint: str
    out: Path | None = None
    evs: Any = None
    vectors: Path | None = None
    identity: dict[str, Any] = field(default_factory=dict)

    def prompts_for(self, entry: dict[str, Any]) -> list[list[int]]:
        return self.prompts[_prompt_key(entry)]

    def describe(self) -> str:
        """``31 grid entries x 30 queries = 930 responses (780 generated: ...)``, as the progress bar counts."""
        n, q = len(self.entries), len(self.queries)
        reused = sum(_reused_from(en, self.entries) is not None for en in self.entries)
        why = (f" ({(n - reused) * q} generated: the {reused} α = 0 steered entries repeat the unsteered replies "
               "bit for bit and are copied)") if reused else ""
        return f"{n} grid entries x {q} queries = {n * q} responses{why}"

    @property
    def site(self) -> str:
        return self.cfg.site or (self.evs.metadata.get("site", "residual") if self.evs is not None else "residual")

    def with_vectors(self, path: str | Path | None, out: str | Path | None = None) -> GenerateJob:
        """Load and check the vectors (when the grid steers), then fix the identity and output."""
        from ..vectors import EmotionVectors

        inputs = {"data": self.data_fingerprint, "model": self.info.fingerprint}
        if set(STEERED_CONDITIONS) & set(self.cfg.conditions):
            if path is None:
                raise ConfigError("--vectors: the steered condition needs an EV file")
            self.evs, self.vectors = EmotionVectors.load(path), Path(path)
            check_vectors(self.evs, self.info, self.cfg, path)
            inputs["vectors"] = self.evs.fingerprint()
        self.identity = result_identity(self.cfg, inputs)
        self.out = Path(out or self.cfg.out or default_out(self.cfg.model, self.identity))
        return self


def _prompt_key(entry: dict[str, Any]) -> tuple[str, str | None]:
    return ("prompt", entry["target"]) if entry["condition"] in ("prompt", "prompt_steered") else ("plain", None)


def prepare(cfg: GenerateConfig, *, info: Any = None, tok: Any = None, attach: bool = True) -> GenerateJob:
    """Everything before the weights: model shape, queries, every prompt (checked against the
    context), layers, and (with ``attach``) the vectors and the identity."""
    from ..datasets import dataset_fingerprint, load_queries
    from ..engines import check_engine
    from ..models import inspect_model, load_tokenizer
    from ..prompts import Conditioning, check_lengths, encode_prompts, generation_prompt

    info = info or inspect_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    check_engine(cfg, info)
    if cfg.layers is not None:
        bad = [layer for layer in cfg.layers if not -info.num_layers <= layer < info.num_layers]
        if bad:
            raise ConfigError(f"--layers: {bad[0]} is out of range: {info.spec} has {info.num_layers} layers "
                              f"(0..{info.num_layers - 1}, or negative from the end)")
    queries = load_queries(cfg.data, limit=cfg.limit, seed=cfg.seed)
    tok = tok or load_tokenizer(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    cond = Conditioning.of(cfg)
    entries = grid(cfg)
    prompts: dict[tuple[str, str | None], list[list[int]]] = {}
    for entry in entries:
        key = _prompt_key(entry)
        if key not in prompts:
            emotion = next(iter(parse_target(entry["target"]))) if key[0] == "prompt" else None
            texts = [generation_prompt(tok, q.query, entry["condition"], emotion, cond) for q in queries]
            prompts[key] = encode_prompts(tok, texts, cond)
            check_lengths(prompts[key], [q.id for q in queries], info.context, cfg.max_new_tokens,
                          cfg.max_prompt_tokens)
    job = GenerateJob(cfg, info, tok, queries, entries, prompts, dataset_fingerprint(queries))
    return job.with_vectors(cfg.vectors) if attach else job


def default_out(model: str, identity: dict[str, Any]) -> Path:
    """``outputs/generate/<model>-<identity>/generations.jsonl``."""
    from ..workdir import slug

    return Path("outputs") / "generate" / f"{slug(model)}-{identity['sha'][:10]}" / "generations.jsonl"


def generate(cfg: GenerateConfig) -> Path:
    """Run the grid for ``cfg`` (launching ``devices`` processes); returns the merged JSONL."""
    import contextlib

    from ..runtime import check_resources, is_rank_zero, make_fabric
    from ..workdir import WorkDir, exclusive

    check_resources(cfg)
    job = prepare(cfg)
    assert job.out is not None
    check_resources(cfg, outputs=[job.out])
    wd = WorkDir(job.out)
    with exclusive(wd.path, what="output") if is_rank_zero() else contextlib.nullcontext():
        state = wd.claim(job.identity)
        if state == "complete":
            log(f"{job.out} is complete for this config and these inputs: nothing to do")
            return job.out
        log(f"generate: {job.describe()}, up to {cfg.max_new_tokens} tokens each, batch {cfg.batch_size} -> {job.out}"
            + (" (resuming)" if state == "resume" else ""))
        fabric = make_fabric(cfg)
        fabric.launch(_launched, job)
    return job.out


def run_stage(fabric: Any, job: GenerateJob, model: Any, progress: Callable[[int, int], None] | None = None,
              engine: Any = None) -> None:
    """One rank's share of the grid with ``model`` already on its device (resumes saved batches); with
    ``engine`` (a :class:`~emoexp.engines.vllm_engine.VllmEngine`) the replies come from it and ``model``
    may be ``None``."""
    from tqdm.auto import tqdm

    from ..engines.grid import engine_groups, grid_outputs
    from ..fold import BiasSlots
    from ..generation import BAR_FORMAT, bar_stepper, compile_options
    from ..generation import generate as gen
    from ..models import describe
    from ..runtime import Preemption, my_batches
    from ..steering import steer
    from ..workdir import WorkDir

    assert job.out is not None
    cfg, entries, queries, evs = job.cfg, job.entries, job.queries, job.evs
    if evs is not None:
        evs = steering_vectors(evs, cfg)
    rank, world = fabric.global_rank, fabric.world_size
    preempt = Preemption()
    wd = WorkDir(job.out)
    wd.claim(job.identity)
    info = describe(model, job.tok, cfg.model, cfg.revision, job.info)
    site = job.site
    if engine is not None and engine.site != site:
        raise ValueError(f"the vLLM engine steers site {engine.site!r}, the grid asks for {site!r}")
    jobs = _jobs(entries, len(queries), job.prompts_for, cfg)
    done = wd.done_batches([len(j) for j in jobs])
    mine = my_batches(len(jobs), rank, world)

    def direction_of(entry: dict[str, Any]) -> Any:
        assert evs is not None
        return (evs.at_dose(entry["weights"], entry["alpha"]) if cfg.alpha_unit == "dose"
                else entry["alpha"] * evs.combine(entry["weights"]))

    slots = opts = None
    if cfg.compile is not None:  # fast path: steering lives in biases set in place; the compiled step never changes
        slots = BiasSlots(model, site=site, layers=cfg.layers, layers_path=cfg.layers_path)
    rows_total = sum(len(jobs[b]) for b in mine)
    finished = sum(len(jobs[b]) for b in mine if b in done)
    bar = tqdm(total=rows_total, initial=finished, disable=rank != 0, desc=f"generate ({world} proc)", unit="resp",
               dynamic_ncols=True, bar_format=BAR_FORMAT)
    group_of = engine_groups([b for b in mine if b not in done], jobs) if engine is not None else {}
    pending: dict[int, list[Any]] = {}  # vLLM replies of batches sent together, saved one batch at a time
    try:
        if slots is not None:
            opts = compile_options(cfg.compile, cfg.compile_backend, fabric.device)
            probe = next((en for en in entries if en["condition"] in STEERED_CONDITIONS and en["alpha"]), None)
            if probe is not None:
                slots.verify(direction_of(probe))  # NotFoldable before any batch runs
        for b in mine:
            if b in done:
                continue
            cells = jobs[b]
            batch_prompts = [job.prompts_for(entries[e])[i] for e, i in cells]
            steered = [entries[e]["condition"] in STEERED_CONDITIONS for e, _ in cells]
            doses: list[float | None] = [None] * len(cells)
            step = bar_stepper(bar, len(cells))
            if engine is not None:
                if b not in pending:
                    pending = grid_outputs(engine, job, jobs, group_of[b], direction_of)
                outs = pending.pop(b)
            elif slots is not None:  # one entry per batch on this path
                entry = entries[cells[0][0]]
                slots.set(direction_of(entry) if steered[0] else None)
                outs = _gen(gen, model, job.tok, batch_prompts, cfg, b, opts, step)
            elif any(steered):
                direction, per_row = _directions(cells, entries, direction_of)
                with steer(model, direction, layers=cfg.layers, site=site, positions=cfg.positions,
                           layers_path=cfg.layers_path, record_dose=True, per_row=per_row) as s:
                    outs = _gen(gen, model, job.tok, batch_prompts, cfg, b, None, step)
                doses = [d if st else None for d, st in zip(s.row_doses(), steered)]
            else:
                outs = _gen(gen, model, job.tok, batch_prompts, cfg, b, None, step)
            rows = [_row(b, e, entries[e], queries[i], o, site, cfg, info, d)
                    for (e, i), o, d in zip(cells, outs, doses)]
            wd.append_rows(rank, rows)
            finished += len(cells)
            bar.n = finished  # exact at each batch's end
            bar.refresh()
            if progress is not None:
                progress(bar.n, rows_total)
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
        _merge(wd, entries, queries, job.out)
        wd.mark_complete()
    if world > 1:
        fabric.barrier()  # later stages on other ranks read the merged file


def _jobs(entries: list[dict[str, Any]], n_queries: int, prompts_for: Any,
          cfg: GenerateConfig) -> list[list[tuple[int, int]]]:
    """Global batches of (entry index, query index) cells, numbered the same on every rank.

    Eager steering gives each row its own direction, so cells of all entries are pooled and
    cut into length-sorted batches of ``batch_size`` (full batches even when the query list is
    short). The compiled path steers through shared biases: one entry per batch there, as
    with ``pool_entries=False``.
    """
    from ..generation import make_batches

    todo = [e for e, en in enumerate(entries) if _reused_from(en, entries) is None]
    if cfg.pool_entries and cfg.compile is None:
        cells = [(e, i) for e in todo for i in range(n_queries)]
        chunks = make_batches([len(prompts_for(entries[e])[i]) for e, i in cells], cfg.batch_size)
        return [[cells[k] for k in chunk] for chunk in chunks]
    jobs = []
    for e in todo:
        lengths = [len(p) for p in prompts_for(entries[e])]
        jobs.extend([(e, i) for i in chunk] for chunk in make_batches(lengths, cfg.batch_size))
    return jobs


def _reused_from(entry: dict[str, Any], entries: list[dict[str, Any]]) -> int | None:
    """The entry whose rows an alpha = 0 entry repeats bit for bit (a zero direction changes
    nothing): steered -> unsteered, prompt_steered -> the same target's prompt baseline."""
    if entry["alpha"] != 0.0 or entry["condition"] not in STEERED_CONDITIONS:
        return None
    want = ("unsteered", None) if entry["condition"] == "steered" else ("prompt", entry["target"])
    return next((i for i, en in enumerate(entries)
                 if en["condition"] == want[0] and (want[1] is None or en["target"] == want[1])), None)


def _directions(cells: list[tuple[int, int]], entries: list[dict[str, Any]], direction_of: Any) -> tuple[Any, bool]:
    """The batch's steering: one shared direction if every row has the same entry, else one
    direction per row (zeros for unsteered and prompt-baseline rows)."""
    import torch

    used = {e for e, _ in cells}
    if len(used) == 1:
        return direction_of(entries[next(iter(used))]), False
    dirs = {e: direction_of(entries[e]) for e in used if entries[e]["condition"] in STEERED_CONDITIONS}
    zero = torch.zeros_like(next(iter(dirs.values())))
    return torch.stack([dirs.get(e, zero) for e, _ in cells]), True


def _gen(gen: Any, model: Any, tok: Any, prompts: list[list[int]], cfg: GenerateConfig, batch: int,
         compiled: dict[str, Any] | None = None, on_step: Any = None) -> Any:
    from ..prompts import Conditioning

    return gen(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
               temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + batch, compiled=compiled, on_step=on_step,
               stop_ids=Conditioning.of(cfg).stop_ids(tok))


def _row(b: int, e: int, entry: dict, q: Any, o: Any, site: str, cfg: GenerateConfig, info: dict,
         dose: float | None) -> dict[str, Any]:
    steered = entry["condition"] in STEERED_CONDITIONS
    return {
        "batch": b, "entry": e, "id": q.id, "index": q.index, "query": q.query, "query_emotion": q.emotion,
        "condition": entry["condition"], "target": entry["target"], "weights": entry["weights"],
        "alpha": entry["alpha"], "alpha_unit": cfg.alpha_unit if steered else None, "site": site if steered else None,
        "positions": cfg.positions if steered else None, "layers": cfg.layers if steered else None,
        "dose": dose, "model": info["model_id"], "response": o.text, "n_tokens": len(o.response_ids),
        "finished": o.finished,
    }


def _merge(wd: Any, entries: list[dict], queries: list, out: Path) -> None:
    got: dict[tuple[int, int], dict] = {}
    for r in wd.read_rows():
        got[(r["entry"], r["index"])] = r  # a batch redone after a kill: same rows, kept once
    rows, missing = [], []
    for e, entry in enumerate(entries):
        same = _reused_from(entry, entries)
        for q in queries:
            r = got.get((e, q.index))
            if r is None and same is not None and (e, q.index) not in got and (same, q.index) in got:
                base = got[(same, q.index)]
                r = {**base, "entry": e, "condition": entry["condition"], "target": entry["target"],
                     "weights": entry["weights"], "alpha": 0.0, "dose": 0.0,
                     "reused_from": entries[same]["condition"]}
            if r is None:
                missing.append((e, q.id))
                continue
            rows.append({k: v for k, v in r.items() if k != "batch"})
    if missing:
        raise RuntimeError(f"{len(missing)} generations missing after the run (first: {missing[:3]}); "
                           f"rerun the same command to complete them")
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    log(f"wrote {len(rows)} generations to {out}")


def _launched(fabric: Any, job: Any) -> None:
    from ..runtime import finish, load_on_device

    if job.cfg.engine == "vllm":
        from ..engines import build_vllm

        first = next(iter(job.prompts.values()))[0]
        engine = build_vllm(job.cfg, job.info, site=job.site, layers=job.cfg.layers, probe=first)
        run_stage(fabric, job, None, engine=engine)
    else:
        model, _ = load_on_device(fabric, job.cfg)
        run_stage(fabric, job, model)
    finish(fabric)
