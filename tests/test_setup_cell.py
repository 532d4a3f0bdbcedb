"""The notebooks' setup cell (kaggle/setup_cell.py): what it does without pixelbyte (find the
bundle's wheel under the Kaggle input root, pip-install it), that it is a no-op where pixelbyte
imports, how `kaggle_cli setup-cell` inserts it, that every notebook carries it, and the cell
itself in a notebook run by a fresh venv whose only pixelbyte is a wheel under a fake
/kaggle/input."""
from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from pixelbyte import kaggle_cli as kc

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def run_cell_without_pixelbyte(monkeypatch, inputs: Path, missing: bool = True, source: str | None = None):
    """Execute the cell with ``import pixelbyte`` failing once (if ``missing``), the Kaggle input
    root at ``inputs`` and pip replaced by a recorder; returns the commands the cell ran."""
    failures, commands = ([ImportError("No module named 'pixelbyte'")] if missing else []), []
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pixelbyte" and failures:
            raise failures.pop()
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("KAGGLE_INPUT", str(inputs))
    if source:
        monkeypatch.setenv("PIXELBYTE_SOURCE", source)
    else:
        monkeypatch.delenv("PIXELBYTE_SOURCE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    exec(kc.setup_cell_source(), {"__builtins__": {**vars(builtins), "__import__": fake_import}})
    return commands


def test_setup_cell_is_a_noop_where_pixelbyte_imports(monkeypatch, tmp_path):
    assert run_cell_without_pixelbyte(monkeypatch, tmp_path, missing=False) == []


def test_setup_cell_installs_the_newest_wheel_under_the_input_root(monkeypatch, tmp_path):
    bundle = tmp_path / "datasets" / "alice" / "pixelbyte-bundle"
    bundle.mkdir(parents=True)
    old, new = bundle / "pixelbyte-0.0.9-py3-none-any.whl", bundle / "pixelbyte-0.1.0-py3-none-any.whl"
    old.write_text("")
    new.write_text("")
    os.utime(old, (1, 1))
    commands = run_cell_without_pixelbyte(monkeypatch, tmp_path)
    assert commands == [[sys.executable, "-m", "pip", "install", str(new)]]


def test_setup_cell_without_a_wheel_names_both_ways_out(monkeypatch, tmp_path):
    with pytest.raises(ImportError, match="pixelbyte-bundle dataset.*PIXELBYTE_SOURCE"):
        run_cell_without_pixelbyte(monkeypatch, tmp_path)
    source = "git+https://example.org/pixelbyte"
    assert run_cell_without_pixelbyte(monkeypatch, tmp_path, source=source) == [
        [sys.executable, "-m", "pip", "install", source]]


# --------------------------------------------------------------------------------------------
# Inserting it


def test_with_setup_cell_inserts_refreshes_and_moves():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(x)")])
    once = kc.with_setup_cell(nb)
    assert [c.source for c in once.cells] == ["# Title", kc.setup_cell_source(), "x = 1", "print(x)"]
    assert kc.with_setup_cell(once).cells == once.cells                 # idempotent
    stale = nbformat.v4.new_code_cell(kc.setup_cell_source().splitlines()[0] + "\nold_version = True")
    nb.cells.append(stale)
    assert [c.source for c in kc.with_setup_cell(nb).cells] == [c.source for c in once.cells]
    assert len(nb.cells) == 4                                           # the input is not changed


def test_refresh_writes_the_py_source_and_the_ipynb_pair(tmp_path):
    import jupytext

    source = ROOT / "notebooks" / "02_training.py"
    for suffix in (".py", ".ipynb"):
        shutil.copy2(source.with_suffix(suffix), tmp_path / source.with_suffix(suffix).name)
    notebook = tmp_path / "02_training.ipynb"
    outputs_before = [c.get("outputs") for c in nbformat.read(notebook, 4).cells if c.cell_type == "code"]
    changed = kc.refresh_setup_cells([notebook])
    if not changed:                      # the repository's notebooks already carry the cell
        assert kc.setup_cell_problem(notebook) is None
        return
    assert sorted(changed) == sorted([notebook, notebook.with_suffix(".py")])
    for path in changed:
        assert kc.setup_cell_problem(path) is None, path
    text_nb, ipynb = jupytext.read(notebook.with_suffix(".py")), nbformat.read(notebook, 4)
    assert [(c.cell_type, c.source) for c in text_nb.cells] == [(c.cell_type, c.source) for c in ipynb.cells]
    outputs_after = [c.get("outputs") for c in ipynb.cells if c.cell_type == "code"]
    assert outputs_after == [[]] + outputs_before                       # stored nbval outputs kept
    assert kc.refresh_setup_cells([notebook]) == []                     # nothing left to change
    assert (tmp_path / "02_training.py").read_text().startswith(source.read_text().split("# %%")[0])


def test_every_notebook_carries_the_canonical_setup_cell():
    """notebooks/NN_*.py and their .ipynb open with exactly kaggle/setup_cell.py as first code cell."""
    problems = {path.name: kc.setup_cell_problem(path)
                for source in NOTEBOOKS for path in (source, source.with_suffix(".ipynb"))}
    if all(p == "has no setup cell" for p in problems.values()):
        pytest.skip("no notebook has the setup cell yet: insert it with "
                    "`python -m pixelbyte.kaggle_cli setup-cell` (make kaggle-setup-cell)")
    assert {name: p for name, p in problems.items() if p} == {}, (
        "some notebooks lack or differ from kaggle/setup_cell.py: run python -m pixelbyte.kaggle_cli setup-cell")


# --------------------------------------------------------------------------------------------
# The cell in a fresh venv, the wheel only under a fake /kaggle/input


def fresh_venv_without_pixelbyte(folder: Path) -> tuple[Path, Path]:
    """A venv that sees this environment's packages (through a site dir of symlinks, processed
    like site-packages) except every pixelbyte entry (dist-info, editable finder and .pth).
    Returns (its python, its own site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    own_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    deps = folder / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "pixelbyte" not in entry.name.lower():
            (deps / entry.name).symlink_to(entry)
    (own_site / "project-deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return python, own_site


def test_setup_cell_installs_the_bundle_wheel_in_a_fresh_venv(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    inputs = tmp_path / "kaggle" / "input"
    wheel = kc.build_wheel(inputs / "datasets" / "alice" / "pixelbyte-bundle")
    python, own_site = fresh_venv_without_pixelbyte(tmp_path)
    probe = subprocess.run([str(python), "-c", "import numpy, papermill, ipykernel; import pixelbyte"],
                           capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert "No module named 'pixelbyte'" in probe.stderr, probe.stderr   # deps yes, pixelbyte no

    spec = tmp_path / "jupyter" / "kernels" / "fresh-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv", "language": "python"}))
    for name, value in {"JUPYTER_PATH": str(tmp_path / "jupyter"), "KAGGLE_INPUT": str(inputs),
                        "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}.items():
        monkeypatch.setenv(name, value)                                # offline: the wheel or nothing
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(kc.setup_cell_source()),
        nbformat.v4.new_code_cell("import pixelbyte\nprint(pixelbyte.__version__)\nprint(pixelbyte.__file__)")])
    workdir = tmp_path / "work"
    workdir.mkdir()
    NotebookClient(nb, kernel_name="fresh-venv", timeout=300,
                   resources={"metadata": {"path": str(workdir)}}).execute()

    version, location = nb.cells[1].outputs[0]["text"].split()
    assert version == kc.wheel_version(wheel) != "0+unknown"
    assert Path(location).is_relative_to(own_site), location             # installed into the venv
