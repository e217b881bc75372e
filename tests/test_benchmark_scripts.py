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
