"""Teaching mode: ``check`` judges right, wrong, near and missing answers; the registry and the tutorials' exercise
cells agree; every solution passes its check and every placeholder gets a hint; the expected answers are in plain
text neither in the package nor in the notebooks; the nbgrader export is valid nbformat with nbgrader's markers.

Exercises whose check needs the notebook's own state (``Exercise.given``: a trained model, a file the notebook
wrote, engines) are run with their solutions by tests/test_notebooks.py instead.
"""
import pathlib
import re

import numpy as np
import pytest

from hpcai import teach
from hpcai.teach import EXERCISES, check, digest
from hpcai.teach.notebook import exercise_cells, main, to_nbgrader, with_solutions

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.name[:2]: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
teach.load()
WITH_EXERCISES = sorted({ex.tutorial for ex in EXERCISES.values()})


def _notebook(number):
    return nbformat.read(NOTEBOOKS[number], as_version=4)


def _standalone():
    """(name, notebook, cells) of every exercise whose check needs nothing from the notebook's state."""
    out = []
    for number in WITH_EXERCISES:
        if number not in NOTEBOOKS:
            continue
        nb = _notebook(number)
        for name, where in exercise_cells(nb).items():
            if name in EXERCISES and not EXERCISES[name].given:
                out.append((name, nb, where))
    return out


STANDALONE = _standalone()


def _run(nb, where, role):
    """Runs the notebook's imports, then the ``role`` cell (solution or placeholder) and the check cell;
    the Feedback and the namespace."""
    ns = {}
    before = "\n".join(c.source for c in nb.cells[:where["exercise"]] if c.cell_type == "code")
    setup = [line for line in before.splitlines() if re.match(r"(import \S+|from \S+ import [\w, ]+)( as \w+)?$", line)]
    setup += [line for line in before.splitlines() if re.match(r"hkl = np\.array\(\[.*\]\)$", line)]  # 07's reflections
    exec("\n".join(setup), ns)
    exec(nb.cells[where[role]].source, ns)
    *lines, last = nb.cells[where["check"]].source.strip().splitlines()
    exec("\n".join(lines), ns)
    return eval(last, ns), ns


# -- check ---------------------------------------------------------------------------------------------------
def test_right_wrong_near_and_missing_answers():
    right = check("01.fp16_eps", 2.0 ** -10)
    assert right and right.passed and "Right!" in str(right) and "HINT" not in str(right)
    near = check("01.fp16_eps", 0.0009766)  # within one unit of the 4th significant digit
    assert near.passed, str(near)
    far = check("01.fp16_eps", 0.000978)
    assert not far and "HINT: eps is the gap" in str(far)
    mistake = check("01.fp16_eps", 2.0 ** -11)
    assert not mistake and "unit roundoff" in mistake.message and mistake.hint
    missing = check("01.fp16_eps", ...)
    assert not missing and "no answer yet" in missing.message and "HINT" in str(missing)
    odd = check("01.fp16_eps", object())
    assert not odd and "cannot compare" in odd.message and "raised" not in odd.message
    import ml_dtypes  # the bf16 values themselves, as numpy scalars of ml_dtypes' bfloat16, are numbers
    assert check("01.bf16_ties", tuple(np.array([1 + 2 ** -9, 1 + 3 * 2 ** -8]).astype(ml_dtypes.bfloat16)))
    assert check("01.matmul_shape", (8, 5, 3, 2)) and not check("01.matmul_shape", (8, 1, 5, 3, 2))
    assert check("07.bcc_absent", {(2, 1, 0), (1, 1, 1), (1, 0, 0)})  # a set, in any order
    assert check("07.bcc_absent", [(1, 0, 0), (1, 1, 1), (2, 1, 0)]).passed is False  # a list is not a set


def test_a_function_is_tried_and_its_errors_are_one_line():
    def momentum_step(w, g, v, lr, beta):
        v = beta * v + g
        return w - lr * v, v
    assert check("02.momentum", momentum_step)
    plain = check("02.momentum", lambda w, g, v, lr, beta: (w - lr * g, v))
    assert not plain and "plain SGD" in plain.message
    up = check("02.momentum", lambda w, g, v, lr, beta: (w + lr * g, v))
    assert not up and "should go down" in up.message

    def broken(w, g, v, lr, beta):
        raise ValueError("shapes (5,) and (4,)\nnot aligned")
    raised = check("02.momentum", broken)
    assert not raised and raised.message == "your code raised ValueError: shapes (5,) and (4,)"
    assert "Traceback" not in str(raised) and raised.hint in str(raised)
    unfilled = check("02.momentum", lambda w, g, v, lr, beta: (..., ...))
    assert not unfilled and unfilled.message == "there is still a ... to fill in."


def test_feedback_shows_as_html_and_as_text():
    wrong = check("06.binder", 0)
    page = wrong._repr_html_()
    assert 'class="hpcai-check hpcai-check-hint"' in page and "Hint:" in page and "Gaussian" in page
    assert "<script" not in check("06.binder", "<script>")._repr_html_()
    right = check("06.binder", 2 / 3)
    assert 'hpcai-check-right' in right._repr_html_() and str(right).startswith("Right!")
    assert right.assert_passed() is right
    with pytest.raises(AssertionError, match="HINT"):
        wrong.assert_passed()


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="01.fp16_eps"):
        check("01.nope", 1)


def test_digest_is_salted_with_the_name_and_rounds_numbers():
    assert digest("a.x", 1.0) != digest("b.x", 1.0)
    assert digest("a.x", 1.23456789, sig=3) == digest("a.x", 1.2349, sig=3)
    assert digest("a.x", (1, 2)) == digest("a.x", np.array([1.0, 2.0]))


# -- the registry and the tutorials ----------------------------------------------------------------------------
def test_registry_has_two_to_four_exercises_per_tutorial():
    counts = {number: sum(ex.tutorial == number for ex in EXERCISES.values()) for number in teach.TUTORIALS}
    assert counts.pop("00") == 0
    assert all(2 <= n <= 4 for n in counts.values()), counts


@pytest.mark.parametrize("number", WITH_EXERCISES)
def test_notebook_cells_match_the_registry(number):
    nb = _notebook(number)
    cells = exercise_cells(nb)
    assert set(cells) == {n for n, ex in EXERCISES.items() if ex.tutorial == number}, \
        f"notebook {number} has exercise cells for {sorted(cells)}"
    for name, where in cells.items():
        assert f'check("{name}", ' in nb.cells[where["check"]].source
        solution = nb.cells[where["solution"]]
        assert solution.metadata["jupyter"]["source_hidden"] is True, f"{name}: the solution is not collapsed"
        # JupyterLab shows a collapsed cell's first line: it must give nothing away
        assert solution.source.splitlines()[0] == "# Solution", f"{name}: the solution's first line shows"
        assert "..." in nb.cells[where["exercise"]].source or "TODO" in nb.cells[where["exercise"]].source
    first = nb.cells[0].source
    assert "You will learn" in first and "Reading time" in first


def test_quickstart_says_what_you_will_learn():
    first = _notebook("00").cells[0].source
    assert "You will learn" in first and "Reading time" in first and not exercise_cells(_notebook("00"))


@pytest.mark.parametrize("name,nb,where", STANDALONE, ids=[s[0] for s in STANDALONE])
def test_solution_passes_and_placeholder_gets_a_hint(name, nb, where):
    solved, _ = _run(nb, where, "solution")
    assert solved.passed, str(solved)
    unsolved, _ = _run(nb, where, "exercise")
    assert not unsolved.passed and unsolved.hint, str(unsolved)


def test_expected_answers_are_not_in_plain_text():
    texts = [p.read_text() for p in (ROOT / "hpcai" / "teach").glob("*.py")]
    texts += [p.read_text() for p in NOTEBOOKS.values()]
    hashed = 0
    for name, nb, where in STANDALONE:
        feedback, ns = _run(nb, where, "solution")
        value = eval(nb.cells[where["check"]].source.strip().splitlines()[-1].split(", ", 1)[1][:-1], ns)
        if callable(value):
            continue
        hashed += 1
        for text in {teach.canonical(value), repr(value), str(value)}:
            assert not any(text in t for t in texts), f"{name}: the answer {text!r} is in plain text"
    assert hashed >= 10


def test_with_solutions_fills_the_exercises_in():
    nb = _notebook("01")
    solved = with_solutions(nb)
    assert len(solved.cells) == len(nb.cells) - len(exercise_cells(nb))
    assert not any("solution" in c.metadata.get("tags", []) for c in solved.cells)
    where = exercise_cells(nb)["01.fp16_eps"]
    assert nb.cells[where["solution"]].source in [c.source for c in solved.cells]


def test_malformed_exercise_cells_are_refused():
    def cell(role, name="t.x"):
        return nbformat.v4.new_code_cell("x = 1", metadata={"tags": [role], "hpcai": {"exercise": name}})
    nb = nbformat.v4.new_notebook(cells=[cell("exercise"), cell("check")])
    with pytest.raises(ValueError, match="lacks its solution"):
        exercise_cells(nb)
    nb.cells = [cell("exercise"), cell("solution"), cell("check")]
    with pytest.raises(ValueError, match="exercise, check, solution"):
        exercise_cells(nb)


# -- nbgrader --------------------------------------------------------------------------------------------------
def test_export_nbgrader_writes_valid_notebooks_with_markers(tmp_path, capsys):
    assert main(["export-nbgrader", str(ROOT / "notebooks"), str(tmp_path / "source")]) == 0
    written = sorted((tmp_path / "source").glob("*.ipynb"))
    assert {p.name[:2] for p in written} == {n for n, p in NOTEBOOKS.items() if exercise_cells(_notebook(n))}
    assert {"01", "02", "04", "05", "06", "07", "08"} <= {p.name[:2] for p in written}
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        original = exercise_cells(_notebook(path.name[:2]))
        graded = [c for c in nb.cells if "nbgrader" in c.metadata]
        assert len(graded) == 2 * len(original)
        ids = [c.metadata.nbgrader["grade_id"] for c in graded]
        assert len(set(ids)) == len(ids)
        for c in graded:
            meta = c.metadata.nbgrader
            assert meta["schema_version"] == 3 and meta["solution"] != meta["grade"]
            if meta["solution"]:
                assert "### BEGIN SOLUTION" in c.source and c.source.rstrip().endswith("### END SOLUTION")
            else:
                assert meta["locked"] and meta["points"] == 1 and ".assert_passed()" in c.source
        assert not any("solution" in c.metadata.get("tags", []) for c in nb.cells)
    assert str(written[0]) in capsys.readouterr().out


def test_hpcai_teach_is_the_same_command(tmp_path, capsys):
    from hpcai.cli import main as hpcai
    assert hpcai(["teach", "export-nbgrader", str(ROOT / "notebooks" / "01_tensors_and_precision.ipynb"),
                  str(tmp_path)]) == 0
    assert (tmp_path / "01_tensors_and_precision.ipynb").is_file()
    assert hpcai(["teach", "export-nbgrader", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "hpcai teach: src: expected a notebook or a folder of notebooks" in capsys.readouterr().err


def test_exported_cells_grade(tmp_path):
    """The exported answer cell (its solution) passes the exported test cell; a wrong answer raises there."""
    graded = to_nbgrader(_notebook("01"))
    cells = [c for c in graded.cells if c.metadata.get("hpcai", {}).get("exercise") == "01.fp16_eps"]
    answer, test = (c.source for c in cells)
    ns = {"P": __import__("hpcai.precision", fromlist=["P"])}
    exec(answer, ns)
    exec(test, ns)
    ns["eps_fp16"] = 2.0 ** -11
    with pytest.raises(AssertionError, match="unit roundoff"):
        exec(test, ns)
    assert main(["export-nbgrader", str(tmp_path / "none"), str(tmp_path / "out")]) == 1


# the cells notebook 03 is to get (hpcai.teach.tutorial03): placeholder, solution
EXERCISES_03 = {
    "03.sync_speedup": ("sync_speedup = ...   # gradients per unit of time, over one normal worker's",
                        "workers, slow = 4, 3.0\nsync_speedup = workers / slow   # 4 gradients a step; all wait 3 units"),
    "03.async_speedup": ("async_speedup = ...",
                         "workers, slow = 4, 3.0\nasync_speedup = (workers - 1) + 1 / slow   # nobody waits"),
    "03.staleness": ("staleness = ...   # updates by the others while the slow worker computes one gradient",
                     "workers, slow = 4, 3.0\nstaleness = (workers - 1) * slow   # 3 others, 3 updates each"),
}


def test_new_exercise_cells_are_found_and_solve():
    from hpcai.teach.notebook import new_exercise
    nb = nbformat.v4.new_notebook()
    for name, (placeholder, solution) in EXERCISES_03.items():
        nb.cells += new_exercise(name, placeholder, solution, intro=f"### {EXERCISES[name].title}")
    nbformat.validate(nb)
    cells = exercise_cells(nb)
    assert list(cells) == list(EXERCISES_03)
    for name, where in cells.items():
        assert nb.cells[where["solution"]].metadata.jupyter.source_hidden
        solved, _ = _run(nb, where, "solution")
        assert solved.passed, str(solved)
        unsolved, _ = _run(nb, where, "exercise")
        assert not unsolved.passed
