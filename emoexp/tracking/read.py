"""Reading studies back from MLflow (search_runs only): the rows behind ``emoexp compare``, and
the searches that refuse a run whose parent was moved (renamed experiment) or deleted.

Example:
    >>> load_children(["paper"])[["model", "condition", "target", "alpha", "intensity"]]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from .store import TrackingError, check_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_children", "refuse_if_deleted", "refuse_if_elsewhere", "search_all"]


def search_all(client: MlflowClient, exp_ids: list[str], filter_string: str) -> list[Any]:
    """All runs matching ``filter_string`` (search_runs, page by page)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(exp_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_children(experiments: Sequence[str], uri: str | None = None, scorer: str | None = None) -> pd.DataFrame:
    """Every FINISHED child run of the given experiments as one row, read through search_runs.

    Columns: ``experiment, parent_run_id, parent_name, model, run_label (the parent's name without
    its identity: ``smollm2 · centre``), config_hash, run_id, start_time,
    condition, target (None for 'none'), alpha (NaN for 'none'), scorer`` and one column per
    metric. Duplicates of a (parent, condition, target, alpha, scorer) keep the latest run.

    Scores of two scorers are never mixed: with ``scorer`` (a name such as ``minilm-written`` or
    a full ``name@hash``) only that scorer's children are kept; without it, each parent keeps
    the scorer of its first child (the run's own; ``emoexp evaluate <run> --eps X`` adds others).

    Raises:
        TrackingError: unreachable/corrupt/missing store or an unknown experiment (lists those present).

    Example:
        >>> load_children(["paper"])[["model", "condition", "target", "alpha", "intensity"]]  # doctest: +SKIP
    """
    import pandas as pd

    uri = check_store(uri, create=False)
    client = MlflowClient(uri)
    exps = {name: client.get_experiment_by_name(name) for name in experiments}
    missing = [n for n, e in exps.items() if e is None or e.lifecycle_stage == "deleted"]
    if missing:
        present = sorted(e.name for e in client.search_experiments())
        raise TrackingError(f"no MLflow experiment named {', '.join(map(repr, missing))} in {uri}; "
                            f"experiments there: {', '.join(present) or '(none)'}")
    names = {e.experiment_id: n for n, e in exps.items() if e is not None}
    ids = list(names)
    parents = {r.info.run_id: r for r in search_all(client, ids, "tags.`emoexp.kind` = 'parent'")}
    rows = []
    for r in search_all(client, ids, "tags.`emoexp.kind` = 'child' and attributes.status = 'FINISHED'"):
        t = r.data.tags
        p = parents.get(t.get("mlflow.parentRunId", ""))
        if p is None:
            continue  # parent deleted
        alpha = t.get("alpha", "none")
        rows.append({**r.data.metrics, "experiment": names[r.info.experiment_id], "parent_run_id": p.info.run_id,
                     "parent_name": p.info.run_name, "model": p.data.tags.get("model_id", "unknown"),
                     "run_label": p.data.tags.get("emoexp.run_label") or p.data.tags.get("model_id", "unknown"),
                     "config_hash": p.data.tags.get("config_hash", ""), "run_id": r.info.run_id,
                     "start_time": r.info.start_time, "condition": t.get("condition"),
                     "target": None if t.get("target", "none") == "none" else t["target"],
                     "alpha": float("nan") if alpha == "none" else float(alpha),
                     "scorer": t.get("emoexp.scorer", "")})
    df = pd.DataFrame(rows)
    if len(df):
        if scorer:
            df = df[(df["scorer"] == scorer) | (df["scorer"].str.split("@").str[0] == scorer)]
        else:
            first = df.sort_values("start_time").groupby("parent_run_id")["scorer"].first()
            df = df[df["scorer"] == df["parent_run_id"].map(first)]
        df = (df.sort_values("start_time")
                .drop_duplicates(["parent_run_id", "condition", "target", "alpha", "scorer"], keep="last")
                .reset_index(drop=True))
    return df


def refuse_if_elsewhere(client: MlflowClient, experiment: str) -> None:
    """Raise if the experiment emoexp created as ``experiment`` now has another name (renamed in
    the UI; tag ``emoexp.created_as``), rather than start a second study under the old name. (A
    new experiment name for an identity logged elsewhere is fine: the same run in a new study.)

    Raises:
        TrackingError: naming the experiment's new name.
    """
    from mlflow.entities import ViewType

    if "'" in experiment:
        return
    found = client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                      filter_string=f"tags.`emoexp.created_as` = '{experiment}'")
    moved = [e for e in found if e.name != experiment]
    if moved:
        raise TrackingError(f"MLflow experiment {experiment!r} was renamed to {moved[0].name!r}: rerun with "
                            f"--experiment {moved[0].name!r}, or rename it back")


def refuse_if_deleted(client: MlflowClient, exp_id: str, experiment: str, identity: str) -> None:
    """Raise if the parent of ``identity`` was deleted (MLflow's trash): restoring it resumes into
    it; a new parent beside a deleted one would split the study.

    Raises:
        TrackingError: with the commands that restore it or remove it for good.
    """
    from mlflow.entities import ViewType

    page = client.search_runs([exp_id], f"tags.`emoexp.kind` = 'parent' and tags.config_hash = '{identity}'",
                              run_view_type=ViewType.DELETED_ONLY, max_results=1)
    if page:
        rid = page[0].info.run_id
        raise TrackingError(f"this run's MLflow parent {rid} in experiment {experiment!r} is deleted: restore it to "
                            f"resume into it (`mlflow runs restore --run-id {rid}`), or remove it for good "
                            f"(`mlflow gc --backend-store-uri <store> --run-ids {rid}`) to start a new one")
