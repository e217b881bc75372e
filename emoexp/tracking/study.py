"""A study in MLflow, logged live: the parent run appears at once and children as scores land.

Layout: one experiment per study; one parent run per result identity (the result-shaping
config and the content fingerprints of its inputs: ``config_hash``); one FINISHED child run
per (condition, target, alpha). Rank 0 alone logs, with an explicit client and run ids.

Lifecycle (:class:`Study`): :meth:`~Study.start` finds the parent of this identity or creates
it (RUNNING, params, provenance, config, datasets) before any model loads, and starts a
watchdog process that marks the run KILLED if this process dies without ending it (``kill
-9``); :meth:`~Study.progress` and :meth:`~Study.timing` log stage progress and per-attempt
timings (a rerun adds attempt 2, it never overwrites attempt 1); :meth:`~Study.log_vectors`
adds the EV file and its plots; :meth:`~Study.log_child` logs one child as soon as its scores
exist; :meth:`~Study.finish` logs the α-sweep plots, the aggregate and summary metrics, merges
duplicates and marks the run FINISHED; :meth:`~Study.end` marks it FAILED or KILLED. A rerun
resumes into the same parent and skips finished children.

Two hosts logging the same study at once (different output folders, one server) end with one
parent and one child per key: each process, after finishing a child, keeps the run with the
smallest id among the FINISHED runs of that key and deletes the others; :meth:`~Study.finish`
does the same for parents (re-parenting the children first). The last process to finish sees
every finished run, so at most one of each remains.

Example:
    >>> study = Study("paper", identity, config, provenance, uri=check_store())   # doctest: +SKIP
    >>> study.start(); study.log_child(row, rows); study.finish(aggregate)         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..redact import install_log_filter
from .client import (
    dataset_inputs,
    experiment_id,
    log_batched,
    log_table,
    no_url_printing,
    require_rank_zero,
    retry_locked,
    ui_url,
)
from .meta import (
    by_child,
    child_key,
    config_hash,
    finite,
    flatten,
    git_info,
    hardware_info,
    model_label,
    parent_note,
    redact,
    results_table,
    samples_text,
)
from .read import refuse_if_deleted, refuse_if_elsewhere, search_all
from .store import TrackingError, check_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Study", "log_study"]

install_log_filter()
#: The failure line :meth:`Study.end` puts at the top of a parent's note.
_FAILURE = re.compile(r"^\*\*(FAILED|KILLED)\*\* \(attempt \d+\): [^\n]*\n\n")


class Study:
    """One parent run for one result identity, logged live from rank 0 (see the module doc).

    Args:
        experiment: the MLflow experiment (created if absent).
        identity: the result identity hash (``config_hash`` tag); None: the config's hash.
        config: the full JSON-able config (secrets redacted before logging).
        provenance: model id, commit, fingerprints, library versions, world size, ...; git commit
            and hardware are added here.
        datasets: dicts with ``name`` and optionally ``source``, ``digest``, ``role``, ``num_rows``.
        uri: tracking URI (checked with :func:`check_store`).
        watch: start the watchdog that marks the run KILLED if this process dies.
        scorer: the emotion scorer's identity (``name@hash``): children carry it (tag
            ``emoexp.scorer``, param ``scorer``, in their key and name), so one parent can hold the
            same generations scored by several scorers without mixing them.
    """

    def __init__(self, experiment: str, identity: str | None, config: dict[str, Any], provenance: dict[str, Any],
                 *, datasets: list[dict[str, Any]] | None = None, uri: str | None = None, watch: bool = True,
                 sample_texts: int = 5, scorer: str | None = None, name: str | None = None):
        require_rank_zero()
        self.scorer = scorer
        self.uri = check_store(uri)
        self.experiment = experiment
        self.config = config
        self.hash = identity or config_hash(config)
        self.provenance = {**redact(provenance), **git_info(), "hardware": hardware_info()}
        self.datasets = datasets or []
        self.watch = watch
        self.sample_texts = sample_texts
        self.client = MlflowClient(self.uri)
        self.run_id: str | None = None
        self.exp_id: str | None = None
        self.attempt = 0
        self.token = uuid.uuid4().hex
        self._last_progress: dict[str, float] = {}
        self._watcher: subprocess.Popen | None = None
        self.label = model_label(self.provenance.get("model_id"), self.provenance.get("model_spec"),
                                 config.get("model"))
        #: the parent's name without its identity (tag ``emoexp.run_label``): what tells runs apart
        self.name = name or self.label

    # -- parent -----------------------------------------------------------------------------

    def ui_url(self, run: bool = False) -> str:
        """This study's runs (``run``: its parent) in the MLflow UI (:func:`~emoexp.tracking.client.ui_url`)."""
        assert self.exp_id is not None
        return ui_url(self.uri, self.exp_id, self.run_id if run else None)

    @property
    def run_name(self) -> str:
        """``smollm2 · centre · limit 4 · 1a2b3c4d``: the name, then the identity's first 8 digits."""
        return f"{self.name} · {self.hash[:8]}"

    def _parents(self) -> list[Any]:
        assert self.exp_id is not None
        return search_all(self.client, [self.exp_id],
                          f"tags.`emoexp.kind` = 'parent' and tags.config_hash = '{self.hash}'")

    def start(self) -> str:
        """Find this identity's parent (resume) or create it; mark it RUNNING; log params,
        provenance (first attempt), config, datasets. Returns the parent run id."""
        with no_url_printing():
            if self.client.get_experiment_by_name(self.experiment) is None:
                refuse_if_elsewhere(self.client, self.experiment)
            self.exp_id = experiment_id(self.client, self.experiment, self.uri)
            found = self._parents()
            if not found:
                refuse_if_deleted(self.client, self.exp_id, self.experiment, self.hash)
                tags = {"emoexp.kind": "parent", "config_hash": self.hash, "model_id": self.label,
                        "emoexp.run_label": self.name,
                        "mlflow.note.content": parent_note(self.label, self.hash, self.provenance)}
                if self.provenance.get("git_commit"):
                    tags["mlflow.source.git.commit"] = str(self.provenance["git_commit"])
                created = self.client.create_run(self.exp_id, tags=tags, run_name=self.run_name)
                found = self._parents() or [created]
                mine = created.info.run_id
                winner = min(r.info.run_id for r in found)
                if winner != mine:  # a concurrent process created one first: use the same parent
                    self.client.delete_run(mine)
            run = min(found, key=lambda r: r.info.run_id)
            self.run_id = run.info.run_id
            self.attempt = int(run.data.tags.get("emoexp.attempts", "0")) + 1
            self.client.update_run(self.run_id, status="RUNNING", name=self.run_name)  # older runs get today's name
            self.client.set_tag(self.run_id, "emoexp.run_label", self.name)
            safe = redact(self.config)
            params = {**flatten(safe), "config_hash": self.hash}  # the same values again: allowed, a no-op
            tags = [RunTag("emoexp.attempts", str(self.attempt)), RunTag("emoexp.attempt_token", self.token),
                    RunTag("emoexp.host", socket.gethostname()), RunTag("emoexp.pid", str(os.getpid()))]
            if self.attempt == 1:
                tags += [RunTag(f"provenance.{k}", v[:8000]) for k, v in flatten(self.provenance).items()]
            log_batched(self.client, self.run_id, params=[Param(k, v) for k, v in params.items()], tags=tags)
            self.client.log_text(self.run_id, json.dumps(safe, indent=1, sort_keys=True, default=str), "config.json")
            if self.attempt == 1:
                self.client.log_text(self.run_id, json.dumps(self.provenance, indent=1, sort_keys=True, default=str),
                                     "provenance.json")
            self._attempt_record({"started": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if self.datasets:
                retry_locked(self.client.log_inputs, self.run_id, datasets=dataset_inputs(self.datasets))
        if self.watch:
            self._start_watcher()
        return self.run_id

    def attach(self) -> str:
        """Use this identity's existing parent as it is (no params, status or attempt change),
        to add children scored by another scorer. Returns its run id.

        Raises:
            TrackingError: no parent run with this identity in the experiment.
        """
        with no_url_printing():
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise TrackingError(f"MLflow experiment {self.experiment!r} not found at {self.uri}")
            self.exp_id = str(exp.experiment_id)
            found = self._parents()
        if not found:
            raise TrackingError(f"no parent run with identity {self.hash} in MLflow experiment {self.experiment!r}")
        self.run_id = min(r.info.run_id for r in found)
        return self.run_id

    def log_rescored(self, folder: str, files: Sequence[Path], metrics: dict[str, float]) -> None:
        """Files under ``folder/`` and summary ``metrics`` on the parent (a re-scoring's results)."""
        assert self.run_id is not None
        with no_url_printing():
            for f in files:
                self.client.log_artifact(self.run_id, str(f), folder)
            ts = int(time.time() * 1000)
            log_batched(self.client, self.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()
                                                        if finite(v) is not None])

    def _on_parent(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(parent_id, ...)``; if a concurrent process merged our parent into its own (deleted
        it), follow to the surviving parent and call again."""
        assert self.run_id is not None
        try:
            return fn(self.run_id, *args, **kwargs)
        except MlflowException:
            alive = [r.info.run_id for r in self._parents()]
            if not alive or self.run_id in alive:
                raise
            self.run_id = min(alive)
            return fn(self.run_id, *args, **kwargs)

    def _attempt_record(self, extra: dict[str, Any]) -> None:
        record = {"attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(),
                  "provenance": self.provenance, **extra}
        self._on_parent(self.client.log_text, json.dumps(redact(record), indent=1, sort_keys=True, default=str),
                        f"attempts/{self.attempt:03d}.json")

    def _start_watcher(self) -> None:
        env = {**os.environ, "EMOEXP_WATCH_URI": self.uri}
        self._watcher = subprocess.Popen(
            [sys.executable, "-m", "emoexp.tracking.watch", str(os.getpid()), str(self.run_id), self.token],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def add_provenance(self, extra: dict[str, Any]) -> None:
        """More provenance once the model is loaded (dtype, parameters, tokenizer hashes); tags
        are written only if absent, so a rerun never overwrites the first attempt's."""
        assert self.run_id is not None
        extra = redact(extra)
        self.provenance.update(extra)
        have = self.client.get_run(self.run_id).data.tags
        tags = [RunTag(f"provenance.{k}", v[:8000]) for k, v in flatten(extra).items()
                if f"provenance.{k}" not in have]
        self._on_parent(lambda rid: log_batched(self.client, rid, tags=tags))
        self._attempt_record({"loaded": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # -- live metrics -----------------------------------------------------------------------

    def progress(self, stage: str, done: int, total: int, every: float = 5.0) -> None:
        """``progress.<stage>`` = done / total (step = done), at most every ``every`` seconds
        (and always at the end)."""
        now = time.time()
        if done < total and now - self._last_progress.get(stage, 0.0) < every:
            return
        self._last_progress[stage] = now
        assert self.run_id is not None
        with contextlib.suppress(MlflowException):  # progress is best effort; results are not
            self.client.log_metric(self.run_id, f"progress.{stage}", done / max(total, 1), step=int(done))

    def timing(self, stage: str, seconds: float) -> None:
        """``time.<stage>_s`` at step = attempt: each attempt keeps its own value."""
        self._on_parent(self.client.log_metric, f"time.{stage}_s", float(seconds), step=self.attempt)

    def log_vectors(self, ev_path: str | Path, plots: Sequence[Path] | None = None) -> None:
        """The EV file under ``vectors/`` and its plots (norms, cosine, split-half): the PNG files
        ``plots`` when given (drawn once for disk and MLflow), else drawn here."""
        from ..plots import ev_figures

        self._on_parent(self.client.log_artifact, str(ev_path), "vectors")
        self._log_plots(ev_figures(ev_path) if plots is None else plots)

    def _log_plots(self, plots: Any) -> None:
        if isinstance(plots, dict):
            for name, fig in plots.items():
                self._on_parent(self.client.log_figure, fig, f"plots/{name}")
        else:
            for path in plots:
                self._on_parent(self.client.log_artifact, str(path), "plots")

    # -- children ---------------------------------------------------------------------------

    def _children(self, parent: str, key: str | None = None, finished: bool = True) -> list[Any]:
        assert self.exp_id is not None
        f = f"tags.mlflow.parentRunId = '{parent}'"
        if finished:
            f += " and attributes.status = 'FINISHED'"
        if key is not None:
            f += f" and tags.`emoexp.child_key` = '{key}'"
        return search_all(self.client, [self.exp_id], f)

    def _key(self, key: str) -> str:
        """A child's key tag: ``condition|target|alpha``, then ``|<scorer>`` when one is set."""
        return f"{key}|{self.scorer}" if self.scorer else key

    def finished_children(self) -> set[str]:
        """Keys (``condition|target|alpha``) of this parent's FINISHED children (of this scorer)."""
        assert self.run_id is not None
        keys = {r.data.tags.get("emoexp.child_key") for r in self._children(self.run_id)}
        if not self.scorer:
            return keys
        tail = f"|{self.scorer}"
        return {k[:-len(tail)] for k in keys if k and k.endswith(tail)}

    def log_child(self, row: dict[str, Any], rows: pd.DataFrame | None = None) -> str | None:
        """One child run from an aggregate ``row`` (condition, target, alpha, n, metric means and
        CIs) and its generation ``rows``; skipped (None) when one is already FINISHED."""
        assert self.run_id is not None and self.exp_id is not None
        cond, target, alpha = row.get("condition"), row.get("target"), row.get("alpha")
        plain = child_key(cond, target, alpha)
        key = self._key(plain)
        with no_url_printing():
            if self._children(self.run_id, key):
                return None
            _, tgt, a = plain.split("|")
            tags = {"mlflow.parentRunId": self.run_id, "emoexp.kind": "child", "emoexp.child_key": key,
                    "condition": str(cond), "target": tgt, "alpha": a, "config_hash": self.hash,
                    "model_id": self.label}
            name = str(cond) + ("" if tgt == "none" else f" {tgt}") + ("" if a == "none" else f" α={a}")
            if self.scorer:
                tags["emoexp.scorer"] = self.scorer
                name += f" · {self.scorer.split('@')[0]}"
            rid = self.client.create_run(self.exp_id, tags=tags, run_name=name).info.run_id
            try:
                ts = int(time.time() * 1000)
                params = {"condition": str(cond), "target": tgt, "alpha": a, "n": str(row.get("n", ""))}
                if self.scorer:
                    params["scorer"] = self.scorer
                values = {k: finite(v) for k, v in row.items() if k not in ("condition", "target")}
                if f"p_{tgt}" in row:  # the steering target's probability, one name for every child
                    values["p_target"] = finite(row[f"p_{tgt}"])
                metrics = [Metric(k, v, ts, 0) for k, v in values.items() if v is not None]  # alpha: params sort as text
                log_batched(self.client, rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
                if rows is not None and len(rows):
                    log_table(self.client, rid, rows, "generations.json")
                    self.client.log_text(rid, samples_text(rows, self.sample_texts), "samples.txt")
            except BaseException:
                self.client.set_terminated(rid, "FAILED")
                raise
            self.client.set_terminated(rid, "FINISHED")
            self._dedupe_key(self.run_id, key)
        return rid

    def _dedupe_key(self, parent: str, key: str) -> None:
        """Keep the FINISHED child of ``key`` with the smallest run id, delete the others."""
        runs = self._children(parent, key)
        if len(runs) > 1:
            keep = min(r.info.run_id for r in runs)
            for r in runs:
                if r.info.run_id != keep:
                    with contextlib.suppress(MlflowException):
                        self.client.delete_run(r.info.run_id)

    def _merge_parents(self) -> None:
        """One parent per identity: children of the other parents move to the smallest-id one
        (or are deleted when it has that key already), then the others are deleted."""
        assert self.run_id is not None
        parents = {r.info.run_id for r in self._parents()} | {self.run_id}
        active = {r.info.run_id for r in self._parents()}
        keep = min(active) if active else self.run_id
        for pid in sorted(parents - {keep}):
            have = {r.data.tags.get("emoexp.child_key") for r in self._children(keep)}
            for child in self._children(pid):  # FINISHED ones; a running one belongs to a live process
                k = child.data.tags.get("emoexp.child_key")
                if k not in have:
                    self.client.set_tag(child.info.run_id, "mlflow.parentRunId", keep)
                    have.add(k)
                else:
                    with contextlib.suppress(MlflowException):
                        self.client.delete_run(child.info.run_id)
            if pid in active:
                with contextlib.suppress(MlflowException):
                    self.client.delete_run(pid)
        self.run_id = keep

    # -- end --------------------------------------------------------------------------------

    def finish(self, aggregate: pd.DataFrame | None = None, summary: dict[str, float] | None = None,
               plots: Sequence[Path] | None = None, scores: pd.DataFrame | None = None) -> str:
        """α-sweep plots (the PNG files ``plots``, or drawn here), the aggregate table, the α
        curves as metric histories (:mod:`emoexp.tracking.curves`), the results and the
        per-response ``scores`` as MLflow tables (``tables/``), and summary metrics on the parent;
        duplicates merged; status FINISHED. Returns the parent run id."""
        from ..plots import sweep_figures
        from .curves import curves

        assert self.run_id is not None
        with no_url_printing():
            self._merge_parents()
            for key in {r.data.tags.get("emoexp.child_key") for r in self._children(self.run_id)}:
                self._dedupe_key(self.run_id, key)
            if aggregate is not None and len(aggregate):
                self._log_plots(sweep_figures(aggregate) if plots is None else plots)
                self._on_parent(self.client.log_text, aggregate.to_json(orient="split", index=False),
                                "aggregate.json")
                self._on_parent(lambda rid: log_table(self.client, rid, results_table(aggregate), "tables/results.json"))
                ts = int(time.time() * 1000)
                points = [Metric(k, v, ts, step) for k, v, step in curves(aggregate)]
                self._on_parent(lambda rid: log_batched(self.client, rid, metrics=points))
            if scores is not None and len(scores):
                self._on_parent(lambda rid: log_table(self.client, rid, scores, "tables/scores.json"))
            if summary:
                ts = int(time.time() * 1000)
                metrics = [Metric(k, float(v), ts, self.attempt) for k, v in summary.items() if finite(v) is not None]
                self._on_parent(lambda rid: log_batched(self.client, rid, metrics=metrics))
            self._attempt_record({"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self._clear_failure()
            self.client.set_terminated(self.run_id, "FINISHED")
        self._stop_watcher()
        return self.run_id

    def _clear_failure(self) -> None:
        """A resumed run that finishes loses an earlier attempt's failure note and tag."""
        assert self.run_id is not None
        tags = self.client.get_run(self.run_id).data.tags
        if "emoexp.failure" in tags:
            self.client.delete_tag(self.run_id, "emoexp.failure")
            self.client.set_tag(self.run_id, "mlflow.note.content", _FAILURE.sub("", tags.get("mlflow.note.content", "")))

    def end(self, status: str = "FAILED", reason: str | None = None) -> None:
        """Mark the run FAILED or KILLED (an error, Ctrl-C, preemption) and say why at the top of
        its note (tag ``emoexp.failure``: the one-line reason); best effort."""
        if self.run_id is not None:
            with contextlib.suppress(Exception), no_url_printing():
                if reason:
                    reason = " ".join(str(reason).split())[:500]
                    note = self.client.get_run(self.run_id).data.tags.get("mlflow.note.content", "")
                    note = _FAILURE.sub("", note)
                    self.client.set_tag(self.run_id, "mlflow.note.content",
                                        f"**{status}** (attempt {self.attempt}): {reason}\n\n{note}")
                    self.client.set_tag(self.run_id, "emoexp.failure", reason)
                self.client.set_terminated(self.run_id, status)
        self._stop_watcher()

    def _stop_watcher(self) -> None:
        if self._watcher is not None and self._watcher.poll() is None:
            self._watcher.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watcher.wait(5)
        self._watcher = None


def log_study(*, experiment: str, config: dict[str, Any], provenance: dict[str, Any], ev_path: str | Path | None,
              generations: pd.DataFrame, aggregate: pd.DataFrame, datasets: list[dict[str, Any]] | None = None,
              uri: str | None = None, sample_texts: int = 5, identity: str | None = None) -> str:
    """Log a finished study in one call: parent (config, provenance, datasets, EV file and
    plots) and one child per aggregate row. Call on rank 0 only.

    Args:
        experiment: the MLflow experiment (one per study), created if absent.
        config: the full JSON-able config; secrets are redacted and its hash identifies the parent
            (unless ``identity`` is given).
        provenance: model_id, revision, chat_template_sha256, library versions, world_size, ...
        ev_path: an emoexp EV safetensors file (logged under ``vectors/`` and plotted), or None.
        generations: one row per generation (``condition, target, alpha, query, response, ...``);
            each child logs its rows as the table ``generations.json``.
        aggregate: one row per (condition, target, alpha) with ``n`` and metric means/CIs.
        datasets: dicts with ``name`` and optionally ``source``, ``digest``, ``role``, ``num_rows``.
        uri: tracking URI (default: :func:`tracking_uri`).
        sample_texts: responses per child written to ``samples.txt``.
        identity: the parent's identity hash (default: the config's hash).

    Returns:
        The parent run id (reused when a run with the same identity exists).

    Raises:
        TrackingError: unreachable server, corrupt store, deleted experiment, or a non-zero rank.
    """
    study = Study(experiment, identity, config, provenance, datasets=datasets, uri=uri, watch=False,
                  sample_texts=sample_texts)  # an unusable store fails here
    if ev_path is not None:
        from ..vectors import EmotionVectors

        EmotionVectors.load(ev_path)  # a bad file fails before any run is created
    study.start()
    try:
        if ev_path is not None:
            study.log_vectors(ev_path)
        groups = by_child(generations)
        done = study.finished_children()
        for row in aggregate.to_dict(orient="records"):
            key = child_key(row.get("condition"), row.get("target"), row.get("alpha"))
            if key not in done:
                study.log_child(row, groups.get(key))
        return study.finish(aggregate, scores=generations)
    except BaseException:
        study.end("FAILED")
        raise


