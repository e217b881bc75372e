"""Inputs are identified by content: changed data, weights or vectors are never reused silently,
and what cannot work is refused before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emoexp import EmotionVectors
from emoexp.cli import main
from emoexp.config import GenerateConfig
from emoexp.models import inspect_model, tiny_config
from emoexp.recipes import generate
from emoexp.vectors import VectorMismatch

TINY = ["--model", "tiny-random-llama", "--accelerator", "cpu", "--batch_size", "8", "--max_new_tokens", "3",
        "--threads", "1"]


def _emoexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "emoexp", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def _write_queries(path: Path, suffix: str = "") -> None:
    rows = [{"id": f"{e}-{i}", "query": f"Tell me about the {e} you felt at moment {i}{suffix}?", "emotion": e}
            for e in ("anger", "disgust", "fear", "joy", "sadness") for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict[str, Path]:
    """An extraction from a data file at an explicit output, then the same command after the
    file's content changed (same path)."""
    cwd = tmp_path_factory.mktemp("resume")
    data = cwd / "queries.jsonl"
    _write_queries(data)
    first = _emoexp(["extract", *TINY, "--data", str(data), "--out", "evs/a.safetensors"], cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _emoexp(["extract", *TINY, "--data", str(data), "--out", "evs/a.safetensors"], cwd)
    _write_queries(data, " today")
    changed = _emoexp(["extract", *TINY, "--data", str(data), "--out", "evs/a.safetensors"], cwd)
    derived = _emoexp(["extract", *TINY, "--data", str(data)], cwd)
    return {"cwd": cwd, "again": again, "changed": changed, "derived": derived}


def test_a_finished_output_is_reused_when_nothing_changed(extracted):
    again = extracted["again"]
    assert again.returncode == 0 and "is complete for this config and these inputs" in again.stderr


def test_changed_data_content_is_refused_at_an_explicit_output(extracted):
    changed = extracted["changed"]
    assert changed.returncode == 2, changed.stderr[-2000:]
    err = changed.stderr.strip()
    assert "holds finished results of a different config or inputs" in err and "content of data changed" in err
    assert len(err.splitlines()) == 1
    # the finished result is intact and still says what it was computed from
    evs = EmotionVectors.load(extracted["cwd"] / "evs" / "a.safetensors")
    assert evs.metadata["data_fingerprint"] and evs.metadata["model_fingerprint"].startswith("tiny:")


def test_changed_data_content_gets_its_own_folder_by_default(extracted):
    derived = extracted["derived"]
    assert derived.returncode == 0, derived.stderr[-3000:]
    new = list((extracted["cwd"] / "outputs" / "extract").glob("*/evs.safetensors"))
    assert len(new) == 1
    old = EmotionVectors.load(extracted["cwd"] / "evs" / "a.safetensors")
    assert EmotionVectors.load(new[0]).metadata["data_fingerprint"] != old.metadata["data_fingerprint"]


def test_changed_weights_change_the_model_fingerprint(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=64)).save_pretrained(folder)
    a = inspect_model(str(folder))
    assert inspect_model(str(folder)).fingerprint == a.fingerprint  # cached by size + mtime, same answer
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=64)).save_pretrained(folder)
    b = inspect_model(str(folder))
    assert b.fingerprint != a.fingerprint and (b.num_layers, b.hidden_size) == (2, 32)


def test_vectors_of_another_model_are_refused_before_weights_load(extracted, tmp_path):
    ev = extracted["cwd"] / "evs" / "a.safetensors"
    cfg = GenerateConfig(model="tiny-random-qwen2", vectors=str(ev), limit=1, conditions=["steered"],
                         targets=["joy"], alphas=[1.0])
    with pytest.raises(VectorMismatch, match="was extracted from tiny-random-llama .*allow_foreign_vectors"):
        generate.prepare(cfg)
    ok = generate.prepare(GenerateConfig(model="tiny-random-qwen2", vectors=str(ev), limit=1, conditions=["steered"],
                                         targets=["joy"], alphas=[1.0], allow_foreign_vectors=True))
    assert ok.identity["inputs"]["vectors"] == EmotionVectors.load(ev).fingerprint()
    three = EmotionVectors({"joy": torch.ones(3, 32)}, {"model_id": "x"})
    three.save(tmp_path / "three.safetensors")
    with pytest.raises(VectorMismatch, match="3 layers x 32, but tiny-random-qwen2 has 2 layers x 32"):
        generate.prepare(GenerateConfig(model="tiny-random-qwen2", vectors=str(tmp_path / "three.safetensors"),
                                        allow_foreign_vectors=True, targets=["joy"]))


def test_the_vectors_identity_is_their_tensors_not_their_file(tmp_path):
    a = EmotionVectors({"joy": torch.arange(64.0).reshape(2, 32)}, {"created": "monday"})
    b = EmotionVectors({"joy": torch.arange(64.0).reshape(2, 32)}, {"created": "tuesday"})
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    assert EmotionVectors.load(tmp_path / "a.safetensors").fingerprint() == \
        EmotionVectors.load(tmp_path / "b.safetensors").fingerprint()
    c = EmotionVectors({"joy": torch.arange(64.0).reshape(2, 32) * 2}, {})
    assert c.fingerprint() != a.fingerprint()
    assert oct((tmp_path / "a.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("setup, args, message", [
    ("huge", ["extract", *TINY, "--data", "huge.jsonl", "--emotions", "joy"], "its prompt is"),
    ("joyonly", ["extract", *TINY, "--data", "joyonly.jsonl"], "no queries labelled anger"),
    ("empty", ["extract", *TINY, "--data", "empty.jsonl"], "holds no records"),
    ("badmeta", ["generate", *TINY, "--vectors", "badmeta.safetensors"], "metadata must be a JSON object"),
    ("layers", ["generate", *TINY, "--vectors", "ok.safetensors", "--layers", "[99]"], "--layers: 99 is out of range"),
])
def test_late_failures_come_first(setup, args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if setup == "huge":  # a ~100k-token query: refused by its length, before a model loads
        Path("huge.jsonl").write_text(json.dumps({"query": "word " * 100_000, "emotion": "joy"}) + "\n")
    elif setup == "joyonly":
        Path("joyonly.jsonl").write_text(json.dumps({"query": "A fine day?", "emotion": "joy"}) + "\n")
    elif setup == "empty":
        Path("empty.jsonl").write_text("")
    elif setup == "badmeta":
        from safetensors.torch import save_file

        save_file({"joy": torch.zeros(2, 32)}, "badmeta.safetensors", metadata={"format": "emoexp-ev/1",
                                                                                 "emoexp": "[1, 2]"})
    elif setup == "layers":
        EmotionVectors({"joy": torch.zeros(2, 32)}, {"model_id": "tiny-random-llama"}).save("ok.safetensors")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not Path("outputs").exists()


@pytest.mark.parametrize("uri, message", [
    ("file:./mlruns", "is a file store"),
    ("./mlruns", "is a file store"),
    ("sqlite:///{tmp}/afile/mlflow.db", "is a file, not a folder"),
    ("sqlite:////proc/no-such/mlflow.db", "cannot write in"),
])
def test_unusable_tracking_stores_are_refused_up_front(uri, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    assert main(["run", *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()


def test_a_full_disk_is_one_line_naming_the_folder_and_the_parent_says_why(tmp_path, monkeypatch, capsys):
    """ENOSPC while generating: one line naming the output folder (not a traceback), the MLflow
    parent FAILED with the reason at the top of its note; the finished extraction is kept."""
    import errno

    from mlflow.tracking import MlflowClient

    from emoexp.tracking import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "generations.jsonl.work"))

    monkeypatch.setattr(generate, "run_stage", full)
    assert main(["run", *TINY, "--limit", "2", "--experiment", "disk", "--out_dir", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # the log lines of the stages before it, then the error: one line
    assert last.startswith("emoexp run: error: no space left on the device of out (while writing ") and "rerun" in last
    assert (tmp_path / "out" / "evs.safetensors").is_file()
    client = MlflowClient(tracking_uri(tmp_path))
    parent = client.search_runs([client.get_experiment_by_name("disk").experiment_id],
                                "tags.`emoexp.kind` = 'parent'")[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["mlflow.note.content"].startswith("**FAILED** (attempt 1): ResourceError: no space left")
