"""MLflow tracking: the one module that imports mlflow (with its helpers ``tracking_*``).

Store: ``MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server`` on the cluster), else the
embedded ``sqlite:///<project>/mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``.
Layout: one experiment per study; one parent run per (model, extraction config), identified by
the config hash; one FINISHED child run per (condition, target, alpha). Rerunning an identical
config reuses the parent and skips finished children. Log from rank 0 only, with an explicit
client and run ids (no fluent global state).

Example:
    >>> uri = check_store()                                  # fails fast, before any model loads
    >>> run_id = log_study(experiment="paper", config=cfg, provenance=prov, ev_path="evs.safetensors",
    ...                    generations=gens, aggregate=agg, uri=uri)      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .tracking_meta import child_key, config_hash, flatten, git_info, hardware_info, model_label, redact
from .tracking_read import load_children, search_all
from .tracking_store import TrackingError, artifact_root, check_store, tracking_uri

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TrackingError", "check_store", "load_children", "log_study", "tracking_uri"]

_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def _require_rank_zero() -> None:
    for var in _RANK_VARS:
        if os.environ.get(var, "0").strip() not in ("", "0"):
            raise TrackingError(f"log_study called on a process with {var}={os.environ[var]}: only rank 0 logs "
                                "to MLflow (guard the call with `if fabric.global_rank == 0`)")


@contextlib.contextmanager
def _no_url_printing() -> Iterator[None]:
    """MLflow prints two "View run" lines (and makes an extra request) per terminated run over
    HTTP; a study has dozens of child runs. The caller prints the parent's id instead."""
    var = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    if var in os.environ:
        yield
        return
    os.environ[var] = "true"
    try:
        yield
    finally:
        os.environ.pop(var, None)


def _retry(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an atomic store write again when a concurrent writer got in first: SQLite "database is
    locked", or two processes inserting the same dataset row (MLflow checks, then inserts)."""
    for attempt in range(6):
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            if attempt == 5 or not re.search(r"database is locked|UNIQUE constraint failed", str(e)):
                raise
            time.sleep(0.1 * 2**attempt)


def _batched(client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
             tags: Sequence[RunTag] = ()) -> None:
    """log_batch within MLflow's limits (1000 metrics, 100 params, 100 tags per call)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        _retry(client.log_batch, run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100])
        metrics, params, tags = metrics[1000:], params[100:], tags[100:]


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "experiment"
        location = f"{root}/{slug}-{config_hash({'experiment': name})[:8]}" if root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a concurrent process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it with `mlflow experiments restore "
                            f"--experiment-id {exp.experiment_id}` or choose another experiment name")
    return str(exp.experiment_id)


def _log_table(client: MlflowClient, run_id: str, df: pd.DataFrame, path: str) -> None:
    with warnings.catch_warnings():  # MLflow's own select_dtypes call warns under pandas 3
        warnings.filterwarnings("ignore", message=".*select_dtypes.*")
        client.log_table(run_id, df, path)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _dataset_inputs(datasets: list[dict[str, Any]]) -> list[Any]:
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for d in datasets:
        d = redact(d)
        name = str(d.get("name") or d.get("source") or d.get("path") or "dataset")
        source = str(d.get("source") or d.get("path") or name)
        local = Path(source).is_file()
        if d.get("digest"):
            digest = str(d["digest"])
        elif local:
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        else:
            digest = config_hash(d)
        kind = "local" if local else "http" if re.match(r"https?://", source) else "emoexp"
        profile = {k: d[k] for k in ("num_rows", "rows", "limit") if d.get(k) is not None}
        ds = Dataset(name=name, digest=digest[:36], source_type=kind, source=json.dumps({"uri": source}),
                     profile=json.dumps(profile) if profile else None)
        context = str(d.get("context") or d.get("role") or "evaluation")
        inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def _by_child(generations: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Generation rows grouped by child key (condition|target|alpha)."""
    if generations is None or not len(generations):
        return {}
    n = len(generations)
    keys = [child_key(c, t, a) for c, t, a in zip(generations["condition"], generations.get("target", [None] * n),
                                                 generations.get("alpha", [None] * n), strict=True)]
    return {k: rows.drop(columns="_key").reset_index(drop=True)
            for k, rows in generations.assign(_key=keys).groupby("_key", sort=False)}


def _samples(rows: pd.DataFrame, k: int) -> str:
    order = rows.sort_values("index") if "index" in rows else rows
    parts = []
    for _, r in order.head(k).iterrows():
        head = f"[{r.get('query_emotion', '')}] {r.get('query', '')}".strip()
        parts.append(f"### {head}\n{r.get('response', '')}\n")
    return "\n".join(parts)


def _log_child(client: MlflowClient, exp_id: str, parent_id: str, row: dict[str, Any],
               rows: pd.DataFrame | None, common: dict[str, str], sample_texts: int) -> str:
    cond, target, alpha = row.get("condition"), row.get("target"), row.get("alpha")
    key = child_key(cond, target, alpha)
    _, tgt, a = key.split("|")
    tags = {"mlflow.parentRunId": parent_id, "emoexp.kind": "child", "emoexp.child_key": key,
            "condition": str(cond), "target": tgt, "alpha": a, **common}
    name = str(cond) + ("" if tgt == "none" else f" {tgt}") + ("" if a == "none" else f" a={a}")
    rid = client.create_run(exp_id, tags=tags, run_name=name).info.run_id
    try:
        ts = int(time.time() * 1000)
        params = {"condition": str(cond), "target": tgt, "alpha": a, "n": str(row.get("n", ""))}
        values = {k: _finite(v) for k, v in row.items() if k not in ("condition", "target")}
        metrics = [Metric(k, v, ts, 0) for k, v in values.items() if v is not None]  # alpha too: params sort as strings
        _batched(client, rid, metrics=metrics,
                 params=[Param(k, v) for k, v in params.items()])
        if rows is not None and len(rows):
            _log_table(client, rid, rows, "generations.json")
            client.log_text(rid, _samples(rows, sample_texts), "samples.txt")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return rid


def _note(label: str, chash: str, n_children: int, prov: dict[str, Any]) -> str:
    return (f"**{label}** — emoexp study, config hash `{chash}`.\n\n"
            f"{n_children} child runs: one per (condition, target, α). Parent artifacts: `config.json`, "
            "`provenance.json`, `vectors/` (EmotionVectors safetensors), `plots/` (EV norms, cosine, "
            "split-half stability, α-sweeps), `aggregate.json`.\n\n"
            f"Model revision: `{prov.get('revision')}`; world size: {prov.get('world_size', 1)}.")


def log_study(*, experiment: str, config: dict[str, Any], provenance: dict[str, Any], ev_path: str | Path | None,
              generations: pd.DataFrame, aggregate: pd.DataFrame, datasets: list[dict[str, Any]] | None = None,
              uri: str | None = None, sample_texts: int = 5) -> str:
    """Log one (model, extraction) study: a parent run with config, provenance, datasets, the EV
    file and plots; one nested child run per aggregate row. Call on rank 0 only.

    Args:
        experiment: the MLflow experiment (one per study), created if absent.
        config: the full JSON-able config; secrets are redacted and its hash identifies the parent.
        provenance: model_id, revision, chat_template_sha256, library versions, world_size, ...;
            git commit and hardware are added here.
        ev_path: an emoexp EV safetensors file (logged under ``vectors/`` and plotted), or None.
        generations: one row per generation (``condition, target, alpha, query, response, ...`` and
            per-row metrics); each child logs its rows as the table ``generations.json``.
        aggregate: one row per (condition, target, alpha) with ``n`` and metric means/CIs.
        datasets: dicts with ``name`` and optionally ``source``/``path``, ``digest``,
            ``role``/``context`` (e.g. extraction, evaluation), ``num_rows``; logged as run inputs.
        uri: tracking URI (default: :func:`tracking_uri`).
        sample_texts: responses per child written to ``samples.txt``.

    Returns:
        The parent run id (reused when a run with the same config hash exists).

    Raises:
        TrackingError: unreachable server, corrupt store, deleted experiment, or a non-zero rank.

    Example:
        >>> pid = log_study(experiment="paper", config=cfg, provenance=prov, ev_path="evs.safetensors",
        ...                 generations=gens, aggregate=agg)            # doctest: +SKIP
    """
    _require_rank_zero()
    uri = check_store(uri)
    with _no_url_printing():
        return _log_study(experiment, config, provenance, ev_path, generations, aggregate, datasets, uri, sample_texts)


def _log_study(experiment: str, config: dict[str, Any], provenance: dict[str, Any], ev_path: str | Path | None,
               generations: pd.DataFrame, aggregate: pd.DataFrame, datasets: list[dict[str, Any]] | None,
               uri: str, sample_texts: int) -> str:
    chash = config_hash(config)
    safe_config = redact(config)
    prov = {**redact(provenance), **git_info(), "hardware": hardware_info()}
    ev_meta: dict[str, Any] = {}
    if ev_path is not None:
        from .vectors import EmotionVectors

        ev_meta = EmotionVectors.load(ev_path).metadata  # a bad file fails before any run is created
    label = model_label(prov.get("model_id"), prov.get("model_spec"), config.get("model"), ev_meta.get("model_id"))
    client = MlflowClient(uri)
    exp_id = _experiment_id(client, experiment, uri)
    found = client.search_runs([exp_id], f"tags.`emoexp.kind` = 'parent' and tags.config_hash = '{chash}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    common = {"config_hash": chash, "model_id": label}
    if found:
        pid = found[0].info.run_id
        client.update_run(pid, status="RUNNING")
    else:
        tags = {"emoexp.kind": "parent", **common, "mlflow.note.content": _note(label, chash, len(aggregate), prov)}
        if prov.get("git_commit"):
            tags["mlflow.source.git.commit"] = str(prov["git_commit"])
        pid = client.create_run(exp_id, tags=tags, run_name=f"{label} ({chash[:8]})").info.run_id
    try:
        params = {**flatten(safe_config), "config_hash": chash}  # same values again: allowed, a no-op
        _batched(client, pid, params=[Param(k, v) for k, v in params.items()])
        _batched(client, pid, tags=[RunTag(f"provenance.{k}", v[:8000]) for k, v in flatten(prov).items()])
        client.log_text(pid, json.dumps(safe_config, indent=1, sort_keys=True, default=str), "config.json")
        client.log_text(pid, json.dumps(prov, indent=1, sort_keys=True, default=str), "provenance.json")
        if datasets:
            _retry(client.log_inputs, pid, datasets=_dataset_inputs(datasets))
        from .plots import ev_figures, sweep_figures

        if ev_path is not None:
            client.log_artifact(pid, str(ev_path), "vectors")
            for name, fig in ev_figures(ev_path).items():
                client.log_figure(pid, fig, f"plots/{name}")
        for name, fig in sweep_figures(aggregate).items():
            client.log_figure(pid, fig, f"plots/{name}")
        if found:  # log_table appends to an existing table: overwrite the file instead
            client.log_text(pid, aggregate.to_json(orient="split", index=False), "aggregate.json")
        else:
            _log_table(client, pid, aggregate, "aggregate.json")
        done = {r.data.tags.get("emoexp.child_key") for r in search_all(
            client, [exp_id], f"tags.mlflow.parentRunId = '{pid}' and attributes.status = 'FINISHED'")}
        groups = _by_child(generations)
        for row in aggregate.to_dict(orient="records"):
            key = child_key(row.get("condition"), row.get("target"), row.get("alpha"))
            if key not in done:
                _log_child(client, exp_id, pid, row, groups.get(key), common, sample_texts)
    except BaseException:
        client.set_terminated(pid, "FAILED")
        raise
    client.set_terminated(pid, "FINISHED")
    return pid
