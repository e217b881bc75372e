"""Secrets never leave the process: the one redaction function, and the printing that uses it.

Everything emoexp shows or records passes through :func:`redact` / :func:`scrub_text`: status
lines (:func:`log`), error messages and tracebacks (the ``emoexp`` command), log records of
any library (:func:`install_log_filter`), MLflow params, tags and artifacts, and the sbatch
scripts of ``emoexp submit`` (which pass secrets by inheriting the environment, never by
value). Torch-free and MLflow-free.

Example:
    >>> redact({"judge": {"api_key": "sk-123", "max_new_tokens": 8}})
    {'judge': {'api_key': '***', 'max_new_tokens': 8}}
    >>> scrub_text("http://alice:s3cret@mlflow.example:5000")
    'http://***@mlflow.example:5000'
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["REDACTED", "has_secret", "install_log_filter", "is_secret_key", "log", "redact", "scrub_text"]

REDACTED = "***"
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}
# Key-like values and credentials inside URLs, wherever they appear.
_SECRET_VALUES = [
    (re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@"), REDACTED + "@"),          # https://user:pass@host
    (re.compile(r"(?<=://)[^/@\s:]{16,}@"), REDACTED + "@"),                # https://<token>@host
    (re.compile(r"\b(sk|hf|ghp|gho|xox[bpas]|AKIA)[-_A-Za-z0-9]{12,}\b"), REDACTED),  # API-key shapes
    (re.compile(r"(?i)([?&](?:api[-_]?key|key|token|access_token|secret|password)=)[^&#\s]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"), r"\1" + REDACTED),
]


def is_secret_key(name: str) -> bool:
    """True when a config key or variable name names a secret.

    A key is secret when it contains ``secret`` or ``password`` anywhere, or when its last word
    is ``key``/``token``/``apikey``/``credentials`` (``api_key``, ``hf_token``, ``apiKey``,
    ``OPENAI_API_KEY``). Words are split on ``_ - .`` and camelCase, so ``max_new_tokens``,
    ``tokenizer``, ``token_scope`` and ``keywords`` stay visible.

    Example:
        >>> [is_secret_key(k) for k in ("api_key", "HF_TOKEN", "max_new_tokens", "db_password")]
        [True, True, False, True]
    """
    low = name.lower()
    if "secret" in low or "password" in low or "passwd" in low:
        return True
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)]
    return bool(words) and words[-1] in _SECRET_WORDS


def scrub_text(text: str) -> str:
    """Hide credentials inside a string (``user:pass@`` in URLs, ``?key=`` queries, ``sk-…`` keys,
    ``Authorization:`` headers)."""
    for pattern, repl in _SECRET_VALUES:
        text = pattern.sub(repl, text)
    return text


def has_secret(text: str) -> bool:
    """Whether :func:`scrub_text` would change ``text``."""
    return scrub_text(text) != text


def redact(obj: Any) -> Any:
    """A deep copy of ``obj`` with secret keys' values replaced by ``***`` and credentials in
    strings scrubbed (see :func:`is_secret_key`, :func:`scrub_text`).

    Example:
        >>> redact({"endpoint": "https://u:pw@host/v1", "hf_token": "hf_x"})
        {'endpoint': 'https://***@host/v1', 'hf_token': '***'}
    """
    if isinstance(obj, Mapping):
        return {str(k): (REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj)
    if isinstance(obj, Path):
        return scrub_text(str(obj))
    return obj


def log(message: str, *, stream: TextIO | None = None) -> None:
    """Print one ``[emoexp] …`` status line (to stderr by default), scrubbed of secrets."""
    print(scrub_text(f"[emoexp] {message}"), file=stream or sys.stderr, flush=True)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's business
            return True
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _ScrubFilter()


def install_log_filter() -> None:
    """Scrub every log record (any library's) before a handler formats it. Idempotent."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
