"""Model loading: tiny random models, the offline SmolLM2, and refusing what cannot fit."""

from __future__ import annotations

import json

import pytest
import torch

from emoexp.models import ModelSpecError, check_fits, estimate_bytes, load_model, tiny_config


def test_tiny_random_model_uses_the_real_tokenizer():
    model, tok = load_model("tiny-random-qwen2")
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert not any(p.requires_grad for p in model.parameters())


def test_estimate_counts_parameters_exactly():
    cfg = tiny_config("llama", vocab_size=100)
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    assert estimate_bytes(cfg, torch.bfloat16) == 2 * n


def test_a_model_too_large_is_refused_with_the_numbers(tmp_path):
    cfg = tiny_config("llama", vocab_size=256_000, hidden_size=8192, intermediate_size=28672,
                      num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128)
    cfg.save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match=r"needs about \d+\.\d GiB .* but only \d+\.\d GiB"):
        check_fits(str(tmp_path), torch.float32)
    with pytest.raises(ModelSpecError, match="needs about"):
        load_model(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 80
