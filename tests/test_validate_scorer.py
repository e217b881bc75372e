"""The written-reply scorer (``minilm-written``, the default until 2026-12-06), checked on labelled
text it was not fitted on; its shipped head is reproducible from the shipped training text. The
default head, trained on real model text too, is tested in test_real_text_scorer.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emoexp.eval.classifiers import HEAD_PATH, EmotionHead, load_labelled
from emoexp.eval.training import fit_head
from emoexp.eval.validate import Args, calibration, classification_report, main, validate
from emoexp.fingerprint import digest

TRAIN = HEAD_PATH.with_name("emotion_text_train.jsonl")
TEST = HEAD_PATH.with_name("emotion_text_test.jsonl")


def test_training_and_held_out_text_are_apart():
    train, test = load_labelled(TRAIN)[0], load_labelled(TEST)[0]
    assert len(train) == 720 and len(test) == 300
    assert not {t.lower() for t in train} & {t.lower() for t in test}

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = text.lower().split()
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}

    tr = [shingles(t) for t in train]
    worst = max(len(a & b) / max(len(a | b), 1) for a in map(shingles, test) for b in tr)
    assert worst < 0.5  # no held-out text is a near copy of a training text (word 3-gram Jaccard)


def test_the_shipped_written_head_is_what_fit_head_makes_from_the_shipped_text():
    head = EmotionHead.load(HEAD_PATH)
    texts, labels = load_labelled(TRAIN)
    assert head.meta["train_fingerprint"] == digest([texts, labels])
    again = fit_head(texts, labels)
    assert again.meta["l2"] == head.meta["l2"]
    assert torch.allclose(again.weight, head.weight, atol=1e-4) and torch.allclose(again.bias, head.bias, atol=1e-4)


def test_written_head_meets_the_bar_on_held_out_text(tmp_path, capsys):
    """macro-F1 >= 0.7 and every label's recall >= 0.6 on replies it was not fitted on."""
    args = Args(backends=["minilm-written", "minilm-zeroshot"], official=None, out=str(tmp_path))
    assert main(args) == 0
    results = json.loads((tmp_path / "validation.json").read_text())
    test = results["minilm-written|ours-test"]
    assert test["n"] == 300 and test["macro_f1"] >= 0.7, test["macro_f1"]
    assert min(m["recall"] for m in test["per_label"].values()) >= 0.6, test["per_label"]
    assert test["macro_f1"] > results["minilm-zeroshot|ours-test"]["macro_f1"] + 0.2  # the old scorer, for comparison
    assert results["minilm-written|train-cv"]["fitted_in_cv"] is True
    names = {p.name for p in tmp_path.iterdir()}
    assert {"validation.md", "validation.csv", "confusion_minilm-written_ours-test.png",
            "reliability_ours-test.png"} <= names
    assert "| minilm-written " in capsys.readouterr().out


def test_report_and_calibration_by_hand():
    rep = classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert rep["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert rep["per_label"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    cal = calibration(probs, [0, 0, 0, 1])  # confident and right; unsure and right half the time
    assert cal["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "official").is_dir(),
                    reason="the paper authors' data is not beside this checkout")
def test_authors_text_is_scored_on_five_labels():
    official = Path(__file__).resolve().parents[2] / "shared" / "data" / "official"
    res = validate(Args(backends=["minilm-zeroshot"], official=str(official), official_limit=40))
    rep = res[("minilm-zeroshot", "authors")]
    assert rep["labels"] == ["anger", "disgust", "fear", "joy", "sadness"] and rep["n"] == 200
    assert rep["per_label"]["joy"]["recall"] > 0.9  # the clearest emotion, as seen before this check existed
