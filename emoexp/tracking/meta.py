"""What MLflow gets to see: redaction of secrets, the config hash, flattened params, provenance
(git commit, hardware), the child-run keys, the parent's note, the results table and the text
samples. Pure Python; :mod:`emoexp.tracking` logs it.

Example:
    >>> redact({"judge": {"api_key": "sk-123", "max_new_tokens": 8}})
    {'judge': {'api_key': '***', 'max_new_tokens': 8}}
    >>> alpha_label(2.0), alpha_label(None)
    ('2', 'none')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..redact import REDACTED, is_secret_key, redact, scrub_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "REDACTED", "alpha_label", "by_child", "child_key", "config_hash", "finite", "flatten", "git_info", "hardware_info",
    "is_secret_key", "model_label", "parent_note", "redact", "results_table", "samples_text", "scrub_text",
]

def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the config's sorted JSON, secrets redacted first, so
    changing an API key does not start new runs.

    Example:
        >>> config_hash({"a": 1, "api_key": "x"}) == config_hash({"api_key": "y", "a": 1})
        True
    """
    blob = json.dumps(_jsonable(redact(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(obj: Mapping[str, Any], prefix: str = "", max_len: int = 6000) -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}`` with string values (lists as JSON), for MLflow params
    and tags; keys keep MLflow's allowed characters, values are cut at ``max_len``.

    Example:
        >>> flatten({"generate": {"alphas": [-1.0, 2.0], "layers": None}})
        {'generate.alphas': '[-1.0, 2.0]', 'generate.layers': 'None'}
    """
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = re.sub(r"[^A-Za-z0-9_\-. /]", "_", f"{prefix}{k}")
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + ".", max_len))
            continue
        text = v if isinstance(v, str) else json.dumps(_jsonable(v)) if isinstance(v, (list, tuple, dict)) else str(v)
        out[key] = text if len(text) <= max_len else text[: max_len - 3] + "..."
    return out


def alpha_label(alpha: Any) -> str:
    """α as a stable string: ``2``, ``-1``, ``0.5``; ``none`` for None/NaN (prompt, unsteered)."""
    if alpha is None or str(alpha) in ("<NA>", "None", "nan", ""):
        return "none"
    a = float(alpha)
    return "none" if math.isnan(a) else format(a, "g")


def _target_label(target: Any) -> str:
    if target is None or str(target) in ("<NA>", "None", "nan", ""):
        return "none"
    return str(target)


def child_key(condition: Any, target: Any, alpha: Any) -> str:
    """The identity of a child run inside its parent: ``steered|joy|2``, ``unsteered|none|none``."""
    return f"{condition}|{_target_label(target)}|{alpha_label(alpha)}"


def model_label(*candidates: Any) -> str:
    """The first candidate that looks like a model id (``Qwen/Qwen2.5-7B-Instruct``, ``smollm2``)
    rather than a local path; the first non-empty one otherwise; ``unknown`` if none."""
    given = [str(c) for c in candidates if c not in (None, "")]
    for c in given:
        if not os.path.isabs(c) and not c.startswith(("./", "../", "~")):
            return c
    return given[0] if given else "unknown"


def git_info(where: str | Path | None = None) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"/"false"}`` of the repo holding ``where``
    (default: this package); empty when not in a git checkout or git is missing."""
    cwd = Path(where) if where else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
                             check=False)
        if sha.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": sha.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}


def hardware_info() -> dict[str, Any]:
    """Platform, Python, CPU count and GPU name/count (when torch sees one)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "hostname": platform.node(), "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception:  # noqa: BLE001, S110 - no torch or a broken driver must not fail the run
        pass
    return info


def results_table(aggregate: pd.DataFrame) -> pd.DataFrame:
    """The results table for MLflow's table view: one row per (condition, target, α) with the
    target's probability, its gain over unsteered [95% CI] and the topic / repetition ratios."""
    import pandas as pd

    rows = []
    for _, r in aggregate.iterrows():
        t = r.get("target")
        col = f"p_{t}" if isinstance(t, str) and f"p_{t}" in aggregate else None
        rows.append({"condition": r.get("condition"), "target": t, "alpha": r.get("alpha"), "n": r.get("n"),
                     "p_target": r[col] if col else None,
                     **{k: r.get(k) for k in ("gain", "gain_ci_low", "gain_ci_high", "topic_ratio", "repetition_ratio",
                                              "dose", "topic", "repetition", "perplexity") if k in aggregate}})
    return pd.DataFrame(rows)


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when it is not a finite number (NaN, None, text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def samples_text(rows: pd.DataFrame, k: int) -> str:
    order = rows.sort_values("index") if "index" in rows else rows
    parts = []
    for _, r in order.head(k).iterrows():
        head = f"[{r.get('query_emotion', '')}] {r.get('query', '')}".strip()
        parts.append(f"### {head}\n{r.get('response', '')}\n")
    return "\n".join(parts)


def parent_note(label: str, chash: str, prov: dict[str, Any]) -> str:
    ident = prov.get("commit") or prov.get("model_fingerprint") or prov.get("revision") or "unrecorded"
    return (f"**{label}** — emoexp study, identity `{chash}` (config and input contents).\n\n"
            "Child runs: one per (condition, target, α). Parent artifacts: `config.json`, `provenance.json`, "
            "`attempts/` (one record per run attempt), `vectors/` (EmotionVectors safetensors), `plots/` (EV norms, "
            "cosine, split-half stability, α-sweeps), `aggregate.json`.\n\n"
            f"Model: `{prov.get('model_id')}` ({ident}); world size {prov.get('world_size', 1)}.")


def by_child(generations: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Generation rows grouped by child key (condition|target|alpha)."""
    if generations is None or not len(generations):
        return {}
    n = len(generations)
    keys = [child_key(c, t, a) for c, t, a in zip(generations["condition"], generations.get("target", [None] * n),
                                                 generations.get("alpha", [None] * n), strict=True)]
    return {k: rows.drop(columns="_key").reset_index(drop=True)
            for k, rows in generations.assign(_key=keys).groupby("_key", sort=False)}