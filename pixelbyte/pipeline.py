"""The main job: execute the notebooks in order with papermill into one run folder.

    python -m pixelbyte.pipeline                      # CPU-sized defaults, embedded dataset
    python -m pixelbyte.pipeline --params p.json      # per-notebook parameter overrides
    python -m pixelbyte.pipeline --out runs/mine --only 01_data_exploration
    python -m pixelbyte.pipeline --prepare-only --out build/nbval --params notebooks/params_ci.json

Run it from the repository root (notebooks in ``./notebooks``, runs in ``./runs``). Each
``NN_name.ipynb`` is executed to ``<out>/NN_name.ipynb`` with ``out_dir=<out>/NN_name`` (its
PNG/CSV files), ``run_dir=<out>`` (earlier notebooks' outputs, e.g. the checkpoint) and the params
file's overrides, ``{"02_training": {"model": "lstm"}, "*": {"seed": 1}}`` ("*": every notebook
with that parameter); unknown names are refused. ``--prepare-only`` injects without executing.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

from .config import _closest, looks_like_path

NOTEBOOKS = Path("notebooks")   # the default: ./notebooks of the current directory (the repository root)
PATH_PARAMS = ("dataset", "checkpoint")  # made absolute from the caller's folder: notebooks run in their own


def notebook_paths(only: list[str] | None = None, folder: Path | None = None) -> list[Path]:
    """The project's notebooks ``NN_name.ipynb`` in ``folder`` (default ./notebooks), in order."""
    paths = sorted(Path(folder or NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"))
    if only is not None:
        if not only:
            raise ValueError("--only names no notebook: name the ones to run (--only 02_training 03_generation) "
                             "or leave --only out to run them all")
        names = [p.stem for p in paths]
        unknown = [name for name in only if name not in names]
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown}{_closest(unknown[0], names, cutoff=0.5)}")
        paths = [p for p in paths if p.stem in only]
    if not paths:
        raise ValueError(f"no notebooks NN_*.ipynb in {Path(folder or NOTEBOOKS).resolve()}" + (
            "" if folder else " (./notebooks of the current directory: run from the repository root, "
                              "or pass the folder: --notebooks)"))
    return paths


def parameters(notebook: Path) -> dict:
    """The names and default values of a notebook's tagged ``parameters`` cell."""
    nb = json.loads(Path(notebook).read_text())
    cell = next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def check_params(params: dict, folder: Path | None = None, source: str = "params") -> dict:
    """``params``, after refusing any notebook or parameter name no notebook has (a typo would use the default)."""
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"{source}: expected {{notebook name or '*': {{parameter: value}}}}")
    known = {p.stem: set(parameters(p)) for p in notebook_paths(folder=folder)}
    for notebook, values in params.items():
        if notebook != "*" and notebook not in known:
            raise ValueError(f"{source}: unknown notebook {notebook!r}{_closest(notebook, known, cutoff=0.5)}")
        valid = set().union(*known.values()) if notebook == "*" else known[notebook]
        for name in values:
            if name not in valid:
                raise ValueError(f"{source}: {notebook!r} has no parameter {name!r}{_closest(name, valid, cutoff=0.5)}")
    return params


def load_params(path: str | None, folder: Path | None = None) -> dict:
    """A params JSON file, checked ({} without one); relative ``dataset`` / ``checkpoint`` paths made absolute."""
    if path is None:
        return {}
    try:
        params = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--params {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--params {path}: not valid JSON ({err})") from None
    params = check_params(params, folder, source=str(path))
    return {notebook: {k: os.path.abspath(os.path.expanduser(v)) if k in PATH_PARAMS and looks_like_path(v) else v
                       for k, v in values.items()} for notebook, values in params.items()}


def notebook_params(notebook: Path, out: Path, params: dict) -> dict:
    """What one notebook gets: its out_dir and run_dir, the '*' values it declares, its own."""
    own = parameters(notebook)
    shared = {k: v for k, v in params.get("*", {}).items() if k in own}
    return {"out_dir": str(out / notebook.stem), "run_dir": str(out), **shared, **params.get(notebook.stem, {})}


def new_run_folder(root: Path = Path("runs")) -> Path:
    """``root/<timestamp>``, created exclusively: two jobs started in the same second get two folders."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        folder = root / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {root}")


def run(out: Path, params: dict, only: list[str] | None = None, kernel: str | None = None,
        progress: bool = True, notebooks: Path | None = None, prepare_only: bool = False,
        log_output: bool = False) -> list[Path]:
    """Execute (or only prepare) the notebooks in ``notebooks``; returns their paths. ``log_output`` streams
    cell outputs to stdout / stderr (papermill's own goes to a logger nothing shows outside its CLI)."""
    import papermill as pm

    notebooks = Path(notebooks or NOTEBOOKS).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for nb in notebook_paths(only, notebooks):
        target = out / nb.name
        start = time.time()
        if not prepare_only:
            print(f"[pixelbyte] {nb.stem}: executing -> {target}", flush=True)
        pm.execute_notebook(str(nb), str(target), parameters=notebook_params(nb, out, params),
                            kernel_name=kernel, cwd=str(notebooks), progress_bar=progress and not prepare_only,
                            prepare_only=prepare_only,
                            **({"stdout_file": sys.stdout, "stderr_file": sys.stderr} if log_output else {}))
        if not prepare_only:
            print(f"[pixelbyte] {nb.stem}: done in {time.time() - start:.0f} s", flush=True)
        done.append(target)
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="run folder (default: a new runs/<timestamp>)")
    ap.add_argument("--params", default=None, help="JSON file of parameter overrides")
    ap.add_argument("--only", nargs="*", default=None, help="notebook names to run (default all)")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    ap.add_argument("--notebooks", default=None, help="folder of NN_*.ipynb notebooks (default ./notebooks)")
    ap.add_argument("--prepare-only", action="store_true", help="inject the parameters, do not execute")
    ap.add_argument("--log-output", action="store_true",
                    help="stream cell outputs to the log (no progress bar): long unattended runs")
    args = ap.parse_args(argv)
    folder = Path(args.notebooks) if args.notebooks else None
    try:
        params = load_params(args.params, folder)
        notebook_paths(args.only, folder)
        out = (Path(args.out) if args.out else new_run_folder()).resolve()
    except (ValueError, OSError) as err:
        sys.exit(f"pixelbyte.pipeline: {err}")
    start = time.time()
    done = run(out, params, args.only, args.kernel, progress=not args.log_output, notebooks=folder,
               prepare_only=args.prepare_only, log_output=args.log_output)
    if args.prepare_only:
        return
    print(f"\n[pixelbyte] finished in {time.time() - start:.0f} s. Look at:")
    for nb in done:
        print(f"  {nb}  ({len(list((nb.parent / nb.stem).glob('*.png')))} PNG, outputs in {nb.parent / nb.stem})")


if __name__ == "__main__":
    main()
