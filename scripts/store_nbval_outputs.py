"""Store the expected outputs of the ``# NBVAL_CHECK_OUTPUT`` cells in notebooks/*.ipynb.

nbval compares those cells' outputs with the ones saved in the notebook, so after changing such
a cell run (from the repo root):

    .venv/bin/python scripts/store_nbval_outputs.py

It executes every notebook with the CI parameters (notebooks/params_ci.json) like the test
command does, copies the outputs of the checked cells -- and only those -- into the paired
.ipynb (all other cells stay output-free), and leaves the .py sources untouched.
"""
from pathlib import Path

import nbformat

from pixelbyte import pipeline  # the same notebooks and CI parameters as the test command

ROOT = Path(__file__).resolve().parent.parent

MARK = "NBVAL_CHECK_OUTPUT"


def main():
    folder = ROOT / "build" / "nbval-store"
    notebooks = ROOT / "notebooks"
    params = pipeline.load_params(str(notebooks / "params_ci.json"), notebooks)
    for prepared in pipeline.run(folder, params, progress=False, notebooks=notebooks):
        executed = nbformat.read(prepared, as_version=4)
        checked = {c.source: c for c in executed.cells if c.cell_type == "code" and MARK in c.source}
        source = ROOT / "notebooks" / prepared.name
        nb = nbformat.read(source, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                ran = checked.get(cell.source)
                cell.outputs = ran.outputs if ran else []
                cell.execution_count = ran.execution_count if ran else None   # nbval skips unrun cells
        nbformat.write(nb, source)
        print(f"{source.name}: stored outputs of {len(checked)} checked cell(s)")


if __name__ == "__main__":
    main()
