"""Records you can trust, end to end on a tiny model and a real ``mlflow server``:

- the parent run exists (RUNNING, with params) before extraction ends, is KILLED after
  ``kill -9``, and the rerun finishes the same parent; the resumed outputs equal a clean run's;
- a credential in MLFLOW_TRACKING_URI never reaches the terminal, the files or MLflow;
- a second ``emoexp run`` on the same output folder stops at once, naming the holder;
- two processes logging the same study to one server leave one parent and one child per key;
- ``emoexp run`` then a different config (``--limit``) both work: each gets its own folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from emoexp import EmotionVectors

pytestmark = pytest.mark.slow

RUN = ["run", "--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "4", "--max_new_tokens", "24",
       "--batch_size", "4", "--threads", "1"]
PASSWORD = "Pa55-w0rd-LIVE-7f3a"


def _env(uri: str | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _emoexp(args: list[str], cwd: Path, uri: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "emoexp", *args], cwd=cwd, env=_env(uri), capture_output=True,
                          text=True, timeout=1200, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _wait(cond, what: str, timeout: float = 300.0, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"waited {timeout:.0f}s for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("live-server"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The reference: the same config run once without interruption (no MLflow)."""
    cwd = tmp_path_factory.mktemp("clean")
    _emoexp([*RUN, "--mlflow", "false", "--out_dir", "ref"], cwd)
    return cwd / "ref"


def _parents(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`emoexp.kind` = 'parent'", max_results=100)


def _children(client: MlflowClient, parent: str) -> list:
    exp_id = client.get_run(parent).info.experiment_id
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)


def test_live_parent_killed_then_resumed_into_the_same_parent(server, clean, tmp_path):
    uri = server.url.replace("http://", f"http://alice:{PASSWORD}@")
    client = MlflowClient(server.url)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "emoexp", *RUN, "--experiment", "live", "--out_dir", str(out)],
                            cwd=tmp_path, env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        parent = _wait(lambda: [p for p in _parents(client, "live")
                                if p.info.status == "RUNNING" and "emoexp.attempts" in p.data.tags], "a RUNNING parent")[0]
        assert parent.data.params["generate.alphas"] == "[-1.0, 0.0, 1.0, 2.0, 4.0]"
        assert parent.data.tags["emoexp.attempts"] == "1"
        shard = out / "generations.jsonl.work" / "rank0.jsonl"
        _wait(lambda: shard.is_file() and shard.stat().st_size > 0, "generation to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    first_output = proc.communicate()[0].decode(errors="replace")
    assert not (out / "generations.jsonl").exists(), "the run finished before it could be killed"
    # created before extraction ended (MLflow's clock and the file system's agree on this machine)
    assert parent.info.start_time / 1000 < (out / "evs.safetensors").stat().st_mtime
    killed = _wait(lambda: client.get_run(parent.info.run_id).info.status == "KILLED" or None,
                   "the watchdog to mark the run KILLED", every=0.5)
    assert killed

    second = _emoexp([*RUN, "--experiment", "live", "--out_dir", str(out)], tmp_path, uri)
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["emoexp.attempts"] == "2"
    assert len([p for p in _parents(client, "live")]) == 1
    kids = _children(client, parent.info.run_id)
    assert len(kids) == 31 and len({k.data.tags["emoexp.child_key"] for k in kids}) == 31
    assert all(k.info.status == "FINISHED" for k in kids)
    assert "gain.joy" in run.data.metrics and "n_generations" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "time.generate_s")]
    assert steps == [2]  # attempt 1 was killed before it timed generation; nothing was overwritten

    # the resumed run wrote what an uninterrupted run writes
    for name in ("generations.jsonl", "scores.jsonl", "aggregate.csv", "evs.responses.jsonl"):
        assert (out / name).read_text() == (clean / name).read_text(), name
    a, b = EmotionVectors.load(out / "evs.safetensors"), EmotionVectors.load(clean / "evs.safetensors")
    assert a.emotions == b.emotions and all(torch.equal(a[e], b[e]) for e in a.emotions)

    # the credential never left the process: terminal, files, params, tags, artifacts
    assert PASSWORD not in first_output + second.stdout + second.stderr
    for f in out.rglob("*"):
        if f.is_file() and f.suffix != ".safetensors":
            assert PASSWORD.encode() not in f.read_bytes(), f
    blob = json.dumps([run.data.params, run.data.tags])
    for art in ("config.json", "provenance.json", "attempts/001.json", "attempts/002.json"):
        blob += Path(client.download_artifacts(parent.info.run_id, art, str(tmp_path))).read_text()
    assert PASSWORD not in blob and "alice" not in blob


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as in a terminal: a suite started in the background
    (`cmd &`, as CI runners and nohup do) passes SIGINT on as ignored, and Python then never
    installs its KeyboardInterrupt handler, so the signal would be dropped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_one_writer_per_output_folder_and_ctrl_c(tmp_path):
    """A second run on a folder being written stops at once naming the holder; Ctrl-C on the
    first says how to resume, without a traceback."""
    out = tmp_path / "busy"
    # long enough (minutes) that it is still working when the signal comes, however slow the second run is
    args = [*RUN, "--mlflow", "false", "--out_dir", str(out), "--limit", "16", "--max_new_tokens", "300"]
    # stderr to a file, not a pipe: nobody reads a pipe while the second run works, so a full pipe stalls
    # the first run's progress bars (harmless for the signal, checked, but it distorts the run's timing)
    log = open(tmp_path / "first.err", "wb")  # noqa: SIM115 - closed in the finally
    first = subprocess.Popen([sys.executable, "-m", "emoexp", *args],
                             cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=log,
                             start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)  # noqa: PLW1509 - one signal call
    try:
        _wait(lambda: (out / ".emoexp.lock.owner.json").is_file(), "the first run to lock its folder")
        second = _emoexp(args, tmp_path, check=False)
        assert second.returncode == 2
        assert f"is being written by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        shard = out / "evs.safetensors.work" / "rank0.jsonl"
        _wait(lambda: shard.is_file() and shard.stat().st_size > 0, "extraction to start")
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=300)
        err = (tmp_path / "first.err").read_text(errors="replace")
        assert first.returncode == 130, err[-3000:]
        assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()


def test_two_processes_one_study_one_server(server, tmp_path):
    """Two runs of one config (other output folders, as on two hosts) logging to one server at
    once end with one parent and one FINISHED child per (condition, target, alpha)."""
    args = [*RUN, "--limit", "2", "--max_new_tokens", "4", "--experiment", "twice", "--evaluate.metrics", "repetition"]
    procs = [subprocess.Popen([sys.executable, "-m", "emoexp", *args, "--out_dir", str(tmp_path / f"host{i}")],
                              cwd=tmp_path, env=_env(server.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outs = [p.communicate(timeout=1200)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    client = MlflowClient(server.url)
    parents = _parents(client, "twice")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = [k for k in _children(client, parents[0].info.run_id) if k.info.status == "FINISHED"]
    keys = [k.data.tags["emoexp.child_key"] for k in kids]
    assert len(keys) == len(set(keys)) == 31


def test_a_changed_config_gets_its_own_folder(tmp_path):
    """The README's next step: `emoexp run` then `emoexp run --limit 2` both work."""
    small = [*RUN, "--mlflow", "false", "--max_new_tokens", "4", "--evaluate.metrics", "repetition"]
    _emoexp(small, tmp_path)
    _emoexp([*small, "--limit", "2"], tmp_path)
    folders = sorted(p.name for p in (tmp_path / "outputs" / "run").iterdir() if p.name != "latest")
    assert len(folders) == 2
    latest = (tmp_path / "outputs" / "run" / "latest").resolve()
    assert latest.name in folders and (latest / "results.md").is_file()
    assert EmotionVectors.load(latest / "evs.safetensors").metadata["n_queries"]["joy"]["neutral"] == 2
    first = next(tmp_path / "outputs" / "run" / f for f in folders if f != latest.name)
    assert EmotionVectors.load(first / "evs.safetensors").metadata["n_queries"]["joy"]["neutral"] == 4
    # the first folder is complete and untouched: a rerun of its config finds nothing to do
    again = _emoexp(small, tmp_path)
    assert "is complete, reused" in again.stderr
