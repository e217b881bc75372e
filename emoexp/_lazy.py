"""Package attributes that import their module on first use (PEP 562), so ``--help``, the
watchdog and ``emoexp validate-scorer --help`` stay free of torch until something needs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` serving ``name -> submodule`` from ``names``.

    A served name must not also be a submodule's name: importing ``package.name`` would bind
    the module over the function (a test checks every package).
    """
    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            setattr(importlib.import_module(package), name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
