"""Bundled datasets (counts, duplicates, topics, no near-copies of the authors' queries), the
authors' layouts, local formats, deterministic subsets and bad input."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from emoexp.datasets import (
    BUNDLED,
    LABELS,
    TOPICS,
    DatasetError,
    DatasetWarning,
    Query,
    bundled_path,
    dataset_fingerprint,
    load_queries,
    normalize_query,
)
from emoexp.vectors import EMOTIONS

OFFICIAL = Path(os.environ.get("EMOEXP_OFFICIAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/official"))
EQ_JSON = OFFICIAL / "dataset/EmotionQuery/EmotionQuery.json"
EQP_JSON = OFFICIAL / "dataset/EmotionQuery+/EmotionQuery+.json"
needs_official = pytest.mark.skipif(not EQ_JSON.is_file(), reason=f"authors' data not at {OFFICIAL}")


@pytest.fixture(scope="module")
def eq() -> list[Query]:
    return load_queries("emotionquery")


@pytest.fixture(scope="module")
def eqp() -> list[Query]:
    return load_queries("emotionquery_plus")


def _tokens(text: str) -> frozenset[str]:
    return frozenset(normalize_query(text).split())


def _near_copies(a: list[str], b: list[str], threshold: float = 0.8) -> list[tuple[float, str, str]]:
    """Pairs (one from each list, or within ``a`` when ``b is a``) with token-set Jaccard >= threshold."""
    ta, tb = [_tokens(x) for x in a], [_tokens(x) for x in b]
    pairs = itertools.combinations(range(len(a)), 2) if b is a else itertools.product(range(len(a)), range(len(b)))
    out = []
    for i, j in pairs:
        s, t = ta[i], tb[j]
        if min(len(s), len(t)) >= threshold * max(len(s), len(t)):  # cheap bound before the set ops
            jac = len(s & t) / len(s | t)
            if jac >= threshold:
                out.append((jac, a[i], b[j]))
    return out


# -- the bundled sets --------------------------------------------------------------------------


def test_emotionquery_counts_and_ids(eq):
    assert len(eq) == 500
    assert Counter(q.emotion for q in eq) == {e: 100 for e in EMOTIONS}
    assert [q.index for q in eq] == list(range(500))
    for q in eq:
        assert re.fullmatch(rf"eq-{q.emotion}-\d{{3}}", q.id)
    assert [q.id for q in eq if q.emotion == "joy"] == [f"eq-joy-{k:03d}" for k in range(1, 101)]


def test_emotionquery_plus_counts_and_ids(eqp):
    assert len(eqp) == 400
    assert Counter(q.emotion for q in eqp) == {**{e: 50 for e in EMOTIONS}, "neutral": 150}
    assert [q.emotion for q in eqp[-150:]] == ["neutral"] * 150  # neutral last, as in the authors' layout
    assert [q.id for q in eqp if q.emotion == "neutral"] == [f"eqp-neutral-{k:03d}" for k in range(1, 151)]
    for q in eqp:
        assert re.fullmatch(rf"eqp-{q.emotion}-\d{{3}}", q.id)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_are_clean_jsonl(name):
    lines = bundled_path(name).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"id", "query", "emotion", "topic", "form"} for r in rows)
    assert all(r["query"] == r["query"].strip() and r["query"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_no_duplicates_within_or_across_bundled_sets(eq, eqp):
    for qs in (eq, eqp):
        norm = Counter(normalize_query(q.query) for q in qs)
        assert [t for t, n in norm.items() if n > 1] == []
    assert {normalize_query(q.query) for q in eq} & {normalize_query(q.query) for q in eqp} == set()


def test_no_near_duplicates_among_bundled_queries(eq, eqp):
    texts = [q.query for q in eq + eqp]
    assert _near_copies(texts, texts) == []


def test_topics_are_varied(eq, eqp):
    for qs, n_min in ((eq, 30), (eqp, 25)):
        topics = Counter(q.topic for q in qs)
        assert set(topics) == set(TOPICS) and len(TOPICS) >= 8
        assert min(topics.values()) >= n_min and max(topics.values()) <= 0.15 * len(qs)
        for label in {q.emotion for q in qs}:
            assert len({q.topic for q in qs if q.emotion == label}) >= 8


def test_forms_are_varied(eq, eqp):
    rows = [json.loads(line) for name in BUNDLED for line in bundled_path(name).read_text().splitlines()]
    emotional = Counter(r["form"] for r in rows if r["emotion"] != "neutral")
    assert set(emotional) == {"situation", "question", "imagine", "request"}
    assert min(emotional.values()) >= 100


@needs_official
def test_no_bundled_query_is_a_near_copy_of_the_authors(eq, eqp):
    authors = [q for qs in json.loads(EQ_JSON.read_text()).values() for q in qs] + json.loads(EQP_JSON.read_text())
    ours = [q.query for q in eq + eqp]
    assert _near_copies(ours, authors) == []
    assert {normalize_query(q) for q in ours} & {normalize_query(q) for q in authors} == set()


def test_near_copy_check_catches_a_near_copy():
    a = "How did you feel when your best friend forgot your birthday party?"
    b = "How did you feel when your best friend forgot your birthday party again?"
    assert len(_near_copies([a], [b])) == 1
    assert _near_copies([a], ["What is the capital of Australia?"]) == []


# -- the authors' layouts ------------------------------------------------------------------------


@needs_official
def test_authors_emotionquery_loads_with_labels_in_order():
    raw = json.loads(EQ_JSON.read_text())
    with pytest.warns(DatasetWarning, match=r"52 duplicate queries .*kept"):
        qs = load_queries(str(EQ_JSON))
    assert len(qs) == 500
    assert Counter(q.emotion for q in qs) == {e: 100 for e in EMOTIONS}
    assert [(q.emotion, q.query) for q in qs] == [(e, t) for e, ts in raw.items() for t in ts]
    assert qs[0].id == "emotionquery-anger-001" and qs[-1].id == "emotionquery-sadness-100"
    assert [q.index for q in qs] == list(range(500))


@needs_official
def test_authors_emotionquery_plus_keeps_order_and_no_labels():
    raw = json.loads(EQP_JSON.read_text())
    with pytest.warns(DatasetWarning, match=r"21 duplicate queries .*kept"):
        qs = load_queries(str(EQP_JSON))
    assert [q.query for q in qs] == raw and len(qs) == 400
    assert {q.emotion for q in qs} == {None} and {q.topic for q in qs} == {None}
    assert [q.id for q in qs[:2]] == ["emotionquery-plus-001", "emotionquery-plus-002"]
    with pytest.warns(DatasetWarning, match="skipped the 21 later copies"):
        assert len(load_queries(str(EQP_JSON), duplicates="drop")) == 379
    with pytest.raises(DatasetError, match="21 duplicate queries"):
        load_queries(str(EQP_JSON), duplicates="error")
    with pytest.warns(DatasetWarning):
        sub = load_queries(str(EQP_JSON), limit=7, seed=3)
    assert len(sub) == 7 and [q.index for q in sub] == sorted(q.index for q in sub)  # unlabeled: 7 in total
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="has no emotion labels"):
        load_queries(str(EQP_JSON), emotions=["joy"])


# -- local formats ---------------------------------------------------------------------------

ROWS = [
    {"id": "a1", "query": "How do I descale a kettle?", "emotion": "neutral", "topic": "home"},
    {"id": "a2", "query": "My cat came home after a month away!", "emotion": "joy", "topic": "nature"},
    {"id": "a3", "query": "Someone stole my bike again.", "emotion": "Anger", "topic": "public_life"},
]
EXPECTED = [Query("a1", ROWS[0]["query"], "neutral", "home", 0), Query("a2", ROWS[1]["query"], "joy", "nature", 1),
            Query("a3", ROWS[2]["query"], "anger", "public_life", 2)]


def _write(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    import pandas as pd

    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith(".csv"):
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["q.jsonl", "q.json", "q.csv", "q.parquet"])
def test_local_formats_load_the_same(tmp_path, name):
    assert load_queries(str(_write(tmp_path, name, ROWS))) == EXPECTED


def test_dict_layout_and_generated_ids(tmp_path):
    path = tmp_path / "My Set+.json"
    path.write_text(json.dumps({"Joy": ["I won!", "We won!"], "fear": ["A noise downstairs."]}))
    qs = load_queries(str(path))
    assert [(q.id, q.emotion, q.index) for q in qs] == [
        ("my-set-plus-joy-001", "joy", 0), ("my-set-plus-joy-002", "joy", 1), ("my-set-plus-fear-001", "fear", 2)]
    path = _write(tmp_path, "plain.jsonl", [{"query": "One?"}, {"query": "Two?", "emotion": ""}])
    assert [(q.id, q.emotion) for q in load_queries(str(path))] == [("plain-001", None), ("plain-002", None)]


# -- subsets ---------------------------------------------------------------------------------


def test_limit_per_label_deterministic_in_dataset_order(eqp):
    a = load_queries("emotionquery_plus", limit=5, seed=0)
    assert Counter(q.emotion for q in a) == {label: 5 for label in LABELS}
    assert [q.index for q in a] == sorted(q.index for q in a)
    assert a == load_queries("emotionquery_plus", limit=5, seed=0)
    assert a != load_queries("emotionquery_plus", limit=5, seed=1)
    assert set(a) <= set(eqp)
    assert load_queries("emotionquery_plus", limit=1000) == eqp


def test_limit_of_a_label_does_not_depend_on_the_others():
    joy_only = load_queries("emotionquery", emotions=["joy"], limit=4, seed=7)
    all_five = load_queries("emotionquery", limit=4, seed=7)
    assert joy_only == [q for q in all_five if q.emotion == "joy"]


def test_emotions_filter():
    qs = load_queries("emotionquery_plus", emotions=["neutral", "fear"])
    assert Counter(q.emotion for q in qs) == {"neutral": 150, "fear": 50}
    with pytest.raises(DatasetError, match="no queries labelled"):
        load_queries("emotionquery", emotions=["neutral"])
    with pytest.raises(DatasetError, match="valid labels: anger, disgust, fear, joy, sadness, neutral"):
        load_queries("emotionquery", emotions=["happiness"])
    with pytest.raises(DatasetError, match="limit must be an int >= 1"):
        load_queries("emotionquery", limit=0)


def test_fingerprint():
    a = load_queries("emotionquery_plus", limit=3)
    fp = dataset_fingerprint(a)
    assert re.fullmatch(r"[0-9a-f]{64}", fp) and fp == dataset_fingerprint(list(a))
    assert dataset_fingerprint(a[::-1]) != fp
    changed = [Query(a[0].id, a[0].query + " ", a[0].emotion, a[0].topic, a[0].index), *a[1:]]
    assert dataset_fingerprint(changed) != fp


# -- bad input -------------------------------------------------------------------------------


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DatasetError, match="file not found: .*nope.jsonl"):
        load_queries(str(tmp_path / "nope.jsonl"))
    (tmp_path / "q.txt").write_text("hello\n")
    with pytest.raises(DatasetError, match="unsupported file type '.txt'"):
        load_queries(str(tmp_path / "q.txt"))
    with pytest.raises(DatasetError, match="single split 'train'"):
        load_queries("emotionquery", split="test")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="not a bundled dataset .* hub dataset failed"):
        load_queries("someone/no-such-emotion-dataset")


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "fine"}\n\n{"query": "broken",}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:3:20: malformed JSON"):
        load_queries(str(path))
    path.write_text('{"query": "fine"}\n["not", "an", "object"]\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: expected one JSON object per line, got list"):
        load_queries(str(path))
    path = tmp_path / "bad.json"
    path.write_text('{\n  "joy": ["a",\n  "b"\n}')
    with pytest.raises(DatasetError, match=r"bad.json:4:1: malformed JSON"):
        load_queries(str(path))
    path.write_text('{"joy": "not a list"}')
    with pytest.raises(DatasetError, match="unsupported JSON layout"):
        load_queries(str(path))


def test_missing_and_empty_queries_are_counted(tmp_path):
    rows = [{"query": "Real one?"}, {"text": "no query key"}, {"query": "   "}, {"query": None}, {"query": "Another?"}]
    path = _write(tmp_path, "q.jsonl", rows)
    with pytest.warns(DatasetWarning, match=r"skipped 3 of 5 records .*first at line 2, line 3, line 4"):
        qs = load_queries(str(path))
    assert [(q.query, q.index) for q in qs] == [("Real one?", 0), ("Another?", 4)]
    path = tmp_path / "empty.json"
    path.write_text('{"joy": ["", "  "]}')
    with pytest.warns(DatasetWarning, match="skipped 2 of 2"), pytest.raises(DatasetError, match="no usable queries"):
        load_queries(str(path))


def test_missing_query_column(tmp_path):
    path = _write(tmp_path, "q.csv", [{"text": "a", "emotion": "joy"}])
    with pytest.raises(DatasetError, match="no 'query' column \\(columns: emotion, text\\)"):
        load_queries(str(path))


def test_unknown_labels_and_duplicate_ids(tmp_path):
    rows = [{"query": "A?", "emotion": "joy"}, {"query": "B?", "emotion": "happy"}, {"query": "C?", "emotion": "happy"}]
    with pytest.raises(DatasetError, match=r"unknown emotion labels: 'happy' x2 \(first at line 2\)"):
        load_queries(str(_write(tmp_path, "q.jsonl", rows)))
    rows = [{"id": "x", "query": "A?"}, {"id": "x", "query": "B?"}]
    with pytest.raises(DatasetError, match="1 duplicate ids, e.g. \\['x'\\]"):
        load_queries(str(_write(tmp_path, "ids.jsonl", rows)))


def test_duplicate_queries(tmp_path):
    path = _write(tmp_path, "q.jsonl", [{"query": "Why is the sky blue?"}, {"query": "why is the SKY blue"},
                                        {"query": "How are clouds formed?"}])
    with pytest.warns(DatasetWarning, match=r"1 duplicate queries .*line 2 = line 1; kept"):
        assert len(load_queries(str(path))) == 3
    with pytest.warns(DatasetWarning, match="skipped the 1 later copies"):
        assert [q.index for q in load_queries(str(path), duplicates="drop")] == [0, 2]
    with pytest.raises(DatasetError, match="1 duplicate queries"):
        load_queries(str(path), duplicates="error")
