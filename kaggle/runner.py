"""PixelByte runner: the code of the `pixelbyte-runner` Kaggle script kernel (GPU T4 x2).

On Kaggle (no arguments; `python -m pixelbyte.kaggle_cli push` uploads this file):
 1. finds the bundle dataset under /kaggle/input by its `pixelbyte-bundle.json` (mount paths
    vary: /kaggle/input/<slug>/ or /kaggle/input/datasets/<user>/<slug>/);
 2. installs pixelbyte without touching Kaggle's CUDA torch: the wheel with --no-deps, then its
    non-torch requirements (offline from the bundle's wheels first, PyPI when internet is on),
    every pip call constrained to the installed torch;
 3. with a GPU, installs mamba-ssm + causal-conv1d (bundle wheels, else PyPI) so BysMamba runs
    its CUDA kernels; without them it says so and BysMamba uses the pure-PyTorch scan;
 4. picks the dataset for `"dataset": "auto"`: ffurfaro/PixelBytes-Pokemon when the hub
    answers, else a PixelBytes-like parquet (image + caption columns) under /kaggle/input,
    else the embedded emoji sprites;
 5. executes the notebooks with `pixelbyte.pipeline` (papermill) into /kaggle/working/run/:
    executed notebooks, PNG, CSV and checkpoints, plus /kaggle/working/runner.json.

Locally (CPU, no installs, CI-sized parameters from params_ci.json):
    python kaggle/runner.py --dry-run --input /tmp/fake/input --working /tmp/fake/working

Paths: --input / --working, else $KAGGLE_INPUT / $KAGGLE_WORKING, else /kaggle/input and
/kaggle/working. Parameters: --params FILE, else the JSON that `kaggle_cli push` embedded below
(a copy of kaggle/params_paper.json), else the bundle's params_paper.json (params_ci.json with
--dry-run). Standard library only until pixelbyte is installed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# `python -m pixelbyte.kaggle_cli push` replaces the next line with the parameters it embeds.
EMBEDDED_PARAMS = None

BUNDLE_MARKER = "pixelbyte-bundle.json"
HUB_DATASET = "ffurfaro/PixelBytes-Pokemon"
EMBEDDED = "embedded"
SEARCH_DEPTH = 6            # /kaggle/input/datasets/<user>/<slug>/<folder>/<file>
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")
RUN_FOLDER = "run"


def log(message: str) -> None:
    print(f"[runner] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Finding things under /kaggle/input


def walk_files(root: Path, max_depth: int = SEARCH_DEPTH):
    """Files under ``root`` at most ``max_depth`` folders deep (mounts can be deep and large)."""
    root = Path(root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = len(Path(folder).relative_to(root).parts)
        if depth >= max_depth:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def find_bundle(input_dir: Path) -> Path:
    """The folder holding the bundle marker; the shallowest one if several are mounted."""
    found = sorted((p for p in walk_files(input_dir) if p.name == BUNDLE_MARKER),
                   key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise SystemExit(
            f"[runner] no {BUNDLE_MARKER} under {input_dir}: attach the bundle dataset to the "
            "kernel (kernel-metadata.json 'dataset_sources', uploaded with "
            "`python -m pixelbyte.kaggle_cli upload`), or pass --input")
    if len(found) > 1:
        log(f"several bundles found, using {found[0].parent}: {[str(p.parent) for p in found]}")
    return found[0].parent


def parquet_columns(path: Path) -> set[str]:
    """Column names of a parquet file (empty set if it cannot be read)."""
    try:
        import pyarrow.parquet as pq
        return set(pq.read_schema(path).names)
    except Exception:  # unreadable or pyarrow missing: not a candidate
        return set()


def find_local_dataset(input_dir: Path, exclude: Path | None = None) -> str | None:
    """A PixelBytes-like parquet source under ``input_dir`` (image + caption columns), or None.

    Files whose path mentions "pixelbyte" are preferred; among files of one folder the
    "train" ones are taken. Returns the file, or the folder when all its good files are taken.
    """
    exclude = exclude.resolve() if exclude else None
    files = [p for p in walk_files(input_dir) if p.suffix == ".parquet"
             and not (exclude and exclude in p.resolve().parents)]
    good = [p for p in files if {"image", "caption"} <= parquet_columns(p)]
    if not good:
        return None
    named = [p for p in good if "pixelbyte" in str(p).lower()]
    pool = named or good
    folder = pool[0].parent
    in_folder = [p for p in pool if p.parent == folder]
    train = [p for p in in_folder if "train" in p.name.lower()]
    chosen = train or in_folder
    all_parquet_here = [p for p in files if p.parent == folder]
    if len(chosen) == 1:
        return str(chosen[0])
    return str(folder) if len(chosen) == len(all_parquet_here) else str(chosen[0])


def reachable(host: str, timeout: float = 3.0) -> bool:
    """True if ``host`` answers on 443 (a Kaggle kernel with internet off reaches nothing)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return reachable("huggingface.co")


def resolve_dataset(input_dir: Path, bundle: Path, allow_hub: bool) -> tuple[str, str]:
    """(dataset source, why) for ``"dataset": "auto"``: hub, else local parquet, else embedded."""
    if allow_hub and hub_reachable():
        return HUB_DATASET, "the Hugging Face hub answers (internet on)"
    local = find_local_dataset(input_dir, exclude=bundle)
    if local:
        return local, f"PixelBytes-like parquet under {input_dir}"
    return EMBEDDED, "no hub access and no PixelBytes parquet under the input folder"


# --------------------------------------------------------------------------------------------
# Installing (never the CUDA torch that Kaggle ships)


def gpu_count() -> int:
    """CUDA devices torch sees (0 if torch or CUDA is missing), asked in a fresh process."""
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def torch_constraints(scratch: Path) -> Path:
    """A pip constraints file pinning the installed torch family, so no install replaces it."""
    from importlib import metadata

    pins = []
    for name in TORCH_FAMILY:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    path = scratch / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    log(f"pip constraints (keep Kaggle's torch): {pins or 'none: torch is not installed'}")
    return path


def pip_install(*args: str) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-input", *args]
    log("$ " + " ".join(cmd))
    # An ephemeral Kaggle VM: allow pip even if the image marks its Python as externally managed.
    env = dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(cmd, env=env).returncode == 0


def wheel_requirements(wheel: Path, extras: tuple[str, ...] = ("notebooks",)) -> list[str]:
    """Requires-Dist of a wheel: the base ones plus those of ``extras`` (markers dropped)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(name).decode().splitlines()
    requirements = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line.split(":", 1)[1].partition(";")
        marker = marker.replace(" ", "").replace("'", '"')
        extra = marker.split('extra=="', 1)[1].split('"', 1)[0] if 'extra=="' in marker else None
        if extra is None or extra in extras:
            requirements.append(requirement.strip())
    return requirements


def requirement_name(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i].lower().replace("_", "-")
    return requirement.lower().replace("_", "-")


def install_pixelbyte(bundle: Path, online: bool, constraints: Path) -> None:
    wheels = sorted(bundle.glob("pixelbyte-*.whl"))
    if not wheels:
        raise SystemExit(f"[runner] no pixelbyte-*.whl in the bundle {bundle}: rebuild it with "
                         "`python -m pixelbyte.kaggle_cli bundle` and upload it again")
    wheel = wheels[-1]
    if not pip_install("--no-deps", "--force-reinstall", str(wheel)):
        raise SystemExit(f"[runner] pip could not install {wheel.name}")
    deps = [r for r in wheel_requirements(wheel) if requirement_name(r) not in TORCH_FAMILY]
    log(f"pixelbyte requirements without torch: {deps}")
    if pip_install("--no-index", "--find-links", str(bundle), "-c", str(constraints), *deps):
        return
    if online and pip_install("-c", str(constraints), *deps):
        return
    raise SystemExit("[runner] pixelbyte's requirements are neither installed, nor in the bundle's "
                     "wheels, nor reachable on PyPI (internet off?). Turn the kernel's internet on, "
                     "or add the missing wheels to the bundle (kaggle_cli bundle --wheels ...).")


def mamba_works() -> bool:
    """pixelbyte's own test for mamba_ssm's CUDA kernels, in a fresh process."""
    check = ("import sys; from pixelbyte.mamba import mamba_ssm_available; "
             "sys.exit(0 if mamba_ssm_available() else 1)")
    return subprocess.run([sys.executable, "-c", check]).returncode == 0


def install_mamba(bundle: Path, online: bool, constraints: Path, n_gpus: int) -> str:
    """Install mamba-ssm + causal-conv1d on a GPU machine; returns the Mamba backend in effect."""
    if n_gpus == 0:
        log("no GPU: not installing mamba-ssm; BysMamba uses the pure-PyTorch scan (backend torch)")
        return "torch"
    if mamba_works():
        log("mamba-ssm already works: BysMamba uses its CUDA kernels")
        return "cuda"
    packages = ["causal-conv1d>=1.4", "mamba-ssm>=2.2"]
    local = sorted(bundle.glob("causal_conv1d-*.whl")) + sorted(bundle.glob("mamba_ssm-*.whl"))
    ok = bool(local) and pip_install("--no-deps", *map(str, local))
    if not ok and online:
        # --no-build-isolation: their setup.py builds against (or fetches a wheel for) this torch.
        ok = pip_install("--no-build-isolation", "-c", str(constraints), *packages)
    if ok and mamba_works():
        log("mamba-ssm installed: BysMamba uses its CUDA kernels")
        return "cuda"
    log("WARNING: mamba-ssm / causal-conv1d could not be installed or do not import "
        f"({'no internet and no such wheels in the bundle' if not (online or local) else 'see pip above'}). "
        "BysMamba falls back to the pure-PyTorch scan (backend torch): same results, slower.")
    return "torch"


def register_kernel() -> str | None:
    """A Jupyter kernel for this interpreter (the one pixelbyte was installed into)."""
    cmd = [sys.executable, "-m", "ipykernel", "install", "--user", "--name", "pixelbyte",
           "--display-name", "Python (pixelbyte)"]
    if subprocess.run(cmd, capture_output=True).returncode == 0:
        return "pixelbyte"
    log("could not register a Jupyter kernel for this Python; using the notebooks' own (python3)")
    return None


# --------------------------------------------------------------------------------------------
# Parameters


def load_params(path: str | None, bundle: Path, dry_run: bool) -> tuple[dict, str]:
    name = "params_ci.json" if dry_run else "params_paper.json"
    if path:
        source = Path(path)
    elif EMBEDDED_PARAMS is not None and not dry_run:
        return json.loads(json.dumps(EMBEDDED_PARAMS)), "embedded by kaggle_cli push"
    elif (bundle / name).exists():
        source = bundle / name
    else:
        # next to this file (Kaggle may run the script in a kernel where __file__ is unset)
        source = Path(globals().get("__file__", "runner.py")).resolve().parent / name
    params = json.loads(source.read_text())
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise SystemExit(f"[runner] {source}: expected {{notebook name or '*': {{parameter: value}}}}")
    return params, str(source)


def adapt_to_gpus(params: dict, n_gpus: int) -> dict:
    """Fit device / amp / nproc to the GPUs present (T4 x2 expected), saying what changed."""
    params = json.loads(json.dumps(params))
    for name, values in params.items():
        if values.get("device") == "cuda" and n_gpus == 0:
            log(f"WARNING {name}: no GPU in this session (did the kernel get machine_shape "
                "NvidiaTeslaT4?): device cpu, amp false, nproc 1 -- paper-sized runs will be slow")
            values["device"] = "cpu"
            values.update({k: v for k, v in (("amp", False), ("nproc", 1)) if k in values})
        if isinstance(values.get("nproc"), int) and values["nproc"] > max(1, n_gpus):
            log(f"{name}: nproc {values['nproc']} -> {max(1, n_gpus)} ({n_gpus} GPU(s) visible)")
            values["nproc"] = max(1, n_gpus)
    return params


# --------------------------------------------------------------------------------------------
# Running


def stage_notebooks(bundle: Path, scratch: Path) -> Path:
    """Copy the bundle's notebooks to a writable folder (Kaggle inputs are read-only)."""
    notebooks = sorted(bundle.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"[runner] no NN_*.ipynb notebooks in the bundle {bundle}")
    target = scratch / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        shutil.copy2(nb, target / nb.name)
    return target


def run_notebooks(notebooks: Path, out: Path, params: dict, kernel: str | None,
                  only: list[str] | None) -> dict[str, str]:
    """Execute each notebook with pixelbyte.pipeline; go on after a failure. {name: status}."""
    importlib.invalidate_caches()
    from pixelbyte import pipeline

    names = [p.stem for p in pipeline.notebook_paths(only, notebooks)]   # the bundle's notebooks
    status = {}
    for name in names:
        try:
            pipeline.run(out, params, only=[name], kernel=kernel, progress=False, notebooks=notebooks)
            status[name] = "ok"
        except Exception as err:  # keep going: later notebooks may not need this one
            last_line = (str(err).strip().splitlines() or [""])[-1]
            status[name] = f"failed: {type(err).__name__}: {last_line}"
            log(f"{name} FAILED ({type(err).__name__}); the partly executed notebook is in {out}")
    return status


def list_outputs(working: Path) -> dict[str, list[str]]:
    kinds = {"notebooks": "*.ipynb", "png": "*.png", "csv": "*.csv", "checkpoints": "*.pt",
             "safetensors": "*.safetensors"}
    return {kind: sorted(str(p.relative_to(working)) for p in working.rglob(pattern))
            for kind, pattern in kinds.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=os.environ.get("KAGGLE_INPUT", "/kaggle/input"),
                    help="where datasets are mounted (default $KAGGLE_INPUT or /kaggle/input)")
    ap.add_argument("--working", default=os.environ.get("KAGGLE_WORKING", "/kaggle/working"),
                    help="where outputs go (default $KAGGLE_WORKING or /kaggle/working)")
    ap.add_argument("--params", default=None, help="parameter JSON {notebook or '*': {name: value}}")
    ap.add_argument("--dataset", default=None, help="override the dataset of every notebook")
    ap.add_argument("--only", nargs="*", default=None, help="notebook names to run (default all)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU-sized params (params_ci.json), no installs, no hub: a local rehearsal")
    # Kaggle starts scripts with its own argv; ignore what we do not know.
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        log(f"ignoring unknown arguments {unknown}")
    input_dir, working = Path(args.input), Path(args.working)
    working.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bundle = find_bundle(input_dir)
    manifest = json.loads((bundle / BUNDLE_MARKER).read_text())
    log(f"bundle {bundle}: pixelbyte {manifest.get('version')} (commit {manifest.get('git_commit')})")
    scratch = Path(tempfile.mkdtemp(prefix="pixelbyte-runner-"))

    if args.dry_run:
        log("dry run: no installs, no hub, CPU-sized parameters")
        online, n_gpus, backend, kernel = False, 0, "torch (dry run)", None
    else:
        online = reachable("pypi.org")
        log(f"internet: {'on' if online else 'off'}")
        n_gpus = gpu_count()
        log(f"GPUs visible to torch: {n_gpus}")
        constraints = torch_constraints(scratch)
        install_pixelbyte(bundle, online, constraints)
        backend = install_mamba(bundle, online, constraints, n_gpus)
        kernel = register_kernel()

    params, params_source = load_params(args.params, bundle, args.dry_run)
    log(f"parameters from {params_source}")
    if not args.dry_run:
        params = adapt_to_gpus(params, n_gpus)
    dataset, why = (args.dataset, "--dataset") if args.dataset else (None, "")
    if dataset is None and any(v.get("dataset") == "auto" for v in params.values()):
        dataset, why = resolve_dataset(input_dir, bundle, allow_hub=not args.dry_run)
    for values in params.values():
        if dataset is not None and (args.dataset or values.get("dataset") == "auto"):
            values["dataset"] = dataset
    if dataset is not None:
        log(f"dataset: {dataset} ({why})")

    out = working / RUN_FOLDER
    notebooks = stage_notebooks(bundle, scratch)
    (working / "params_used.json").write_text(json.dumps(params, indent=2) + "\n")
    status = run_notebooks(notebooks, out, params, kernel, args.only)
    shutil.rmtree(scratch, ignore_errors=True)

    summary = {
        "status": status, "dataset": dataset, "dataset_reason": why, "params_source": params_source,
        "gpus": n_gpus, "mamba_backend": backend, "internet": online, "dry_run": args.dry_run,
        "bundle": str(bundle), "manifest": manifest, "run_dir": str(out),
        "wall_time_s": round(time.time() - started, 1), "outputs": list_outputs(working),
    }
    (working / "runner.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done in {summary['wall_time_s']:.0f} s: " + ", ".join(f"{k} {v}" for k, v in status.items()))
    log(f"outputs under {working}: " + ", ".join(f"{len(v)} {k}" for k, v in summary["outputs"].items()))
    return 0 if all(v == "ok" for v in status.values()) else 1


if __name__ == "__main__":
    exit_code = main()
    if exit_code:  # no SystemExit(0): Kaggle may run the script inside an IPython kernel
        sys.exit(exit_code)
