"""The main job: execute the notebooks in order with papermill into one run folder.

    python -m pixelbyte.pipeline                      # CPU-sized defaults, embedded dataset
    python -m pixelbyte.pipeline --params p.json      # per-notebook parameter overrides
    python -m pixelbyte.pipeline --out runs/mine --only 01_data_exploration

Each notebook ``notebooks/NN_name.ipynb`` is executed to ``<out>/NN_name.ipynb`` with the
parameters ``out_dir=<out>/NN_name`` (where its PNG/CSV files go), ``run_dir=<out>`` (where
earlier notebooks left their outputs, e.g. the checkpoint) and any overrides from the params
file: ``{"02_training": {"model": "lstm", "epochs": 2}, "*": {"seed": 1}}``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebook_paths(only: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"--only: unknown notebook(s) {sorted(unknown)}; "
                             f"available: {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in only]
    if not paths:
        raise SystemExit(f"no notebooks found in {folder}")
    return paths


def load_params(path: str | None) -> dict:
    if path is None:
        return {}
    params = json.loads(Path(path).read_text())
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise SystemExit(f"{path}: expected {{notebook name or '*': {{parameter: value}}}}")
    return params


def run(out: Path, params: dict, only: list[str] | None = None, kernel: str | None = None,
        progress: bool = True, notebooks: Path = NOTEBOOKS, log_output: bool = False) -> list[Path]:
    """Execute the notebooks found in ``notebooks``; returns the executed notebook paths.
    ``log_output`` streams every cell's output to this process's log as it comes (hours-long
    runs on Kaggle), instead of only into the executed notebook."""
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    executed = []
    for nb in notebook_paths(only, notebooks):
        nb_params = {"out_dir": str(out / nb.stem), "run_dir": str(out),
                     **params.get("*", {}), **params.get(nb.stem, {})}
        target = out / nb.name
        print(f"[pixelbyte] {nb.stem}: executing -> {target}", flush=True)
        start = time.time()
        pm.execute_notebook(str(nb), str(target), parameters=nb_params, kernel_name=kernel,
                            cwd=str(notebooks), progress_bar=progress, log_output=log_output)
        print(f"[pixelbyte] {nb.stem}: done in {time.time() - start:.0f} s", flush=True)
        executed.append(target)
    return executed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="run folder (default runs/<timestamp>)")
    ap.add_argument("--params", default=None, help="JSON file of parameter overrides")
    ap.add_argument("--only", nargs="*", default=None, help="notebook names to run (default all)")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    ap.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_*.ipynb notebooks")
    ap.add_argument("--log-output", action="store_true",
                    help="stream cell outputs to the log (no progress bar): long unattended runs")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    executed = run(out.resolve(), load_params(args.params), args.only, args.kernel,
                   progress=not args.log_output, notebooks=Path(args.notebooks), log_output=args.log_output)
    print("\n[pixelbyte] finished. Look at:")
    for nb in executed:
        pics = sorted((nb.parent / nb.stem).glob("*.png"))
        print(f"  {nb}  ({len(pics)} PNG, outputs in {nb.parent / nb.stem})")


if __name__ == "__main__":
    main()
