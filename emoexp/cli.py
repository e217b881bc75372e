"""The ``emoexp`` command: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their subcommand runs, so
``emoexp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("emoexp.recipes.run", "the main job: extract -> steer -> evaluate -> MLflow -> table"),
    "extract": ("emoexp.recipes.extract", "extract emotion vectors (Fabric, multi-GPU/-node)"),
    "generate": ("emoexp.recipes.generate", "steered generation over an alpha grid (Fabric)"),
    "evaluate": ("emoexp.recipes.evaluate", "score generation files with the paper's metrics"),
    "compare": ("emoexp.compare", "cross-family table and plots from MLflow"),
    "sweep": ("emoexp.recipes.sweep", "a grid over config fields, one MLflow parent per point"),
    "submit": ("emoexp.slurm", "render and submit a SLURM job from a config"),
    "chat": ("emoexp.chat", "interactive chat with live emotion weights"),
    "import-official": ("emoexp.recipes.import_official", "convert the paper authors' EV JSON to safetensors"),
}


def _subparser(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    module, help_ = COMMANDS[name]
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emoexp`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="emoexp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _subparser(sub, name)
    # Only the chosen subcommand's module is imported to add its arguments.
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        parser = argparse.ArgumentParser(prog=f"emoexp {name}", description=COMMANDS[name][1])
        mod = importlib.import_module(COMMANDS[name][0])
        mod.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        try:
            return int(mod.main(args) or 0)
        except Exception as e:  # our own errors are messages for the user, not tracebacks
            if type(e).__module__.startswith("emoexp.") and not os.environ.get("EMOEXP_TRACEBACK"):
                print(f"emoexp {name}: error: {e}", file=sys.stderr)
                return 2
            raise
    args = parser.parse_args(argv)
    parser.print_help()
    return 0 if args.command is None and not argv else 2
