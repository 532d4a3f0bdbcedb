"""Notebooks: the .py (source) and .ipynb pairs are in sync, parameters cells are tagged, and a
bad parameter stops the notebook in its validation cell with a message naming it (papermill,
~5 s a case: the kernel start and the imports). (nbval executes the notebooks
themselves with the CI parameters: see tasks.py test.)"""
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


def test_ci_parameters_are_the_notebooks_own():
    """The CI params pass the pipeline's check, and '*' values reach only the notebooks that
    declare them (03 takes its dataset from the model's run, not from '*')."""
    from pixelbyte import pipeline

    params = pipeline.load_params(str(NOTEBOOKS / "params_ci.json"))
    for nb in pipeline.notebook_paths():
        given = pipeline.notebook_params(nb, Path("/run"), params)
        assert set(given) <= set(pipeline.parameters(nb)), nb.stem
        assert given["out_dir"] == f"/run/{nb.stem}" and given["run_dir"] == "/run"
    with pytest.raises(ValueError, match="'02_training' has no parameter 'lrate'; did you mean 'lr'"):
        pipeline.check_params({"02_training": {"lrate": 1}})


# A bad papermill -p value stops the notebook in its validation cell, naming the parameter
BAD_PARAMETERS = [
    ("02_training", {"model": "gru"}, "ModelConfig.model='gru'"),
    ("02_training", {"lr": "abc"}, "TrainConfig.lr='abc'"),
    ("02_training", {"max_steps": "ten"}, "TrainConfig.max_steps='ten'"),
    ("02_training", {"limit": -3}, "DataConfig.limit=-3"),
    ("02_training", {"dim": 1.5}, "ModelConfig.dim=1.5"),
    ("02_training", {"unit": "window", "orders": "data", "positions": True}, "positions=True needs samples.unit='item'"),
    ("03_generation", {"checkpoint": "no/such/checkpoint"}, "parameter checkpoint='no/such/checkpoint'"),
    ("03_generation", {"temperature": "hot"}, "parameter temperature='hot'"),
    ("01_data_exploration", {"limit": -3}, "parameter limit=-3: must be >= 0"),
    ("04_model_comparison", {"lr": "abc"}, "CompareConfig.lr='abc'"),
    ("04_model_comparison", {"objectives": "causal", "configs": "rnn_bi_pxby_conv_81_32_2"},   # issue 16, item 10
     "configs='rnn_bi_pxby_conv_81_32_2' with objectives='causal': no run is possible "
     "(rnn_bi_pxby_conv_81_32_2: bidirectional: sees the token it must predict)"),
]


@pytest.mark.parametrize("notebook, params, message", BAD_PARAMETERS,
                         ids=[f"{nb}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for nb, p, _ in BAD_PARAMETERS])
def test_bad_parameters_stop_with_a_named_error(notebook, params, message, tmp_path):
    import papermill as pm

    params = {k: str(tmp_path) if v == "<an existing folder>" else v for k, v in params.items()}
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(out),
                            parameters={**params, "out_dir": str(tmp_path / "o"), "run_dir": str(tmp_path)},
                            progress_bar=False, cwd=str(tmp_path))
    assert message in str(err.value)
    assert err.value.ename in ("ValueError", "ParameterError"), err.value.ename   # not a TypeError in arithmetic
    # the failing cell is the validation cell: the first code cell after the injected parameters
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    failed = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert failed == [injected + 1], f"failed in cell {failed}, not in the validation cell {injected + 1}"
    assert all(c.execution_count is None for c in cells[injected + 2:])          # nothing ran after it
