"""The notebooks run top to bottom on a small sample, so they cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One ledger and one MLflow store for the module: notebook 04 reviews what 03 logged."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, shared, monkeypatch, isolated_cache):
    monkeypatch.setenv("SWITCHBOARD_NOTEBOOK_SAMPLE", "40")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared / 'mlflow.db'}")
    monkeypatch.setenv("SWITCHBOARD_DATABASE_URL", f"sqlite:///{shared / 'ledger.db'}")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=1200,  # per cell: the training cells embed with the full transformer on 2 cores
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors


def test_importing_the_plots_chooses_no_backend():
    """A notebook's backend (inline) survives the project's plotting module."""
    import subprocess
    import sys

    check = (
        "import matplotlib; matplotlib.use('svg'); import training.plots; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
