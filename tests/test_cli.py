"""The command line: help, clear errors before any model loads, python -m emoexp."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from emoexp.cli import COMMANDS, main

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "official" / "EMVector" / "qwen2.5"


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "emoexp", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "extract" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["extract", "--out", "/proc/nope/evs.safetensors", "--model", "tiny-random-llama"], "not writable"),
    (["extract", "--accelerator", "gpu", "--devices", "8"], "CUDA device"),
    (["extract", "--site", "resid"], "valid: residual, attn, mlp"),
    (["generate", "--alphas=1,.nan"], "alphas must be finite"),
    (["extract", "--model", "Qwen/Qwen-7B-Chat"], "trust_remote_code"),
    (["generate", "--vectors", "/nonexistent.safetensors", "--out", "/tmp/emoexp-cli-test/g.jsonl"], "no vector file"),
    (["import-official", "/nonexistent", "--out", "/tmp/x.safetensors"], "no authors' EV JSON"),
])
def test_bad_input_is_a_clear_error_before_any_model_loads(args, message, capsys):
    t = time.time()
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert time.time() - t < 10  # nothing was loaded


def test_slurm_task_counts_must_match(monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert main(["extract", "--accelerator", "cpu", "--devices", "2", "--out", "/tmp/emoexp-cli-test/e.safetensors"]) == 2
    assert "--ntasks-per-node must equal --devices" in capsys.readouterr().err


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="the authors' vectors are not beside this checkout")
def test_import_official_command(tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    assert main(["import-official", str(OFFICIAL), "--out", str(out), "--model_id", "Qwen/Qwen2.5-7B-Instruct"]) == 0
    from emoexp import EmotionVectors

    evs = EmotionVectors.load(out)
    assert evs.metadata["site"] == "attn" and evs.num_layers == 28
    assert "attention-output" in capsys.readouterr().out
