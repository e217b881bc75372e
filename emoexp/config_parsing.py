"""Reading configs: jsonargparse parsers built from the config dataclasses, the command line's
shorthands (bare booleans, comma lists, repeated ``--grid``), YAML files, the strict field
checks every config runs on construction, and one-line :class:`ConfigError` messages.

The schema itself (the dataclasses, their defaults and range checks) lives in
:mod:`emoexp.config`, which re-exports the public functions here; the wording of errors in
:mod:`emoexp.config_errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser

from .config_errors import ConfigError, describe, one_line, strip_optional

__all__ = ["ConfigError", "build_parser", "check_fields", "describe", "dump", "from_dict", "load_yaml", "parse",
           "to_dict", "unique"]


def unique(values: Sequence[Any], name: str) -> None:
    seen: set[str] = set()
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(f"{name}: {v!r} is listed twice")
        seen.add(key)


def _nested(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


@functools.cache
def _field_parser(cls: type) -> ArgumentParser:
    """A parser of ``cls``'s own (non-section) fields, to check values given from Python."""
    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(cls, as_group=False, skip=set(_nested(cls)))
    return p


def check_fields(obj: Any) -> None:
    """Type-check ``obj``'s own fields as the command line would (values given from Python or a
    dict), with booleans strict; normalised values (ints as floats, ...) are written back."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    own = [f.name for f in dataclasses.fields(obj) if f.name not in _nested(cls)]
    for name in own:
        if hints[name] is bool and not isinstance(getattr(obj, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(obj, name)!r}")
        if getattr(obj, name) is None and strip_optional(hints[name]) is hints[name]:
            raise ConfigError(f"{name}: expected {describe(hints[name])}, got null")
        if _is_int_type(hints[name]) and _has_float(getattr(obj, name)):
            raise ConfigError(f"{name}: expected {describe(hints[name])}, got {getattr(obj, name)!r}")
    parser = _field_parser(cls)
    try:
        ns = parser.parse_object({name: getattr(obj, name) for name in own})
    except ArgumentError as e:
        raise ConfigError(one_line(e, parser)) from None
    for name in own:
        value = _plain(ns[name])
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _INT_LIMIT:
                raise ConfigError(f"{name}: {getattr(obj, name)!r} is out of range (at most {_INT_LIMIT})")
        object.__setattr__(obj, name, value)


def _is_int_type(tp: Any) -> bool:
    """Whether ``tp`` (optional or a list of) is an integer type: a YAML 1e3 or 2.0 there is a typo, not a count."""
    tp = strip_optional(tp)
    if typing.get_origin(tp) is list:
        tp = strip_optional(typing.get_args(tp)[0])
    return isinstance(tp, type) and issubclass(tp, int) and tp is not bool


def _has_float(v: Any) -> bool:
    return any(isinstance(x, float) for x in (v if isinstance(v, list) else [v]))


#: The largest integer any count, index or seed takes (a typo such as 1e99 read as an integer is refused).
_INT_LIMIT = 2**31 - 1


def _plain(v: Any) -> Any:
    """jsonargparse's restricted numbers (``PositiveInt(3)``) as plain ``int``/``float``, so that
    configs compare, hash and dump as ordinary values."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


# -- parsing ---------------------------------------------------------------------------------


@functools.cache
def build_parser(cls: type, prog: str | None = None, description: str | None = None, *,
                 config_file: bool = True) -> ArgumentParser:
    """The jsonargparse parser of a config dataclass: ``--config``, ``--print_config`` and one
    ``--<field>`` (``--<section>.<field>``) per field, help from the field docstrings (built once
    per class and program name).

    A field with ``metadata={"positional": nargs, "help": ...}`` is a positional argument.
    """
    doc = re.sub(r"^``[^`]+``: ", "", (cls.__doc__ or "").split("\n\n")[0])
    p = ArgumentParser(prog=prog, description=description or doc,
                       exit_on_error=False, default_env=False)
    if config_file:
        p.add_argument("--config", action="config", help="A YAML file with any of the keys below; flags after it win.")
    positional = [f for f in dataclasses.fields(cls) if "positional" in f.metadata]
    for f in positional:
        p.add_argument(f.name, nargs=f.metadata["positional"], help=f.metadata.get("help"))
    p.add_class_arguments(cls, as_group=False, skip={f.name for f in positional})
    return p


def _list_fields(parser: ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)
        base = strip_optional(hint)
        if typing.get_origin(base) in (list, Sequence) and action.option_strings:
            out.add(action.option_strings[0])
    return out


def _bool_fields(parser: ArgumentParser) -> set[str]:
    return {a.option_strings[0] for a in parser._actions
            if a.option_strings and strip_optional(getattr(a, "_typehint", None)) is bool}


def _bare_bools(argv: list[str], bool_flags: set[str]) -> list[str]:
    """A boolean flag given alone (``--dry_run``, followed by another option or nothing) means true."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in bool_flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def _comma_lists(argv: list[str], list_flags: set[str]) -> list[str]:
    """List flags in shell-friendly forms -> YAML lists: ``--alphas=-1,0,2``, ``--targets joy,anger``,
    ``--configs a.yaml b.yaml`` (values up to the next option); ``--alphas=`` -> ``[]``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in list_flags and eq and not value.lstrip().startswith("["):
            out.append(f"{flag}={_as_yaml_list(value)}")
        elif flag in list_flags and not eq and i + 1 < len(argv) and not argv[i + 1].lstrip().startswith(("[", "--")):
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            out += [flag, _as_yaml_list(",".join(values))]
        else:
            out.append(arg)
        i += 1
    return out


def _appends(argv: list[str], flags: set[str]) -> list[str]:
    """Repeatable flags (field metadata ``append``): each ``--x V`` adds the one string V."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in flags and (eq or i + 1 < len(argv)):
            if not eq:
                i += 1
                value = argv[i]
            out += [f"{flag}+", value]
        else:
            out.append(argv[i])
        i += 1
    return out


def _as_yaml_list(text: str) -> str:
    items = [x.strip() for x in text.split(",")]
    return "[" + ", ".join(json.dumps(x) if re.search(r"[:#{}\[\]&*!|>'\"%@`]", x) else x for x in items if x) + "]"


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _check_yaml(data: Any, cls: type, where: str) -> None:
    """Booleans in a config file must be YAML booleans (``"false"`` quoted is a string, refused);
    unknown keys are named with the closest valid one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_yaml(value, tp, f"{where}: {key}")
        elif strip_optional(tp) is bool and not isinstance(value, bool) and not (value is None and tp is not bool):
            raise ConfigError(f"{where}: {key}: expected true or false (a YAML boolean), got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config as a dict (clear errors for missing or malformed files)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse(cls: type, argv: Sequence[str], prog: str | None = None, parser: ArgumentParser | None = None) -> Any:
    """Parse command-line ``argv`` into a ``cls`` instance.

    ``--help`` and ``--print_config`` (the resolved config as YAML) print and raise ``SystemExit(0)``.

    Raises:
        ConfigError: any bad flag, key or value (one line).

    Example:
        >>> from emoexp.config import ExtractConfig
        >>> parse(ExtractConfig, ["--site", "mlp", "--limit", "2"]).site
        'mlp'
    """
    parser = parser or build_parser(cls, prog)
    argv = list(argv)
    show = any(a == "--print_config" or a.startswith("--print_config=") for a in argv)
    argv = [a for a in argv if not (a == "--print_config" or a.startswith("--print_config="))]
    appended = {f"--{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("append")}
    argv = _comma_lists(_appends(_bare_bools(argv, _bool_fields(parser)), appended), _list_fields(parser) - appended)
    from jsonargparse import ActionConfigFile

    paths = _config_files(argv) if any(isinstance(a, ActionConfigFile) for a in parser._actions) else []
    files = [load_yaml(path) for path in paths]
    for path, data in zip(paths, files):
        _check_yaml(data, cls, str(path))

    def given(key: str) -> Any:
        found = [v for v in (_lookup(d, key) for d in files) if v is not None]
        return _given(argv, key) if _given(argv, key) is not None else (found[-1] if found else None)

    try:
        ns = parser.parse_args(argv)
    except ArgumentError as e:
        raise ConfigError(one_line(e, parser, given)) from None
    cfg = _instantiate(cls, ns.clone().as_dict())
    if show:  # the resolved config (checks passed, shorthands applied): feeds back unchanged
        print(dump(cfg), end="")
        raise SystemExit(0)
    return cfg


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """A ``cls`` from a (nested) dict, e.g. a loaded YAML file, with the command line's checks."""
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    _check_yaml(data, cls, where)
    parser = build_parser(cls)
    try:
        ns = parser.parse_object(data)
    except ArgumentError as e:
        raise ConfigError(f"{where}: {one_line(e, parser, lambda key: _lookup(data, key))}") from None
    return _instantiate(cls, ns.as_dict())


def _instantiate(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            v = _instantiate(hints[f.name], v, f"{prefix}{f.name}.")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("--") else f"--{prefix}{msg}") from None


def _given(argv: Sequence[str], key: str) -> Any:
    """The value given for ``--key`` on the command line (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain nested dict (what ``--print_config`` prints); secrets (pydantic ``SecretStr``,
    e.g. ``emoexp serve --api_key``) show as stars."""
    from pydantic import SecretStr

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, SecretStr) else v  # SecretStr's str() is its stars

    return plain(dataclasses.asdict(cfg))


def dump(cfg: Any) -> str:
    """A config as YAML that :func:`parse` (``--config``) reads back to an equal config."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
