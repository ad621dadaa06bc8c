"""An exercise of notebook 01 in a real browser: JupyterLab from ``hpcai lab``, headless Chromium.

In a copy of ``notebooks/`` served by ``hpcai lab``, Playwright opens ``01_tensors_and_precision.ipynb`` and,
without running the rest of the notebook: sees the solution cell of the fp16-epsilon exercise collapsed (its
source not on the page); types a wrong answer into the exercise cell, runs it and its check, and sees the hint;
types the right answer and sees success; opens the solution by clicking it and sees its source. Screenshots go
to ``$HPCAI_ARTIFACTS`` (default ``test-artifacts/``). JupyterLab and the kernel are stopped and every process
they started is checked by PID to be gone. About 30-60 s on 2 cores. Skips when Playwright or Chromium is
missing, unless ``HPCAI_REQUIRE_BROWSER=1``.
"""
from pathlib import Path

import pytest

import browser

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_tensors_and_precision.ipynb"
EXERCISE = "01.fp16_eps"


@pytest.fixture(scope="module")
def ready():
    browser.require_browser()


def _edit(page, cell, text: str) -> None:
    """Replaces the source of ``cell`` (a code cell's locator) with ``text``."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)  # as pasted: no brackets closed automatically


def _run(page, cell) -> None:
    """Runs ``cell`` (Shift+Enter in command mode) and waits until its prompt shows an execution count."""
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("el => /\\[\\d+\\]/.test(el.textContent)",
                           arg=cell.locator(".jp-InputPrompt").element_handle(), timeout=60_000)


def test_exercise_hint_success_and_hidden_solution(ready, tmp_path):
    from hpcai.teach.notebook import exercise_cells
    where = exercise_cells(nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4))[EXERCISE]
    artifacts = browser.ARTIFACTS
    served = browser.copy_notebooks(ROOT / "notebooks", tmp_path / "notebooks")
    with browser.notebook_page(served, tmp_path / "lab", NOTEBOOK, "teach") as (page, lab):
        cells = page.locator(".jp-Notebook .jp-Cell")
        exercise, check, solution = (cells.nth(where[role]) for role in ("exercise", "check", "solution"))
        assert "eps_fp16 = ..." in exercise.inner_text()

        # the solution is collapsed: a placeholder, and its source nowhere on the page
        solution.scroll_into_view_if_needed()
        assert solution.locator(".jp-InputPlaceholder").is_visible()
        assert solution.inner_text().strip() == "# Solution"  # the first line, all a collapsed cell shows
        assert 'PRECISIONS["fp16"].p)' not in page.inner_text(".jp-Notebook")

        # a wrong answer: the hint
        _edit(page, exercise, "eps_fp16 = 2.0 ** -11")
        _run(page, exercise)
        _run(page, check)
        hint = check.locator(".jp-OutputArea .hpcai-check-hint")
        hint.wait_for(state="visible", timeout=60_000)
        text = hint.inner_text()
        assert "Not yet" in text and "Hint:" in text and "unit roundoff" in text, text
        assert "Traceback" not in check.inner_text()
        check.screenshot(path=str(artifacts / "teach-hint.png"))

        # the right answer: success
        _edit(page, exercise, "eps_fp16 = 2.0 ** -10")
        _run(page, exercise)
        _run(page, check)
        right = check.locator(".jp-OutputArea .hpcai-check-right")
        right.wait_for(state="visible", timeout=60_000)
        assert "Right!" in right.inner_text() and not check.locator(".hpcai-check-hint").count()
        check.screenshot(path=str(artifacts / "teach-right.png"))

        # the solution opens when clicked
        solution.locator(".jp-InputPlaceholder .jp-Placeholder-content").click()
        solution.locator(".jp-InputArea .cm-content").wait_for(state="visible")
        assert 'PRECISIONS["fp16"].p)' in solution.locator(".jp-InputArea").inner_text()
        solution.screenshot(path=str(artifacts / "teach-solution-open.png"))
        assert not [e for e in browser.errors_in_outputs(page) if "Traceback" in e]
        browser.shut_down_kernel(page)
