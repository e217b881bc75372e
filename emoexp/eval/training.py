"""Training the emotion head, and choosing how, by cross-validation grouped by model family.

A head is a softmax layer (:class:`~emoexp.eval.classifiers.EmotionHead`) fitted by full-batch
L-BFGS (multinomial logistic regression, L2 on the weights; deterministic). :func:`fit_head`
fits one; :func:`grouped_cv` measures a recipe (which features, which data, which L2) with
folds that never put one model family's text in both the training and the test side; the
written replies (no family) are always on the training side.

Example:
    >>> data = training_data(held_out=("qwen2.5",))                          # doctest: +SKIP
    >>> head = fit_head(data.texts, data.labels, normalise=True, style=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classification import classification_report
from .classifiers import HEAD_PATH, LABELS, EmotionHead, load_labelled, standardise
from .encoders import MINILM, get_encoder

__all__ = ["FAMILY_GROUPS", "TrainingData", "fit_head", "fit_temperature", "grouped_cv", "probe_readings",
           "training_data"]

WRITTEN = HEAD_PATH.with_name("emotion_text_train.jsonl")
INTENSE = HEAD_PATH.with_name("emotion_text_intense.jsonl")
PROFANE = HEAD_PATH.with_name("emotion_text_profane.jsonl")
#: Model families that count as one group in grouped cross-validation.
FAMILY_GROUPS = {"gemma3": "gemma"}


@dataclass
class TrainingData:
    """Texts with labels, each with its group (a model family, or ``written``) and id."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def add(self, texts: Sequence[str], labels: Sequence[str], group: str | Sequence[str], ids: Sequence[str]) -> None:
        self.texts += list(texts)
        self.labels += list(labels)
        self.groups += [group] * len(texts) if isinstance(group, str) else list(group)
        self.ids += list(ids)


def training_data(*, written: bool = True, intense: bool = True, profane: bool = True, real: bool = True,
                  held_out: Sequence[str] = ("qwen2.5",), labels_path: str | Path | None = None,
                  official: str | Path | None = None) -> TrainingData:
    """The texts a head may be fitted on: the written replies, the written intense replies
    (capitals, emoji, loops), the written profane ones (swearing in every emotion), and the
    labelled real text of every family not in ``held_out``."""
    import json

    from .real_text import LABELS_PATH, load_labels

    data = TrainingData()
    for flag, path in ((written, WRITTEN), (intense, INTENSE), (profane, PROFANE)):
        if flag:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            t, lab = load_labelled(path)
            data.add(t, lab, "written", [r["id"] for r in rows])
    if real:
        rows = [r for r in load_labels(labels_path or LABELS_PATH, official)
                if FAMILY_GROUPS.get(r["family"], r["family"]) not in held_out]
        data.add([r["text"] for r in rows], [r["label"] for r in rows],
                 [FAMILY_GROUPS.get(r["family"], r["family"]) for r in rows], [r["id"] for r in rows])
    return data


def _train_softmax(x: torch.Tensor, y: torch.Tensor, l2: float, classes: int,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L2 on the weights), full-batch L-BFGS, deterministic."""
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    x64 = x.double()
    cw = None if weight is None else weight.double()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x64 @ w.T + b, y, weight=cw) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def _class_weight(y: torch.Tensor, balanced: bool) -> torch.Tensor | None:
    if not balanced:
        return None
    counts = torch.bincount(y, minlength=len(LABELS)).double().clamp(min=1)
    return counts.sum() / (len(LABELS) * counts)


def _macro_f1(y: np.ndarray, pred: np.ndarray, classes: int) -> float:
    f1 = []
    for k in range(classes):
        tp, fp, fn = np.sum((pred == k) & (y == k)), np.sum((pred == k) & (y != k)), np.sum((pred != k) & (y == k))
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(f1))


def _features(texts: Sequence[str], normalise: bool, style: bool, encoder: str) -> torch.Tensor:
    head = EmotionHead(torch.zeros(len(LABELS), 1), torch.zeros(len(LABELS)),
                       {"normalise": normalise, "style": style}, encoder)
    return head.features(texts)[0]


def probe_readings(texts: Sequence[str], probe: dict[str, Any], *, normalise: bool = True,
                   progress: bool = False) -> torch.Tensor:
    """A probe's raw reading ``[N, hidden]`` of ``texts`` (:mod:`emoexp.eval.probe`): what
    :meth:`EmotionHead.features` computes for a head with ``meta["probe"] = probe``."""
    from .normalise import normalise as norm
    from .probe import get_reader

    read = [norm(t) for t in texts] if normalise else list(texts)
    reader = get_reader(probe["model"], int(probe["layer"]), int(probe["max_length"]))
    return reader.encode(read, progress=progress).embeddings


def fit_head(texts: Sequence[str], labels: Sequence[str], *,
             l2_grid: Sequence[float] = (1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
             folds: int = 5, seed: int = 0, encoder: str = MINILM, normalise: bool = False, style: bool = False,
             balanced: bool = False, l2: float | None = None, meta: dict[str, Any] | None = None,
             probe: dict[str, Any] | None = None, probe_raw: torch.Tensor | None = None) -> EmotionHead:
    """Fit :class:`EmotionHead` on labelled texts. With ``l2`` given it is used; otherwise it is
    chosen by stratified ``folds``-fold cross-validation (macro-F1) on these texts only.

    Args:
        normalise: embed :func:`~emoexp.eval.normalise.normalise` d text.
        style: append :func:`~emoexp.eval.normalise.style_features`.
        balanced: weight each class by the inverse of its count.
        meta: extra fields recorded in the head's metadata.
        probe: also a language model's reading, ``{"model", "layer", "max_length", "scale"}``
            (:class:`EmotionHead`), standardised by its mean and deviation over ``texts``.
        probe_raw: that reading of ``texts`` if already computed (:func:`probe_readings`).

    Example:
        >>> head = fit_head(*load_labelled("emoexp/data/emotion_text_train.jsonl"))   # doctest: +SKIP
    """
    from ..fingerprint import digest

    x = _features(list(texts), normalise, style, encoder)
    stats = None
    if probe:
        raw = probe_raw if probe_raw is not None else probe_readings(texts, probe, normalise=normalise)
        stats = (raw.mean(0), raw.std(0).clamp(min=1e-6))
        x = torch.cat([x, standardise(raw, *stats, float(probe["scale"]))], dim=1)
    y = torch.tensor([LABELS.index(lab) for lab in labels])
    scores: dict[float, float] = {}
    if l2 is None:
        rng = np.random.default_rng(seed)
        fold_of = np.zeros(len(y), dtype=int)
        for k in range(len(LABELS)):  # stratified: each label's rows dealt round-robin after a seeded shuffle
            idx = np.flatnonzero(y.numpy() == k)
            fold_of[rng.permutation(idx)] = np.arange(len(idx)) % folds
        for cand in l2_grid:
            pred = np.zeros(len(y), dtype=int)
            for f in range(folds):
                tr, te = torch.from_numpy(fold_of != f), torch.from_numpy(fold_of == f)
                w, b = _train_softmax(x[tr], y[tr], cand, len(LABELS), _class_weight(y[tr], balanced))
                pred[te.numpy()] = (x[te] @ w.T + b).argmax(-1).numpy()
            scores[cand] = _macro_f1(y.numpy(), pred, len(LABELS))
        l2 = max(l2_grid, key=lambda v: (scores[v], v))
    w, b = _train_softmax(x, y, l2, len(LABELS), _class_weight(y, balanced))
    enc = get_encoder(encoder)
    info = {"version": 2 if (normalise or style or balanced) else 1, "encoder": enc.model_id, "labels": list(LABELS),
            "l2": l2, "folds": folds, "seed": seed, "cv_macro_f1": {str(k): round(v, 4) for k, v in scores.items()},
            "n_train": len(y), "train_fingerprint": digest([list(texts), list(labels)]), "normalise": normalise,
            "style": style, "balanced": balanced, **({"probe": dict(probe)} if probe else {}), **(meta or {})}
    return EmotionHead(w, b, info, encoder, probe_stats=stats)


def grouped_cv(data: TrainingData, *, normalise: bool, style: bool, balanced: bool, l2: float,
               encoder: str = MINILM, features: torch.Tensor | None = None) -> dict[str, Any]:
    """Leave-one-family-out predictions for every real-text row (the written replies always
    train): ``{"pred": {id: label index}, "report": pooled recall report, "by_family": …}``."""
    x = features if features is not None else _features(data.texts, normalise, style, encoder)
    y = torch.tensor([LABELS.index(lab) for lab in data.labels])
    groups = np.array(data.groups)
    families = sorted(set(data.groups) - {"written"})
    logits = np.zeros((len(y), len(LABELS)), dtype=np.float64)
    for fam in families:
        te = groups == fam
        tr = torch.from_numpy(~te)
        w, b = _train_softmax(x[tr], y[tr], l2, len(LABELS), _class_weight(y[tr], balanced))
        logits[te] = (x[torch.from_numpy(te)] @ w.T + b).numpy()
    pred = logits.argmax(1)
    real = groups != "written"
    by = {fam: classification_report(y.numpy()[groups == fam], pred[groups == fam], LABELS) for fam in families}
    return {"pred": {i: int(p) for i, p, r in zip(data.ids, pred, real) if r},
            "report": classification_report(y.numpy()[real], pred[real], LABELS), "by_family": by,
            "logits": logits[real], "y": y.numpy()[real]}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature T that minimises the negative log-likelihood of ``y`` under
    ``softmax(logits / T)`` (T in [0.05, 20], scipy's bounded scalar search on log T); argmax unchanged.

    Example:
        >>> round(fit_temperature(np.array([[4.0, 0.0], [4.0, 0.0]]), np.array([0, 1])), 1) > 1
        True
    """
    from scipy.optimize import minimize_scalar

    z, yy = torch.from_numpy(np.asarray(logits, dtype=np.float64)), torch.from_numpy(np.asarray(y))

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), yy))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-8})
    return float(np.exp(res.x))
