"""Config errors in words: :class:`ConfigError`, what a type accepts (:func:`describe`), and
jsonargparse's multi-line errors as one line naming the field, what it accepts and what was given."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from jsonargparse import ArgumentParser

__all__ = ["ConfigError", "describe", "one_line", "strip_optional"]


class ConfigError(ValueError):
    """An invalid configuration value (one line naming the field and what it accepts)."""


def strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def describe(tp: Any) -> str:
    """What a type accepts, in words (for error messages).

    Example:
        >>> from jsonargparse.typing import PositiveInt
        >>> describe(PositiveInt | None)
        'a positive integer, or null'
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        words = " or ".join(describe(a) for a in inner)
        return words + (", or null" if len(inner) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, Sequence):
        return f"a list of {_plural(args[0])} (YAML [a, b] or a,b)" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is bool:
        return "true or false"
    named = {"PositiveInt": "a positive integer", "NonNegativeInt": "an integer >= 0",
             "PositiveFloat": "a number > 0", "TopP": "a number in (0, 1]",
             "Devices": "an integer in 1..1024", "Nodes": "an integer in 1..65536"}
    if getattr(tp, "__name__", "") in named:
        return named[tp.__name__]
    if isinstance(tp, type) and issubclass(tp, int):
        return "an integer"
    if isinstance(tp, type) and issubclass(tp, float):
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a section of keys"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "values from " + ", ".join(str(a) for a in typing.get_args(tp))
    word = describe(tp)
    for a in ("a ", "an "):
        word = word.removeprefix(a)
    return {"integer": "integers", "number": "numbers", "string": "strings"}.get(word, word)


def one_line(err: Exception, parser: ArgumentParser, given: Any = None) -> str:
    """jsonargparse's multi-line error as one line: the field, what it accepts, what was given."""
    text = str(err)
    m = re.match(r'Parser key "([^"]+)"', text)
    if m:
        key = m.group(1)
        action = parser._option_string_actions.get(f"--{key}")
        hint = getattr(action, "_typehint", None)
        accepts = describe(hint) if hint is not None else "a valid value"
        value = given(key) if given else None
        if value is None:
            found = re.findall(r"(?:Given|Got) value: (.*)", text)
            value = found[-1].strip() if found else "?"
        return f"--{key}: expected {accepts}, got {value!r}"
    m = re.search(r"(?i)option '([^']+)' is not accepted|unrecognized arguments: (\S+)", text)
    if m:
        key = (m.group(1) or m.group(2)).lstrip("-").split("=")[0]
        names = [s.lstrip("-") for s in parser._option_string_actions]
        close = difflib.get_close_matches(key, names, n=1)
        return f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else "") + \
            "; --help lists them"
    m = re.match(r"argument (--\S+): expected one argument", text)
    if m:
        action = parser._option_string_actions.get(m.group(1))
        hint = getattr(action, "_typehint", None)
        return f"{m.group(1)}: needs a value ({describe(hint) if hint is not None else 'see --help'})"
    return " ".join(text.split())
