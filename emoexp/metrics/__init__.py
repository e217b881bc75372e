"""The paper's metrics as ``evaluate`` modules shipped inside the package.

Each metric is a folder ``emoexp/metrics/<name>/<name>.py`` holding one
``evaluate.Metric`` subclass; :func:`load_metric` loads it **by local path** (never from
the hub), so it works offline. The heavy lifting (models, judge) lives in plain emoexp
modules that the metric scripts import, and loaded models are cached across metrics.

| name | inputs | output (per text) |
|---|---|---|
| ``eps`` | responses | emotion probabilities (+ neutral), ``intensity`` |
| ``tec`` | EPS probabilities, target emotions | ``tec`` (target probability), ``tec_top`` |
| ``topic_consistency`` | responses, queries | ``topic`` |
| ``perplexity`` | responses | ``perplexities`` |
| ``repetition`` | responses | ``repetition``, ``distinct_1``, ``distinct_2`` |
| ``eas`` | responses | judge's 0–100 rating of each emotion |

Example:
    >>> eps = load_metric("eps")                                      # doctest: +SKIP
    >>> eps.compute(predictions=["I am so happy!"])["intensity"]
    [0.97]
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "load_metric", "metric_info", "metric_path"]

#: Metric modules shipped in this folder.
METRICS = ("eps", "tec", "topic_consistency", "perplexity", "repetition", "eas")
_HERE = Path(__file__).resolve().parent


def metric_path(name: str) -> Path:
    """The folder of metric ``name`` (what ``evaluate.load`` is given).

    Raises:
        ValueError: no such metric here.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: emoexp ships {', '.join(METRICS)}")
    return _HERE / name


def metric_info(doc: str, citation: str, inputs: str, *, predictions: str = "string",
                references: str | None = None) -> Any:
    """The ``evaluate.MetricInfo`` each metric script here returns from ``_info``.

    Args:
        doc: the metric's description (its module docstring).
        citation: where the metric comes from.
        inputs: what ``compute`` takes, in words.
        predictions: the ``datasets`` value type of a prediction, or ``"float64 rows"`` for probability rows.
        references: the same for references; ``None`` when the metric takes none.
    """
    import datasets
    import evaluate

    def feature(kind: str) -> Any:
        return datasets.Sequence(datasets.Value("float64")) if kind == "float64 rows" else datasets.Value(kind)

    features = {"predictions": feature(predictions)} | ({"references": feature(references)} if references else {})
    return evaluate.MetricInfo(description=doc, citation=citation, inputs_description=inputs,
                               features=datasets.Features(features))


@functools.cache
def load_metric(name: str) -> Any:
    """Load emoexp's metric ``name`` by local path with ``evaluate.load`` (kept in memory).

    ``evaluate.load`` copies the script under ``$HF_HOME``; where that is not writable the
    script is imported directly and its ``evaluate.Metric`` class instantiated (with its
    cache folder in the system temp dir).

    Args:
        name: one of :data:`METRICS`.

    Example:
        >>> load_metric("repetition").compute(predictions=["a b a b a b"])["repetition"]  # doctest: +SKIP
        [0.67]
    """
    import evaluate

    path = metric_path(name)
    try:
        return evaluate.load(str(path), keep_in_memory=True)
    except OSError:  # read-only HF_HOME: import the script itself
        spec = importlib.util.spec_from_file_location(f"emoexp_metric_{name}", path / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cls: Any = next(c for _, c in inspect.getmembers(module, inspect.isclass)
                        if issubclass(c, evaluate.Metric) and c is not evaluate.Metric)
        return cls(keep_in_memory=True, cache_dir=os.path.join(tempfile.gettempdir(), "emoexp-evaluate"))
