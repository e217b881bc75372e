"""Peers on the same work: repeng and steering-vectors against emoexp, scored by the same scorer.

Each library builds its own vectors, the way its README does, from the same EmotionQuery items and
the same conditioning as an emoexp run (its ``config.yaml``): per emotion, one pair per extraction
query, the emotion-conditioned prompt against the neutral one (``emoexp.prompts.render_prompt``),
read at the prompt's last token.

- repeng 0.4.0: ``ControlVector.train`` (PCA of the paired differences, ``pca_diff``), applied
  by ``ControlModel`` at layers -5 … -17 (its README's choice), coefficient grid ``--repeng``;
- steering-vectors 0.12.2: ``train_steering_vector`` (mean difference, decoder-block outputs at
  every layer, its default), applied with ``SteeringVector.apply`` at every token, multiplier
  grid ``--sv``.

Both then answer the run's EmotionQuery+ queries (greedy, the run's ``max_new_tokens``, through
``emoexp.generation.generate`` with hooks on), and every reply is scored with the scorer the run
used (``emoexp.score``: EPS, topic consistency, repetition). emoexp's own rows are the run's
``scores.jsonl``; its unsteered replies are regenerated here and must equal the run's (checked).

Per method and emotion: the largest gain of the target emotion's probability over unsteered (paired
by query) among the grid points that keep topic >= 0.8x and repetition <= 1.5x unsteered, with a
bootstrap 95% CI over queries; "none" where no grid point gains within those limits. The mean over
the five emotions counts "none" as 0 (what the method gives within the limits) and its CI is the
bootstrap over queries of each query's mean over emotions. Each method picks its best point on the
same queries it is scored on, so all best gains are optimistic in the same way; more grid points
means more chances (emoexp's default grid has 3 positive α, the peers get 5 each).

The table goes to docs/benchmarks.md (section "Peers"); generations and scores to ``--save``.

Install: ``bash scripts/install.sh --bench`` (the peers with ``--no-deps``: repeng pins numpy<2
and steering-vectors transformers<5, both older than ours; both work here as shown below).

Run (after ``emoexp run`` and ``emoexp run --generate.centre true``):
    .venv/bin/python benchmarks/peers.py outputs/run/<uncentred> outputs/run/<centred>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from report import DOC, load_note, machine, write_section

LIMITS = {"min_topic_ratio": 0.8, "max_rep_ratio": 1.5}
REPENG_LAYERS = list(range(-5, -18, -1))  # its README's layers (of a 32-layer model); all but the first below 18


def repeng_layers(n_layers: int) -> list[int]:
    """repeng's README layers, or every layer but the first on a model too shallow for them."""
    return REPENG_LAYERS if n_layers >= 18 else list(range(-1, -n_layers, -1))


def _numpy_compat() -> None:
    """repeng 0.4.0 names ``np.float_`` in an annotation (removed in NumPy 2): alias it before import."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]


def load_run(folder: Path) -> tuple[Any, pd.DataFrame]:
    """An emoexp run folder's config and scored rows (the run's own scorer)."""
    from emoexp.config import RunConfig
    from emoexp.config_parsing import from_dict, load_yaml

    for name in ("config.yaml", "scores.jsonl"):
        if not (folder / name).is_file():
            raise SystemExit(f"peers: {folder / name} is missing; pass the folder of a finished `emoexp run`")
    cfg = from_dict(RunConfig, load_yaml(folder / "config.yaml"), where=str(folder / "config.yaml"))
    return cfg, pd.read_json(folder / "scores.jsonl", lines=True)


def training_pairs(cfg: Any, tok: Any) -> dict[str, list[tuple[str, str]]]:
    """Per emotion: (emotion-conditioned prompt, neutral prompt) for each extraction query of it."""
    from emoexp.datasets import load_queries
    from emoexp.prompts import Conditioning, render_prompt

    ex, cond = cfg.extract, Conditioning.of(cfg)
    queries = load_queries(ex.data, limit=ex.limit, seed=cfg.seed, emotions=ex.emotions, duplicates="drop")
    return {e: [(render_prompt(tok, q.query, e, cond), render_prompt(tok, q.query, None, cond))
                for q in queries if q.emotion == e] for e in ex.emotions}


def _generate_rows(model: Any, tok: Any, cfg: Any, queries: list[Any], prompts: list[list[int]], method: str,
                   condition: str, target: str | None, alpha: float) -> list[dict[str, Any]]:
    from emoexp.generation import generate
    from emoexp.prompts import Conditioning

    out = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                   stop_ids=Conditioning.of(cfg).stop_ids(tok))
    return [{"method": method, "id": q.id, "query": q.query, "condition": condition, "target": target,
             "alpha": alpha, "response": g.text} for q, g in zip(queries, out)]


def peer_generations(cfg: Any, grids: dict[str, list[float]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Unsteered replies, then each peer's replies per emotion and grid point; seconds per stage."""
    from tqdm.auto import tqdm

    from emoexp.datasets import load_queries
    from emoexp.models import load_model
    from emoexp.prompts import Conditioning, encode_prompts, generation_prompt

    model, tok = load_model(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
    cond = Conditioning.of(cfg)
    queries = load_queries(cfg.generate.data, limit=cfg.generate.limit, seed=cfg.seed)
    prompts = encode_prompts(tok, [generation_prompt(tok, q.query, "steered", None, cond) for q in queries], cond)
    pairs = training_pairs(cfg, tok)
    times: dict[str, float] = {}
    rows = _generate_rows(model, tok, cfg, queries, prompts, "unsteered", "unsteered", None, 0.0)
    total = sum(len(g) for g in grids.values()) * len(pairs)
    bar = tqdm(total=total, desc="peers: steered grid points", unit="point", dynamic_ncols=True)

    if "repeng" in grids:
        _numpy_compat()
        from repeng import ControlModel, ControlVector, DatasetEntry

        t = time.time()
        cm = ControlModel(model, repeng_layers(model.config.num_hidden_layers))
        vectors = {e: ControlVector.train(cm, tok, [DatasetEntry(positive=p, negative=n) for p, n in ps],
                                          method="pca_diff")
                   for e, ps in pairs.items()}
        times["repeng: vectors"] = time.time() - t
        t = time.time()
        for e, v in vectors.items():
            for c in grids["repeng"]:
                cm.set_control(v, c)
                rows += _generate_rows(model, tok, cfg, queries, prompts, "repeng", "steered", e, c)
                bar.update()
        cm.reset()
        cm.unwrap()
        times["repeng: generation"] = time.time() - t

    if "steering-vectors" in grids:
        from steering_vectors import train_steering_vector

        t = time.time()
        vectors = {e: train_steering_vector(model, tok, ps, read_token_index=-1, batch_size=8)
                   for e, ps in pairs.items()}
        times["steering-vectors: vectors"] = time.time() - t
        t = time.time()
        for e, v in vectors.items():
            for m in grids["steering-vectors"]:
                with v.apply(model, multiplier=m):
                    rows += _generate_rows(model, tok, cfg, queries, prompts, "steering-vectors", "steered", e, m)
                bar.update()
        times["steering-vectors: generation"] = time.time() - t
    bar.close()
    return rows, times


def generate_and_score(cfg: Any, grids: dict[str, list[float]], scorer: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """The peers' replies (and unsteered ones) scored by ``scorer`` (a ``name@hash`` identity)."""
    from emoexp import score

    rows, times = peer_generations(cfg, grids)
    gens = pd.DataFrame(rows)
    t = time.time()
    scores = score(list(gens["response"]), list(gens["query"]),
                   [None if c == "unsteered" else tg for c, tg in zip(gens["condition"], gens["target"])],
                   metrics=["eps", "topic", "repetition"], backend={"preset": "offline", "eps": scorer.split("@")[0]})
    times["scoring"] = time.time() - t
    scored = pd.concat([gens, scores], axis=1)
    scored = scored.loc[:, ~scored.columns.duplicated()]
    scored["scorer"] = scorer
    return scored, times


def best_gains(table: pd.DataFrame, emotions: list[str], n_boot: int = 1000) -> dict[str, Any]:
    """Per emotion the best grid point within the limits (gain, CI, α), and the mean over emotions."""
    from emoexp.eval.stats import aggregate, best_per_target, bootstrap_ci, gain

    metrics = [f"p_{e}" for e in emotions] + ["topic", "repetition"]
    steered = table[table["condition"].isin(["unsteered", "steered"])]
    agg = aggregate(steered, by=["condition", "target", "alpha"], metrics=metrics, n_boot=10)
    base = steered[steered["condition"] == "unsteered"]
    ids = sorted(base["id"])
    per_query = pd.DataFrame(0.0, index=ids, columns=emotions)
    out: dict[str, Any] = {}
    for b in best_per_target(agg, **LIMITS):
        e = b["target"]
        if e not in emotions:
            continue
        if not (b["within_limits"] and b["gain"] > 0):
            out[e] = None
            continue
        rows = steered[(steered["condition"] == "steered") & (steered["target"] == e) & (steered["alpha"] == b["alpha"])]
        g = gain(rows, base, n_boot=n_boot)
        paired = rows.set_index("id")[f"p_{e}"] - base.set_index("id")[f"p_{e}"]
        per_query[e] = paired.reindex(ids).to_numpy(dtype=float)
        out[e] = {"gain": g["gain"], "lo": g["gain_ci_low"], "hi": g["gain_ci_high"], "alpha": b["alpha"],
                  "topic_ratio": b["topic_ratio"], "rep_ratio": b["rep_ratio"]}
    mean, lo, hi = bootstrap_ci(per_query.mean(axis=1).to_numpy(), n_boot=n_boot)
    out["mean"] = {"gain": mean, "lo": lo, "hi": hi}
    return out


def _cell(b: dict[str, Any] | None, unit: str) -> str:
    if b is None:
        return "none"
    at = f" ({unit} {b['alpha']:g})" if "alpha" in b else ""
    return f"{b['gain']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}]{at}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished `emoexp run` folders (the first one's config drives the peers)")
    ap.add_argument("--repeng", type=float, nargs="*", default=[0.5, 1.0, 2.0, 4.0, 8.0],
                    help="repeng coefficients (its vectors are unit length per layer)")
    ap.add_argument("--sv", type=float, nargs="*", default=[0.01, 0.02, 0.04, 0.06, 0.09, 0.125, 0.25, 0.5, 1.0, 2.0],
                    help="steering-vectors multipliers (its vectors are raw mean differences added at every layer, "
                         "so they compound: on SmolLM2 everything from x 0.125 up leaves the topic)")
    ap.add_argument("--save", default="outputs/peers", help="folder for the generations and scores")
    ap.add_argument("--out", default=str(DOC))
    ap.add_argument("--report_only", action="store_true", help="rewrite the table from --save's replies and scores")
    args = ap.parse_args()
    torch.manual_seed(0)
    runs = [(Path(r), *load_run(Path(r))) for r in args.runs]
    cfg = runs[0][1]
    emotions = list(cfg.generate.targets)
    scorers = sorted({s for _, _, tab in runs for s in tab["scorer"].dropna().unique()})
    if len(scorers) != 1:
        raise SystemExit(f"peers: the runs were scored by {scorers}; re-score them with one scorer first "
                         "(emoexp evaluate <folder> --eps <name>)")
    save = Path(args.save)
    t0 = time.time()
    if args.report_only:  # the table again from the saved replies and scores
        scored = pd.read_json(save / "scores.jsonl", lines=True)
        old = save / "results.json"
        saved = json.loads(old.read_text()) if old.is_file() else {}
        times, load15 = saved.get("times", {}), saved.get("load_15min")
        grids = {m: sorted(g["alpha"].unique()) for m, g in scored[scored["condition"] == "steered"].groupby("method")}
    else:
        grids = {k: v for k, v in (("repeng", args.repeng), ("steering-vectors", args.sv)) if v}
        scored, times = generate_and_score(cfg, grids, scorers[0])
        load15 = os.getloadavg()[2]  # how busy the machine was while the peers ran
        save.mkdir(parents=True, exist_ok=True)
        scored.to_json(save / "scores.jsonl", orient="records", lines=True, force_ascii=False)

    # The unsteered replies regenerated here must be the runs' own (same model, prompts, greedy).
    unst = scored[scored["condition"] == "unsteered"].set_index("id")["response"]
    same = {str(folder): int((tab[tab["condition"] == "unsteered"].set_index("id")["response"]
                             .reindex(unst.index) == unst).sum()) for folder, _, tab in runs}
    # A peer whose hooks did nothing would tie unsteered everywhere: how many replies its largest setting changed.
    changed = {peer: float((scored[(scored["method"] == peer) & (scored["alpha"] == max(grid))].set_index("id")
                            .groupby("target")["response"].apply(lambda r: (r != unst.reindex(r.index)).mean())).mean())
               for peer, grid in grids.items()}
    results: dict[str, dict[str, Any]] = {}
    for folder, rcfg, tab in runs:
        name = "emoexp (centred)" if rcfg.generate.centre else "emoexp"
        results[name] = best_gains(tab, emotions)
    for peer in grids:
        results[peer] = best_gains(pd.concat([scored[scored["condition"] == "unsteered"],
                                              scored[scored["method"] == peer]]), emotions)
    if not args.report_only:
        times["generation and scoring"] = time.time() - t0
    made = (save / "scores.jsonl").stat().st_mtime  # when the replies were generated and scored

    units = {"repeng": "c", "steering-vectors": "×"}
    names = list(results)
    table = ["| target | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for e in [*emotions, "mean"]:
        cells = [_cell(results[n].get(e), units.get(n, "α")) for n in names]
        table.append(f"| **{e}** | " + " | ".join(cells) + " |" if e == "mean" else f"| {e} | " + " | ".join(cells) + " |")
    grid_text = "; ".join([f"emoexp α {', '.join(f'{a:g}' for a in cfg.generate.alphas)}"]
                          + [f"{p} {', '.join(f'{v:g}' for v in g)}" for p, g in grids.items()])
    n_q = len(unst)
    section = (
        f"## Peers: the same EmotionQuery work, the same scorer\n\n"
        f"Machine: {machine()}. Measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(made))} with "
        f"`python benchmarks/peers.py {' '.join(args.runs)}` "
        f"({times.get('generation and scoring', times.get('total', 0)) / 60:.0f} min{load_note(load15)}).\n\n"
        f"Model `{cfg.model}`; vectors from {cfg.extract.limit} EmotionQuery queries per emotion "
        f"({cfg.conditioning} conditioning); replies to {n_q} EmotionQuery+ queries, greedy, "
        f"{cfg.max_new_tokens} new tokens; scorer `{scorers[0]}`. Best gain of P(target) over unsteered "
        f"within topic ≥ 0.8× and repetition ≤ 1.5× unsteered, with a 95% bootstrap CI over queries "
        f"(grid point in brackets; grids: {grid_text}). Mean: over the five emotions, `none` counted as 0.\n\n"
        + "\n".join(table) + "\n\n"
        "Replies changed by each peer's largest setting: "
        + ", ".join(f"{p} {v:.0%}" for p, v in changed.items()) + ". "
        "Unsteered replies regenerated here equal the runs' own: "
        + ", ".join(f"{v}/{n_q} ({Path(k).name})" for k, v in same.items()) + ". Seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + ".\n")
    print(section)
    write_section(args.out, "## Peers:", section)
    (save / "results.json").write_text(json.dumps({"results": results, "times": times, "same_unsteered": same,
                                                   "changed_at_largest": changed, "load_15min": load15,
                                                   "grids": grids, "scorer": scorers[0]}, indent=2,
                                                  default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))


if __name__ == "__main__":
    main()
