"""emoexp.score(): one row per response, bad input kept and explained, backends recorded;
aggregate(): seeded bootstrap intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import emoexp
from emoexp.eval import Backends, aggregate, bootstrap_ci, resolve_target, score, to_markdown

TINY = {"perplexity": "tiny-random-llama"}
P_COLS = ["p_anger", "p_disgust", "p_fear", "p_joy", "p_sadness", "p_neutral"]


def test_score_columns_rows_and_provenance():
    responses = ["I'm so happy, what a wonderful surprise!", "The train leaves at 9 from platform 2."]
    df = emoexp.score(responses, ["How was your day?", "When does the train leave?"], ["joy", None], backend=TINY)
    assert len(df) == 2 and list(df.index) == [0, 1]
    expected = [*P_COLS, "intensity", "tec", "tec_top", "topic", "perplexity", "repetition", "distinct_1",
                "distinct_2"]
    assert list(df.columns[:len(expected)]) == expected
    assert df.loc[0, "p_joy"] > 0.5 and df.loc[0, "tec"] == df.loc[0, "p_joy"] and df.loc[0, "tec_top"] == 1.0
    assert math.isnan(df.loc[1, "tec"])  # no target
    assert df.loc[0, "intensity"] > df.loc[1, "intensity"]
    assert (df["eps_backend"] == "minilm-smollm2:sentence-transformers/all-MiniLM-L6-v2").all()
    assert (df["perplexity_backend"] == "causal-lm:tiny-random-llama").all()
    eps = df.attrs["backends"]["eps"]
    assert eps["l2"] > 0 and eps["held_out"] == ["qwen2.5"] and eps["fingerprint"].startswith("minilm-smollm2@")
    assert eps["n_train"] > 720  # the written replies and the labelled real text
    assert eps["probe"]["model"] == "smollm2"  # the default reads the text with SmolLM2 too
    old = emoexp.score(responses, metrics=["eps"], backend={"eps": "minilm-zeroshot"})  # the old scorer, selectable
    assert old.attrs["backends"]["eps"]["templates"] == ["This text expresses {}."]
    assert df["issues"].tolist() == ["", ""] and df["truncated"].tolist() == ["", ""]


def test_bad_responses_keep_their_rows_with_a_reason():
    df = score(["Great!", "", "   ", None, 42], metrics=["repetition", "eps"])
    assert len(df) == 5
    assert df["intensity"].notna().tolist() == [True, False, False, False, False]
    assert df["issues"].tolist() == ["", "empty response", "empty response", "response is NoneType, not text",
                                     "response is int, not text"]


def test_mismatched_lengths_and_wrong_types_are_errors():
    with pytest.raises(ValueError, match="2 queries for 3 responses"):
        score(["a", "b", "c"], ["q1", "q2"], metrics=["topic"])
    with pytest.raises(ValueError, match="1 targets for 2 responses"):
        score(["a", "b"], targets=["joy"], metrics=["tec"])
    with pytest.raises(TypeError, match="list of texts"):
        score("just one string", metrics=["repetition"])


def test_metric_selection():
    df = score(["so so so so so"], metrics=["repetition"])
    assert "repetition" in df and "p_joy" not in df and "perplexity" not in df
    df = score(["Yay!"], targets=["joy"], metrics=["tec"])  # tec brings the EPS columns it is made of
    assert {"tec", "p_joy", "intensity"} <= set(df.columns)
    with pytest.raises(ValueError, match="needs queries"):
        score(["a"], metrics=["topic"])
    with pytest.raises(ValueError, match="needs targets"):
        score(["a"], metrics=["tec"])
    with pytest.raises(ValueError, match="no offline stand-in"):
        score(["a"], metrics=["eas"])
    with pytest.raises(ValueError, match="unknown metric"):
        score(["a"], metrics=["bleu"])
    df = score(["a b c"], ["q"], metrics=["topic_consistency"])  # alias
    assert "topic" in df


def test_missing_query_is_explained():
    df = score(["Bake it at 230 degrees.", "Bake it."], ["How do I bake bread?", None], metrics=["topic"])
    assert df["topic"].notna().tolist() == [True, False]
    assert df.loc[1, "issues"] == "topic: query missing or not text"


def test_truncation_is_counted_and_warned():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        df = score(["short text", "a long text " * 20], metrics=["perplexity"],
                   backend={"perplexity": "tiny-random-llama", "max_length": 8})
    assert df["truncated"].tolist() == ["", "perplexity"]
    assert df.attrs["truncated"]["perplexity"] == 1
    assert any("1 of 2 texts" in str(x.message) for x in w)
    assert df["perplexity"].notna().all()


@pytest.mark.parametrize("target, expected", [
    ("joy", ("joy", None)),
    (None, (None, None)),
    ("base", (None, None)),
    ({"joy": 1.0, "anger": -1.0}, ("joy", None)),
    ({"anger": 0.5, "fear": 2.0}, ("fear", None)),
    ({"anger": -1.0}, (None, "target mix has no positive emotion weight")),
    ("joy+anger", (None, "target mix ties ['joy', 'anger']")),
])
def test_resolve_target(target, expected):
    assert resolve_target(target) == expected


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="unknown target"):
        resolve_target("joyy")
    with pytest.raises(ValueError, match="unknown target"):
        score(["hi"], targets=["joyy"], metrics=["tec"])


def test_mixed_targets_use_the_largest_positive_weight():
    df = score(["I'm so happy!", "I'm so happy!"], targets=[{"joy": 1.0, "anger": -1.0}, {"anger": 1.0, "joy": 0.5}],
               metrics=["tec"])
    assert df.loc[0, "tec"] == pytest.approx(df.loc[0, "p_joy"])
    assert df.loc[1, "tec"] == pytest.approx(df.loc[1, "p_anger"]) and df.loc[1, "tec_top"] == 0.0


def test_backends_resolve():
    assert Backends.resolve(None) == Backends()
    paper = Backends.resolve("paper")
    assert (paper.eps, paper.topic, paper.eas) == ("nli:facebook/bart-large-mnli", "judge", "judge")
    assert Backends.resolve({"preset": "paper", "eas": None}).eas is None
    with pytest.raises(ValueError, match="unknown backend settings"):
        Backends.resolve({"epss": "minilm"})
    with pytest.raises(ValueError, match="unknown backend preset"):
        Backends.resolve("cloud")


def test_bootstrap_ci_contains_mean_and_is_seeded():
    x = np.random.default_rng(1).normal(size=200)
    m, lo, hi = bootstrap_ci(x, rng=np.random.default_rng(0))
    assert lo < m < hi and hi - lo < 0.5
    assert bootstrap_ci(x, rng=np.random.default_rng(0)) == (m, lo, hi)
    assert bootstrap_ci(np.array([np.nan, 2.0])) == (2.0, 2.0, 2.0)
    from scipy.stats import bootstrap  # the interval is scipy's percentile bootstrap of the mean

    ref = bootstrap((x,), np.mean, n_resamples=1000, method="percentile", random_state=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([np.nan])))


def test_aggregate_groups_counts_and_seed():
    df = pd.DataFrame({"model": ["m"] * 6, "alpha": [0, 0, 0, 2, 2, None],
                       "intensity": [0.1, 0.2, np.nan, 0.8, 0.9, 0.5], "topic": [0.5] * 6})
    agg = aggregate(df, by=["model", "alpha", "absent"], n_boot=200, seed=3)
    assert agg.attrs["by"] == ["model", "alpha"]
    assert agg["n"].tolist() == [3, 2, 1] and agg["intensity_n"].tolist() == [2, 2, 1]
    assert agg["intensity"].iloc[:2].tolist() == pytest.approx([0.15, 0.85])
    assert (agg["intensity_ci_low"] <= agg["intensity"]).all() and (agg["intensity"] <= agg["intensity_ci_high"]).all()
    assert aggregate(df, by=["alpha"], n_boot=200, seed=3).equals(aggregate(df, by=["alpha"], n_boot=200, seed=3))
    md = to_markdown(agg, ["intensity"])
    assert [c.strip() for c in md.splitlines()[0].strip("|").split("|")] == ["model", "alpha", "n", "intensity"]
    assert "0.150 [0.100, 0.200]" in md
