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

    params = pipeline.load_params(str(NOTEBOOKS / "params_ci.json"), NOTEBOOKS)
    for nb in pipeline.notebook_paths(folder=NOTEBOOKS):
        given = pipeline.notebook_params(nb, Path("/run"), params)
        assert set(given) <= set(pipeline.parameters(nb)), nb.stem
        assert given["out_dir"] == f"/run/{nb.stem}" and given["run_dir"] == "/run"
    with pytest.raises(ValueError, match="'02_training' has no parameter 'lrate'; did you mean 'lr'"):
        pipeline.check_params({"02_training": {"lrate": 1}}, NOTEBOOKS)


def test_the_model_parameters_are_model_configs_and_ssm_alone_picks_mamba2():
    """02, 04 and 05 name the model's options as ModelConfig does, and 02's defaults with
    ``ssm="mamba2"`` are a valid BysMamba (headdim None: one head of expand * dim channels)."""
    from dataclasses import fields

    from pixelbyte import pipeline
    from pixelbyte.config import ModelConfig

    model_fields = {f.name for f in fields(ModelConfig)}
    for stem in ("02_training", "04_model_comparison", "05_copy_task"):
        names = set(pipeline.parameters(NOTEBOOKS / f"{stem}.ipynb"))
        assert not {n for n in names if n.startswith("mamba_") or n.endswith("_hidden")}, stem
        assert "ssm" in names and names & model_fields, stem
    defaults = pipeline.parameters(NOTEBOOKS / "02_training.ipynb")
    cfg = ModelConfig(**{k: v for k, v in defaults.items() if k in model_fields} | {"model": "bysmamba", "ssm": "mamba2"})
    assert cfg.headdim == cfg.expand * cfg.dim


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
    ("03_generation", {"temperature": float("nan")}, "parameter temperature=nan: must be >= 0.0"),
    ("01_data_exploration", {"limit": -3}, "parameter limit=-3: must be >= 0"),
    ("04_model_comparison", {"lr": "abc"}, "CompareConfig.lr='abc'"),
    ("04_model_comparison", {"workers": 0}, "CompareConfig.workers=0 is invalid: expected an integer >= 1"),
    ("05_copy_task", {"hidden": 0}, "CopyConfig.hidden=0 is invalid: expected an integer >= 1"),
    ("05_copy_task", {"size_factors": "2,4"}, "CopyConfig.size_factors='2,4' is invalid"),
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
