"""Every notebook runs top to bottom at its CI parameters (papermill convention), with its exercises filled in
from their solutions (hpcai.teach.notebook.with_solutions) and every check passing, is stored stripped, prints
what it promises, and leaves no process behind (MPI engines, controllers, kernels). Each run's time is printed
(``-s`` shows it): the instructor guide's timings come from here.

Processes are traced by a marker in the environment: the kernel inherits it from this test, and everything
the kernel starts (ipyparallel controller, mpiexec, MPI proxies, engines) inherits it from the kernel, even
when a process outlives its parent. Other people's clusters on the same machine never carry it.
"""
import json
import pathlib
import sys
import time
import uuid

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from hpcai.teach.notebook import exercise_cells, with_solutions

try:
    import procs
except ImportError:  # the process checks need psutil (hpcai[apps]); the notebooks still run without it
    procs = None

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MARKER = "HPCAI_NOTEBOOK_TEST"

# What each notebook must print (all of these strings) and how many figures it must show, at least.
EXPECTED = {
    "00": (["state: done", "'test_accuracy'", "sync  on 2 ranks", "rma   on 2 ranks"], 0),
    "01": (["gradcheck(f): True", "gradient mismatch", "summed in fp16: 32", "fp16x3", "median of"], 2),
    "02": (["test accuracy", "mixed-fp16, dynamic loss scaling", "bit for bit: True", "lamb"], 5),
    "03": (["rank 1 of", "[stdout:1]", "accuracy on each rank, pulled from the engines",
            "Seconds to training loss", "hogwild", "rma", "stopped"], 2),
    "04": (["held-out L2 error, restored", "other flow, L2 error", "at the same total bytes: SZ3", "codec sz3"], 4),
    "05": (["rounds of the loop in", "learned stencil", "The stricter model:", "in this kernel:",
            "the same values under mpiexec as on the engines: True", "module 'simulate' (rank 0 of 1"], 1),
    "06": (["exact T_c = 737 K", "held-out error", "from the surrogate", "reference energies"], 2),
    "07": (["space group 225 (cubic)", "absent", "held-out materials: crystal-system top-1"], 3),
    "08": (["refused: learning_rate: not a field", "ranks [2, 3]", "resumed from digits.journal: 4 finished trials",
            "finished trials kept: True", "defaults (trial 0): test accuracy", "best (trial"], 2),
}


def _with_ci_parameters(nb, tmp_path):
    """Insert a cell after the ``parameters`` cell that sets the notebook's CI parameters."""
    params = dict(nb.metadata.get("hpcai", {}).get("ci_parameters", {}))
    params = {k: (str(tmp_path) if v == "CI_TMP" else v) for k, v in params.items()}
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "# injected by the test: small sizes for CI\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


# -- processes ------------------------------------------------------------------------------------------
def _leftovers(token: str, before: dict) -> list:
    """Live processes started while the notebook ran: those carrying the marker, and new descendants."""
    found = {pid: p for pid, p in procs.descendants().items() if pid not in before}
    found.update({p.pid: p for p in procs.with_env(MARKER, token) if p.pid not in found})
    return list(found.values())


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code")
    assert all(c.get("id") for c in nb["cells"])
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "How long" in "".join(first["source"])
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    solutions = [c for c in nb["cells"] if "solution" in c.get("metadata", {}).get("tags", [])]
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") is True for c in solutions)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    token = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, token)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # ipyparallel's cluster files and logs go here
    before = procs.descendants() if procs else {}
    stored = nbformat.read(path, as_version=4)
    nb = _with_ci_parameters(with_solutions(stored), tmp_path)
    checks = [i for i, c in enumerate(nb.cells) if "check" in c.metadata.get("tags", [])]
    started = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # shuts the kernel down when done, also after a failing cell
    except Exception as e:
        left = procs.collect(lambda: _leftovers(token, before)) if procs else []
        if left:
            note = f"and it left {len(left)} process(es) running (killed now):\n  " + "\n  ".join(left)
            if hasattr(e, "add_note"):  # Python 3.11
                e.add_note(note)
            else:
                print(note, file=sys.stderr)
        raise
    print(f"{path.name} ran in {time.perf_counter() - started:.0f} s")
    left = procs.collect(lambda: _leftovers(token, before)) if procs else []
    assert not left, f"{path.name} left {len(left)} process(es) running (killed now):\n  " + "\n  ".join(left)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs)  # printed (stdout and stderr)
    assert "Error" not in text
    shown = text + "\n" + "\n".join(o.get("data", {}).get("text/plain", "") for o in outputs)  # and displayed (%%px)
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert path.name[:2] in EXPECTED, f"{path.name}: say in EXPECTED what it must print"
    strings, min_figures = EXPECTED[path.name[:2]]
    missing = [s for s in strings if s not in shown]
    assert not missing, f"{path.name} did not print {missing}"
    assert figures >= min_figures, f"{path.name} showed {figures} figure(s), expected at least {min_figures}"
    assert len(checks) == len(exercise_cells(stored))
    for i in checks:  # every exercise, filled in from its solution, passes its check
        said = "\n".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[i].outputs)
        assert said.startswith("Right!"), f"{path.name}: the solution of {nb.cells[i].source!r} fails: {said}"
