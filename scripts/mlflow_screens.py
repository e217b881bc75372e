"""Screenshots of this project's MLflow store, as docs/mlflow.md shows them: an experiment's runs
table, and the chart view at one emotion's α curves (every parent of the experiment overlaid).

It starts `mlflow server` on loopback over ./mlruns (the store `emoexp run` writes by default),
opens the pages in Debian's headless Chromium (`bash scripts/install.sh --browser`) exactly as
the links emoexp prints, and writes PNG files.

Run (after the README's two default jobs): .venv/bin/python scripts/mlflow_screens.py --experiment emoexp-default --emotion joy --out docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser driver and the server of the UI test

from browser import chromium, wait_for
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from emoexp.tracking.client import ui_url

NO_ASSISTANT = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
#: How many runs the table lists (parents, and children once unfolded).
ROWS_JS = "return document.querySelectorAll('.ag-root a[href*=\"/runs/\"]').length"
#: Unfold the oldest parent (the main job, where the README's runs are) to show its children.
UNFOLD_JS = """
const buttons = [...document.querySelectorAll('.ag-row button[data-component-id*="runnamecellrenderer"]')];
if (!buttons.length) return 0;
buttons[buttons.length - 1].click();
return buttons.length;
"""
SECTION_JS = """
const head = [...document.querySelectorAll('body *')].find(e => e.childElementCount === 0 && e.textContent === arguments[0]);
if (!head) return false;
head.scrollIntoView({block: 'start'});
return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length > 0;
"""


def _widen_names(driver: object, px: int) -> None:
    """Drag the right edge of the table's Run Name header by ``px`` pixels (the UI's own resize)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    handle = driver.find_element(By.CSS_SELECTOR, '.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize')
    ActionChains(driver).click_and_hold(handle).move_by_offset(px, 0).release().perform()


def _pointer_to_corner(driver: object) -> None:
    """Move the mouse to the page's top-left corner (the logo), off every chart."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    size = body.size
    ActionChains(driver).move_to_element_with_offset(body, -size["width"] // 2 + 5, -size["height"] // 2 + 5).perform()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="emoexp-default")
    ap.add_argument("--emotion", default="joy", help="the chart section to show")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--size", default="1600x1000")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(x) for x in a.size.split("x"))
    server = MlflowServer(Path.cwd())
    try:
        exp = MlflowClient(server.url).get_experiment_by_name(a.experiment)
        if exp is None:
            raise SystemExit(f"mlflow_screens: no experiment {a.experiment!r} in ./mlruns")
        runs = ui_url(server.url, exp.experiment_id)
        with chromium((w, h), init_script=NO_ASSISTANT) as d:
            d.get(runs)
            parents = wait_for(d, lambda d: d.execute_script(ROWS_JS), "the runs table's rows", ok=bool, timeout=60)
            _widen_names(d, 200)  # names legible, not cut at 190 px
            d.execute_script(UNFOLD_JS)
            wait_for(d, lambda d: d.execute_script(ROWS_JS), "a parent's children", ok=lambda n: n > parents, timeout=60)
            d.execute_script("return new Promise(r => setTimeout(r, 1000))")
            d.save_screenshot(str(out / f"mlflow-runs-{a.experiment}.png"))
            d.get(runs + "&compareRunsMode=CHART")
            wait_for(d, lambda d: d.execute_script(SECTION_JS, a.emotion), f"the {a.emotion} charts", timeout=60)
            _pointer_to_corner(d)  # no hover toolbars over the charts
            d.execute_script("return new Promise(r => setTimeout(r, 1500))")  # let plotly finish drawing
            d.save_screenshot(str(out / f"mlflow-{a.emotion}-curves-{a.experiment}.png"))
        print(f"wrote {out}/mlflow-runs-{a.experiment}.png and mlflow-{a.emotion}-curves-{a.experiment}.png "
              f"(pages: {runs})")
    finally:
        server.stop()
        server.log.close()
        Path("server.log").unlink(missing_ok=True)  # the server's own log, written beside ./mlruns


if __name__ == "__main__":
    main()
