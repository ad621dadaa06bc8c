"""The control panel's guards in a real browser: choices it cannot run, the engines box, Stop after the finish.

A one-cell notebook shows a Panel (digits, in the kernel itself: no engines, so the test takes about a minute
on 2 cores); ``hpcai lab`` serves it and headless Chromium drives it, as in tests/test_browser.py:

* with adam the asynchronous strategies are not offered, and hovering the dropdown says why; with SGD and
  rma, mixed-fp16 is not offered either, for its loss scaling;
* the engines box refuses "2.5", "1e2", "5000" and "-3" with a message naming the box and the range;
* Stop pressed when every rank has finished (the notebook holds the run there until Stop comes) ends in
  "done", the results and figures shown.

Screenshots go to ``$HPCAI_ARTIFACTS`` (default ``test-artifacts/``); every process the lab started is checked
to be gone afterwards. Skips without Playwright or Chromium, unless ``HPCAI_REQUIRE_BROWSER=1``.
"""
import json

import pytest

import browser

NOTEBOOK = "panel_guards.ipynb"
CELL = '''from hpcai.ui import Panel

panel = Panel(app="digits", engines=0, epochs=2, output_dir="results")
relay = panel._on_progress

def hold_at_finish(snapshots):
    """Every rank has finished, the results are not shown yet: the moment the test presses Stop."""
    relay(snapshots)
    if panel._finished:
        panel._stop.wait(60)

panel._on_progress = hold_at_finish
panel'''


@pytest.fixture(scope="module")
def ready():
    browser.require_browser()


def _notebook(folder):
    folder.mkdir(parents=True, exist_ok=True)
    cell = {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
            "source": CELL.splitlines(keepends=True)}
    (folder / NOTEBOOK).write_text(json.dumps({
        "cells": [cell], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))
    return folder


def _options(page, name):
    return page.eval_on_selector(f".hpcai-{name} select", "s => [...s.options].map(o => o.value)")


def _hover_text(page, name):
    """What hovering the dropdown shows: the title of the widget or of its select."""
    return page.eval_on_selector(f".hpcai-{name}",
                                 "e => [e.title, ...[...e.querySelectorAll('[title]')].map(x => x.title)].join(' ')")


def test_panel_guards_in_a_browser(ready, tmp_path):
    artifacts = browser.ARTIFACTS
    served = _notebook(tmp_path / "notebooks")
    with browser.notebook_page(served, tmp_path / "lab", NOTEBOOK, "panel-guards") as (page, lab):
        browser.run_all_cells(page)
        panel = page.locator(".hpcai-panel")
        panel.wait_for(state="visible", timeout=90_000)

        # choices that cannot run are not offered, and say why on hover
        assert _options(page, "strategy") == ["sync"]
        assert "plain SGD" in _hover_text(page, "strategy")
        assert "strategy hogwild, ps, rma" in page.inner_text(".hpcai-unavailable")
        page.select_option(".hpcai-optimizer select", "sgd")
        page.wait_for_function("() => document.querySelectorAll('.hpcai-strategy option').length > 1")
        page.select_option(".hpcai-strategy select", "rma")
        page.wait_for_function("() => ![...document.querySelectorAll('.hpcai-precision option')]"
                               ".some(o => o.value === 'mixed-fp16')")
        assert "mixed-bf16" in _options(page, "precision")
        page.wait_for_function("() => /loss scaling/.test(document.querySelector('.hpcai-precision')"
                               ".innerHTML)")  # the hover text follows the options
        hover = _hover_text(page, "precision")
        assert "mixed-fp16 needs dynamic loss scaling" in hover and "keeps full-precision" not in hover
        page.locator(".hpcai-panel").screenshot(path=str(artifacts / "panel-guards-choices.png"))
        page.select_option(".hpcai-strategy select", "sync")

        # the engines box takes whole numbers in range, and says so
        box = page.locator(".hpcai-engines input")
        for text in ("2.5", "1e2", "5000", "-3"):
            box.fill(text)
            page.wait_for_function("t => document.querySelector('.hpcai-validation').textContent"
                                   ".includes(`got '${t}'`)", arg=text)
            assert page.eval_on_selector(".hpcai-run", "b => b.disabled")
            message = page.inner_text(".hpcai-validation")
            assert "engines: expected a whole number from 0 to 1024" in message and text in message
        page.locator(".hpcai-panel").screenshot(path=str(artifacts / "panel-guards-engines.png"))
        box.fill("0")
        page.wait_for_function("() => !document.querySelector('.hpcai-run').disabled")

        # Stop once every rank has finished: the run is done, its results shown
        page.click(".hpcai-run")
        page.wait_for_function("() => /finished/.test(document.querySelector('.hpcai-timing').textContent)",
                               timeout=60_000)
        page.click(".hpcai-stop")
        page.wait_for_function("() => /done in/.test(document.querySelector('.hpcai-status').textContent)",
                               timeout=60_000)
        status = page.inner_text(".hpcai-status")
        assert "after the run had finished" in status and "stopped" not in status, status
        figure = page.locator(".hpcai-results img.hpcai-figure").first
        figure.wait_for(state="visible")
        assert "loss.png" in page.inner_text(".hpcai-results")  # the saved file's path
        box = figure.bounding_box()
        natural = figure.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert abs(box["width"] / box["height"] - natural[0] / natural[1]) < 0.02  # its own aspect
        height = int(panel.bounding_box()["height"])
        page.set_viewport_size({"width": 1400, "height": min(height + 400, 6000)})
        panel.screenshot(path=str(artifacts / "panel-guards-done.png"))
