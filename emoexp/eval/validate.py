"""``emoexp validate-scorer``: the emotion scorer checked on labelled text it was not fitted on.

Every number emoexp reports rests on the EPS classifier, so each backend is measured on:

- ``real-heldout``: hand-labelled real model text (:mod:`emoexp.eval.real_text`, six labels,
  read blind to the steering target) of the family no scorer was fitted or chosen on (Qwen2.5);
- ``real-all``: all the hand-labelled real text (the trained heads, the default
  ``minilm-smollm2`` and ``minilm``, were fitted on the other families' part of it: only the
  written-reply heads and zero-shot scorers see it fresh);
- ``train-cv``: emoexp's written training replies (``emoexp/data/emotion_text_train.jsonl``, 720,
  six labels) with 5-fold cross-validation for the backends fitted on them alone
  (``minilm-written``, the prototypes);
- ``ours-test``: emoexp's held-out replies (``emotion_text_test.jsonl``, 300, six labels), written
  separately and never used for fitting or choosing;
- ``authors``: the paper authors' per-emotion generations (Qwen2.5-7B-Instruct steered with each
  emotion's EV at α = 2, 400 answers per emotion, label = the steering target), text nobody here
  wrote; five labels, so predictions are the argmax over the five emotions.

With ``--judge URL`` (an OpenAI-compatible server, e.g. a local vLLM), an LLM judge rates the
real text's five emotions 0-100 (the paper's EAS prompt); its label is the top emotion, or
neutral when every rating is below 30. Reported: the judge against the hand labels, and each
backend against the judge (per emotion: how often the scorer agrees where the judge says e).

Reported per backend and set: accuracy, macro-F1, per-label precision / recall / F1, the
confusion matrix (table and plot) and calibration (expected calibration error over 10 bins of
the top probability, and a reliability plot).

Example:
    emoexp validate-scorer --out outputs/validate-scorer
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..redact import log
from ..vocab import EMOTIONS
from .classification import calibration, classification_report

__all__ = ["Args", "calibration", "classification_report", "main", "validate"]

DATA = Path(__file__).resolve().parents[1] / "data"
LABELS6 = (*EMOTIONS, "neutral")


@dataclass
class Args:
    """``emoexp validate-scorer``: precision, recall, F1, confusion and calibration of the EPS backends."""

    backends: list[str] = field(default_factory=lambda: ["minilm-smollm2", "minilm", "minilm-written",
                                                        "minilm-zeroshot", "minilm-ensemble", "minilm-proto"])
    """EPS backends to measure (emoexp.eval.classifiers specs)."""
    official: str | None = "../shared/data/official"
    """The paper authors' release (its results/emotion/<family>/<alpha>/<emotion>.json); null to skip."""
    family: str = "Qwen2_5"
    """Which family's per-emotion generations to use."""
    alpha: str = "2"
    """Which alpha's generations (the authors' folder name)."""
    official_limit: int | None = None
    """At most this many of the authors' answers per emotion (the first ones; null: all 400)."""
    real_limit: int | None = None
    """At most this many hand-labelled texts in each real set (a seeded sample, for a quick look; null: all)."""
    out: str = "outputs/validate-scorer"
    """Folder for validation.md, validation.csv and the plots."""
    labels: str | None = None
    """The hand-labelled real text (default: emoexp/data/real_text_labels.jsonl)."""
    judge: str | None = None
    """Base URL of an OpenAI-compatible LLM judge (key from $EMOEXP_JUDGE_API_KEY): compare with it."""
    judge_model: str | None = None
    """The judge's model name (default $EMOEXP_JUDGE_MODEL)."""
    judge_limit: int | None = 300
    """At most this many real texts are judged (a seeded sample; null: all)."""
    judge_concurrency: int = 8
    """Requests sent to the judge at once (a serving engine such as vLLM batches them)."""
    judge_json_mode: Literal["schema", "object", "off"] = "schema"
    """How replies are constrained: a JSON schema of the five ratings, any JSON object, or not at all."""


def _official(root: Path, family: str, alpha: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    from .normalise import strip_special

    folder = root / "results" / "emotion" / family / alpha
    texts, labels = [], []
    for e in EMOTIONS:
        for t in json.loads((folder / f"{e}.json").read_text(encoding="utf-8"))[:limit]:
            text, _ = strip_special(t)
            if isinstance(text, str) and text.strip():
                texts.append(text)
                labels.append(e)
    return texts, labels


def _cv_probs(backend: str, texts: list[str], labels: list[str], folds: int = 5) -> np.ndarray | None:
    """Cross-validated probabilities on the training set for the backends fitted on it (else None)."""
    from .classifiers import HEAD_PATH, LABELS, EmotionHead, Prototypes
    from .encoders import get_encoder
    from .training import _train_softmax

    if backend not in ("minilm-written", "minilm-proto"):
        return None
    import torch

    x = get_encoder("minilm").encode(texts).embeddings
    y = np.array([LABELS.index(lab) for lab in labels])
    rng = np.random.default_rng(0)
    fold_of = np.zeros(len(y), dtype=int)
    for k in range(len(LABELS)):
        idx = np.flatnonzero(y == k)
        fold_of[rng.permutation(idx)] = np.arange(len(idx)) % folds
    out = np.zeros((len(y), len(LABELS)))
    head = EmotionHead.load(HEAD_PATH) if backend == "minilm-written" else None
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        if head is not None:
            w, b = _train_softmax(x[torch.from_numpy(tr)], torch.from_numpy(y[tr]), head.meta["l2"], len(LABELS))
            out[te] = torch.softmax(x[torch.from_numpy(te)] @ w.T + b, -1).numpy()
        else:
            proto = Prototypes([t for t, m in zip(texts, tr) if m], [lab for lab, m in zip(labels, tr) if m])
            out[te] = proto.predict([t for t, m in zip(texts, te) if m]).probs
    return out


def validate(args: Args) -> dict[str, Any]:
    """Measure every backend on every labelled set; returns ``{(backend, set): report}``."""
    from .classifiers import get_classifier, load_labelled
    from .real_text import LABELS_PATH, load_labels
    from .training import FAMILY_GROUPS

    sets: dict[str, tuple[list[str], list[str]]] = {
        "train-cv": load_labelled(DATA / "emotion_text_train.jsonl"),
        "ours-test": load_labelled(DATA / "emotion_text_test.jsonl"),
    }
    real: list[dict[str, Any]] = []
    if args.official and (Path(args.official) / "results").is_dir():
        real = load_labels(args.labels or LABELS_PATH, official=args.official)
        held = set(get_classifier("minilm").meta.get("held_out", ["qwen2.5"]))  # every trained head's
        test = [r for r in real if FAMILY_GROUPS.get(r["family"], r["family"]) in held]
        for name, rows in (("real-heldout", test), ("real-all", real)):
            if args.real_limit is not None and len(rows) > args.real_limit:
                keep = np.sort(np.random.default_rng(0).choice(len(rows), args.real_limit, replace=False))
                rows = [rows[i] for i in keep]
            sets[name] = ([r["text"] for r in rows], [r["label"] for r in rows])
    if real:
        sets["authors"] = _official(Path(args.official), args.family, args.alpha, args.official_limit)
    elif args.official:
        log(f"validate-scorer: no results/ folder under {args.official}: the authors' set is skipped "
            "(--official points at the paper authors' release)")
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for backend in args.backends:
        clf = get_classifier(backend)
        for name, (texts, labels) in sets.items():
            probs = _cv_probs(backend, texts, labels) if name == "train-cv" else None
            if probs is None:
                probs = clf.predict(texts).probs
            five = name == "authors"
            labs = EMOTIONS if five else LABELS6
            p = probs[:, :5] / probs[:, :5].sum(1, keepdims=True) if five else probs
            y = [labs.index(lab) for lab in labels]
            rep = classification_report(y, p.argmax(1), labs)
            rep.update(calibration=calibration(p, y), n=len(y), fitted_in_cv=name == "train-cv" and
                       backend in ("minilm-written", "minilm-proto"))
            results[(backend, name)] = rep
            log(f"validate-scorer: {backend} on {name} ({len(y)}): macro-F1 {rep['macro_f1']:.3f}, "
                f"accuracy {rep['accuracy']:.3f}, ECE {rep['calibration']['ece']:.3f}")
    if args.judge:
        if not real:
            raise ValueError("--judge needs the hand-labelled real text: point --official at the authors' release")
        results.update(_against_judge(args, real))
    return results


#: The judge's label is neutral when it rates every emotion below this (0-100).
JUDGE_NEUTRAL_BELOW = 30.0


#: In ``--out``: every finished judge rating, written as it arrives; a rerun asks only the rest.
JUDGE_RATINGS = "judge_ratings.jsonl"


def _judge_ratings(judge: Any, texts: list[str], path: Path) -> list[Any]:
    """The judge's rating of each text, reusing those saved in ``path`` by an earlier run with the
    same judge (endpoint, model, prompt, settings) and text, saving new ones as they come: an
    interrupted run loses nothing."""
    from dataclasses import asdict

    from ..fingerprint import digest
    from .judge import EAS_PROMPT, Rating, rate_emotions

    c = judge.config
    asked = [judge.describe(), EAS_PROMPT, c.temperature, c.max_tokens, c.json_mode, c.max_chars, c.max_retries]
    keys = [digest([*asked, t])[:24] for t in texts]
    saved: dict[str, Rating] = {}
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    for line in old.splitlines():
        try:
            r = json.loads(line)
            k = r.pop("key")
            saved[k] = Rating(**r)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut short when the run was killed: asked again
    todo = [i for i, k in enumerate(keys) if k not in saved]
    if len(todo) < len(texts):
        log(f"validate-scorer: {len(texts) - len(todo)} judge ratings reused from {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        if old and not old.endswith("\n"):
            fh.write("\n")  # end a cut-short line, so the next record starts on its own

        def keep(j: int, r: Rating) -> None:
            saved[keys[todo[j]]] = r
            fh.write(json.dumps({"key": keys[todo[j]], **asdict(r)}) + "\n")
            fh.flush()

        if todo:
            rate_emotions(judge, [texts[i] for i in todo], progress=True, on_rating=keep)
    return [saved[k] for k in keys]


def _against_judge(args: Args, real: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The judge's labels of (a sample of) the real text against the hand labels, and each
    backend against the judge."""
    import random

    from .classifiers import get_classifier
    from .judge import JudgeConfig, get_judge

    rows = list(real)
    random.Random(0).shuffle(rows)
    rows = rows[:args.judge_limit] if args.judge_limit else rows
    config = JudgeConfig.from_env(base_url=args.judge, model=args.judge_model, concurrency=args.judge_concurrency,
                                  json_mode=args.judge_json_mode)
    judge = get_judge("judge", config)
    ratings = _judge_ratings(judge, [r["text"] for r in rows], Path(args.out) / JUDGE_RATINGS)
    keep = [i for i, r in enumerate(ratings) if r.scores]
    refused = sum(r.rejected for r in ratings)
    log(f"validate-scorer: the judge rated {len(keep)} of {len(ratings)} texts ({refused} refused by the endpoint, "
        f"{len(ratings) - len(keep) - refused} without a valid reply)")
    if not keep:
        raise ValueError(f"the judge at {args.judge} gave no valid rating ({ratings[0].error if ratings else 'none'})")
    jl = []
    for i in keep:
        sc = ratings[i].scores or {}
        top = max(EMOTIONS, key=lambda e: sc.get(e, 0.0))
        jl.append(top if sc.get(top, 0.0) >= JUDGE_NEUTRAL_BELOW else "neutral")
    y_judge = [LABELS6.index(x) for x in jl]
    out = {}
    hand = [LABELS6.index(rows[i]["label"]) for i in keep]
    rep = classification_report(hand, y_judge, LABELS6)
    rep.update(calibration={"ece": float("nan"), "bins": []}, n=len(keep), fitted_in_cv=False)
    out[("judge", "real vs hand labels")] = rep
    for backend in args.backends:
        probs = get_classifier(backend).predict([rows[i]["text"] for i in keep]).probs
        rep = classification_report(y_judge, probs.argmax(1), LABELS6)
        rep.update(calibration=calibration(probs, y_judge), n=len(keep), fitted_in_cv=False)
        out[(backend, "real vs judge")] = rep
        log(f"validate-scorer: {backend} agrees with the judge on {rep['accuracy']:.3f} of {len(keep)} texts")
    return out


def _tables(results: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, Any]:
    import pandas as pd

    rows = []
    for (backend, name), rep in results.items():
        row = {"backend": backend, "set": name, "n": rep["n"], "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
               "ece": rep["calibration"]["ece"]}
        for lab, m in rep["per_label"].items():
            row.update({f"{lab}_p": m["precision"], f"{lab}_r": m["recall"], f"{lab}_f1": m["f1"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    summary = df[["backend", "set", "n", "accuracy", "macro_f1", "ece"]]
    recall = df[["backend", "set", *[f"{lab}_r" for lab in LABELS6 if f"{lab}_r" in df]]]
    recall.columns = [re.sub(r"_r$", " recall", c) for c in recall.columns]
    md = ["## Summary (macro-F1 over the set's labels; ECE of the top probability)", "",
          summary.to_markdown(index=False, floatfmt=".3f"), "", "## Recall per label", "",
          recall.to_markdown(index=False, floatfmt=".2f", missingval="—"), ""]
    for (backend, name), rep in results.items():
        cm = pd.DataFrame(rep["confusion"], index=[f"true {x}" for x in rep["labels"]], columns=rep["labels"])
        md += [f"### Confusion: {backend} on {name}", "", cm.to_markdown(), ""]
    return "\n".join(md), df


def _plots(results: dict[tuple[str, str], dict[str, Any]], out: Path) -> list[Path]:
    from ..plots import _figure

    paths = []
    for (backend, name), rep in results.items():
        cm = np.array(rep["confusion"], dtype=float)
        norm = cm / cm.sum(1, keepdims=True).clip(min=1)
        fig = _figure(5.6, 4.6)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        labs = rep["labels"]
        ax.set(xticks=range(len(labs)), yticks=range(len(labs)), xticklabels=labs, yticklabels=labs,
               xlabel="predicted", ylabel="true", title=f"{backend} on {name} (row-normalised)")
        ax.tick_params(axis="x", rotation=45)
        for i in range(len(labs)):
            for j in range(len(labs)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
        path = out / f"confusion_{backend}_{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    for name in sorted({n for _, n in results}):
        fig = _figure(5.6, 4.4)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        for (backend, n), rep in results.items():
            if n == name and rep["calibration"]["bins"]:
                conf, acc, _ = zip(*rep["calibration"]["bins"])
                ax.plot(conf, acc, marker="o", label=f"{backend} (ECE {rep['calibration']['ece']:.2f})")
        ax.set(xlabel="top probability (binned)", ylabel="accuracy", title=f"Reliability on {name}",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize="x-small", loc="upper left")
        path = out / f"reliability_{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def main(args: Args) -> int:
    """Run ``emoexp validate-scorer``; exit status 2 on bad input (a labels file, a judge)."""
    import sys

    from .judge import JudgeError

    out = Path(args.out)
    try:
        results = validate(args)
    except (ValueError, JudgeError, OSError) as e:
        print(f"emoexp validate-scorer: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    md, df = _tables(results)
    (out / "validation.md").write_text("# Emotion scorer validation\n\n" + md)
    df.to_csv(out / "validation.csv", index=False)
    (out / "validation.json").write_text(json.dumps({f"{b}|{n}": r for (b, n), r in results.items()}, indent=1))
    plots = _plots(results, out)
    print(md.split("## Recall per label")[0])
    log(f"wrote {out}/validation.md, validation.csv, validation.json and {len(plots)} plots")
    return 0
