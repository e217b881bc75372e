"""MLflow tracking: a fake-but-real study (EV file, generations, aggregate for two model families)
is logged to an SQLite store, then read back over REST from a real ``mlflow server`` process."""

from __future__ import annotations

import http.server
import multiprocessing as mp
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import MlflowServer, free_port
from mlflow.tracking import MlflowClient

from emoexp import EmotionVectors
from emoexp.plots import save_all_plots
from emoexp.tracking import TrackingError, check_store, load_children, log_study, tracking_uri
from emoexp.tracking.meta import config_hash, is_secret_key, redact

EMOTIONS = ("anger", "joy", "sadness")
TARGETS = ("anger", "joy")
ALPHAS = (0.0, 1.0, 2.0)
METRICS = ("p_joy", "intensity", "topic")
SECRETS = ("sk-TESTSECRETabcdefghijklmnop", "hf_TESTTOKENabcdefghijklmno", "pw-TESTPASSWORD-42")


def grid() -> list[tuple[str, str | None, float | None]]:
    """(condition, target, alpha) of the fake study: unsteered, prompt per target, steered sweep."""
    return ([("unsteered", None, None)] + [("prompt", t, None) for t in TARGETS]
            + [("steered", t, a) for t in TARGETS for a in ALPHAS])


def make_study(root: Path, model_id: str, seed: int, alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """An EV file, generations (3 queries per grid entry) and their aggregate, with a config
    holding secrets and provenance, ready for :func:`log_study`."""
    g = torch.Generator().manual_seed(seed)
    ev_path = root / f"evs-{seed}.safetensors"
    EmotionVectors({e: torch.randn(3, 8, generator=g) for e in EMOTIONS},
                   {"model_id": model_id, "site": "residual",
                    "split_half_cosine": {e: [0.8, 0.9, 0.95] for e in EMOTIONS}}).save(ev_path)
    rng = random.Random(seed)
    rows, agg = [], []
    entries = [e for e in grid() if e[2] is None or e[2] in alphas] + [("steered", t, a) for t in TARGETS
                                                                         for a in alphas if a not in ALPHAS]
    for cond, target, alpha in entries:
        vals = {m: [rng.random() for _ in range(3)] for m in METRICS}
        for i in range(3):
            rows.append({"id": f"q{i}", "index": i, "query": f"question {i}?", "query_emotion": EMOTIONS[i],
                         "condition": cond, "target": target, "alpha": alpha, "n_tokens": 5 + i,
                         "response": f"{model_id} {cond} {target} {alpha} answer {i}",
                         **{m: vals[m][i] for m in METRICS}})
        a = {"condition": cond, "target": target, "alpha": alpha, "n": 3}
        for m in METRICS:
            mean = sum(vals[m]) / 3
            a.update({m: mean, f"{m}_ci_low": mean - 0.1, f"{m}_ci_high": mean + 0.1, f"{m}_n": 3})
        agg.append(a)
    config = {"model": model_id, "experiment": "study", "seed": seed,
              "extract": {"site": "residual", "scope": "response"},
              "generate": {"alphas": list(alphas), "targets": list(TARGETS), "max_new_tokens": 16},
              "evaluate": {"judge": {"api_key": SECRETS[0], "endpoint": f"https://bob:{SECRETS[2]}@judge.example"}}}
    provenance = {"model_id": model_id, "revision": "main", "chat_template_sha256": "c0ffee",
                  "library_versions": {"torch": torch.__version__}, "world_size": 1, "HF_TOKEN": SECRETS[1]}
    url = f"https://user:{SECRETS[2]}@data.example/eval.jsonl"
    datasets = [{"name": "emotionquery", "role": "extraction"},
                {"name": "evalset", "source": url, "role": "evaluation"}]
    return {"experiment": "study", "config": config, "provenance": provenance, "ev_path": ev_path,
            "generations": pd.DataFrame(rows), "aggregate": pd.DataFrame(agg), "datasets": datasets}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two model families logged to an SQLite store, then read through a real ``mlflow server``
    process over that store (killed at teardown)."""
    root = tmp_path_factory.mktemp("store")
    uri = check_store(tracking_uri(root))
    a, b = make_study(root, "tiny/a", 1), make_study(root, "tiny/b", 2)
    ids = {"tiny/a": log_study(**a, uri=uri), "tiny/b": log_study(**b, uri=uri)}
    server = MlflowServer(root)
    try:
        yield {"root": root, "uri": uri, "server": server.url, "studies": {"tiny/a": a, "tiny/b": b}, "parents": ids}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(study: dict[str, Any]) -> str:
    return study["server"]


def _children(client: MlflowClient, exp_id: str, parent: str) -> list[Any]:
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)


def _key(cond: str, target: Any, alpha: Any) -> tuple[str, str, str]:
    return (cond, "none" if pd.isna(target) else str(target), "none" if pd.isna(alpha) else format(alpha, "g"))


def test_tracking_uri_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.cluster:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.cluster:5000"


def test_parent_child_structure_over_rest(study: dict[str, Any], server: str) -> None:
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("study")
    parents = client.search_runs([exp.experiment_id], "tags.`emoexp.kind` = 'parent'")
    assert {p.data.tags["model_id"]: p.info.run_id for p in parents} == study["parents"]
    for model, pid in study["parents"].items():
        s = study["studies"][model]
        parent = client.get_run(pid)
        assert parent.info.status == "FINISHED"
        p = parent.data.params
        assert p["generate.max_new_tokens"] == "16" and p["extract.site"] == "residual"
        assert p["config_hash"] == config_hash(s["config"]) == parent.data.tags["config_hash"]
        tags = parent.data.tags
        assert tags["provenance.model_id"] == model and tags["provenance.revision"] == "main"
        assert tags["provenance.chat_template_sha256"] == "c0ffee" and tags["provenance.world_size"] == "1"
        assert tags["provenance.hardware.cpu_count"] == str(os.cpu_count())
        assert "provenance.library_versions.torch" in tags
        assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"emotionquery", "evalset"}
        kids = _children(client, exp.experiment_id, pid)
        agg = {_key(r["condition"], r["target"], r["alpha"]): r for r in s["aggregate"].to_dict("records")}
        assert len(kids) == len(agg) == 9
        for kid in kids:
            assert kid.info.status == "FINISHED"
            k = (kid.data.params["condition"], kid.data.params["target"], kid.data.params["alpha"])
            assert (kid.data.tags["condition"], kid.data.tags["target"], kid.data.tags["alpha"]) == k
            row = agg.pop(k)
            m = kid.data.metrics
            for name in METRICS:
                assert m[name] == row[name]
                assert (m[f"{name}_ci_low"], m[f"{name}_ci_high"]) == (row[f"{name}_ci_low"], row[f"{name}_ci_high"])
            assert m["n"] == 3 and m["p_joy_n"] == 3
            assert ("alpha" in m) == (not pd.isna(row["alpha"]))
            if not pd.isna(row["alpha"]):
                assert m["alpha"] == row["alpha"]
                assert client.get_metric_history(kid.info.run_id, "alpha")[0].step == 0
        assert not agg


def test_ev_artifact_and_plots_load_back(study: dict[str, Any], server: str, tmp_path: Path) -> None:
    client = MlflowClient(server)
    pid = study["parents"]["tiny/a"]
    ev = Path(study["studies"]["tiny/a"]["ev_path"])
    local = client.download_artifacts(pid, f"vectors/{ev.name}", str(tmp_path))
    got, want = EmotionVectors.load(local), EmotionVectors.load(ev)
    assert got.emotions == want.emotions and got.metadata == want.metadata
    assert all(torch.equal(got[e], want[e]) for e in want.emotions)
    plots = {Path(f.path).name for f in client.list_artifacts(pid, "plots")}
    assert {"ev_norms.png", "ev_cosine.png", "ev_split_half.png"} <= plots
    assert {"alpha_sweep_p_target.png", "alpha_sweep_intensity.png", "alpha_sweep_topic.png"} <= plots
    top = {f.path for f in client.list_artifacts(pid)}
    assert {"config.json", "provenance.json", "aggregate.json"} <= top


def test_generations_table_and_samples(study: dict[str, Any], server: str) -> None:
    client = MlflowClient(server)
    exp_id = client.get_experiment_by_name("study").experiment_id
    pid = study["parents"]["tiny/b"]
    gens = study["studies"]["tiny/b"]["generations"]
    kid = next(k for k in _children(client, exp_id, pid)
               if (k.data.tags["condition"], k.data.tags["target"], k.data.tags["alpha"]) == ("steered", "joy", "2"))
    # (MlflowClient.load_table searches through the global tracking URI, not the client's: read the file)
    table = pd.read_json(client.download_artifacts(kid.info.run_id, "generations.json"), orient="split")
    want = gens[(gens["condition"] == "steered") & (gens["target"] == "joy") & (gens["alpha"] == 2.0)]
    assert table["response"].tolist() == want["response"].tolist()
    assert table["p_joy"].tolist() == pytest.approx(want["p_joy"].tolist())
    sample = client.download_artifacts(kid.info.run_id, "samples.txt")
    assert want["response"].iloc[0] in Path(sample).read_text()


def test_compare_over_rest_matches_local(study: dict[str, Any], server: str) -> None:
    from emoexp.compare import compare_table

    remote = compare_table(["study"], uri=server)
    pd.testing.assert_frame_equal(remote, compare_table(["study"], uri=study["uri"]))
    assert list(remote.index) == ["tiny/a", "tiny/b"]


def test_rerun_skips_finished_children_and_changed_config_starts_new_parent(
        study: dict[str, Any], server: str) -> None:
    client = MlflowClient(server)
    s = {**make_study(study["root"], "tiny/r", 5, alphas=(1.0,)), "experiment": "rerun"}
    first = log_study(**s, uri=server)  # through the server: REST calls, artifacts proxied by it
    exp_id = client.get_experiment_by_name("rerun").experiment_id
    kids = _children(client, exp_id, first)
    assert len(kids) == 5
    client.delete_run(kids[0].info.run_id)  # as if this child had never finished
    assert log_study(**s, uri=server) == first
    after = _children(client, exp_id, first)
    assert len(after) == 5 and len({k.info.run_id for k in after} - {k.info.run_id for k in kids}) == 1
    changed = make_study(study["root"], "tiny/r", 5, alphas=(4.0,))
    second = log_study(**{**changed, "experiment": "rerun", "ev_path": None}, uri=server)
    assert second != first and len(_children(client, exp_id, second)) == 5
    assert client.get_run(second).data.params["generate.alphas"] == "[4.0]"


def _log_one(uri: str, root: str, i: int) -> None:
    s = make_study(Path(root), f"tiny/p{i}", 10 + i)
    log_study(**{**s, "experiment": "concurrent", "ev_path": None}, uri=uri)  # no EV plots: keep it quick


def test_four_processes_one_store_lose_nothing(tmp_path: Path) -> None:
    uri = tracking_uri(tmp_path)  # a fresh store: the four processes also race to create its schema
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_log_one, args=(uri, str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    long = load_children(["concurrent"], uri=uri)
    assert sorted(long["model"].unique()) == [f"tiny/p{i}" for i in range(4)]
    assert len(long) == 4 * 9 and long[list(METRICS)].notna().all().all()


def test_unreachable_or_foreign_server_fails_fast(tmp_path: Path, server: str) -> None:
    assert check_store(server) == server
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens
    t = time.time()
    with pytest.raises(TrackingError, match="unreachable"):
        check_store(uri, timeout=2)
    with pytest.raises(TrackingError, match="127.0.0.1"):  # before the EV file (absent here) is opened
        log_study(experiment="x", config={}, provenance={}, ev_path=tmp_path / "missing.safetensors",
                  generations=pd.DataFrame(), aggregate=pd.DataFrame(), uri=uri)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(TrackingError, match="unreachable .*timed out"):
            check_store(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1)
    assert time.time() - t < 6

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError, match="not as an MLflow tracking server"):
            check_store(f"http://127.0.0.1:{other.server_address[1]}", timeout=2)
    finally:
        other.shutdown()
        other.server_close()


def test_secrets_never_reach_params_tags_or_artifacts(study: dict[str, Any]) -> None:
    for f in study["root"].rglob("*"):
        if f.is_file() and f.suffix != ".safetensors" and f.name != "server.log":
            blob = f.read_bytes()
            assert not any(s.encode() in blob for s in SECRETS), f
    client = MlflowClient(study["uri"])
    params = client.get_run(study["parents"]["tiny/a"]).data.params
    assert params["evaluate.judge.api_key"] == "***"
    assert params["evaluate.judge.endpoint"] == "https://***@judge.example"


def test_redaction_rules() -> None:
    assert [is_secret_key(k) for k in ("api_key", "apiKey", "OPENAI_API_KEY", "hf_token", "client_secret",
                                       "db_password", "key")] == [True] * 7
    visible = ("max_new_tokens", "tokenizer", "token_scope", "keywords", "monkey")
    assert [is_secret_key(k) for k in visible] == [False] * 5
    assert redact({"a": [{"token": "x"}], "url": "http://h/?api_key=abc&x=1"}) == \
        {"a": [{"token": "***"}], "url": "http://h/?api_key=***&x=1"}
    assert config_hash({"m": 1, "judge": {"api_key": "a"}}) == config_hash({"judge": {"api_key": "b"}, "m": 1})
    assert config_hash({"m": 1}) != config_hash({"m": 2})


def test_corrupt_or_foreign_store_is_reported_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(os.urandom(8192))
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    with pytest.raises(TrackingError, match="corrupt or not an SQLite"):
        check_store(f"sqlite:///{db}")
    with pytest.raises(TrackingError, match="left untouched"):
        log_study(experiment="x", config={}, provenance={}, ev_path=None, generations=pd.DataFrame(),
                  aggregate=pd.DataFrame(), uri=f"sqlite:///{db}")
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.commit()
    with pytest.raises(TrackingError, match="not an MLflow store"):
        check_store(f"sqlite:///{other}")


def test_only_rank_zero_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(TrackingError, match="only rank 0"):
        log_study(experiment="x", config={}, provenance={}, ev_path=None, generations=pd.DataFrame(),
                  aggregate=pd.DataFrame(), uri="http://127.0.0.1:9")


def test_save_all_plots(study: dict[str, Any], tmp_path: Path) -> None:
    s = study["studies"]["tiny/a"]
    paths = save_all_plots(s["ev_path"], s["aggregate"], tmp_path / "plots")
    names = {p.name for p in paths}
    assert {"ev_norms.png", "ev_cosine.png", "ev_split_half.png"} | {f"alpha_sweep_{m}.png" for m in ("p_target", "intensity", "topic")} == names
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_alpha_curves_p_target_names_and_tables(study: dict[str, Any], server: str) -> None:
    """What the MLflow UI shows: each parent's α curves as metric histories (step = 100·α, in
    α's order), ``p_target`` on every child whose target was scored, the results and the
    per-response scores as MLflow tables, and a name with the identity."""
    client = MlflowClient(server)
    exp_id = client.get_experiment_by_name("study").experiment_id
    for model, pid in study["parents"].items():
        s = study["studies"][model]
        agg = s["aggregate"]
        parent = client.get_run(pid)
        assert parent.info.run_name == f"{model} · {parent.data.tags['config_hash'][:8]}"
        assert parent.data.tags["emoexp.run_label"] == model
        joy = agg[(agg["condition"] == "steered") & (agg["target"] == "joy")].sort_values("alpha")
        hist = sorted(client.get_metric_history(pid, "joy/p_target_by_alpha_x100"), key=lambda m: m.step)
        assert [m.step for m in hist] == [round(100 * a) for a in joy["alpha"]] == [0, 100, 200]
        assert [m.value for m in hist] == pytest.approx(joy["p_joy"].tolist())
        assert not client.get_metric_history(pid, "anger/p_target_by_alpha_x100")  # p_anger was never scored
        for kid in _children(client, exp_id, pid):
            m, target = kid.data.metrics, kid.data.tags["target"]
            assert ("p_target" in m) == (target == "joy")
            if target == "joy":
                assert m["p_target"] == m["p_joy"]
        results = pd.read_json(client.download_artifacts(pid, "tables/results.json"), orient="split")
        assert len(results) == len(agg)
        row = results[(results["condition"] == "steered") & (results["target"] == "joy") & (results["alpha"] == 2.0)]
        assert float(row["p_target"].iloc[0]) == pytest.approx(float(joy[joy["alpha"] == 2.0]["p_joy"].iloc[0]))
        scores = pd.read_json(client.download_artifacts(pid, "tables/scores.json"), orient="split")
        assert scores["response"].tolist() == s["generations"]["response"].tolist()


def test_curves_keep_alpha_order_sign_and_the_unsteered_point() -> None:
    from emoexp.tracking.curves import curves

    agg = pd.DataFrame({"condition": ["unsteered", "steered", "steered", "steered", "prompt"],
                        "target": [None, "joy", "joy", "joy", "joy"], "alpha": [None, 4.0, -1.0, 0.5, None],
                        "p_joy": [0.1, 0.9, 0.05, 0.3, 0.6], "gain": [None, 0.8, -0.05, 0.2, None],
                        "topic_ratio": [None, 0.7, 1.0, 0.95, None], "repetition_ratio": [None, 2.0, 1.0, 1.1, None],
                        "dose": [0.0, 0.8, 0.2, 0.1, None]})
    got: dict[str, list[tuple[int, float]]] = {}
    for name, value, step in curves(agg):
        got.setdefault(name, []).append((step, value))
    # the grid has no α = 0: the unsteered point stands there (gain 0, ratios 1); the prompt row is no point
    assert got["joy/p_target_by_alpha_x100"] == [(-100, 0.05), (0, 0.1), (50, 0.3), (400, 0.9)]
    assert got["joy/gain_by_alpha_x100"] == [(-100, -0.05), (0, 0.0), (50, 0.2), (400, 0.8)]
    assert got["joy/repetition_ratio_by_alpha_x100"][1] == (0, 1.0)
    assert got["joy/p_target_by_dose_x100"] == [(-20, 0.05), (0, 0.1), (10, 0.3), (80, 0.9)]  # negative α, negative dose
    assert len(got) == 8


def test_a_failed_parent_says_why_and_a_resumed_one_forgets(tmp_path: Path) -> None:
    from emoexp.tracking import Study

    uri = check_store(tracking_uri(tmp_path))
    client = MlflowClient(uri)
    s = Study("fails", "f" * 16, {"model": "m"}, {"model_id": "m"}, uri=uri, watch=False, name="m · limit 4")
    pid = s.start()
    assert client.get_run(pid).info.run_name == "m · limit 4 · ffffffff"
    s.end("FAILED", "ResourceError: no space left on the device of out/ (while writing out/x)\nsecond line")
    run = client.get_run(pid)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.note.content"].startswith(
        "**FAILED** (attempt 1): ResourceError: no space left on the device of out/ (while writing out/x) second line\n\n")
    assert run.data.tags["emoexp.failure"].startswith("ResourceError")
    again = Study("fails", "f" * 16, {"model": "m"}, {"model_id": "m"}, uri=uri, watch=False, name="m · limit 4")
    assert again.start() == pid and again.attempt == 2
    again.finish()
    run = client.get_run(pid)
    assert run.info.status == "FINISHED" and "emoexp.failure" not in run.data.tags
    assert run.data.tags["mlflow.note.content"].startswith("**m**")


def test_a_renamed_experiment_or_a_deleted_parent_is_one_line_and_logs_nothing(tmp_path: Path) -> None:
    from emoexp.tracking import Study

    uri = check_store(tracking_uri(tmp_path))
    client = MlflowClient(uri)

    def study() -> Study:
        return Study("named", "e" * 16, {"model": "m"}, {"model_id": "m"}, uri=uri, watch=False)

    first = study()
    pid = first.start()
    first.finish()
    exp_id = client.get_experiment_by_name("named").experiment_id
    client.rename_experiment(exp_id, "renamed")
    with pytest.raises(TrackingError, match="experiment 'named' was renamed to 'renamed': rerun with "
                                            "--experiment 'renamed'") as e:
        study().start()
    assert "\n" not in str(e.value)
    assert client.get_experiment_by_name("named") is None  # no second experiment of the old name
    client.rename_experiment(exp_id, "named")
    client.delete_run(pid)
    with pytest.raises(TrackingError, match=f"parent {pid} in experiment 'named' is deleted: restore it"):
        study().start()
    assert len(client.search_runs([exp_id])) == 0  # no new parent beside the deleted one
    client.restore_run(pid)
    again = study()
    assert again.start() == pid and again.attempt == 2  # restored: resumes into it
    again.finish()


def test_experiments_get_the_model_training_kind_and_a_chosen_kind_is_kept(tmp_path: Path) -> None:
    from emoexp.tracking import Study

    uri = check_store(tracking_uri(tmp_path))
    client = MlflowClient(uri)
    old = client.create_experiment("made-before-kinds")  # as emoexp made them before it set kinds
    mine = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("made-before-kinds", "chosen", "new"):
        s = Study(name, "k" * 16, {"model": "m"}, {"model_id": "m"}, uri=uri, watch=False)
        s.start()
        assert s.ui_url().endswith(f"/#/experiments/{s.exp_id}/runs?workflowType=machine_learning")
        s.finish()
    kind = "mlflow.experimentKind"
    assert client.get_experiment(old).tags[kind] == "custom_model_development"
    assert client.get_experiment(mine).tags[kind] == "genai_development"
    assert client.get_experiment_by_name("new").tags[kind] == "custom_model_development"
