"""Every notebook runs top to bottom at its CI parameters (papermill convention), and is stored stripped."""
import json
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _with_ci_parameters(nb, tmp_path):
    """Insert a cell after the ``parameters`` cell that sets the notebook's CI parameters."""
    params = dict(nb.metadata.get("hpcai", {}).get("ci_parameters", {}))
    params = {k: (str(tmp_path) if v == "CI_TMP" else v) for k, v in params.items()}
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "# injected by the test: small sizes for CI\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code")
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "How long" in "".join(first["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = _with_ci_parameters(nbformat.read(path, as_version=4), tmp_path)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Error" not in text
    if path.name.startswith("04"):
        assert "held-out L2 error, restored" in text
        assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                   for c in nb.cells for o in c.get("outputs", []))
