"""``emoexp evaluate`` over our JSONL and the authors' results layout."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from emoexp.cli import main as cli
from emoexp.recipes.evaluate import read_jsonl, read_official, strip_special

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "official"


def gen_row(**kw) -> dict:
    row = {"id": "q1", "index": 0, "query": "How was your weekend?", "query_emotion": "joy", "condition": "unsteered",
           "target": None, "weights": None, "alpha": None, "site": None, "model": "tiny-random-llama",
           "response": "It was fine, I read a book.", "n_tokens": 8}
    return {**row, **kw}


@pytest.fixture
def jsonl(tmp_path) -> Path:
    rows = [
        gen_row(),
        gen_row(condition="steered", target="joy", weights={"joy": 1.0}, alpha=2.0, site="residual",
                response="Amazing!! I was so happy, best weekend ever!"),
        gen_row(condition="steered", target="joy+anger", weights={"joy": 1.0, "anger": 0.5}, alpha=2.0,
                site="residual", response="I was happy but also so angry!"),
        gen_row(index=1, id="q2", condition="steered", target="joy", weights={"joy": 1.0}, alpha=2.0, response=""),
    ]
    p = tmp_path / "gen.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return p


def test_evaluate_jsonl_writes_rows_aggregates_and_meta(jsonl, tmp_path):
    out = tmp_path / "out" / "scores.jsonl"
    rc = cli(["evaluate", str(jsonl), "--out", str(out), "--ppl_model", "tiny-random-llama", "--n_boot", "50",
              "--progress", "false"])
    assert rc == 0
    df = pd.read_json(out, lines=True)
    assert len(df) == 4 and df["response"].tolist()[1].startswith("Amazing")
    assert df.loc[1, "tec"] == pytest.approx(df.loc[1, "p_joy"])
    assert df.loc[2, "tec"] == pytest.approx(df.loc[2, "p_joy"])  # the mix's weights pick joy
    assert df.loc[3, "issues"] == "empty response" and pd.isna(df.loc[3, "intensity"])
    assert df["topic"].notna().sum() == 3 and (df["perplexity_backend"].iloc[:3] == "causal-lm:tiny-random-llama").all()
    agg = pd.read_csv(tmp_path / "out" / "scores.aggregate.csv")
    assert {"model", "condition", "target", "alpha", "n", "intensity", "intensity_ci_low", "intensity_ci_high"} <= set(agg)
    assert len(agg) == 3
    md = (tmp_path / "out" / "scores.aggregate.md").read_text()
    assert "minilm-smollm2 (sentence-transformers/all-MiniLM-L6-v2)" in md and " [" in md
    meta = json.loads((tmp_path / "out" / "scores.meta.json").read_text())
    assert meta["rows"] == 4 and meta["error"] is None and meta["rows_with_issues"] == 1
    assert meta["backends"]["perplexity"]["model"] == "tiny-random-llama"


def test_evaluate_csv_output_and_metric_subset(jsonl, tmp_path):
    out = tmp_path / "scores.csv"
    assert cli(["evaluate", str(jsonl), "--out", str(out), "--metrics", "repetition", "--progress", "false",
                "--n_boot", "20"]) == 0
    df = pd.read_csv(out)
    assert "repetition" in df and "p_joy" not in df and len(df) == 4


def test_bad_jsonl_line_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(gen_row()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_jsonl(p)
    p.write_text(json.dumps({"query": "q"}) + "\n")
    with pytest.raises(ValueError, match="needs a 'response' field"):
        read_jsonl(p)


def make_official(root: Path, n: int = 3) -> Path:
    """A small copy of the authors' layout: results/{base,emotion} and dataset/EmotionQuery+."""
    (root / "dataset" / "EmotionQuery+").mkdir(parents=True)
    (root / "dataset" / "EmotionQuery+" / "EmotionQuery+.json").write_text(json.dumps([f"query {i}?" for i in range(n)]))
    for alpha in ("0", "2"):
        d = root / "results" / "base" / "fam"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{alpha}.json").write_text(json.dumps([f"<bos>answer {i} at {alpha}<end_of_turn>\n<eos>" for i in range(n)]))
    e = root / "results" / "emotion" / "Fam" / "2"
    e.mkdir(parents=True)
    (e / "joy.json").write_text(json.dumps(["So happy!!"] * (n - 1) + ["<bos><end_of_turn>\n<eos>"]))
    return root


def test_read_official_layout(tmp_path):
    rows = read_official(make_official(tmp_path) / "results")
    assert len(rows) == 9
    base0 = [r for r in rows if r["target"] == "base" and r["alpha"] == 0.0]
    assert base0[1]["response"] == "answer 1 at 0" and base0[1]["special_tokens_stripped"] == 3
    assert base0[1]["query"] == "query 1?" and base0[1]["condition"] == "unsteered" and base0[1]["model"] == "fam"
    joy = [r for r in rows if r["target"] == "joy"]
    assert [r["condition"] for r in joy] == ["steered"] * 3 and joy[2]["response"] == ""
    assert read_official(tmp_path) == rows  # the data folder itself works too


def test_read_official_rejects_misaligned_and_foreign_files(tmp_path):
    root = make_official(tmp_path)
    (root / "results" / "base" / "fam" / "4.json").write_text(json.dumps(["only one"]))
    with pytest.raises(ValueError, match="1 answers for 3 queries"):
        read_official(root / "results")
    (root / "results" / "base" / "fam" / "4.json").unlink()
    (root / "results" / "stray.json").write_text("[]")
    with pytest.raises(ValueError, match="not in the authors' layout"):
        read_official(root / "results")


def test_strip_special_keeps_html():
    assert strip_special("<bos>Hi <b>there</b><|im_end|><eos>") == ("Hi <b>there</b>", 3)
    assert strip_special(None) == (None, 0)


def test_evaluate_official_layout_cli(tmp_path):
    root = make_official(tmp_path / "data")
    out = tmp_path / "o" / "s.jsonl"
    assert cli(["evaluate", str(root / "results"), "--out", str(out), "--metrics", "eps,tec,topic,repetition",
                "--by", "model,target,alpha", "--progress", "false", "--n_boot", "20"]) == 0
    df = pd.read_json(out, lines=True)
    assert len(df) == 9 and df["tec"].notna().sum() == 2  # joy rows with text; base has no single target
    agg = pd.read_csv(tmp_path / "o" / "s.aggregate.csv")
    assert sorted(agg["target"].unique()) == ["base", "joy"]


def test_unreachable_judge_keeps_finished_scores(jsonl, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("EMOEXP_JUDGE_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("EMOEXP_JUDGE_MODEL", "judge")
    monkeypatch.setenv("EMOEXP_JUDGE_API_KEY", "sk-SECRET-KEY-42")
    out = tmp_path / "scores.jsonl"
    rc = cli(["evaluate", str(jsonl), "--out", str(out), "--metrics", "repetition,eas", "--eas", "judge",
              "--judge_retries", "0", "--judge_timeout", "1", "--progress", "false", "--n_boot", "20"])
    assert rc == 1
    df = pd.read_json(out, lines=True)
    assert df["repetition"].notna().sum() == 3 and df["eas_joy"].isna().all()
    assert df["issues"].str.contains("judge failed").sum() == 3
    meta = json.loads((tmp_path / "scores.meta.json").read_text())
    assert "unreachable" in meta["error"]
    for f in tmp_path.iterdir():
        if f.is_file():
            assert "sk-SECRET-KEY-42" not in f.read_text()


@pytest.mark.skipif(not (OFFICIAL / "results").is_dir(), reason="the authors' data is not here")
def test_real_official_layout_aligns_with_emotionquery():
    rows = read_official(OFFICIAL / "results")
    assert len(rows) == 16_000
    by_emotion = json.loads((OFFICIAL / "dataset" / "EmotionQuery" / "EmotionQuery.json").read_text())
    label = {q: e for e, qs in by_emotion.items() for q in qs}
    first = [r for r in rows if r["source"].endswith("qwen2.5/0.json")]
    agree = sum(label.get(r["query"], "neutral") == r["query_emotion"] for r in first)
    assert agree >= 399  # one anger query was reworded between the two files
    assert not any("<bos>" in r["response"] or "<end_of_turn>" in r["response"] for r in rows)


def test_bad_input_exits_2_with_a_message(jsonl, tmp_path, capsys):
    p = tmp_path / "no_targets.jsonl"
    p.write_text(json.dumps(gen_row()) + "\n")
    assert cli(["evaluate", str(p), "--out", str(tmp_path / "x.jsonl"), "--metrics", "tec", "--progress", "false"]) == 2
    assert "needs targets" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.jsonl")]) == 2
