"""End to end: `emoexp run` on a tiny model, then everything read back through a real
`mlflow server` on loopback; a rerun of the same config adds no runs; `emoexp compare` works
on what was logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from emoexp import EmotionVectors
from emoexp.vocab import DEFAULT_EPS

pytestmark = pytest.mark.slow

ARGS = ["run", "--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "2", "--max_new_tokens", "5",
        "--batch_size", "8", "--experiment", "e2e", "--out_dir", "out"]


def _run(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "emoexp", *ARGS, *extra], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    proc = _run(root)
    server = MlflowServer(root)  # over the store the run just wrote
    try:
        yield {"root": root, "stdout": proc.stdout, "client": MlflowClient(server.url)}
    finally:
        server.stop()


def _runs(client: MlflowClient):
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_run_prints_the_table_and_writes_outputs(job):
    out = job["root"] / "out"
    assert "P(target emotion)" in job["stdout"] and "| joy " in job["stdout"]
    for name in ("evs.safetensors", "generations.jsonl", "scores.jsonl", "aggregate.csv", "results.md"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))


def test_everything_reads_back_over_rest(job, tmp_path):
    client = job["client"]
    parents, children = _runs(client)
    assert len(parents) == 1
    parent = parents[0]
    agg = pd.read_csv(job["root"] / "out" / "aggregate.csv")
    # one child per (condition, target, alpha): 1 unsteered + 5 prompt + 5 targets x 5 alphas
    assert len(children) == len(agg) == 1 + 5 + 25
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["model"] == "tiny-random-llama"
    for c in children:
        t = c.data.tags
        row = agg[(agg["condition"] == t["condition"])
                  & ((agg["target"].astype(str) == t["target"]) | (agg["target"].isna() & (t["target"] == "none")))]
        if t["condition"] == "steered":
            row = row[row["alpha"] == float(t["alpha"])]
            assert c.data.metrics["alpha"] == float(t["alpha"])
        assert len(row) == 1, t
        for m in ("intensity", "topic", "repetition", "perplexity"):
            assert c.data.metrics[m] == pytest.approx(float(row[m].iloc[0]), rel=1e-9, abs=1e-12), (t, m)
    ev_file = client.download_artifacts(parent.info.run_id, "vectors/evs.safetensors", str(tmp_path))
    logged, local = EmotionVectors.load(ev_file), EmotionVectors.load(job["root"] / "out" / "evs.safetensors")
    assert logged.emotions == local.emotions and all(torch.equal(logged[e], local[e]) for e in local.emotions)
    child = next(c for c in children if c.data.tags["condition"] == "unsteered")
    table = client.download_artifacts(child.info.run_id, "generations.json", str(tmp_path))
    gens = pd.read_json(table, orient="split")
    assert len(gens) == int(agg[agg["condition"] == "unsteered"]["n"].iloc[0]) and "response" in gens


def test_rerun_of_the_same_config_adds_nothing_and_compare_reads_mlflow(job):
    before = _runs(job["client"])
    _run(job["root"])
    after = _runs(job["client"])
    assert len(after[0]) == len(before[0]) == 1 and len(after[1]) == len(before[1])
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "emoexp", "compare", "--experiment", "e2e", "--out",
                           str(job["root"] / "cmp")], cwd=job["root"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = pd.read_csv(job["root"] / "cmp" / "compare.csv")
    agg = pd.read_csv(job["root"] / "out" / "aggregate.csv")
    assert len(csv) == 1
    checked = 0
    for tgt in ("joy", "anger"):
        for alpha in (-1, 1, 2):
            want = agg[(agg["condition"] == "steered") & (agg["target"] == tgt) & (agg["alpha"] == alpha)]["intensity"]
            assert csv[f"intensity[{tgt}]@{alpha:g}"].iloc[0] == pytest.approx(float(want.iloc[0]), rel=1e-9)
            checked += 1
    want = agg[agg["condition"] == "unsteered"]["topic"]
    assert csv["topic@unsteered"].iloc[0] == pytest.approx(float(want.iloc[0]), rel=1e-9)
    assert checked == 6


def test_rescoring_the_run_with_another_scorer_adds_its_children_to_the_same_parent(job, tmp_path):
    """`emoexp evaluate <run folder> --eps X` and `--run_id <parent>`: new scores under the
    scorer's name, nothing the run wrote changed, one parent holding both scorers' children."""
    import shutil

    import numpy as np

    from emoexp.eval.classifiers import scorer_identity

    root, out = job["root"], job["root"] / "out"
    before = (out / "scores.jsonl").read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def evaluate(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emoexp", "evaluate", *args], cwd=root, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=600, check=False)

    proc = evaluate("out", "--eps", "minilm-written")
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = pd.read_json(out / "rescored" / "minilm-written" / "scores.jsonl", lines=True)
    old = pd.read_json(out / "scores.jsonl", lines=True)
    assert (out / "scores.jsonl").read_bytes() == before
    assert set(new["scorer"]) == {scorer_identity("minilm-written")} and set(old["scorer"]) == {scorer_identity(DEFAULT_EPS)}
    key = ["id", "condition", "target", "alpha"]
    both = new.merge(old, on=key, suffixes=("", "_old"))
    assert len(both) == len(old) == len(new)
    assert np.allclose(both["topic"], both["topic_old"])  # scorer-independent columns are the run's own
    assert not np.allclose(both["p_joy"], both["p_joy_old"])  # another scorer, other probabilities
    parents, children = _runs(job["client"])
    assert len(parents) == 1
    by = {}
    for c in children:
        by.setdefault(c.data.tags.get("emoexp.scorer"), []).append(c)
    assert len(by[scorer_identity(DEFAULT_EPS)]) == len(by[scorer_identity("minilm-written")]) == 31
    metrics = job["client"].get_run(parents[0].info.run_id).data.metrics
    assert metrics["minilm-written.n_generations"] == len(new)
    # the same from the MLflow parent alone, through the server
    proc = evaluate("--run_id", parents[0].info.run_id, "--eps", "minilm-zeroshot",
                    MLFLOW_TRACKING_URI=job["client"].tracking_uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, children = _runs(job["client"])
    assert sum(c.data.tags.get("emoexp.scorer") == scorer_identity("minilm-zeroshot") for c in children) == 31
    n_of = {(c.data.tags["emoexp.child_key"].rsplit("|", 1)[0], c.data.tags.get("emoexp.scorer")): c.data.params["n"]
            for c in children}
    for (key, sc), n in n_of.items():  # read from the run's own children only: not doubled by the earlier re-scoring
        if sc == scorer_identity("minilm-zeroshot"):
            assert n == n_of[(key, scorer_identity(DEFAULT_EPS))], key
    via = pd.read_json(root / "outputs" / "rescored" / parents[0].info.run_id / "minilm-zeroshot" / "scores.jsonl",
                       lines=True)
    assert len(via) == len(old) and set(via["eps_backend"]) == {"minilm-zeroshot:sentence-transformers/all-MiniLM-L6-v2"}
    # compare reads one scorer at a time: the run's own by default, another when named
    from emoexp.tracking import load_children

    uri = job["client"].tracking_uri
    own, other = load_children(["e2e"], uri=uri), load_children(["e2e"], uri=uri, scorer="minilm-written")
    assert len(own) == len(other) == 31
    assert set(own["scorer"]) == {scorer_identity(DEFAULT_EPS)} and set(other["scorer"]) == {scorer_identity("minilm-written")}
    # a truncated generations file is refused with one line, and nothing is written
    cut = tmp_path / "cut"
    shutil.copytree(out, cut, ignore=shutil.ignore_patterns("rescored"))
    lines = (cut / "generations.jsonl").read_text().splitlines(keepends=True)
    (cut / "generations.jsonl").write_text("".join(lines[: len(lines) // 2]))
    proc = evaluate(str(cut), "--eps", "minilm-written")
    assert proc.returncode == 2 and "not the complete file" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (cut / "rescored").exists()
