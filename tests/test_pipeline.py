"""The main job (pixelbyte.pipeline): run folders are unique and created exclusively, a params
file is checked against the notebooks' parameters cells (unknown notebooks and parameters are
refused with the closest valid names), and its command-line errors are one line. Nothing here
executes a notebook."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixelbyte import pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# ---------------------------------------------------------------------------------------------
# Run folders


def test_run_folders_are_unique_and_exclusive_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.time, "strftime", lambda fmt: "20250101-120000")   # one second
    (tmp_path / "20250101-120000-2").mkdir()                  # a folder another job already made
    first, second = pipeline.new_run_folder(tmp_path), pipeline.new_run_folder(tmp_path)
    assert [first.name, second.name] == ["20250101-120000", "20250101-120000-3"]
    with ThreadPoolExecutor(8) as pool:                        # jobs started at the same time
        folders = list(pool.map(lambda _: pipeline.new_run_folder(tmp_path), range(8)))
    assert len(set(folders)) == 8 and not {first, second} & set(folders)
    assert all(f.is_dir() and not any(f.iterdir()) for f in folders)


# ---------------------------------------------------------------------------------------------
# Params files


def test_a_params_file_naming_an_unknown_notebook_or_parameter_is_refused_with_the_closest_names():
    with pytest.raises(ValueError, match=r"^params: unknown notebook '02_trainig'; did you mean '02_training'"):
        pipeline.check_params({"02_trainig": {"lr": 1e-3}}, NOTEBOOKS)
    with pytest.raises(ValueError, match=r"^params: '02_training' has no parameter 'lrr'; did you mean 'lr'"):
        pipeline.check_params({"02_training": {"lrr": 1e-3}}, NOTEBOOKS)
    with pytest.raises(ValueError, match=r"^params: '\*' has no parameter 'sed'; did you mean 'seed'"):
        pipeline.check_params({"*": {"sed": 1}}, NOTEBOOKS)                # "*": a parameter of some notebook
    with pytest.raises(ValueError, match=r"'03_generation' has no parameter 'dim'"):
        pipeline.check_params({"03_generation": {"dim": 8}}, NOTEBOOKS)   # 02's parameter, not 03's
    for bad in ([1, 2], {"02_training": 5}):
        with pytest.raises(ValueError, match=r"expected \{notebook name or '\*': \{parameter: value\}\}"):
            pipeline.check_params(bad, NOTEBOOKS)
    good = {"*": {"seed": 1, "device": "cpu"}, "02_training": {"lr": 1e-3}}
    assert pipeline.check_params(good, NOTEBOOKS) is good
    paths = {p.stem: p for p in pipeline.notebook_paths(folder=NOTEBOOKS)}
    merged = pipeline.notebook_params(paths["02_training"], Path("/runs/x"), good)
    assert merged == {"out_dir": "/runs/x/02_training", "run_dir": "/runs/x", "seed": 1, "device": "cpu", "lr": 1e-3}
    assert "lr" not in pipeline.notebook_params(paths["01_data_exploration"], Path("/runs/x"), good)


def test_relative_paths_in_a_params_file_are_the_callers(tmp_path, monkeypatch):
    """Notebooks run in their own folder: a relative dataset / checkpoint is made absolute from
    the folder the pipeline was started in; names and hub ids are left as they are."""
    monkeypatch.chdir(tmp_path)
    params = {"02_training": {"dataset": "pq/x.parquet", "model": "lstm"},
              "03_generation": {"checkpoint": "runs/a/02_training/best_model", "dataset": "embedded"},
              "01_data_exploration": {"dataset": "ffurfaro/PixelBytes-Pokemon"}, "05_copy_task": {"dataset": "./mine"}}
    (tmp_path / "p.json").write_text(json.dumps(params))
    loaded = pipeline.load_params("p.json", NOTEBOOKS)
    assert loaded == {"02_training": {"dataset": str(tmp_path / "pq/x.parquet"), "model": "lstm"},
                      "03_generation": {"checkpoint": str(tmp_path / "runs/a/02_training/best_model"),
                                        "dataset": "embedded"},
                      "01_data_exploration": {"dataset": "ffurfaro/PixelBytes-Pokemon"},
                      "05_copy_task": {"dataset": str(tmp_path / "mine")}}


def test_only_with_no_names_is_refused_and_nan_is_not_a_number_above_a_minimum(tmp_path):
    from pixelbyte.config import ParameterError, check

    with pytest.raises(ValueError, match="--only names no notebook"):
        pipeline.notebook_paths([], NOTEBOOKS)
    with pytest.raises(SystemExit, match="--only names no notebook"):
        pipeline.main(["--only", "--prepare-only", "--notebooks", str(NOTEBOOKS), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(ParameterError, match="parameter temperature=nan: must be >= 0"):
        check("temperature", float("nan"), float, minimum=0.0)


def run_pipeline(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pixelbyte.pipeline", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_cli_params_errors_are_one_line(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "bad.json").write_text('{"02_training": {"lr": 1e-3,}}')
    (tmp_path / "typo.json").write_text(json.dumps({"02_trainig": {"lr": 1e-3}}))
    cases = [
        (tmp_path / "missing.json", f"pixelbyte.pipeline: --params {tmp_path / 'missing.json'}: no such file"),
        (tmp_path / "bad.json", f"pixelbyte.pipeline: --params {tmp_path / 'bad.json'}: not valid JSON (Expecting "
                                f"property name enclosed in double quotes: line 1 column 29 (char 28))"),
        (tmp_path / "typo.json", f"pixelbyte.pipeline: {tmp_path / 'typo.json'}: unknown notebook '02_trainig'; "
                                 f"did you mean '02_training'"),
    ]
    for params, message in cases:
        proc = run_pipeline("--params", str(params), "--out", str(out))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert lines[0].startswith(message), lines[0]
    assert not out.exists()                                         # refused before anything is made
    with pytest.raises(SystemExit, match=r"unknown notebook\(s\) \['02_trainin'\]; did you mean '02_training'"):
        pipeline.main(["--only", "02_trainin", "--out", str(out)])


def test_the_notebooks_are_the_callers_not_a_checkout_beside_the_package(tmp_path, monkeypatch):
    """Without --notebooks the pipeline reads ./notebooks of the current directory and writes
    runs/ there; elsewhere it says what it searched."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=rf"no notebooks NN_\*\.ipynb in {tmp_path / 'notebooks'} "
                                         rf"\(\./notebooks of the current directory"):
        pipeline.main(["--prepare-only"])
    assert not (tmp_path / "runs").exists()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_data_exploration.ipynb").write_bytes((NOTEBOOKS / "01_data_exploration.ipynb").read_bytes())
    assert pipeline.notebook_paths() == [Path("notebooks") / "01_data_exploration.ipynb"]
    assert pipeline.new_run_folder().parent.resolve() == tmp_path / "runs"


def test_the_default_run_folder_is_injected_as_an_absolute_path(tmp_path, monkeypatch):
    """Notebooks run with cwd notebooks/: a relative out_dir would land in notebooks/runs/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_data_exploration.ipynb").write_bytes((NOTEBOOKS / "01_data_exploration.ipynb").read_bytes())
    pipeline.main(["--prepare-only"])
    [prepared] = (tmp_path / "runs").glob("*/01_data_exploration.ipynb")
    injected = next(c for c in json.loads(prepared.read_text())["cells"]
                    if "injected-parameters" in c["metadata"].get("tags", []))
    assert f'out_dir = "{prepared.parent / "01_data_exploration"}"' in "".join(injected["source"])
