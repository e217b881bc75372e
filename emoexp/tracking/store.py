"""Where MLflow runs go, and a fail-fast check of that store.

``MLFLOW_TRACKING_URI`` wins; otherwise the embedded store ``sqlite:///<root>/mlruns/mlflow.db``
with artifacts in ``<root>/mlruns/artifacts``. :func:`check_store` answers within ``timeout``
seconds for an HTTP server, refuses a corrupt or foreign SQLite file (leaving it untouched), and
creates a missing SQLite schema exactly once: under an ``fcntl`` lock, in a temporary file that is
renamed into place, so concurrent writers never see half a schema.

Example:
    >>> tracking_uri("/proj")                                # with MLFLOW_TRACKING_URI unset
    'sqlite:////proj/mlruns/mlflow.db'
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .meta import scrub_text

__all__ = ["TrackingError", "artifact_root", "check_store", "sqlite_path", "tracking_uri"]


class TrackingError(RuntimeError):
    """The MLflow store is unreachable, corrupt or unusable (the message says what to do)."""


def tracking_uri(project_root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlruns/mlflow.db`` (root default: cwd).

    Example:
        >>> tracking_uri("/proj")                            # doctest: +SKIP
        'sqlite:////proj/mlruns/mlflow.db'
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    root = Path(project_root) if project_root is not None else Path.cwd()
    return "sqlite:///" + str((root / "mlruns" / "mlflow.db").resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths against cwd), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(path).resolve()


def artifact_root(uri: str) -> str | None:
    """``file://`` URI of ``artifacts/`` next to a SQLite store; None for servers (they decide)."""
    db = sqlite_path(uri)
    return (db.parent / "artifacts").as_uri() if db is not None else None


def _request(uri: str, path: str) -> urllib.request.Request:
    """A GET of ``uri + path`` with the credentials MLflow would send (URL userinfo, env vars)."""
    parts = urllib.parse.urlsplit(uri)
    user, password = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME"), \
        parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    netloc += f":{parts.port}" if parts.port else ""
    req = urllib.request.Request(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + path,
                                                          "", "")))
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return req


def _check_http(uri: str, timeout: float) -> None:
    shown = scrub_text(uri)
    try:
        try:
            with urllib.request.urlopen(_request(uri, "/health"), timeout=timeout):
                return
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        # No /health (an older server, or something else answering): ask the REST API itself.
        api = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        try:
            with urllib.request.urlopen(_request(uri, api), timeout=timeout):
                return
        except urllib.error.HTTPError as e:
            body = e.read(2000).decode(errors="replace")
            if e.code in (400, 404) and "error_code" in body:
                return  # MLflow answering (the experiment may simply not exist)
            if e.code not in (401, 403):
                raise TrackingError(f"{shown} answered, but not as an MLflow tracking server (HTTP {e.code} on "
                                    "/health and on the REST API): check the address and port in "
                                    "MLFLOW_TRACKING_URI") from None
            raise
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise TrackingError(f"MLflow server {shown} refused the credentials (HTTP {e.code}): set "
                                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN") from None
        raise TrackingError(f"MLflow server {shown} answered HTTP {e.code} on /health") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {shown} is unreachable ({reason}; waited at most {timeout:g}s). Start it "
            "(`mlflow server --backend-store-uri sqlite:///... --host 0.0.0.0 --port 5000`), fix "
            "MLFLOW_TRACKING_URI, or unset it to log to the local store ./mlruns/mlflow.db") from None


def _verify_sqlite(path: Path) -> None:
    """Read-only checks: an SQLite file, intact, holding an MLflow schema of this MLflow version."""
    hint = (f"it was left untouched: move it aside (`mv {path} {path}.bad`) to start a new store, "
            "or restore a backup")
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            status = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            version = (con.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0] \
                if "alembic_version" in tables else None
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "readonly" in str(e) or "locked" in str(e):
            return  # a hot journal or a long writer: not corruption, MLflow's own connection copes
        raise TrackingError(f"MLflow store {path} is unreadable ({e}); {hint}") from None
    except sqlite3.DatabaseError as e:
        raise TrackingError(f"MLflow store {path} is corrupt or not an SQLite database ({e}); {hint}") from None
    if status != "ok":
        raise TrackingError(f"MLflow store {path} is corrupt (integrity check: {status}); {hint}")
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise TrackingError(f"{path} is an SQLite database but not an MLflow store "
                            f"(tables: {', '.join(sorted(tables)) or 'none'}); {hint}")
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = _get_latest_schema_revision()
    except Exception:  # noqa: BLE001 - private helper moved: MLflow's own check still runs when the store opens
        return
    if version != head:
        raise TrackingError(f"MLflow store {path} has schema {version}, this MLflow expects {head}: back it up, "
                            f"then run `mlflow db upgrade sqlite:///{path}`")


def _check_folder(path: Path) -> None:
    """The store's folder must be creatable and writable (checked before any work starts)."""
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise TrackingError(f"MLflow store {path}: {parent} is a file, not a folder; choose another path "
                                    "in MLFLOW_TRACKING_URI")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".emoexp-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TrackingError(f"MLflow store {path}: cannot write in {path.parent} ({e.strerror or e}); choose a "
                            "writable path in MLFLOW_TRACKING_URI") from None


def _create_sqlite(path: Path) -> None:
    """Create the schema (and the Default experiment) once, under a lock, atomically."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists() and path.stat().st_size > 0:
                _verify_sqlite(path)  # another process created it while we waited
                return
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            try:
                with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
                        contextlib.redirect_stderr(quiet):  # alembic prints blank lines while migrating
                    store = SqlAlchemyStore("sqlite:///" + str(tmp), (path.parent / "artifacts").as_uri())
                store.engine.dispose()
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_store(uri: str | None = None, timeout: float = 5.0, *, create: bool = True) -> str:
    """Check the tracking store before any work, and create a missing local one.

    Args:
        uri: tracking URI (default: :func:`tracking_uri`).
        timeout: seconds to wait for an HTTP server's ``/health``.
        create: create a missing SQLite store (False for read-only commands: missing is an error).

    Returns:
        The URI.

    Raises:
        TrackingError: unreachable, refusing or non-MLflow server; corrupt, foreign, outdated or (with
            ``create=False``) missing SQLite file. A bad file is never modified.

    Example:
        >>> uri = check_store()                  # doctest: +SKIP
    """
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_http(uri, timeout)
        return uri
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(f"tracking URI {scrub_text(uri)!r} is a file store, which MLflow 3 no longer writes by "
                            "default: use sqlite:///<absolute path>/mlflow.db, an http:// server, or unset "
                            "MLFLOW_TRACKING_URI for ./mlruns/mlflow.db")
    path = sqlite_path(uri)
    if path is None:
        return uri  # postgresql://, mysql://, databricks: MLflow reports its own errors
    if path.is_dir():
        raise TrackingError(f"MLflow store {path} is a folder, not an SQLite file: point the URI at a file inside it")
    if create:
        _check_folder(path)
    if path.exists() and path.stat().st_size > 0:
        _verify_sqlite(path)
    elif not create:
        raise TrackingError(f"no MLflow store at {path}: log a study first (`emoexp run`), or pass --uri / "
                            "set MLFLOW_TRACKING_URI")
    else:
        _create_sqlite(path)
    return uri
