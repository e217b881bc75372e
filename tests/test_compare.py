"""``emoexp compare``: the cross-family table built from MLflow alone, checked cell by cell
against the metrics that were logged (the fake studies of test_tracking)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_tracking import METRICS, make_study

from emoexp.cli import main as cli
from emoexp.compare import compare_table
from emoexp.tracking import log_study, tracking_uri


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three model families over two experiments (studies) in one SQLite store."""
    root = tmp_path_factory.mktemp("cmp")
    uri = tracking_uri(root)
    studies = {}
    for exp, model, seed in (("paper", "tiny/a", 1), ("paper", "tiny/b", 2), ("paper2", "tiny/c", 3)):
        s = {**make_study(root, model, seed), "experiment": exp}
        log_study(**{**s, "ev_path": None}, uri=uri)
        studies[model] = s["aggregate"]
    return {"uri": uri, "aggregates": studies}


def _expected(agg: pd.DataFrame, column: str) -> float:
    """The logged mean behind a column name ``metric[target]@where``."""
    m = re.fullmatch(r"(\w+?)(?:\[(\w+)\])?@(.+)", column)
    assert m, column
    metric, target, where = m.groups()
    if metric == "p_target":  # each child's own target's probability (NaN where it was not scored)
        metric = f"p_{target}" if f"p_{target}" in agg else "missing"
        agg = agg.assign(missing=math.nan)
    if where == "unsteered":
        rows = agg[agg["condition"] == "unsteered"]
    elif where == "prompt":
        rows = agg[(agg["condition"] == "prompt") & (agg["target"] == target)]
    else:
        rows = agg[(agg["condition"] == "steered") & (agg["target"] == target) & (agg["alpha"] == float(where))]
    assert len(rows) == 1, column
    return float(rows[metric].iloc[0])


def test_cli_table_every_cell_matches_the_logged_metrics(logged: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli(["compare", "--experiment", "paper", "--experiment", "paper2", "--uri", logged["uri"],
              "--out", str(tmp_path)])
    assert rc == 0
    table = pd.read_csv(tmp_path / "compare.csv", index_col="model")
    assert list(table.index) == ["tiny/a", "tiny/b", "tiny/c"]
    # per metric (and the children's p_target): unsteered + per target (prompt + 3 alphas), targets bracketed
    assert len(table.columns) == (len(METRICS) + 1) * (1 + 2 * 4)
    assert list(table.columns[:5]) == ["intensity@unsteered", "intensity[anger]@prompt", "intensity[anger]@0",
                                       "intensity[anger]@1", "intensity[anger]@2"]
    md = (tmp_path / "compare.md").read_text()
    for model, row in table.iterrows():
        for col, value in row.items():
            want = _expected(logged["aggregates"][model], col)
            if math.isnan(want):
                assert math.isnan(value), (model, col)
                continue
            assert value == pytest.approx(want, abs=1e-12), (model, col)
            assert f"{want:.3f}" in md
    assert {f"compare_{m}.png" for m in METRICS} <= {p.name for p in tmp_path.iterdir()}
    out = capsys.readouterr().out
    assert "### P(target emotion) by α" in out
    assert "gain" not in out.split("### P(target")[0]  # these fake studies logged no gains: no gain section
    # the terminal table: one row per (model, target), columns unsteered, prompt and each alpha
    line = next(x for x in out.splitlines() if x.startswith("| tiny/c ") and "| joy " in x)
    agg = logged["aggregates"]["tiny/c"]
    cells = [float(c) for c in line.strip("| ").split("|")[2:]]
    want = [_expected(agg, c) for c in ("p_joy@unsteered", "p_joy[joy]@prompt", "p_joy[joy]@0", "p_joy[joy]@1",
                                        "p_joy[joy]@2")]
    assert cells == pytest.approx(want, abs=6e-4)
    assert max(len(x) for x in out.splitlines()) < 120  # readable in a terminal


def test_one_target_and_metric_subset(logged: dict[str, Any]) -> None:
    table = compare_table(["paper"], metrics=["p_joy"], target="joy", uri=logged["uri"])
    assert list(table.columns) == ["p_joy@unsteered", "p_joy@prompt", "p_joy@0", "p_joy@1", "p_joy@2"]
    for model, row in table.iterrows():
        for col, value in row.items():
            assert value == _expected(logged["aggregates"][model], col.replace("@", "[joy]@", 1)
                                      if col != "p_joy@unsteered" else col)


def test_baseline_conditions(logged: dict[str, Any]) -> None:
    unsteered = compare_table("paper", metrics=["topic"], condition="unsteered", uri=logged["uri"])
    assert list(unsteered.columns) == ["topic@unsteered"]
    prompt = compare_table("paper", metrics=["topic"], condition="prompt", uri=logged["uri"])
    assert list(prompt.columns) == ["topic@unsteered", "topic[anger]@prompt", "topic[joy]@prompt"]
    for model, row in prompt.iterrows():
        assert [_expected(logged["aggregates"][model], c) for c in prompt.columns] == row.tolist()


def test_bad_requests_are_reported(logged: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli(["compare", "--experiment", "nope", "--uri", logged["uri"]]) == 2
    assert "no MLflow experiment named 'nope' in" in capsys.readouterr().err
    assert cli(["compare", "--experiment", "paper", "--metrics", "bleu", "--uri", logged["uri"]]) == 2
    assert "unknown metric(s) bleu; logged: intensity, p_joy, p_target, topic" in capsys.readouterr().err
    assert cli(["compare", "--experiment", "paper", "--uri", tracking_uri(tmp_path)]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()  # a read-only command creates nothing


def _long(rows: list[tuple]) -> pd.DataFrame:
    """Child rows ``(model, condition, target, alpha, dose, gain, lo, hi, topic_ratio, rep_ratio)``."""
    cols = ["model", "condition", "target", "alpha", "dose", "gain", "gain_ci_low", "gain_ci_high", "topic_ratio",
            "repetition_ratio"]
    long = pd.DataFrame(rows, columns=cols)
    return long.assign(parent_run_id=long["model"], config_hash=long["model"], experiment="fam", n=30)


FAMILY_ROWS = [
    # family A: α=2 has the largest gain but wrecks the topic, so α=1 is its best
    ("A", "steered", "joy", 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0),
    ("A", "steered", "joy", 1.0, 0.10, 0.40, 0.30, 0.50, 0.9, 1.0),
    ("A", "steered", "joy", 2.0, 0.20, 0.60, 0.50, 0.70, 0.5, 1.0),
    ("A", "prompt", "joy", None, None, 0.20, 0.10, 0.30, 0.95, 1.1),
    # family B: weaker per unit of dose; its best (α=4) overlaps A's CI for nothing
    ("B", "steered", "joy", 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0),
    ("B", "steered", "joy", 2.0, 0.05, 0.05, -0.05, 0.15, 1.0, 1.0),
    ("B", "steered", "joy", 4.0, 0.20, 0.15, 0.05, 0.25, 0.85, 1.2),
    ("B", "prompt", "joy", None, None, 0.30, 0.20, 0.40, 0.9, 1.0),
]


def test_families_best_respects_limits_and_differences_use_the_cis() -> None:
    from emoexp import families

    rows = families.gains(_long(FAMILY_ROWS))
    b = families.best(rows).set_index("model")
    assert b.loc["A", "alpha"] == 1.0 and b.loc["A", "gain"] == 0.40  # α=2 is off-topic (0.5×)
    assert b.loc["B", "alpha"] == 4.0 and b.loc["B", "within_limits"]
    assert b.loc["A", "prompt_gain"] == 0.20 and b.loc["B", "prompt_gain"] == 0.30
    d = families.differences(b.reset_index())
    assert len(d) == 1 and d["beyond CIs"].iloc[0] and d["difference"].iloc[0] == pytest.approx(0.25)
    # overlapping CIs are not a difference
    close = b.reset_index().assign(gain_ci_low=[0.1, 0.1], gain_ci_high=[0.5, 0.5])
    assert not families.differences(close)["beyond CIs"].iloc[0]


def test_families_gain_at_equal_dose_interpolates_and_stops_at_the_data() -> None:
    from emoexp import families

    at = families.at_dose(families.gains(_long(FAMILY_ROWS)), [0.05, 0.15, 0.3]).set_index(["model", "dose"])
    assert at.loc[("A", 0.05), "gain"] == pytest.approx(0.20)  # halfway to α=1 (dose 0.1, gain 0.4)
    assert at.loc[("A", 0.15), "gain"] == pytest.approx(0.50)
    assert at.loc[("B", 0.05), "gain"] == pytest.approx(0.05)
    assert at.loc[("B", 0.15), "gain_ci_low"] == pytest.approx(-0.05 + (0.05 + 0.05) * (0.10 / 0.15))
    assert at["gain"].loc[[("A", 0.3), ("B", 0.3)]].isna().all()  # beyond the largest dose measured


def test_compare_prints_gain_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emoexp.compare import gain_sections

    parts, frames = gain_sections(_long(FAMILY_ROWS), doses=[0.05])
    text = "\n".join(parts)
    assert "| joy      | A       |   1.000 |  0.100 | +0.400 [+0.30, +0.50] | +0.200 [+0.10, +0.30]" in text
    assert "1 of 1 target comparisons differ beyond the CIs: joy (A +0.25 vs B)" in text
    assert set(frames) == {"gains", "best", "differences", "at_dose"}
