"""Shared by the benchmark scripts: the machine's description and rewriting one section of
docs/benchmarks.md (a ``## `` heading up to the next), leaving the rest of the file alone."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """CPU architecture, core count, Python and torch versions, torch threads."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def load_note(load15: float | None) -> str:
    """``"; 15-minute load average 2.1 on 2 cores at the end"`` (what else ran is then measured, not
    assumed), or nothing where it was not recorded."""
    return "" if load15 is None else f"; 15-minute load average {load15:.1f} on {os.cpu_count()} cores at the end"


def write_section(path: str | Path, heading: str, section: str) -> None:
    """Replace the section starting with ``heading`` (e.g. ``"## CPU:"``) by ``section``, or
    append it if the file has none."""
    out = Path(path)
    text = out.read_text() if out.is_file() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    out.write_text(text)
