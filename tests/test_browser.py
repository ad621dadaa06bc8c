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
import os
from pathlib import Path

import pytest

import browser
from browser import procs  # None without psutil: then the `ready` fixture skips

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_quickstart.ipynb"
CHOICES = {"app": "digits", "precision": "mixed-bf16", "optimizer": "sgd", "strategy": "rma"}
ENGINES = 2
RUN_TIMEOUT = 180  # s, from pressing Run to a figure in the results view


@pytest.fixture(scope="module")
def ready():
    why = browser.missing_browser()
    if why:
        if os.environ.get("HPCAI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HPCAI_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    if not (ROOT / "notebooks" / NOTEBOOK).is_file():
        pytest.fail(f"notebooks/{NOTEBOOK} is missing")


def test_quickstart_panel_runs_in_a_browser(ready, tmp_path):
    from playwright.sync_api import sync_playwright
    artifacts = browser.ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    served = browser.copy_notebooks(ROOT / "notebooks", tmp_path / "notebooks")
    lab = browser.Lab(served, tmp_path / "lab")
    page, left = None, []
    try:
        with sync_playwright() as p:
            chrome = browser.chromium(p)
            try:
                page = chrome.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(lab.url(NOTEBOOK), wait_until="domcontentloaded")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                browser.accept_kernel_dialog(page)
                browser.wait_kernel_idle(page, timeout=90, lab=lab)

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
            except BaseException:
                if page is not None:
                    page.screenshot(path=str(artifacts / "quickstart-failure.png"), full_page=True)
                (artifacts / "quickstart-lab.log").write_text(lab.log())
                raise
            finally:
                chrome.close()
    finally:
        code = lab.stop()
        left = procs.collect(lab.leftovers)  # waits up to 15 s, then kills what is left
    assert not left, f"processes left behind after JupyterLab stopped (killed now): {left}"
    assert code == 0, f"hpcai lab exited with {code}:\n{lab.log()[-3000:]}"
