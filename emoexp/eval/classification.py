"""How well a classifier's labels match the truth: per-label precision, recall and F1 with the
confusion matrix, and calibration of its top probability (expected calibration error).

Example:
    >>> classification_report([0, 1, 1], [0, 1, 0], ["a", "b"])["macro_recall"]
    0.75
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["calibration", "classification_report"]


def classification_report(y: Sequence[int], pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and macro recall (over the labels present in ``y``), per-label
    precision/recall/F1/support, the confusion matrix (rows: truth) and ``n``.

    Example:
        >>> classification_report([0, 1, 1], [0, 1, 0], ["a", "b"])["macro_f1"]
        0.6666666666666666
    """
    y, pred = np.asarray(y), np.asarray(pred)
    k = len(labels)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    per = {}
    for i, lab in enumerate(labels):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        per[lab] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": int(cm[i].sum())}
    present = [lab for lab in labels if per[lab]["support"]]
    return {"accuracy": float((y == pred).mean()), "macro_f1": float(np.mean([per[lab]["f1"] for lab in present])),
            "macro_recall": float(np.mean([per[lab]["recall"] for lab in present])), "n": len(y),
            "per_label": per, "confusion": cm.tolist(), "labels": list(labels)}


def calibration(probs: np.ndarray, y: Sequence[int], bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of the top probability, and the per-bin confidence / accuracy."""
    conf, pred = probs.max(1), probs.argmax(1)
    hit = pred == np.asarray(y)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            rows.append((float(conf[m].mean()), float(hit[m].mean()), int(m.sum())))
            ece += m.mean() * abs(conf[m].mean() - hit[m].mean())
    return {"ece": float(ece), "bins": rows}
