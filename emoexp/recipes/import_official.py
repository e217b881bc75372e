"""``emoexp import-official``: the paper authors' EV JSON files as one EmotionVectors file.

Example:
    emoexp import-official ../shared/data/official/EMVector/qwen2.5 --model_id Qwen/Qwen2.5-7B-Instruct \\
        --out outputs/qwen2.5-official.safetensors
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder of <model>_<emotion>.json files, or one file")
    parser.add_argument("--out", required=True, help="output safetensors file")
    parser.add_argument("--model_id", default=None, help="the model the vectors belong to")


def main(args: argparse.Namespace) -> int:
    from ..vectors import import_official

    evs = import_official(args.source, model_id=args.model_id)
    evs.save(args.out)
    print(f"[emoexp] {evs!r} -> {args.out}")
    print(f"[emoexp] note: {evs.metadata['note']}")
    return 0
