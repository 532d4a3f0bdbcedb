#!/usr/bin/env python3
"""The README's two commands (stdlib only, idempotent):

    python3 tasks.py run    # set up .venv, then run the main job (the notebooks, CPU)
    python3 tasks.py test   # set up .venv, then run the whole test suite

Setup creates .venv, installs torch==2.13.0 first (the CPU wheel where the installer finds
one; set PIXELBYTE_TORCH_INDEX=https://download.pytorch.org/whl/cpu on machines whose default
index only has CUDA builds) and then the package with its extras. It is skipped when nothing
changed since the last successful install. Kaggle does not use this: it keeps its CUDA torch.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
TORCH = "torch==2.13.0"
EXTRAS = ".[dev,notebooks,kaggle]"


def sh(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def setup():
    stamp = VENV / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    torch_index = os.environ.get("PIXELBYTE_TORCH_INDEX")
    sh(PY, "-m", "pip", "install", "-q", TORCH, *(["--index-url", torch_index] if torch_index else []))
    sh(PY, "-m", "pip", "install", "-q", "-e", EXTRAS)
    sh(PY, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3", "--display-name", "Python 3")
    stamp.write_text(want)


def run():
    setup()
    sh(PY, "-m", "pixelbyte.pipeline", "--notebooks", ROOT / "notebooks")   # into runs/<timestamp>/ here


def test():
    """Unit tests, then the notebooks under nbval (CI parameters), in one pytest run."""
    setup()
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg")
    folder = ROOT / "build" / "nbval"      # the notebooks with the CI parameters injected, unexecuted
    shutil.rmtree(folder, ignore_errors=True)
    sh(PY, "-m", "pixelbyte.pipeline", "--prepare-only", "--notebooks", ROOT / "notebooks", "--out", folder,
       "--params", ROOT / "notebooks" / "params_ci.json")
    notebooks = sorted(folder.glob("*.ipynb"))   # nbval runs them in order: 03 reads what 02 left
    sh(PY, "-m", "pytest", "-q", "tests", *notebooks, "--nbval-lax", "--nbval-current-env",
       "--nbval-sanitize-with", ROOT / "notebooks" / "nbval_sanitize.cfg", env=env)


if __name__ == "__main__":
    tasks = {"setup": setup, "run": run, "test": test}
    if len(sys.argv) != 2 or sys.argv[1] not in tasks:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(tasks)}}}")
    try:
        tasks[sys.argv[1]]()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
