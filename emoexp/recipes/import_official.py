"""``emoexp import-official``: the paper authors' EV JSON files as one EmotionVectors file.

Example:
    emoexp import-official ../shared/data/official/EMVector/qwen2.5 --model_id Qwen/Qwen2.5-7B-Instruct \\
        --out outputs/qwen2.5-official.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Args", "main"]


@dataclass
class Args:
    """``emoexp import-official``: the paper authors' EV JSON files as one EmotionVectors file."""

    source: str = field(default="", metadata={"positional": None,
                                              "help": "folder of <model>_<emotion>.json files, or one file"})
    out: str = "outputs/official.safetensors"
    """Output safetensors file."""
    model_id: str | None = None
    """The hub id of the model the vectors belong to (checked when they steer a model)."""


def main(args: Args) -> int:
    from ..redact import log
    from ..vectors import import_official

    evs = import_official(args.source, model_id=args.model_id)
    evs.save(args.out)
    log(f"{evs!r} -> {args.out}")
    log(f"note: {evs.metadata['note']}")
    return 0
