"""MLflow tracking: the one package that imports mlflow.

- :mod:`.store`: where runs go (``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlruns/mlflow.db``)
  and a fail-fast check of that store (unreachable server, corrupt or foreign file, file-store
  URIs and unwritable paths are refused before any work starts);
- :mod:`.meta`: what MLflow gets to see (redacted config, flattened params, provenance, keys,
  the parent's note, the results table), pure Python;
- :mod:`.curves`: α curves as metric histories (step = 100·α) for the chart view, pure pandas;
- :mod:`.client`: writes to a store (retried, batched, tables), experiments with their kind;
- :mod:`.study`: a study logged live (:class:`Study`) or in one call (:func:`log_study`);
- :mod:`.read`: studies read back (:func:`load_children`, behind ``emoexp compare``);
- :mod:`.watch`: the watchdog that marks a killed run KILLED.

Example:
    >>> uri = check_store()                                  # doctest: +SKIP
    >>> Study("paper", identity, config, provenance, uri=uri).start()   # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"load_children": "read", "search_all": "read", "TrackingError": "store", "check_store": "store",
         "tracking_uri": "store", "Study": "study", "log_study": "study"}

__all__ = ["Study", "TrackingError", "check_store", "load_children", "log_study", "search_all", "tracking_uri"]


__getattr__ = lazy_getattr(__name__, _LAZY)
