"""Every YAML in configs/ parses against its schema; bad configs give clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from emoexp.config import ConfigError, ExtractConfig, GenerateConfig, RunConfig, config_from_args, load_yaml
from emoexp.recipes.run import DEFAULT

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs_for_the_papers_11_families():
    names = {p.stem for p in CONFIGS if p.parent.name == "paper"}
    assert len(names) == 11
    assert {p.stem for p in CONFIGS if p.parent.name == "paper-code"} == names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path):
    data = load_yaml(path)
    schema = RunConfig if "experiment" in data or "extract" in data else (
        GenerateConfig if "alphas" in data else ExtractConfig)
    cfg = config_from_args(schema, argparse.Namespace(config=str(path)))
    if isinstance(cfg, RunConfig):
        e, g = cfg.extract_config(), cfg.generate_config()
        if path.parent.name == "paper-code":
            assert e.site == "attn" and g.site == "attn" and g.positions == "generated"
        if path.parent.name == "paper":
            assert g.alphas == [-1.0, 0.0, 1.0, 2.0, 4.0] and e.limit is None and "base" in g.targets


def test_default_yaml_matches_embedded_default():
    assert load_yaml(Path(__file__).resolve().parents[1] / "configs" / "default.yaml") == DEFAULT


def test_bad_configs_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ConfigError, match="trust_remote_code"):
        RunConfig(model="Qwen/Qwen-7B-Chat")
    with pytest.raises(ConfigError, match="alphas must be finite"):
        GenerateConfig(alphas=[1.0, float("nan")])
    with pytest.raises(ConfigError, match="site='resid'; valid: residual, attn, mlp"):
        ExtractConfig(site="resid")
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig(extract={"limt": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(bad)
