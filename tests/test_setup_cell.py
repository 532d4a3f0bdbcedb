"""The notebooks' setup cell (kaggle/setup_cell.py): what it does without pixelbyte (find the
bundle's wheel under the Kaggle input root, pip-install it), that it is a no-op where pixelbyte
imports, how `kaggle/cli.py setup-cell` inserts it, that every notebook carries it, and the cell
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_kaggle import kc  # noqa: E402  kaggle/cli.py, loaded once
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def run_cell_without_pixelbyte(monkeypatch, inputs: Path, missing: bool = True, source: str | None = None,
                               exit_codes: tuple[int, ...] = ()):
    """Execute the cell with ``import pixelbyte`` failing once (if ``missing``), the Kaggle input
    root at ``inputs`` and pip replaced by a recorder answering ``exit_codes`` in turn (then 0);
    returns the commands the cell ran."""
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
    codes = list(exit_codes)

    def pip(cmd, check=False, **kw):
        commands.append(cmd)
        code = codes.pop(0) if codes else 0
        if check and code:
            raise subprocess.CalledProcessError(code, cmd)
        return subprocess.CompletedProcess(cmd, code)

    monkeypatch.setattr(subprocess, "run", pip)
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
    pip = [sys.executable, "-m", "pip", "install"]
    offline = [*pip, "--no-index", "--find-links", str(bundle), str(new)]   # the bundle's requirements
    assert run_cell_without_pixelbyte(monkeypatch, tmp_path) == [offline]
    # something the bundle lacks: the index as well (internet on), the bundle still first in line
    assert run_cell_without_pixelbyte(monkeypatch, tmp_path, exit_codes=(1,)) == [
        offline, [*pip, "--find-links", str(bundle), str(new)]]


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
    for path in (notebook, notebook.with_suffix(".py")):                # a notebook without the cell
        nb = kc.read_notebook(path)
        nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "pixelbyte setup" in c.source)]
        kc.write_notebook(nb, path)
        assert kc.setup_cell_problem(path) == "has no setup cell"
    outputs_before = [c.get("outputs") for c in nbformat.read(notebook, 4).cells if c.cell_type == "code"]
    changed = kc.refresh_setup_cells([notebook])
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
                    "`python kaggle/cli.py setup-cell` (make kaggle-setup-cell)")
    assert {name: p for name, p in problems.items() if p} == {}, (
        "some notebooks lack or differ from kaggle/setup_cell.py: run python kaggle/cli.py setup-cell")


# --------------------------------------------------------------------------------------------
# The cell in a fresh venv, the wheel only under a fake /kaggle/input


def fresh_venv_without_pixelbyte(folder: Path, without: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A venv that sees this environment's packages (through a site dir of symlinks, processed
    like site-packages) except every pixelbyte entry (dist-info, editable finder and .pth) and
    the distributions ``without`` (import names). Returns (its python, its own site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    own_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    deps = folder / "venv" / "project-deps"     # inside the venv's prefix: dill pickles what lives
    deps.mkdir()                                # there by reference, as it does in a real venv
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "pixelbyte" not in entry.name.lower() and entry.name.split("-")[0].split(".")[0].lower() not in without:
            (deps / entry.name).symlink_to(entry)
    (own_site / "project-deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return python, own_site


# What Kaggle's image lacks of pixelbyte's requirements (import names); the bundle ships them
NOT_ON_KAGGLE = ("tyro", "docstring_parser", "typeguard")


def test_setup_cell_installs_the_bundle_offline_in_a_fresh_venv(tmp_path, monkeypatch):
    """The cell in a notebook whose kernel is a fresh venv holding what Kaggle's image holds (not
    pixelbyte, not tyro and its requirements), the bundle under a fake /kaggle/input and the
    package index unreachable (internet off): pixelbyte and tyro come from the bundle."""
    from nbclient import NotebookClient

    inputs = tmp_path / "kaggle" / "input"
    bundle = kc.build_bundle("alice", inputs / "datasets" / "alice" / "pixelbyte-bundle")
    wheel = bundle / json.loads((bundle / kc.BUNDLE_MARKER).read_text())["wheel"]
    python, own_site = fresh_venv_without_pixelbyte(tmp_path, without=NOT_ON_KAGGLE)
    for module in ("pixelbyte", *NOT_ON_KAGGLE):                 # deps yes, these no
        probe = subprocess.run([str(python), "-c", f"import numpy, papermill, ipykernel; import {module}"],
                               capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
        assert f"No module named '{module}'" in probe.stderr, probe.stderr

    spec = tmp_path / "jupyter" / "kernels" / "fresh-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv", "language": "python"}))
    for name, value in {"JUPYTER_PATH": str(tmp_path / "jupyter"), "KAGGLE_INPUT": str(inputs),
                        "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                        "PIP_DISABLE_PIP_VERSION_CHECK": "1"}.items():
        monkeypatch.setenv(name, value)                                # the index is unreachable
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(kc.setup_cell_source()),
        nbformat.v4.new_code_cell("import pixelbyte, pixelbyte.train, tyro\n"
                                  "print(pixelbyte.__version__, pixelbyte.__file__, tyro.__file__)")])
    workdir = tmp_path / "work"
    workdir.mkdir()
    NotebookClient(nb, kernel_name="fresh-venv", timeout=300,
                   resources={"metadata": {"path": str(workdir)}}).execute()

    printed = "".join(o["text"] for o in nb.cells[1].outputs if o.get("name") == "stdout")
    version, location, tyro = printed.split()
    assert version == kc.wheel_version(wheel) != "0+unknown", printed
    assert Path(location).is_relative_to(own_site), location             # installed into the venv
    assert Path(tyro).is_relative_to(own_site), tyro                     # from the bundle
