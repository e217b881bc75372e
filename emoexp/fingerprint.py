"""Content fingerprints: what a result was computed from, identified by bytes, never by names.

- files and folders: sha256 of their bytes, remembered per path by (size, mtime) in
  ``$EMOEXP_CACHE/fingerprints.json`` so that a 500 MB weight file is read once, not per run;
- a model: its folder's weight, config and tokenizer files (:func:`folder_sha256`), or a hub
  commit (:func:`emoexp.models.model_fingerprint` decides which);
- data: the loaded, normalised rows (:func:`emoexp.datasets.dataset_fingerprint`);
- emotion vectors: their tensors (:meth:`emoexp.vectors.EmotionVectors.fingerprint`);
- a result: the result-shaping fields of its config plus those inputs (:func:`result_identity`).

Example:
    >>> file_sha256("emoexp/data/emotionquery.jsonl")[:8]          # doctest: +SKIP
    '3f1c09aa'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FILES", "NOT_RESULT_SHAPING", "cache_dir", "digest", "file_sha256", "folder_sha256", "result_identity"]

#: Files of a model folder that shape its outputs: weights, configs, tokenizer and chat template.
MODEL_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja",
               "*.py")


def digest(obj: object) -> str:
    """sha256 (hex) of a JSON-able object's canonical JSON.

    Example:
        >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def cache_dir() -> Path:
    """emoexp's cache folder (``$EMOEXP_CACHE`` or ``~/.cache/emoexp``)."""
    return Path(os.environ.get("EMOEXP_CACHE", Path.home() / ".cache" / "emoexp"))


def _cache_file() -> Path:
    return cache_dir() / "fingerprints.json"


def _load_cache() -> dict[str, dict]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(entries: dict[str, dict]) -> None:
    """Merge ``entries`` into the cache file (locked; a failure to write only costs a re-hash)."""
    from filelock import FileLock

    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=30):
            data = _load_cache()
            data.update(entries)
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            tmp.replace(path)
    except OSError:
        pass


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _hashes(paths: Iterable[Path]) -> dict[Path, str]:
    cache = _load_cache()
    out: dict[Path, str] = {}
    fresh: dict[str, dict] = {}
    for p in paths:
        st = p.stat()
        key = str(p.resolve())
        hit = cache.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            out[p] = hit["sha256"]
            continue
        out[p] = _hash_file(p)
        fresh[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": out[p]}
    if fresh:
        _store(fresh)
    return out


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached by path, size and modification time).

    Raises:
        FileNotFoundError: no such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no file at {p}")
    return _hashes([p])[p]


def folder_sha256(folder: str | Path, patterns: Iterable[str] = MODEL_FILES) -> str:
    """sha256 over the (relative name, content sha256) of a folder's files matching ``patterns``
    (top level and below, hidden files and caches skipped).

    Raises:
        FileNotFoundError: the folder is missing or holds no matching file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}")
    files = sorted({p for pat in patterns for p in root.rglob(pat) if p.is_file()
                    and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts)})
    if not files:
        raise FileNotFoundError(f"{root} holds no model files ({', '.join(patterns)})")
    sums = _hashes(files)
    return digest([[str(p.relative_to(root)), sums[p]] for p in files])


#: Config fields that do not shape results: where outputs go, how many processes, logging.
NOT_RESULT_SHAPING = ("devices", "num_nodes", "threads", "tensor_parallel_size", "pipeline_parallel_size", "out",
                      "out_dir", "limit", "mlflow", "experiment", "vectors", "evs_dir")

#: Fields added after results were first logged: left out of the identity at these values, so results made
#: before they existed keep their identity (resume, MLflow parent).
OMITTED_AT_DEFAULT = {"engine": "transformers", "vllm_eager": False}


def result_identity(cfg: Any, inputs: dict[str, str] | None = None,
                    exclude: Sequence[str] = NOT_RESULT_SHAPING) -> dict[str, Any]:
    """The result-shaping part of a config (a dataclass) plus the content fingerprints of its
    inputs, and their hash: the identity of a result (resume, reuse, MLflow parent).

    Example:
        >>> from emoexp.config import ExtractConfig
        >>> a = result_identity(ExtractConfig(devices=1), {"data": "abc"})
        >>> a["sha"] == result_identity(ExtractConfig(devices=4), {"data": "abc"})["sha"]
        True
    """
    d = {k: v for k, v in dataclasses.asdict(cfg).items()
         if k not in exclude and not (k in OMITTED_AT_DEFAULT and v == OMITTED_AT_DEFAULT[k])}
    ident = {"fields": json.loads(json.dumps(d, sort_keys=True, default=str)), "inputs": dict(inputs or {})}
    blob = json.dumps(ident, sort_keys=True)
    return {**ident, "sha": hashlib.sha256(blob.encode()).hexdigest()[:16]}
