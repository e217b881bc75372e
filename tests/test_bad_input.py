"""Property-based fault suite: random and adversarial values for every typed flag and config key
of every command. Each must end as one line on stderr, exit status 2, no traceback, and
nothing written, before any model loads.

Values are invalid by construction for their field's type (a count that is not a positive
integer, a boolean that is not one, a value outside a Literal's set, a list holding a bad
item, a number out of range); free-text fields (paths, model ids) are checked when used and
are covered by the named cases in test_cli.py and test_live.py. As a guard, every command also
gets a tiny model and ``--mlflow false``, so a value that were wrongly accepted would start a
short run and write files, which the test sees.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoexp.cli import COMMANDS, main

#: how many bad inputs each test below tries (the counts quoted in docs/reliability.md)
EXAMPLES = int(os.environ.get("EMOEXP_FAULT_EXAMPLES", "400"))
TRIED: dict[str, int] = {}

NULLS = {"null", "none", "~", ""}
BOOLS = {"true", "false", "yes", "no", "on", "off", "y", "n", "t", "f", "1", "0"}
GUARD = {"run": ["--model", "tiny-random-llama", "--accelerator", "cpu", "--mlflow", "false", "--limit", "1",
                 "--max_new_tokens", "1"],
         "sweep": ["--model", "tiny-random-llama", "--accelerator", "cpu", "--mlflow", "false", "--limit", "1",
                   "--dry_run", "true"],
         "extract": ["--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "1", "--max_new_tokens", "1"],
         "generate": ["--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "1", "--max_new_tokens", "1",
                      "--conditions", "unsteered"],
         "submit": ["extract", "--dry_run", "true"], "evaluate": ["nonexistent.jsonl"], "chat": ["nonexistent.st"], "serve": ["nonexistent.st"],
         "compare": ["--uri", "sqlite:////nonexistent-dir/mlflow.db"], "import-official": ["/nonexistent"],
         "validate-scorer": ["--backends", "[]", "--official", "null"]}


def _strip_none(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _text(exclude: set[str]) -> st.SearchStrategy[str]:
    """Adversarial text: words, numbers, YAML-looking fragments, unicode, shell metacharacters."""
    base = st.one_of(
        st.text(min_size=1, max_size=12),
        st.sampled_from(["-1", "1.5", "1e99", "nan", ".nan", "inf", "-inf", "0x10", "[]", "{}", "[1, [2]]",
                         "{a: 1}", "'quoted'", '"false"', "$(rm -rf /)", "a,b", "tru", "ÿes", "\u202e", "--x"]),
    )
    return base.filter(lambda s: s.strip().lower() not in exclude and not s.startswith("--") and "\x00" not in s)


def bad_values(tp: Any) -> st.SearchStrategy[str] | None:
    """Command-line values that ``tp`` must refuse (None: no sure way to be invalid)."""
    inner, optional = _strip_none(tp)
    nulls = NULLS if optional else set()
    name = getattr(inner, "__name__", "")
    if inner is bool:
        return _text(BOOLS | nulls)
    if typing.get_origin(inner) is Literal:
        allowed = {str(a).lower() for a in typing.get_args(inner)}
        return _text(allowed | nulls)
    if name in ("PositiveInt", "NonNegativeInt", "Devices", "Nodes") or inner is int:
        low = 0 if name == "NonNegativeInt" else None if inner is int else 1
        high = {"Devices": 1024, "Nodes": 65536}.get(name)
        ints = st.integers(max_value=low - 1).map(str) if low is not None else st.nothing()
        if high is not None:
            ints = st.one_of(ints, st.integers(min_value=high + 1).map(str), st.just("1e99"))
        words = _text(nulls).filter(lambda s: not _is_int(s))
        return st.one_of(ints, words, st.floats(allow_nan=False).filter(lambda f: f != int(f) if math.isfinite(f)
                                                                      else True).map(repr))
    if name == "PositiveFloat":
        return st.one_of(st.floats(max_value=0).map(repr), _text(nulls).filter(lambda s: not _number_in(s, 0, math.inf)))
    if name == "TopP":
        return st.one_of(st.floats(max_value=0).map(repr), st.floats(min_value=1.0001, allow_infinity=False).map(repr),
                         _text(nulls).filter(lambda s: not _number_in(s, 0, 1)))
    if typing.get_origin(inner) is list:
        item = typing.get_args(inner)[0]
        bad_item = bad_values(item)
        if bad_item is None:
            return None
        return st.lists(bad_item.filter(lambda s: "," not in s and "[" not in s and "]" not in s), min_size=1,
                        max_size=3).map(lambda xs: "[" + ", ".join(yaml.safe_dump(x).strip().removesuffix("...")
                                                                   .strip() for x in xs) + "]")
    return None


def _is_int(s: str) -> bool:
    try:
        v = yaml.safe_load(s)
    except yaml.YAMLError:
        return False
    return isinstance(v, int) and not isinstance(v, bool)


def _number_in(s: str, low: float, high: float) -> bool:
    """Whether the command line would read ``s`` as a number in (low, high]."""
    try:
        v = float(s)
    except ValueError:
        try:
            v = yaml.safe_load(s)
        except yaml.YAMLError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool) and low < v <= high


def typed_fields(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, type) of every field with a sure-to-fail value strategy, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += typed_fields(tp, f"{prefix}{f.name}.")
        elif "positional" not in f.metadata and bad_values(tp) is not None:
            out.append((f"{prefix}{f.name}", tp))
    return out


def _args_class(command: str) -> type:
    import importlib

    mod = importlib.import_module(COMMANDS[command][0])
    return mod.Args


CASES = [(cmd, name, tp) for cmd in COMMANDS for name, tp in typed_fields(_args_class(cmd))]


def test_every_command_has_typed_fields_under_test():
    covered = {cmd for cmd, _, _ in CASES}
    assert covered == set(COMMANDS) - {"import-official"}, covered  # import-official has only paths
    assert len(CASES) >= 60


def _check(argv: list[str], where: Path, capsys: pytest.CaptureFixture[str], field: str) -> None:
    before = sorted(where.rglob("*"))
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert field.split(".")[-1] in lines[0] or "unknown option" in lines[0], (argv, err)
    assert sorted(where.rglob("*")) == before, (argv, "wrote files")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bad_flag_values_are_one_line_errors(data, tmp_path_factory, capsys):
    cmd, name, tp = data.draw(st.sampled_from(CASES), label="field")
    value = data.draw(bad_values(tp), label="value")
    where = tmp_path_factory.mktemp("flag")
    cwd = os.getcwd()
    os.chdir(where)
    try:
        guard = GUARD[cmd]
        head, tail = (guard[:1], guard[1:]) if cmd in ("submit", "evaluate", "chat", "import-official") else ([], guard)
        _check([cmd, *head, *tail, f"--{name}", value], where, capsys, name)
    finally:
        os.chdir(cwd)
    TRIED["flags"] = TRIED.get("flags", 0) + 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bad_config_file_values_are_one_line_errors(data, tmp_path_factory, capsys):
    cmd, name, tp = data.draw(st.sampled_from([c for c in CASES if c[0] in ("run", "extract", "generate", "sweep")]),
                              label="field")
    raw = data.draw(bad_values(tp), label="value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    inner, optional = _strip_none(tp)
    if value is None and optional:
        value = raw  # YAML read it as null, which the field accepts: keep the text
    if inner is bool and isinstance(value, bool):
        value = raw  # a YAML boolean is valid; the text (quoted) is what must be refused
    where = tmp_path_factory.mktemp("yaml")
    doc: dict[str, Any] = {}
    node = doc
    parts = name.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    (where / "c.yaml").write_text(yaml.safe_dump(doc))
    cwd = os.getcwd()
    os.chdir(where)
    try:
        guard = [g for g in GUARD[cmd] if True]
        _check([cmd, *guard, "--config", "c.yaml"], where, capsys, name)
    finally:
        os.chdir(cwd)
    TRIED["yaml"] = TRIED.get("yaml", 0) + 1


def test_report_how_many_bad_inputs_were_tried():
    """Runs last in this file: the counts behind docs/reliability.md."""
    if TRIED:
        print(f"\n[fault suite] bad inputs tried: {TRIED} over {len(CASES)} typed fields")
