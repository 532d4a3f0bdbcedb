"""The package knows no repository: no module under pixelbyte/ reads a path relative to its own
file except its package data, and the built wheel, installed in a fresh venv outside the
checkout, trains and generates a tiny model with nothing of the checkout in reach."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from test_kaggle import kc                          # kaggle/cli.py: builds the wheel the bundle ships
from test_setup_cell import fresh_venv_without_pixelbyte

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("data", "pretrained")               # pyproject's package-data folders


def test_no_module_reads_a_path_next_to_its_own_file_but_package_data():
    """Every line of pixelbyte/*.py that uses ``__file__`` names a package-data folder
    (pixelbyte/data/, pixelbyte/pretrained/): the notebooks, kaggle/, build/ and runs/ of a
    checkout are for the caller to pass."""
    found = []
    for path in sorted((ROOT / "pixelbyte").glob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and node.id == "__file__":
                line = lines[node.lineno - 1]
                if not any(f'"{name}"' in line for name in PACKAGE_DATA):
                    found.append(f"{path.name}:{node.lineno}: {line.strip()}")
    assert found == []


def test_the_wheel_trains_and_generates_outside_the_checkout(tmp_path):
    wheel = kc.build_wheel(tmp_path / "dist")
    python, own_site = fresh_venv_without_pixelbyte(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", "--disable-pip-version-check", str(wheel)], check=True)
    work = tmp_path / "work"                            # no notebooks/, no git, not under the checkout
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True, timeout=180)

    where = run("-c", "import pixelbyte; print(pixelbyte.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(own_site), where.stdout + where.stderr
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)

    trained = run("-m", "pixelbyte.train", "--data.source", "embedded", "--data.limit", "24",
                  "--model.model", "lstm", "--model.dim", "8", "--model.hidden", "16", "--model.depth", "1",
                  "--train.max-steps", "3", "--train.batch-size", "4", "--train.device", "cpu",
                  "--train.out-dir", "out")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((work / "out" / "run.json").read_text())["model"]["model"] == "lstm"

    generated = run("-c", "from pixelbyte.models import PixelByteModel\n"
                          "from pixelbyte.generate import generate, shape_prompt\n"
                          "model = PixelByteModel.from_pretrained('out/best_model')\n"
                          "g = generate(model, [shape_prompt(2, 2)], 12, seed=0)[0]\n"
                          "print(len(g.new), g.stop_reason)")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.split() == ["12", "max_new_tokens"]

    # the pipeline looks for ./notebooks of the caller, never for a checkout beside the package
    pipeline = run("-m", "pixelbyte.pipeline", "--prepare-only", "--out", "nb")
    assert pipeline.returncode == 1 and f"no notebooks NN_*.ipynb in {work / 'notebooks'}" in pipeline.stderr, (
        pipeline.stderr)
