"""A resumable work folder next to an output, and one writer per output.

``<out>.work/`` holds ``identity.json`` (the result-shaping config and the content fingerprints
of the inputs, :func:`emoexp.fingerprint.result_identity`), per-rank JSONL shards flushed per batch,
per-rank state saved atomically, and ``complete.json`` once the output is written. A rerun with
the same identity continues from what is there, or skips the stage when it is complete and the
output is unchanged; a different identity is refused, naming what differs (config fields or
the content of an input), so stale work is never reused.

:func:`exclusive` holds an OS lock (``filelock``) on a folder for the whole run: a second
process on the same output says who holds it and stops. The lock dies with its process, so a
``kill -9`` never leaves it stale.

Example:
    >>> with exclusive(Path("outputs/run/x")):                                   # doctest: +SKIP
    ...     wd = WorkDir("outputs/run/x/evs.safetensors"); state = wd.claim(identity)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Busy", "ResumeError", "WorkDir", "exclusive"]


class ResumeError(RuntimeError):
    """A partial or finished result in the work folder does not belong to this config and these inputs."""


class Busy(ResumeError):
    """Another process is writing this output (the message says which)."""


def _describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for section, label in (("fields", ""), ("inputs", "content of ")):
        a, b = old.get(section, {}) or {}, new.get(section, {}) or {}
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                if section == "inputs":
                    parts.append(f"{label}{k} changed ({str(a.get(k))[:19]} -> {str(b.get(k))[:19]})")
                else:
                    parts.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return ", ".join(parts) or "unknown difference"


class WorkDir:
    """``<out>.work/``: ``identity.json``, ``rank<r>.jsonl`` shards, ``state-rank<r>-of-<w>.pt``,
    ``complete.json``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".work")

    # -- identity and completion ------------------------------------------------------------

    def identity(self) -> dict[str, Any] | None:
        """The recorded identity (``config.json`` of older versions counts), or None."""
        for name in ("identity.json", "config.json"):
            f = self.path / name
            if f.is_file():
                try:
                    return json.loads(f.read_text())
                except ValueError:
                    return None
        return None

    def claim(self, identity: dict[str, Any]) -> str:
        """Record the identity (first run) or check it (rerun): ``"new"``, ``"resume"`` or
        ``"complete"`` (output written and unchanged since). Call on one rank before launching
        the others, or on every rank after rank 0 created the folder.

        Raises:
            ResumeError: the folder holds the work of another config or other inputs.
        """
        old = self.identity()
        if old is not None and old.get("sha") != identity["sha"]:
            what = "finished results" if self.is_complete() else "a partial result"
            raise ResumeError(f"{self.out} holds {what} of a different config or inputs "
                              f"({_describe_diff(old, identity)}): choose another output (or leave it unset: "
                              f"each config gets its own folder), or delete {self.out} and {self.path} to start over")
        self.path.mkdir(parents=True, exist_ok=True)
        if old is None:
            _atomic_write(self.path / "identity.json", json.dumps(identity, indent=1, sort_keys=True))
            return "new"
        return "complete" if self.is_complete() else "resume"

    def is_complete(self) -> bool:
        """Whether ``complete.json`` records the output as it is on disk now."""
        from .fingerprint import file_sha256

        f = self.path / "complete.json"
        if not (f.is_file() and self.out.is_file()):
            return False
        try:
            return json.loads(f.read_text()).get("output_sha256") == file_sha256(self.out)
        except (ValueError, OSError):
            return False

    def mark_complete(self, **extra: Any) -> None:
        """Record that the output is written (with its sha256), so reruns skip this stage."""
        from .fingerprint import file_sha256

        _atomic_write(self.path / "complete.json", json.dumps(
            {"output_sha256": file_sha256(self.out), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra},
            indent=1))

    # -- shards and state --------------------------------------------------------------------

    def shard(self, rank: int) -> Path:
        return self.path / f"rank{rank}.jsonl"

    def append_rows(self, rank: int, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to this rank's shard and flush to disk (one write per batch)."""
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        shard = self.shard(rank)
        if shard.is_file() and shard.stat().st_size:
            with open(shard, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by a kill: start on a fresh line
                    blob = "\n" + blob
        with open(shard, "a", encoding="utf-8") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def read_rows(self) -> list[dict[str, Any]]:
        """All complete rows of all shards (a line cut by a kill is ignored)."""
        rows = []
        for shard in sorted(self.path.glob("rank*.jsonl")):
            for line in shard.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the last line of a shard killed mid-write
        return rows

    def done_batches(self, sizes: Sequence[int] | None = None) -> set[int]:
        """Batch ids whose rows are on disk: all ``sizes[b]`` of them when sizes are given (a
        batch cut by a kill mid-write is redone), else any."""
        counts: dict[int, set] = {}
        for r in self.read_rows():
            if "batch" in r:
                key = json.dumps({k: r.get(k) for k in ("entry", "index", "item")})
                counts.setdefault(int(r["batch"]), set()).add(key)
        if sizes is None:
            return set(counts)
        return {b for b, rows in counts.items() if b < len(sizes) and len(rows) >= sizes[b]}

    def state_path(self, rank: int, world: int) -> Path:
        return self.path / f"state-rank{rank}-of-{world}.pt"

    def load_state(self, rank: int, world: int) -> dict[str, Any] | None:
        """This rank's saved state, refusing states saved by a different world size."""
        import torch

        others = [p.name for p in self.path.glob("state-rank*-of-*.pt") if not p.name.endswith(f"-of-{world}.pt")]
        if others:
            raise ResumeError(f"{self.path} holds partial sums from a run with another world size ({others[0]}); "
                              f"rerun with the same --devices/--num_nodes or delete {self.path}")
        p = self.state_path(rank, world)
        return torch.load(p, weights_only=True) if p.is_file() else None

    def save_state(self, rank: int, world: int, state: dict[str, Any]) -> None:
        """Atomic save (write a temp file, then rename)."""
        import torch

        p = self.state_path(rank, world)
        tmp = p.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(p)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def exclusive(folder: str | Path, *, wait: bool = False, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    Args:
        folder: the output folder (the lock file is ``<folder>/.emoexp.lock``).
        wait: wait for the holder to finish (shared inputs such as a sweep's EV file) instead of
            refusing.
        what: how the folder is named in messages.

    Raises:
        Busy: another live process holds the lock (and ``wait`` is False); the message names
            its pid, host, start time and command.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".emoexp.lock"), timeout=-1 if wait else 0)
    owner = folder / ".emoexp.lock.owner.json"
    try:
        if wait:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                from .redact import log

                log(f"waiting for {_owner_text(owner)} to finish with {folder}")
                lock.acquire()
        else:
            lock.acquire()
    except Timeout:
        raise Busy(f"{what} {folder} is being written by {_owner_text(owner)}: wait for it to finish, or "
                   "choose another output folder") from None
    try:
        _atomic_write(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "command": " ".join(sys.argv)[:300]}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _owner_text(owner: Path) -> str:
    try:
        o = json.loads(owner.read_text())
    except (OSError, ValueError):
        return "another process"
    from .redact import scrub_text

    return scrub_text(f"pid {o.get('pid')} on {o.get('host')} since {o.get('since')} ({o.get('command')})")


def slug(model: str) -> str:
    """A short folder-safe name for a model spec (``Qwen/Qwen2.5-7B-Instruct`` -> ``Qwen2.5-7B-Instruct``)."""
    name = Path(model.rstrip("/")).name if ("/" in model and Path(model).exists()) else model.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "model"
