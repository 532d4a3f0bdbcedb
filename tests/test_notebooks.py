"""Notebooks: the .py (source) and .ipynb pairs are in sync, parameters cells are tagged, and a
bad parameter stops the notebook with a message naming it. (nbval executes the notebooks
themselves with the CI parameters: see tasks.py test.)"""
import json
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_is_in_sync_and_parameters_cell_is_tagged(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run jupytext --sync {source}"
    text_nb, ipynb = jupytext.read(source), nbformat.read(paired, as_version=4)
    assert _cells(text_nb) == _cells(ipynb), (
        f"{paired.name} is out of sync with {source.name}: run `jupytext --sync {source}`")
    tagged = [c for c in ipynb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{paired.name} needs exactly one cell tagged 'parameters'"
    assert ipynb.metadata["kernelspec"]["name"] == "python3"
    for cell in ipynb.cells:      # only nbval-checked cells keep outputs in the repo
        if cell.cell_type == "code" and cell.outputs:
            assert "NBVAL_CHECK_OUTPUT" in cell.source, f"{paired.name}: stray outputs committed"


def test_ci_parameters_exist_in_the_notebooks():
    params = json.loads((NOTEBOOKS / "params_ci.json").read_text())
    for source in SOURCES:
        nb = jupytext.read(source)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
        unknown = set({**params.get("*", {}), **params.get(source.stem, {})}) - names
        assert not unknown, f"params_ci.json sets {sorted(unknown)} which {source.stem} does not have"


@pytest.mark.parametrize("notebook, params, message", [
    ("02_training", {"model": "gru"}, "ModelConfig.model='gru'"),
    ("02_training", {"lr": -1.0}, "lr"),
    ("03_generation", {"checkpoint": "no/such/checkpoint"}, "parameter checkpoint='no/such/checkpoint'"),
])
def test_bad_parameters_stop_with_a_named_error(notebook, params, message, tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={**params, "out_dir": str(tmp_path / "o"), "run_dir": str(tmp_path)},
                            progress_bar=False, cwd=str(tmp_path))
    assert message in str(err.value)
