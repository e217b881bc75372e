"""What a person sees in the MLflow 3.17 UI after two tiny real ``emoexp run`` jobs (the main job's
grid, one centred) logged over HTTP to a real ``mlflow server``, in Debian's headless Chromium:

- the link emoexp prints opens the experiment on its runs table (``workflowType=machine_learning``,
  see ``experiment_url``);
- both parent runs are listed under their own names (the children stay folded under them);
- the chart view draws ``joy/p_target_by_alpha_x100`` as one 5-point line per parent, α<0 included.

Skips only when /usr/bin/chromium is absent. EMOEXP_UI_SHOTS=<dir> keeps a screenshot of the charts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, chromium, wait_for
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: bash scripts/install.sh --browser")]

ARGS = ["run", "--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "2", "--max_new_tokens", "5",
        "--batch_size", "8", "--experiment", "ui-check"]
STEPS = [-100, 0, 100, 200, 400]  # step = 100·α for the main job's grid α = -1, 0, 1, 2, 4
CHART = "joy/p_target_by_alpha_x100"
# Keep the MLflow Assistant side panel from opening over the charts on a fresh profile.
NO_ASSISTANT = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def _job(root: Path, uri: str, *extra: str) -> str:
    """One tiny ``emoexp run`` logging to the server at ``uri``; returns its output (with the UI link)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-m", "emoexp", *ARGS, *extra], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two tiny real runs (the main job's grid; one centred) logged over HTTP to a fresh ``mlflow
    server``, and one Chromium."""
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the server's store is the fresh one in tmp
        server = MlflowServer(root / "store")
    try:
        logs = [_job(root, server.url, "--out_dir", "plain"), _job(root, server.url, "--out_dir", "centred",
                                                                     "--generate.centre", "true")]
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("ui-check")
        parents = client.search_runs([exp.experiment_id], "tags.`emoexp.kind` = 'parent'")
        with chromium((1400, 1000), init_script=NO_ASSISTANT) as driver:
            yield {"server": server.url, "exp": exp, "driver": driver, "logs": logs,
                   "names": sorted(p.info.run_name for p in parents)}
    finally:
        server.stop()


def test_the_experiment_has_its_kind_and_distinct_parent_names(ui: dict[str, Any]) -> None:
    assert ui["exp"].tags["mlflow.experimentKind"] == "custom_model_development"
    plain, centred = sorted(ui["names"], key=len)
    assert plain.startswith("tiny-random-llama · batch_size 8 · max_new_tokens 5 · limit 2 · ")
    assert centred.startswith("tiny-random-llama · batch_size 8 · max_new_tokens 5 · limit 2 · centre · ")


def experiment_url(server: str, exp_id: str, page: str = "", **query: str) -> str:
    """The experiment's ``page`` ("" lets MLflow pick, "/runs") in "Model training" mode.

    MLflow 3.17 ignores the mlflow.experimentKind tag when routing: a bare ``#/experiments/<id>``
    opens the GenAI Overview unless the URL (or localStorage, set by the header's GenAI / Model
    training switch) says machine_learning; emoexp prints and documents links that do."""
    query = {"workflowType": "machine_learning", **query}
    return f"{server}/#/experiments/{exp_id}{page}?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_the_link_emoexp_prints_opens_on_the_runs_table(ui: dict[str, Any]) -> None:
    exp_id, driver = ui["exp"].experiment_id, ui["driver"]
    link = re.search(r"UI: (\S+)", ui["logs"][0]).group(1)
    assert link == experiment_url(ui["server"], exp_id, "/runs")
    driver.get(link)
    wait_for(driver, lambda d: d.execute_script(
        "return location.hash.split('?')[0] === '#/experiments/' + arguments[0] + '/runs'"
        " && !!document.querySelector('.ag-root [role=row] a[href*=\"/runs/\"]')", exp_id),
        "the runs table (URL #/experiments/<id>/runs with run rows), not the GenAI Overview", timeout=30)


def test_parents_listed_by_name(ui: dict[str, Any]) -> None:
    exp_id, driver = ui["exp"].experiment_id, ui["driver"]
    driver.get(experiment_url(ui["server"], exp_id))
    names = wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.ag-root a[href*=\"/runs/\"]')]"
        ".filter(a => a.offsetParent !== null).map(a => a.textContent)"),
        "both parent names in the runs table", ok=lambda got: set(ui["names"]) <= set(got))
    assert sorted(names) == ui["names"]  # the children are folded under their parents
    n_runs = 2 * (1 + 31)  # each parent: 31 children (unsteered, 5 prompt, 5 targets x 5 α)
    wait_for(driver, lambda d: d.execute_script("return document.body.innerText"), f"'{n_runs} matching runs'",
             ok=lambda text: f"{n_runs} matching runs" in text, timeout=10)


# The chart card titled arguments[0]: its marker traces (plotly's own data) and the points drawn per SVG trace.
CHART_JS = """
const card = [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
  .find(c => [...c.querySelectorAll('h4')].some(h => h.textContent === arguments[0]));
if (!card) {  // charts render as they scroll into view: bring the chart's section there
  const section = arguments[0].split('/')[0];
  const head = [...document.querySelectorAll('body *')].find(e => e.childElementCount === 0 && e.textContent === section);
  if (head) head.scrollIntoView({block: 'start'});
  return null;
}
card.scrollIntoView({block: 'center'});
const plot = card.querySelector('.js-plotly-plot');
return {
  traces: ((plot && plot.data) || []).filter(t => (t.mode || '').includes('markers'))
    .map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)})),
  drawn: plot ? [...plot.querySelectorAll('.scatterlayer .trace')]
    .map(g => g.querySelectorAll('path.point').length).filter(n => n > 0) : [],
};
"""


def test_alpha_curves_charted_per_parent(ui: dict[str, Any]) -> None:
    exp_id, driver = ui["exp"].experiment_id, ui["driver"]
    driver.get(experiment_url(ui["server"], exp_id, "/runs", compareRunsMode="CHART"))
    chart = wait_for(driver, lambda d: d.execute_script(CHART_JS, CHART), f"chart {CHART} with one 5-point line per parent",
                     ok=lambda c: bool(c) and len(c["drawn"]) == 2 and all(n == len(STEPS) for n in c["drawn"]),
                     timeout=60)
    if shots := os.environ.get("EMOEXP_UI_SHOTS"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(shots) / "mlflow-charts.png"))
    lines = {t["name"]: t for t in chart["traces"]}
    assert sorted(lines) == ui["names"], chart["traces"]
    client = MlflowClient(ui["server"])
    for p in client.search_runs([exp_id], "tags.`emoexp.kind` = 'parent'"):
        logged = sorted(client.get_metric_history(p.info.run_id, CHART), key=lambda m: m.step)
        assert lines[p.info.run_name]["x"] == [m.step for m in logged] == STEPS  # negative α drawn too
        assert lines[p.info.run_name]["y"] == pytest.approx([m.value for m in logged])
