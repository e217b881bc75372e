"""The benchmark scripts still run (not timed: speed is measured in benchmarks/, not in tests).

The GPU script's ``--smoke`` mode runs every measurement on a tiny model on CPU, including
the compiled fast path, whose scores must move when the in-place biases change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_and_the_compiled_path_steers():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_decode.py"), "--smoke", "--modes", "default"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    moved = re.search(r"max \|Δ score\| \+d vs unsteered / −d vs \+d \| ([0-9.e+-]+) / ([0-9.e+-]+) \|", proc.stdout)
    assert moved and float(moved.group(1)) > 1e-3 and float(moved.group(2)) > 1e-3, proc.stdout[-3000:]
    assert "generation with DecodeCapture" in proc.stdout


@pytest.mark.slow
def test_peers_benchmark_runs_on_a_tiny_run_and_the_peers_steer(tmp_path):
    """benchmarks/peers.py end to end on a tiny `emoexp run`: repeng and steering-vectors (installed
    by `install.sh --bench`, which scripts/test.sh runs) build vectors, steer (their largest setting
    changes replies: a hook that did nothing would not), are scored, and the table is written."""
    import importlib.util
    import json

    if not (importlib.util.find_spec("repeng") and importlib.util.find_spec("steering_vectors")):
        pytest.skip("repeng / steering-vectors not installed: bash scripts/install.sh --bench")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    run = subprocess.run([sys.executable, "-m", "emoexp", "run", "--model", "tiny-random-llama", "--accelerator", "cpu",
                          "--limit", "2", "--max_new_tokens", "5", "--batch_size", "8", "--mlflow", "false",
                          "--out_dir", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "run", "--repeng", "1", "64",
                           "--sv", "1", "64", "--save", "peers", "--out", str(doc)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "peers" / "results.json").read_text())
    assert set(got["results"]) == {"emoexp", "repeng", "steering-vectors"}
    assert got["same_unsteered"] == {"run": 6}  # regenerated unsteered replies equal the run's own
    assert got["changed_at_largest"]["repeng"] > 0.5 and got["changed_at_largest"]["steering-vectors"] > 0.5
    table = doc.read_text()
    assert table.startswith("# Benchmarks") and "## Peers: the same EmotionQuery work, the same scorer" in table
    assert all(f"| {e} |" in table for e in ("anger", "disgust", "fear", "joy", "sadness")) and "| **mean** |" in table
