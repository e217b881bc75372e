"""The default scorer on real model text: the hand labels (blind, two readers), the grouped
held-out evaluation, a refit equal to the shipped weights, the scorer's identity in results, the
labels file's bad input, and the LLM judge comparison against a loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emoexp.eval.classification import classification_report
from emoexp.eval.classifiers import LABELS, EmotionHead, get_classifier, scorer_identity
from emoexp.eval.normalise import normalise, style_features
from emoexp.eval.real_text import LABELS_PATH, LabelsError, kappa, load_labels, load_second, target_agreement
from emoexp.eval.training import FAMILY_GROUPS, fit_head, training_data
from emoexp.eval.validate import Args, main
from emoexp.fingerprint import digest
from emoexp.vocab import DEFAULT_EPS

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "official"
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason="the paper authors' data is not beside this checkout")
HELD_OUT = ("qwen2.5",)


def family(r: dict) -> str:
    return FAMILY_GROUPS.get(r["family"], r["family"])


@pytest.fixture(scope="module")
def labelled():
    return load_labels()


@needs_official
def test_the_labelled_set_covers_five_families_and_two_readers_agree(labelled):
    assert len(labelled) >= 800
    assert len({r["family"] for r in labelled}) >= 5
    assert {r["label"] for r in labelled} == set(LABELS)
    second = load_second(ids=[r["id"] for r in labelled])
    assert len(second) >= 150
    first = {r["id"]: r["label"] for r in labelled}
    k = kappa([first[r["id"]] for r in second], [r["label"] for r in second])
    assert 0.6 < k <= 1.0  # the value is reported in docs/evaluation.md
    # the steering target is not a label: at alpha 1 most Qwen2.5 texts read as another emotion
    rows = {(a["family"], a["target"], a["alpha"]): a for a in target_agreement(labelled)}
    assert rows[("qwen2.5", "anger", 1.0)]["rate"] < 0.5 < rows[("qwen2.5", "anger", 4.0)]["rate"]


def test_kappa_by_hand():
    assert kappa(["a", "a", "b", "b"], ["a", "a", "b", "b"]) == 1.0
    # observed 0.5, expected 0.5: no better than chance
    assert kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)


@needs_official
def test_the_shipped_head_is_a_refit_of_the_shipped_data_without_the_held_out_family():
    head = EmotionHead.load()
    assert head.meta["held_out"] == list(HELD_OUT)
    data = training_data(held_out=HELD_OUT)
    assert "qwen2.5" not in set(data.groups) and len(set(data.groups) - {"written"}) >= 3
    assert head.meta["train_fingerprint"] == digest([data.texts, data.labels])
    again = fit_head(data.texts, data.labels, normalise=head.meta["normalise"], style=head.meta["style"],
                     balanced=head.meta["balanced"], l2=head.meta["l2"])
    assert torch.allclose(again.weight, head.weight, atol=1e-4) and torch.allclose(again.bias, head.bias, atol=1e-4)


@needs_official
def test_held_out_family_meets_what_the_docs_report(labelled):
    """The numbers in docs/evaluation.md, on Qwen2.5 text no scorer was fitted or chosen on."""
    test = [r for r in labelled if family(r) in HELD_OUT]
    assert len(test) >= 300
    clf = get_classifier("minilm")
    y = np.array([LABELS.index(r["label"]) for r in test])
    rep = classification_report(y, clf.predict([r["text"] for r in test]).probs.argmax(1), LABELS)
    old = classification_report(y, get_classifier("minilm-written").predict([r["text"] for r in test]).probs.argmax(1),
                                LABELS)
    assert rep["macro_recall"] == pytest.approx(0.790, abs=0.01), rep
    assert rep["per_label"]["anger"]["recall"] >= 0.7 > old["per_label"]["anger"]["recall"], (rep, old)
    assert rep["per_label"]["neutral"]["precision"] >= 0.9
    assert rep["macro_f1"] > old["macro_f1"] + 0.04  # the written-reply head: 0.72 against 0.77


READINGS = Path(__file__).resolve().parent / "data" / "probe_readings.safetensors"


def test_the_probe_reader_batched_equals_one_at_a_time():
    """The LM reader's token mean does not depend on batch company or padding, cuts and flags at
    max_length, and refuses a layer the model does not have."""
    from emoexp.eval.probe import HiddenMeans

    texts = ["I am so angry!", "", "the bus leaves at nine " * 6, "joy", "HOW DARE THEY 🤬🤬", "a b c d e f g"]
    reader = HiddenMeans("tiny-random-llama", layer=2, max_length=12, batch_size=4, device="cpu")
    together = reader.encode(texts)
    alone = [HiddenMeans("tiny-random-llama", layer=2, max_length=12, device="cpu").encode([t]) for t in texts]
    assert torch.allclose(together.embeddings, torch.cat([a.embeddings for a in alone]), atol=1e-5)
    assert together.truncated == [False, False, True, False, False, False]
    other_layer = HiddenMeans("tiny-random-llama", layer=1, max_length=12, device="cpu").encode(texts[:1])
    assert not torch.allclose(other_layer.embeddings, together.embeddings[:1])
    with pytest.raises(ValueError, match="not layer 99"):
        HiddenMeans("tiny-random-llama", layer=99)


@pytest.fixture(scope="module")
def readings():
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(READINGS), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(READINGS)) | {"meta": meta}


@needs_official
def test_the_probe_head_is_a_refit_and_its_readings_are_recomputed(readings, labelled):
    """minilm-smollm2: the fixture of SmolLM2 readings (written by scripts/fit_probe_head.py) is of
    this training text and recomputes on a seeded sample; a refit from it equals the shipped head."""
    from emoexp.eval.classifiers import PROBE_HEAD_PATH
    from emoexp.eval.training import probe_readings

    head = EmotionHead.load(PROBE_HEAD_PATH, name="minilm-smollm2")
    data = training_data(held_out=HELD_OUT)
    test = [r["text"] for r in labelled if family(r) in HELD_OUT]
    assert readings["meta"]["train"] == digest(data.texts) and readings["meta"]["heldout"] == digest(test)
    assert json.loads(readings["meta"]["probe"]) == head.meta["probe"]
    rng = np.random.default_rng(0)
    i, j = rng.choice(len(data.texts), 8, replace=False), rng.choice(len(test), 4, replace=False)
    again = probe_readings([data.texts[k] for k in i] + [test[k] for k in j], head.meta["probe"])
    assert torch.allclose(again, torch.cat([readings["train"][i], readings["heldout"][j]]), atol=1e-4)
    refit = fit_head(data.texts, data.labels, normalise=True, l2=head.meta["l2"], probe=head.meta["probe"],
                     probe_raw=readings["train"])
    assert head.meta["train_fingerprint"] == refit.meta["train_fingerprint"]
    assert torch.allclose(refit.weight, head.weight, atol=1e-4) and torch.allclose(refit.bias, head.bias, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(refit.probe_stats, head.probe_stats))


@needs_official
def test_the_probe_head_meets_the_aim_on_the_held_out_family(readings, labelled):
    """On Qwen2.5 (no scorer fitted or chosen on it): macro recall >= 0.8 and every emotion >= 0.7,
    where the minilm head misses fear; the numbers docs/evaluation.md reports."""
    from emoexp.eval.classification import calibration
    from emoexp.eval.classifiers import PROBE_HEAD_PATH

    head = EmotionHead.load(PROBE_HEAD_PATH, name="minilm-smollm2")
    test = [r for r in labelled if family(r) in HELD_OUT]
    y = np.array([LABELS.index(r["label"]) for r in test])
    x = head.features([r["text"] for r in test], probe_raw=readings["heldout"])[0]
    probs = torch.softmax((x @ head.weight.T + head.bias) / head.meta["temperature"], -1).numpy()
    rep = classification_report(y, probs.argmax(1), LABELS)
    assert rep["macro_recall"] >= 0.8 and rep["macro_recall"] == pytest.approx(0.83, abs=0.01), rep
    assert min(rep["per_label"][e]["recall"] for e in LABELS[:5]) >= 0.7, rep
    assert rep["per_label"]["neutral"]["precision"] >= 0.9 and rep["per_label"]["neutral"]["recall"] >= 0.8
    assert calibration(probs, y)["ece"] < 0.1
    old = get_classifier("minilm").predict([r["text"] for r in test]).probs.argmax(1)
    assert classification_report(y, old, LABELS)["per_label"]["fear"]["recall"] < 0.7


def test_the_probe_head_reads_text_end_to_end():
    """The whole path (normalise, MiniLM, SmolLM2, head): the issue's anger example reads as anger,
    a bus timetable as neutral, and the identity names the scorer and differs from minilm's."""
    clf = get_classifier("minilm-smollm2")
    res = clf.predict(["I'm so freakin' MAD, I could just KILL someone! 🤬", "The bus leaves at nine."])
    assert [LABELS[k] for k in res.probs.argmax(1)] == ["anger", "neutral"]
    assert res.config["fingerprint"] == scorer_identity("minilm-smollm2") != scorer_identity("minilm")
    assert res.config["probe"] == {"model": "smollm2", "layer": 30, "max_length": 256, "scale": 0.5}
    with pytest.raises(ValueError, match="needs its mean and std"):
        EmotionHead(clf.weight, clf.bias, clf.meta)


def test_normalise_names_emoji_and_cuts_loops():
    assert normalise("so MAD 😡😡😡😡😡") == "so MAD (enraged face) (enraged face)"
    assert normalise("**bold** I can't I can't I can't I can't go") == "bold I can't I can't go"
    f = style_features(["HOW DARE THEY!!! f***ing 🤬 they they", "the bus leaves at nine"])
    assert f.shape == (2, 5) and (f[0] > 0).all() and (f[1] == 0).all()
    # the example, read as fear (0.62) by the written-reply head's predecessor; emoji-only
    # text and a bare threat in capitals are still misread (docs/evaluation.md says so)
    p = get_classifier("minilm").predict(["I'm so freakin' MAD, I could just KILL someone! 🤬"]).probs
    assert LABELS[p[0].argmax()] == "anger"


def test_scorers_have_distinct_identities_and_scores_carry_them():
    a, b = scorer_identity("minilm"), scorer_identity("minilm-written")
    assert a.startswith("minilm@") and b.startswith("minilm-written@") and a[-12:] != b[-12:]
    assert get_classifier("minilm").config()["fingerprint"] == a
    with pytest.raises(ValueError, match="unknown EPS backend"):
        scorer_identity("minilm-typo")


def test_a_different_scorer_gives_a_different_run_identity():
    from emoexp.config import RunConfig
    from emoexp.config_parsing import parse
    from emoexp.recipes.run import prepare, scorer_of

    cfg = parse(RunConfig, ["--model", "tiny-random-llama", "--limit", "2"])
    other = parse(RunConfig, ["--model", "tiny-random-llama", "--limit", "2", "--evaluate.backends",
                              "{eps: minilm-written}"])
    assert scorer_of(cfg) == scorer_identity(DEFAULT_EPS) == scorer_identity("minilm-smollm2")
    assert scorer_of(other) == scorer_identity("minilm-written")
    a, b = prepare(cfg), prepare(other)
    assert a.identity["inputs"]["scorer"] == scorer_of(cfg)
    assert a.identity["sha"] != b.identity["sha"] and a.out_dir != b.out_dir


@pytest.mark.parametrize("edit, message", [
    (lambda r: {**r, "label": "rage"}, "unknown label 'rage'"),
    (lambda r: {k: v for k, v in r.items() if k != "id"}, "missing field(s) ['id']"),
    (lambda r: {**r, "sha256": "0" * 16}, "text does not match its source"),
    (lambda r: {**r, "strength": 5}, "strength must be an integer 0-3"),
])
def test_a_bad_labels_file_is_one_line_naming_file_and_row(tmp_path, edit, message):
    rows = [json.loads(line) for line in LABELS_PATH.read_text(encoding="utf-8").splitlines()]
    ours = [r for r in rows if "text" in r][:3]  # rows that carry their text (no authors' release needed)
    bad = tmp_path / "labels.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [ours[0], edit(ours[1]), ours[2]]))
    with pytest.raises(LabelsError) as e:
        load_labels(bad)
    assert str(e.value).startswith(f"{bad}:2: ") and message in str(e.value) and "\n" not in str(e.value)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps(r) + "\n" for r in [ours[0], ours[1], ours[0]]))
    with pytest.raises(LabelsError, match=f"{dup}:3: duplicate id"):
        load_labels(dup)


@needs_official
def test_validate_scorer_exits_2_on_a_bad_labels_file(tmp_path, capsys):
    rows = [json.loads(line) for line in LABELS_PATH.read_text(encoding="utf-8").splitlines()]
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps({**rows[0], "label": "rage"}) + "\n")
    assert main(Args(backends=["minilm"], official=str(OFFICIAL), labels=str(bad), out=str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:1:" in err and "unknown label" in err
    assert not (tmp_path / "o").exists()  # nothing written


@needs_official
def test_validate_scorer_against_a_local_judge(tmp_path, labelled):
    """A loopback OpenAI-compatible judge that rates by the hand labels (broken replies for one
    text in four, HTTP 400 "context too long" for another in four): the judge agrees with the hand
    labels where it answered, each backend's agreement with the judge is its accuracy on those
    texts, and a refused text is counted, not fatal. A run cut off by the judge keeps every rating
    it finished: the rerun asks only the texts not rated yet."""
    from test_judge import KEY, Server  # the scripted server of the judge tests

    by_text = {r["text"][:200]: r["label"] for r in labelled}
    broken: set[str] = set()
    refused: set[str] = set()
    asked: list[str] = []
    dead_after = {"n": 10**9}

    def text_of(body) -> str:
        prompt = next(m["content"] for m in body["messages"] if '"""' in m["content"])
        return prompt.split('"""\n', 1)[1].rsplit('\n"""', 1)[0]

    def reply(body):
        text = text_of(body)
        asked.append(text)
        if len(asked) > dead_after["n"]:
            return ("status", 401)  # the judge goes away (a revoked key): the run stops
        label = by_text.get(text[:200])
        if label is None or len(text) % 4 == 0:  # about one text in four: prose on every try
            broken.add(text)
            return "I think it is angry."  # invalid, retried, then recorded as missing
        if len(text) % 4 == 1:  # another one in four: refused, as a prompt past the judge's context
            refused.add(text)
            return ("status", 400)
        return {e: (90 if e == label else 5) for e in ("anger", "disgust", "fear", "joy", "sadness")}

    import os
    os.environ["EMOEXP_JUDGE_API_KEY"] = KEY
    try:
        with Server([reply]) as srv:
            args = Args(backends=["minilm"], official=str(OFFICIAL), judge=srv.url, judge_model="judge-model",
                        judge_limit=20, official_limit=2, out=str(tmp_path / "cut"), judge_concurrency=4)
            dead_after["n"] = 6
            assert main(args) == 2
            saved = [json.loads(line) for line in (tmp_path / "cut" / "judge_ratings.jsonl").read_text().splitlines()]
            assert 1 <= len(saved) < 20
            asked.clear()
            dead_after["n"] = 10**9
            assert main(args) == 0  # the rerun, same --out
            assert len(set(asked)) == 20 - len(saved)  # only the texts without a saved rating
            asked.clear()
            assert main(args) == 0 and not asked  # everything saved: the judge is not asked again
    finally:
        os.environ.pop("EMOEXP_JUDGE_API_KEY")
    res = json.loads((tmp_path / "cut" / "validation.json").read_text())
    hand = res["judge|real vs hand labels"]
    assert broken and refused and hand["n"] == 20 - len(broken) - len(refused) and hand["accuracy"] == 1.0
    assert "minilm|real vs judge" in res and res["minilm|real vs judge"]["n"] == hand["n"]
    assert "real vs judge" in (tmp_path / "cut" / "validation.md").read_text()
