"""The ``emoexp`` command: one subcommand per pipeline stage or tool.

Each subcommand's module defines ``Args`` (a config dataclass: its fields are the flags and
YAML keys, parsed by :mod:`emoexp.config`) and ``main(args) -> int``. Modules are imported
only when their subcommand runs, and none of them imports torch at module level, so
``emoexp --help`` and ``emoexp run --help`` answer at once.

Errors are one line (``emoexp run: error: --limit: expected a positive integer, got 'abc'``),
exit status 2, before any model loads; Ctrl-C says how to resume (status 130); everything
printed passes through :func:`emoexp.redact.scrub_text`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from typing import Any

from .redact import install_log_filter, scrub_text

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("emoexp.recipes.run", "the main job: extract -> steer -> evaluate -> MLflow -> table"),
    "extract": ("emoexp.recipes.extract", "extract emotion vectors (Fabric, multi-GPU/-node)"),
    "generate": ("emoexp.recipes.generate", "steered generation over an alpha grid (Fabric)"),
    "evaluate": ("emoexp.recipes.evaluate", "score generation files with the paper's metrics"),
    "compare": ("emoexp.compare", "cross-family tables and plots from MLflow"),
    "sweep": ("emoexp.recipes.sweep", "a grid over config fields, one MLflow parent per point"),
    "submit": ("emoexp.slurm", "render and submit a SLURM job from a config"),
    "chat": ("emoexp.chat", "interactive chat with live emotion weights"),
    "serve": ("emoexp.serve", "an OpenAI-compatible server; each request sets its emotions"),
    "import-official": ("emoexp.recipes.import_official", "convert the paper authors' EV JSON to safetensors"),
    "validate-scorer": ("emoexp.eval.validate", "check the emotion scorer on labelled text (F1, confusion, calibration)"),
}

_USAGE = """usage: emoexp COMMAND [--help] [--config FILE.yaml] [--<key> VALUE ...]

Controllable emotion generation with Emotion Vectors: extraction, steering, evaluation,
MLflow-tracked and distributed with Lightning Fabric.

commands:
{commands}

Every flag is also a key of a YAML file passed with --config (flags win); --print_config
prints the resolved configuration. `emoexp COMMAND --help` lists a command's flags and defaults.
"""


def _help() -> str:
    width = max(map(len, COMMANDS))
    return _USAGE.format(commands="\n".join(f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()))


def _is_ours(e: BaseException) -> bool:
    """emoexp's own errors (and bad input the libraries report as such) are messages for the
    user, not tracebacks."""
    return type(e).__module__.startswith("emoexp") or isinstance(e, (FileNotFoundError, PermissionError))


def _parse(name: str, mod: Any, argv: list[str]) -> Any:
    if hasattr(mod, "parse_args"):
        return mod.parse_args(argv, prog=f"emoexp {name}")
    from .config import parse

    return parse(mod.Args, argv, prog=f"emoexp {name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emoexp`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_help(), end="")
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"emoexp {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"emoexp: error: unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    prefix = f"emoexp {name}"
    try:
        mod = importlib.import_module(COMMANDS[name][0])
        args = _parse(name, mod, argv[1:])
    except SystemExit as e:  # --help, --print_config
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except Exception as e:  # noqa: BLE001 - every bad input is one line
        print(scrub_text(f"{prefix}: error: {e}"), file=sys.stderr)
        return 2
    install_log_filter()
    try:
        return int(mod.main(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted. Finished batches are saved: rerun the same command to resume.",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        if _is_ours(e) and not os.environ.get("EMOEXP_TRACEBACK"):
            print(scrub_text(f"{prefix}: error: {e}"), file=sys.stderr)
            return 2
        print(scrub_text("".join(traceback.format_exception(e))), file=sys.stderr, end="")
        return 1
