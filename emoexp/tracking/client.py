"""Talking to an MLflow store: the rank-zero guard, quiet run endings, retried and batched writes,
tables, experiments (created with their kind, so the UI opens on the runs) and dataset inputs.
:mod:`emoexp.tracking.study` builds on these.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .meta import config_hash, redact
from .store import TrackingError, artifact_root

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CREATED_AS", "KIND", "dataset_inputs", "experiment_id", "log_batched", "log_table", "no_url_printing", "require_rank_zero",
           "retry_locked", "ui_url"]

_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def require_rank_zero() -> None:
    for var in _RANK_VARS:
        if os.environ.get(var, "0").strip() not in ("", "0"):
            raise TrackingError(f"MLflow logging called on a process with {var}={os.environ[var]}: only rank 0 logs "
                                "to MLflow (guard the call with `if fabric.global_rank == 0`)")


@contextlib.contextmanager
def no_url_printing() -> Iterator[None]:
    """MLflow prints two "View run" lines (and makes an extra request) per terminated run over
    HTTP; a study has dozens of child runs."""
    var = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    if var in os.environ:
        yield
        return
    os.environ[var] = "true"
    try:
        yield
    finally:
        os.environ.pop(var, None)


def retry_locked(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an atomic store write again when a concurrent writer got in first (SQLite "database
    is locked", or two processes inserting the same dataset row)."""
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    def transient(e: BaseException) -> bool:
        return isinstance(e, MlflowException) and bool(
            re.search(r"database is locked|UNIQUE constraint failed", str(e)))

    return retry(retry=retry_if_exception(transient), stop=stop_after_attempt(6),
                 wait=wait_exponential(multiplier=0.1, max=3), reraise=True)(fn)(*args, **kwargs)


def log_batched(client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
             tags: Sequence[RunTag] = ()) -> None:
    """log_batch within MLflow's limits (1000 metrics, 100 params, 100 tags per call)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        retry_locked(client.log_batch, run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100])
        metrics, params, tags = metrics[1000:], params[100:], tags[100:]


#: MLflow 3's experiment kind (tag ``mlflow.experimentKind``): emoexp's studies are model
#: development, not GenAI traces. MLflow 3.17's UI does not route by it yet (see :func:`ui_url`).
KIND = ("mlflow.experimentKind", "custom_model_development")
#: The experiment's name when emoexp created it (a rename in the UI is then recognised).
CREATED_AS = "emoexp.created_as"


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if absent (with its artifact folder, :data:`KIND` and
    :data:`CREATED_AS`); an existing one without those tags gets them.

    Raises:
        TrackingError: the experiment is deleted.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "experiment"
        location = f"{root}/{slug}-{config_hash({'experiment': name})[:8]}" if root else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={KIND[0]: KIND[1], CREATED_AS: name})
        except MlflowException:  # created meanwhile by a concurrent process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it with `mlflow experiments restore "
                            f"--experiment-id {exp.experiment_id}` or choose another experiment name")
    for key, value in ((KIND[0], KIND[1]), (CREATED_AS, name)):  # made before these tags; a user's kind is kept
        if key not in exp.tags:
            with contextlib.suppress(MlflowException):
                client.set_experiment_tag(exp.experiment_id, key, value)
    return str(exp.experiment_id)


def ui_url(uri: str, exp_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs (or of one run) in "Model training" mode.

    MLflow 3.17's UI opens a bare experiment link on the GenAI Overview whatever the experiment's
    kind; ``workflowType=machine_learning`` opens the runs table. For an ``http(s)`` store the
    server's own address; for SQLite the address ``mlflow ui`` serves by default.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"/runs/{run_id}" if run_id else "/runs"
    return f"{base}/#/experiments/{exp_id}{page}?workflowType=machine_learning"


def log_table(client: MlflowClient, run_id: str, df: pd.DataFrame, path: str) -> None:
    """``df`` as the MLflow table ``path`` of ``run_id``, retried when another process logging
    to the same run inserts MLflow's ``mlflow.loggedArtifacts`` tag first (two hosts finishing
    one study at once: UNIQUE constraint failed)."""
    with warnings.catch_warnings():  # MLflow's own select_dtypes call warns under pandas 3
        warnings.filterwarnings("ignore", message=".*select_dtypes.*")
        retry_locked(client.log_table, run_id, df, path)


def dataset_inputs(datasets: list[dict[str, Any]]) -> list[Any]:
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