"""The exercise cells of a tutorial: found by tag, filled in from their solutions, exported for nbgrader.

An exercise is three code cells, each tagged and carrying the exercise's name in
``metadata["hpcai"]["exercise"]``: ``exercise`` (what the student fills in), ``check`` (the ``check(...)``
call) and ``solution`` (after the check, its source collapsed with ``metadata["jupyter"]["source_hidden"]``;
its first line is ``# Solution``, since JupyterLab shows a collapsed cell's first line).
Run All runs the solution after the check, so the cells below an exercise always have what they need.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

ROLES = ("exercise", "check", "solution")


def exercise_cells(nb) -> dict:
    """``{name: {"exercise": i, "check": i, "solution": i}}``, the cell indices of each exercise, in order."""
    found: dict = {}
    for i, cell in enumerate(nb.cells):
        roles = [t for t in cell.get("metadata", {}).get("tags", []) if t in ROLES]
        if not roles:
            continue
        name = cell.metadata.get("hpcai", {}).get("exercise")
        if not name or len(roles) > 1 or cell.cell_type != "code":
            raise ValueError(f"cell {i}: an {'/'.join(roles)} cell is a code cell with one of the tags {ROLES} "
                             f"and metadata hpcai.exercise")
        if roles[0] in found.setdefault(name, {}):
            raise ValueError(f"cell {i}: exercise {name!r} has two {roles[0]} cells")
        found[name][roles[0]] = i
    for name, cells in found.items():
        if set(cells) != set(ROLES):
            raise ValueError(f"exercise {name!r} lacks its {', '.join(r for r in ROLES if r not in cells)} cell")
        if not cells["exercise"] < cells["check"] < cells["solution"]:
            raise ValueError(f"exercise {name!r}: the cells go exercise, check, solution")
    return found


def new_exercise(name: str, placeholder: str, solution: str, answer: str = "", intro: str = "") -> list:
    """The cells of exercise ``name``, to insert into a notebook: ``intro`` (markdown, if given), the exercise
    cell (``placeholder``), the check (``check(name, answer)``; ``answer`` defaults to the name the placeholder
    assigns), a note and the collapsed solution (``# Solution`` prepended)."""
    import nbformat.v4 as v4
    answer = answer or placeholder.split("=")[0].strip()
    meta = lambda role: {"tags": [role], "hpcai": {"exercise": name}}  # noqa: E731
    hidden = dict(meta("solution"), jupyter={"source_hidden": True})
    cells = [v4.new_code_cell(placeholder.strip("\n"), metadata=meta("exercise")),
             v4.new_code_cell(f'from hpcai.teach import check\n\ncheck("{name}", {answer})', metadata=meta("check")),
             v4.new_markdown_cell("*Solution* (collapsed: click the bar below to open it; Run All runs it after "
                                  "your check)."),
             v4.new_code_cell("# Solution\n" + solution.strip("\n"), metadata=hidden)]
    return ([v4.new_markdown_cell(intro.strip("\n"))] if intro else []) + cells


def with_solutions(nb):
    """A copy of ``nb`` whose exercise cells hold their solutions, and without the solution cells."""
    nb = copy.deepcopy(nb)
    cells = exercise_cells(nb)
    for name, where in cells.items():
        nb.cells[where["exercise"]].source = nb.cells[where["solution"]].source
    drop = {where["solution"] for where in cells.values()}
    nb.cells = [c for i, c in enumerate(nb.cells) if i not in drop]
    return nb


def _nbgrader(grade_id: str, *, solution=False, grade=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
            "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def to_nbgrader(nb, points: int = 1):
    """A copy of ``nb`` for nbgrader: each exercise cell an autograded answer holding its solution between
    ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the placeholder above it, commented out), each check
    cell a locked test worth ``points`` that raises on a wrong answer, the solution cells dropped."""
    nb = copy.deepcopy(nb)
    cells = exercise_cells(nb)
    for name, where in cells.items():
        ex, test = nb.cells[where["exercise"]], nb.cells[where["check"]]
        comments = ["# Start from:"] + [f"#   {line}".rstrip() for line in ex.source.splitlines()]
        solution = re.sub(r"^# Solution\n", "", nb.cells[where["solution"]].source).rstrip("\n")
        ex.source = "\n".join(comments + ["### BEGIN SOLUTION", solution, "### END SOLUTION"])
        ex.metadata["nbgrader"] = _nbgrader(name, solution=True)
        test.source = re.sub(r"^(check\(.*\))\s*$", r"\1.assert_passed()", test.source, flags=re.M | re.S)
        test.metadata["nbgrader"] = _nbgrader(f"{name}.check", grade=True, locked=True, points=points)
    drop = {where["solution"] for where in cells.values()}
    nb.cells = [c for i, c in enumerate(nb.cells) if i not in drop]
    return nb


def export_nbgrader(src, dst, points: int = 1) -> list:
    """Writes nbgrader versions of the notebook ``src`` (or of every ``*.ipynb`` in the folder ``src``) to
    the folder ``dst``; the paths written (notebooks without exercises are skipped)."""
    import nbformat
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"src: expected a notebook or a folder of notebooks, {src} does not exist")
    paths = sorted(src.glob("*.ipynb")) if src.is_dir() else [src]
    if not paths:
        raise FileNotFoundError(f"src: expected a notebook or a folder of notebooks, {src} holds no *.ipynb")
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if not exercise_cells(nb):
            continue
        out = to_nbgrader(nb, points)
        nbformat.validate(out)
        nbformat.write(out, dst / path.name)
        written.append(dst / path.name)
    return written


def main(argv=None) -> int:
    """``export-nbgrader SRC DST``: the tutorials' exercises with nbgrader's markers and cell metadata."""
    parser = argparse.ArgumentParser(prog="hpcai teach", description="Teaching mode: the tutorials' exercises.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export-nbgrader", help="write the tutorials for nbgrader (solution markers, "
                                                    "autograded cells)",
                            description="Writes each notebook of SRC (a notebook or a folder) that has exercises "
                                        "to DST, for nbgrader's source/ folder: the solutions between ### BEGIN "
                                        "SOLUTION and ### END SOLUTION, the checks as autograded tests.")
    export.add_argument("src", help="a notebook, or a folder of notebooks (e.g. notebooks/)")
    export.add_argument("dst", help="the folder to write to (e.g. source/hpcai in an nbgrader course)")
    export.add_argument("--points", type=int, default=1, help="points per exercise (default 1)")
    args = parser.parse_args(argv)
    try:
        written = export_nbgrader(args.src, args.dst, args.points)
    except (OSError, ValueError) as e:
        print(f"hpcai teach: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
