"""Re-score a finished ``emoexp run`` with another emotion scorer, without generating again.

``emoexp evaluate outputs/run/<folder> --eps minilm-written`` reads the folder's complete
``generations.jsonl`` (refused, one line, when it is missing or differs from what the run
recorded as complete), scores EPS and TEC with the named scorer, takes the scorer-independent
columns (topic, perplexity, repetition, distinct-n) from the run's own ``scores.jsonl`` when it
has them, and writes ``rescored/<scorer>/`` in the folder: ``scores.jsonl`` (each row names its
``scorer``), ``aggregate.csv`` (with paired gains per child) and ``results.md``. Nothing the run
wrote is touched. With MLflow on, the same parent run (found by the run's identity) gets one child
per condition, target and α tagged with the scorer, ``rescored/<scorer>/`` artifacts and summary
metrics named ``<scorer>.gain.<emotion>`` and so on.

``emoexp evaluate --run_id <parent>`` does the same for an MLflow parent, reading the generations
from its children's tables (no output folder needed).

Example:
    emoexp evaluate outputs/run/latest --eps minilm-written
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..redact import log

__all__ = ["aggregate_with_gains", "read_run_folder", "rescore"]

#: Score columns that do not depend on the emotion scorer (kept from the run's scores).
_KEEP = ("topic", "perplexity", "repetition", "distinct_1", "distinct_2")


def read_run_folder(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """``(generations, config, identity sha)`` of a finished run's output folder.

    Raises:
        ValueError: no generations file, or one that is not the complete file the run recorded
            (truncated, edited, or the run never finished generating).
    """
    import yaml

    from ..workdir import WorkDir

    folder = Path(folder)
    gen = folder / "generations.jsonl"
    if not gen.is_file():
        raise ValueError(f"{gen}: no generations file: is {folder} an `emoexp run` output folder?")
    if not WorkDir(gen).is_complete():
        raise ValueError(f"{gen}: not the complete file the run recorded (truncated, changed, or generation did "
                         "not finish): rerun `emoexp run` with the same config to finish it")
    ident = WorkDir(folder / "scores.jsonl").identity() or {}  # the run's identity: its MLflow parent's key
    cfg_file = folder / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    return pd.read_json(gen, lines=True), cfg or {}, str(ident.get("sha", ""))


def aggregate_with_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Means and CIs per (condition, target, α), with each child's paired gain against the
    unsteered rows, and topic/repetition ratios (as ``emoexp run`` writes ``aggregate.csv``)."""
    from ..eval.stats import GAIN_COLUMNS, aggregate, gain
    from ..tracking.meta import child_key

    by = ["condition", "target", "alpha"]
    agg = aggregate(table, by=by)
    keys = [child_key(c, t, a) for c, t, a in zip(table["condition"], table["target"], table["alpha"])]
    groups = dict(list(table.assign(_key=keys).groupby("_key", sort=False)))
    base = table[table["condition"] == "unsteered"]
    extra = []
    for c, t, a in zip(agg["condition"], agg["target"], agg["alpha"]):
        rows = groups.get(child_key(c, t, a))
        extra.append(gain(rows, base) if rows is not None and len(base) and c != "unsteered" else {})
    return pd.concat([agg, pd.DataFrame(extra, index=agg.index).reindex(columns=list(GAIN_COLUMNS))], axis=1)


def _score(gens: pd.DataFrame, old: pd.DataFrame | None, eps: str, scorer: str) -> pd.DataFrame:
    """The generation rows with fresh EPS/TEC columns (any earlier score columns dropped), the
    scorer-independent columns of ``old`` (the run's scores, same rows in the same order), and
    ``scorer``."""
    from ..eval import score
    from .run import _targets

    fresh = score(list(gens["response"]), None, _targets(gens), metrics=["eps", "tec"],
                  backend={"eps": eps, "progress": True})
    kept = [c for c in _KEEP if old is not None and c in old]
    if kept and not (len(old) == len(gens) and list(old["response"]) == list(gens["response"])):
        kept = []
    base = gens.reset_index(drop=True)
    base = base.drop(columns=[c for c in base.columns if c in fresh.columns or c in _KEEP or c == "scorer"])
    table = pd.concat([base, fresh], axis=1)
    for c in kept:
        table[c] = old[c].to_numpy()
    return table.assign(scorer=scorer)


def _from_mlflow(run_id: str) -> tuple[pd.DataFrame, dict[str, Any], str, str]:
    """Generations of an MLflow parent from its children's tables; config; identity; experiment."""
    from mlflow import MlflowClient

    from ..tracking import check_store
    from ..tracking.read import search_all

    client = MlflowClient(check_store(create=False))
    parent = client.get_run(run_id)
    if parent.data.tags.get("emoexp.kind") != "parent":
        raise ValueError(f"MLflow run {run_id} is not an emoexp parent run")
    exp = client.get_experiment(parent.info.experiment_id)
    kids = search_all(client, [parent.info.experiment_id],
                      f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'FINISHED'")
    if not kids:
        raise ValueError(f"MLflow run {run_id} has no finished children with generations to re-score")
    # the run's own children (its first scorer), not those added by earlier re-scorings
    own = min(kids, key=lambda r: r.info.start_time).data.tags.get("emoexp.scorer", "")
    frames = []
    for r in kids:
        if r.data.tags.get("emoexp.scorer", "") != own:
            continue
        path = client.download_artifacts(r.info.run_id, "generations.json")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        frames.append(pd.DataFrame(data["data"], columns=data["columns"]))
    gens = pd.concat(frames, ignore_index=True)
    config = json.loads(Path(client.download_artifacts(run_id, "config.json")).read_text(encoding="utf-8"))
    return gens, config, parent.data.tags.get("config_hash", ""), exp.name


def rescore(folder: str | Path | None, eps: str, *, run_id: str | None = None, mlflow: bool = True) -> Path:
    """Re-score a run (an output folder, or an MLflow parent ``run_id``) with scorer ``eps``;
    returns the folder the new tables went to. See the module doc."""
    from ..eval.classifiers import scorer_identity
    from ..eval.summary import results_table

    scorer = scorer_identity(eps)  # an unknown scorer fails here, before anything is read or written
    if run_id is not None:
        gens, cfg, sha, experiment = _from_mlflow(run_id)
        old = gens  # the children's tables carry the run's own topic, perplexity and repetition
        out = Path("outputs") / "rescored" / run_id / eps.replace(":", "_").replace("/", "_")
    else:
        gens, cfg, sha = read_run_folder(folder)
        experiment = cfg.get("experiment", "emoexp")
        prev = Path(folder) / "scores.jsonl"
        old = pd.read_json(prev, lines=True) if prev.is_file() else None
        out = Path(folder) / "rescored" / eps.replace(":", "_").replace("/", "_")
    table = _score(gens, old, eps, scorer)
    agg = aggregate_with_gains(table)
    summary = results_table(agg)
    out.mkdir(parents=True, exist_ok=True)
    table.to_json(out / "scores.jsonl", orient="records", lines=True, force_ascii=False)
    agg.to_csv(out / "aggregate.csv", index=False)
    (out / "results.md").write_text(f"Scorer: {scorer}\n\n{summary}\n", encoding="utf-8")
    print("\n" + summary + "\n", flush=True)
    log(f"re-scored {len(table)} responses with {scorer}: {out}/scores.jsonl, aggregate.csv, results.md")
    if mlflow and cfg.get("mlflow", True):
        if sha:
            _log(experiment, sha, cfg, scorer, table, agg, summary, out)
        else:
            log(f"{folder}: no run identity recorded (scores.jsonl.work/identity.json): not logged to MLflow")
    return out


def _log(experiment: str, sha: str, cfg: dict[str, Any], scorer: str, table: pd.DataFrame, agg: pd.DataFrame,
         summary: str, out: Path) -> None:
    from ..eval.summary import summary_metrics
    from ..tracking import Study
    from ..tracking.meta import child_key

    study = Study(experiment, sha, cfg, {"model_id": cfg.get("model")}, watch=False, scorer=scorer)
    parent = study.attach()
    keys = [child_key(c, t, a) for c, t, a in zip(table["condition"], table["target"], table["alpha"])]
    groups = dict(list(table.assign(_key=keys).groupby("_key", sort=False)))
    done = study.finished_children()
    for row in agg.to_dict(orient="records"):
        key = child_key(row["condition"], row["target"], row["alpha"])
        if key not in done:
            study.log_child(row, groups[key].drop(columns="_key").reset_index(drop=True))
    name = scorer.split("@")[0]
    metrics = {f"{name}.{k}": v for k, v in summary_metrics(agg, len(table)).items()}
    study.log_rescored(f"rescored/{name}", [out / "aggregate.csv", out / "results.md"], metrics)
    log(f"MLflow: parent run {parent}: {len(groups)} child runs scored by {scorer}")
