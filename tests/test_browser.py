"""The quickstart notebook in a real browser: JupyterLab from ``hpcai lab``, headless Chromium, the panel driven.

A copy of ``notebooks/`` is served by ``hpcai lab`` on 127.0.0.1 with a random token; Playwright opens
``00_quickstart.ipynb``, runs all cells, then in the control panel selects the digits application, mixed-bf16,
SGD and one-sided MPI windows (rma) on 2 engines, presses Run and waits for the results view to show a
figure (up to 180 s). Screenshots of the page and of the panel go to ``$HPCAI_ARTIFACTS`` (default
``test-artifacts/``). Afterwards the kernel and JupyterLab are stopped and every process they started --
kernel, ipyparallel controller and engines, ``mpiexec`` -- is checked by PID to be gone (killed, and the
test failed, if not). About 1-2 minutes on 2 cores. Skips when Playwright or Chromium is missing, unless
``HPCAI_REQUIRE_BROWSER=1`` (as in CI), where that is a failure.
"""
from pathlib import Path

import pytest

import browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_quickstart.ipynb"
CHOICES = {"app": "digits", "precision": "mixed-bf16", "optimizer": "sgd", "strategy": "rma"}
ENGINES = 2
RUN_TIMEOUT = 180  # s, from pressing Run to a figure in the results view


@pytest.fixture(scope="module")
def ready():
    browser.require_browser()
    if not (ROOT / "notebooks" / NOTEBOOK).is_file():
        pytest.fail(f"notebooks/{NOTEBOOK} is missing")


def test_quickstart_panel_runs_in_a_browser(ready, tmp_path):
    artifacts = browser.ARTIFACTS
    served = browser.copy_notebooks(ROOT / "notebooks", tmp_path / "notebooks")
    with browser.notebook_page(served, tmp_path / "lab", NOTEBOOK, "quickstart") as (page, lab):
        browser.run_all_cells(page)
        browser.wait_all_cells_ran(page, timeout=300)
        browser.wait_kernel_idle(page, timeout=120, lab=lab)
        panel = page.locator(".hpcai-panel")
        panel.wait_for(state="visible")
        assert "idle" in page.inner_text(".hpcai-status")
        assert not [e for e in browser.errors_in_outputs(page) if "Error" in e or "Traceback" in e]

        def shot(name, where):
            full = {"full_page": True} if where is page else {}
            where.screenshot(path=str(artifacts / f"quickstart-{name}.png"), **full)
        status = browser.run_panel(page, CHOICES, ENGINES, RUN_TIMEOUT, shot)
        assert status.startswith("done in"), status
        figure = page.locator(".hpcai-results img.hpcai-figure").first
        assert figure.is_visible() and page.locator(".hpcai-results .hpcai-metrics").is_visible()
        metrics = page.inner_text(".hpcai-results .hpcai-metrics")
        assert "test_accuracy" in metrics, metrics
        # the panel with its results is taller than the window: grow the window so one shot holds it
        height = int(panel.bounding_box()["height"])
        page.set_viewport_size({"width": 1400, "height": min(height + 400, 6000)})
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(artifacts / "quickstart-panel-done.png"))
        # the run history: the run just made, finished, with its settings
        page.locator(".hpcai-panel .jupyter-widget-Collapse-header", has_text="run history").click()
        history = page.locator(".hpcai-history")
        history.wait_for(state="visible")
        assert "finished" in history.inner_text() and "rma" in history.inner_text(), history.inner_text()
        history.screenshot(path=str(artifacts / "quickstart-history.png"))
