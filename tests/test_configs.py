"""The typed configuration: every YAML in configs/ parses against its schema, the default YAML
is the embedded default, --print_config feeds back unchanged, and bad values are one line."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from emoexp.config import (
    Common,
    ConfigError,
    EvaluateOptions,
    ExtractConfig,
    ExtractOptions,
    GenerateConfig,
    GenerateOptions,
    RunConfig,
    build_parser,
    dump,
    from_dict,
    load_yaml,
    parse,
    to_dict,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs_for_the_papers_11_families():
    names = {p.stem for p in CONFIGS if p.parent.name == "paper"}
    assert len(names) == 11
    assert {p.stem for p in CONFIGS if p.parent.name == "paper-code"} == names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path):
    if path.parent.name == "extract":  # configs/extract/ holds `emoexp extract` configs
        assert parse(ExtractConfig, ["--config", str(path)]).out
        return
    cfg = parse(RunConfig, ["--config", str(path)])
    e, g = cfg.extract_config(), cfg.generate_config()
    if path.parent.name == "paper-code":
        assert e.site == "attn" and g.site == "attn" and g.positions == "generated"
    if path.parent.name == "paper":
        assert g.alphas == [-1.0, 0.0, 1.0, 2.0, 4.0] and e.limit is None and "base" in g.targets


def test_default_yaml_is_the_embedded_default():
    assert parse(RunConfig, ["--config", str(CONFIGS[[p.name for p in CONFIGS].index("default.yaml")])]) == RunConfig()
    assert load_yaml(Path(__file__).resolve().parents[1] / "configs" / "default.yaml") == to_dict(RunConfig())


@pytest.mark.parametrize("argv", [
    [], ["--limit", "4"], ["--generate.alphas=-1,0,2.5", "--generate.targets", "joy,joy=1+anger=-1"],
    ["--extract.site", "residual", "--generate.layers", "[10, 11]", "--generate.do_sample", "yes"],
    ["--generate.alphas=1e-3"],
])
def test_print_config_feeds_back_unchanged(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse(RunConfig, [*argv, "--print_config"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(printed)
    again = parse(RunConfig, ["--config", str(tmp_path / "c.yaml")])
    assert again == parse(RunConfig, argv)
    assert dump(again) == printed


def test_flags_win_over_the_file_and_shorthands_apply(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 8\ngenerate:\n  alphas: [0, 1]\n")
    cfg = parse(RunConfig, ["--config", str(f), "--batch_size", "4", "--limit", "9"])
    assert cfg.batch_size == 4 and cfg.generate.alphas == [0.0, 1.0]
    assert (cfg.extract.limit, cfg.generate.limit) == (9, 2)
    assert type(cfg.batch_size) is int  # plain values: they hash, compare and dump as such


@pytest.mark.parametrize("yaml_text, message", [
    ('trust_remote_code: "false"\n', "trust_remote_code: expected true or false (a YAML boolean), got 'false'"),
    ('generate:\n  do_sample: "false"\n', "do_sample: expected true or false"),
    ('generate:\n  pool_entries: "no"\n', "pool_entries: expected true or false"),
    ("extrct:\n  limit: 3\n", "unknown key 'extrct' (did you mean 'extract'?)"),
    ("generate:\n  alphas: []\n", "--generate.alphas: must not be empty"),
    ("generate:\n  top_p: 2\n", "--generate.top_p: expected a number in (0, 1], got 2"),
    ("model: [unclosed\n", "malformed YAML"),
    ("- a\n- b\n", "expected a mapping at the top level"),
    ("generate:\n  centre: true\n  targets: [joy, base]\n", "centre: the 'base' target is the mean of the EVs"),
    ("extract:\n  emotions: [joy]\ngenerate:\n  centre: true\n  targets: [joy]\n",
     "generate.centre: subtracts the mean of the extracted EVs, which needs at least 2 emotions"),
    ("extract:\n  emotions: [joy]\ngenerate:\n  targets: [anger]\n",
     "generate.targets: 'anger' steers with anger, which extract.emotions (joy) does not extract"),
    ("extract:\n  emotions: [joy, anger]\ngenerate:\n  targets: ['joy=1+fear=-1']\n", "steers with fear, which"),
])
def test_bad_config_files_are_one_line(tmp_path, yaml_text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        parse(RunConfig, ["--config", str(f)])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_python_api_checks_like_the_command_line():
    with pytest.raises(ConfigError, match="trust_remote_code: expected true or false"):
        RunConfig(trust_remote_code="false")  # a truthy string never means yes
    with pytest.raises(ConfigError, match="trust_remote_code"):
        RunConfig(model="Qwen/Qwen-7B-Chat")
    with pytest.raises(ConfigError, match="must be finite"):
        GenerateConfig(alphas=[1.0, float("nan")])
    with pytest.raises(ConfigError, match="expected one of residual, attn, mlp"):
        ExtractConfig(site="resid")
    with pytest.raises(ConfigError, match="unknown key 'limt'"):
        RunConfig(extract={"limt": 3})
    with pytest.raises(ConfigError, match="'joy' is listed twice"):
        ExtractOptions(emotions=["joy", "joy"])
    assert RunConfig(extract={"limit": 3}).extract.limit == 3
    assert from_dict(RunConfig, {"generate": {"alphas": [0, 2]}}).generate.alphas == [0.0, 2.0]


@pytest.mark.parametrize("cls", [Common, ExtractOptions, GenerateOptions, EvaluateOptions, ExtractConfig,
                                 GenerateConfig, RunConfig])
def test_every_field_has_real_help(cls):
    parser = build_parser(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for action in parser._actions:
        dest = action.dest.split(".")[-1]
        if dest not in names or dataclasses.is_dataclass(typing.get_type_hints(cls).get(dest)):
            continue
        text = action.help or ""
        assert text[:1].isupper(), (cls.__name__, dest, text)  # a whole sentence, not one cut mid-way
        assert "<class" not in text and "typing." not in text, (dest, text)


@pytest.mark.parametrize("argv, want", [
    (["--generate.do_sample"], True),
    (["--generate.do_sample", "--limit", "2"], True),
    (["--generate.do_sample", "no"], False),
    (["--generate.do_sample=false"], False),
    ([], False),
])
def test_a_bare_boolean_flag_means_true(argv, want):
    assert parse(RunConfig, argv).generate.do_sample is want


def test_a_refused_run_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """Every check that can refuse a run runs before MLflow or a model is touched: no store, no
    parent, no output folder (it used to refuse after 17 s of extraction, leaving a FAILED parent)."""
    from emoexp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "--extract.emotions", "joy", "--generate.targets", "anger"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "extract.emotions (joy) does not extract" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, words", [
    ({}, []),
    ({"limit": 4, "generate": {"centre": True}}, ["limit 4", "centre"]),
    ({"limit": 2, "max_new_tokens": 5, "accelerator": "cpu", "experiment": "x", "out_dir": "o", "model": "m"},
     ["max_new_tokens 5", "limit 2"]),
    ({"generate": {"alphas": [-1.0, 1.5, 8.0], "pool_entries": False, "limit": 5}, "seed": 3},
     ["seed 3", "alphas -1,1.5,8", "no pool_entries"]),
    ({"extract": {"limit": 16, "site": "mlp"}, "generate": {"limit": 5, "site": "mlp"}},
     ["extract.site mlp", "generate.site mlp"]),
])
def test_run_names_say_what_differs_from_the_main_job(kwargs, words):
    from emoexp.recipes.run import changes

    assert changes(RunConfig(**kwargs)) == words
