"""PixelByte runner: the code of the `pixelbyte-runner` Kaggle script kernel (GPU T4 x2).

On Kaggle (no arguments; `python kaggle/cli.py push` uploads this file):
 1. finds the bundle dataset under /kaggle/input by its `pixelbyte-bundle.json` (mount paths
    vary: /kaggle/input/<slug>/ or /kaggle/input/datasets/<user>/<slug>/);
 2. installs `pixelbyte[run]` from the bundle's wheel with pip's own extras and constraints:
    the package, its requirements and what executing notebooks needs (papermill, ipykernel),
    offline from the bundle first, PyPI when internet is on, never replacing Kaggle's torch;
 3. with a GPU, installs the pinned mamba-ssm + causal-conv1d (bundle wheels, else their
    release wheels for this torch, else the sdists) within a time limit, logging pip, and keeps
    them only if a CUDA forward + backward through them matches the PyTorch scan. Otherwise
    BysMamba uses the pure-PyTorch scan; the log and runner.json say why;
 4. fits the parameters to the session (GPUs present; no fp16 AMP for BysMamba) and sets
    NCCL for torchrun on the T4 pair (pixelbyte.kaggle_env);
 5. picks the dataset for `"dataset": "auto"`: ffurfaro/PixelBytes-Pokemon when the hub
    answers, else a PixelBytes-like parquet (image + caption columns) under /kaggle/input,
    else the embedded emoji sprites;
 6. executes each notebook with `pixelbyte.pipeline` (papermill, cell outputs streamed to the
    log) in its own process, stopped at its budget or at the run's deadline; a notebook whose
    2-process (torchrun) start failed is retried once with one process. Outputs go to
    /kaggle/working/run/; /kaggle/working/runner.json is rewritten after every notebook.

Locally (CPU, no installs, CI-sized parameters from params_ci.json):
    python kaggle/runner.py --dry-run --input /tmp/fake/input --working /tmp/fake/working

Paths: --input / --working, else $KAGGLE_INPUT / $KAGGLE_WORKING, else /kaggle/input and
/kaggle/working. Parameters: --params FILE, else the JSON that `kaggle/cli.py push` embedded below
(a copy of kaggle/params_paper.json), else the bundle's params_paper.json (params_ci.json with
--dry-run). Their "runner" entry sets deadline_s, kernel_install_s and budget_s per notebook.
Standard library only until pixelbyte is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python kaggle/cli.py push` replaces the next line with the parameters it embeds.
EMBEDDED_PARAMS = None

BUNDLE_MARKER = "pixelbyte-bundle.json"
HUB_DATASET = "ffurfaro/PixelBytes-Pokemon"   # = pixelbyte.config.HUB_DATASET (the runner runs before
                                             # pixelbyte is installed; a test checks they agree)
EMBEDDED = "embedded"
SEARCH_DEPTH = 6            # /kaggle/input/datasets/<user>/<slug>/<folder>/<file>
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")
RUN_FOLDER = "run"
# The "runner" entry of a params file. Kaggle stops a session after 12 h; the default deadline
# leaves an hour for saving /kaggle/working. The deadline counts from the runner's start.
RUNNER_SETTINGS = {"deadline_s": 11 * 3600, "kernel_install_s": 15 * 60, "budget_s": {}}
MIN_NOTEBOOK_S = 60         # a notebook with less time left than this is skipped
STOP_GRACE_S = 60           # after SIGINT, how long a stopped notebook gets to shut its kernel down
TORCH_PROBE = ("import json, sys, torch; gpu = torch.cuda.is_available(); print(json.dumps({"
               "'torch': torch.__version__, 'cuda': torch.version.cuda, "
               "'cxx11_abi': bool(torch._C._GLIBCXX_USE_CXX11_ABI), "
               "'python': f'cp{sys.version_info[0]}{sys.version_info[1]}', "
               "'gpus': torch.cuda.device_count() if gpu else 0}))")


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
            "`python kaggle/cli.py upload`), or pass --input")
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


def hub_dataset_loads(name: str, timeout_s: float = 600) -> tuple[bool, str]:
    """(loads, detail): one row of the hub dataset through pixelbyte's loader, in a fresh process
    (a renamed, gated or changed dataset fails here, not in the notebooks)."""
    probe = f"from pixelbyte import data; print(len(data.load_pixelbytes({name!r}, limit=1)))"
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"loading one row took over {timeout_s:.0f} s"
    if result.returncode == 0:
        return True, "one row loads"
    return False, (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]


def resolve_dataset(input_dir: Path, bundle: Path, allow_hub: bool) -> tuple[str, str]:
    """(dataset source, why) for ``"dataset": "auto"``: the hub dataset if one row of it loads,
    else a local parquet, else embedded."""
    hub = "no hub access"
    if allow_hub and hub_reachable():
        loads, detail = hub_dataset_loads(HUB_DATASET)
        if loads:
            return HUB_DATASET, f"the Hugging Face hub answers and {detail}"
        hub = f"{HUB_DATASET} does not load ({detail})"
        log(f"WARNING: {hub}; falling back to a PixelBytes parquet under {input_dir}, else the embedded sprites")
    local = find_local_dataset(input_dir, exclude=bundle)
    if local:
        return local, f"{hub}; PixelBytes-like parquet under {input_dir}"
    return EMBEDDED, f"{hub} and no PixelBytes parquet under the input folder"


# --------------------------------------------------------------------------------------------
# Processes with a time limit


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc). A Jupyter kernel and torch elastic's
    workers each start a session of their own: no one process group holds them all."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])     # after "pid (name) state"
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue += children.get(tree[-1], [])
    return tree


def run_process(cmd: list[str], timeout_s: float | None = None, env: dict | None = None) -> int | None:
    """Run ``cmd`` in a session of its own. Past ``timeout_s`` the session gets SIGINT (papermill
    then shuts its Jupyter kernel down), STOP_GRACE_S to finish, then every process of its tree,
    as it was when the time was up, gets SIGKILL (a DDP run's workers hold the GPUs). Returns the
    exit code, or None when it was stopped."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log(f"time limit of {timeout_s:.0f} s reached: stopping {shlex.join(cmd[:6])} ...")
        tree = process_tree(proc.pid)          # before SIGINT: orphans lose their parent link
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)
        for pid in dict.fromkeys(tree + [p for root in tree for p in process_tree(root)]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return None


# --------------------------------------------------------------------------------------------
# Installing (never the CUDA torch that Kaggle ships)


def torch_facts() -> dict:
    """torch version, CUDA version, C++ ABI, Python tag and visible GPUs, asked in a fresh
    process (the runner itself never initialises CUDA). {"gpus": 0} without torch."""
    result = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"gpus": 0, "torch": None, "cuda": None}


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


def pip(*args: str, timeout_s: float | None = None) -> str:
    """`pip install ARGS`, its output in the log; "ok", "pip exit code N" or "timed out after N s"."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-input", "--progress-bar", "off", *args]
    log("$ " + shlex.join(cmd) + (f"   # at most {timeout_s:.0f} s" if timeout_s else ""))
    # An ephemeral Kaggle VM: allow pip even if the image marks its Python as externally managed.
    env = dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    started = time.time()
    code = run_process(cmd, timeout_s, env)
    if code == 0:
        return "ok"
    return f"timed out after {time.time() - started:.0f} s" if code is None else f"pip exit code {code}"


def pip_uninstall(*names: str) -> None:
    cmd = [sys.executable, "-m", "pip", "uninstall", "-y", *names]
    log("$ " + shlex.join(cmd))
    subprocess.run(cmd, env=dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1"))


def install_pixelbyte(bundle: Path, wheel: str, online: bool, constraints: Path) -> None:
    """``pixelbyte[run]`` from the bundle's wheel: pip resolves the requirements and the `run`
    extra itself (papermill, ipykernel: not the notebook-editing tools); offline first."""
    path = bundle / wheel
    if not path.is_file():
        raise SystemExit(f"[runner] the bundle {bundle} has no {wheel}: rebuild it with "
                         "`python kaggle/cli.py bundle` and upload it again")
    requirement = f"pixelbyte[run] @ {path.resolve().as_uri()}"
    if pip(requirement, "-c", str(constraints), "--no-index", "--find-links", str(bundle)) == "ok":
        return
    if online and pip(requirement, "-c", str(constraints)) == "ok":
        return
    raise SystemExit("[runner] pixelbyte's requirements are neither installed, nor in the bundle's "
                     "wheels, nor reachable on PyPI (internet off?). Turn the kernel's internet on, "
                     "or add the missing wheels to the bundle (kaggle/cli.py bundle --wheels ...).")


# mamba-ssm / causal-conv1d: releases with prebuilt wheels for torch 2.6-2.10, Python 3.10-3.13,
# CUDA 11-13 and sm_75 (T4), pinned as the pyproject `gpu` extra (a test checks they agree).
# causal-conv1d 1.6.1's wheels are in the release v1.6.1.post4, where `pip install` does not look
# (it compiles instead): hence direct wheel URLs. (name on PyPI, version, release folder)
KERNEL_PACKAGES = (
    ("causal-conv1d", "1.6.1", "https://github.com/Dao-AILab/causal-conv1d/releases/download/v1.6.1.post4"),
    ("mamba-ssm", "2.3.1", "https://github.com/state-spaces/mamba/releases/download/v2.3.1"),
)


def prebuilt_wheel_urls(torch_version: str, cuda_version: str, python_tag: str, cxx11_abi: bool,
                        platform: str = "linux_x86_64") -> list[str]:
    """The release wheels of KERNEL_PACKAGES for this torch, named as their setup.py names them:
    ``<name>-<version>+cu<CUDA major>torch<major.minor>cxx11abi<TRUE|FALSE>-<py>-<py>-<platform>``.
    ``torch_version`` e.g. "2.10.0+cu128", ``cuda_version`` torch.version.cuda ("12.8"),
    ``python_tag`` "cp312". A combination outside the build matrix gives a 404: pip fails fast."""
    torch_mm = ".".join(torch_version.split("+")[0].split(".")[:2])
    local = f"cu{cuda_version.split('.')[0]}torch{torch_mm}cxx11abi{str(bool(cxx11_abi)).upper()}"
    return [f"{release}/{name.replace('-', '_')}-{version}+{local}-{python_tag}-{python_tag}-{platform}.whl"
            for name, version, release in KERNEL_PACKAGES]


def pinned_requirements() -> list[str]:
    """``name==version`` of KERNEL_PACKAGES (the sdists on PyPI; the pyproject `gpu` extra)."""
    return [f"{name}=={version}" for name, version, _ in KERNEL_PACKAGES]


def kernel_check_verdict(out, ref_out, grad, ref_grad, tolerance: float = 1e-3) -> tuple[bool, str]:
    """Do the kernels' output and input gradient (torch tensors) match the PyTorch scan's? The
    error is relative to the reference's largest magnitude."""
    import torch

    for name, value in (("output", out), ("input gradient", grad)):
        if not torch.isfinite(value).all():
            return False, f"the CUDA kernels' {name} has NaN or inf"
    errors = {name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
              for name, a, b in (("output", out, ref_out), ("input gradient", grad, ref_grad))}
    worst = max(errors, key=errors.get)
    if errors[worst] > tolerance:
        return False, (f"the CUDA kernels' {worst} differs from the PyTorch scan by {errors[worst]:.1e} "
                       f"(relative, allowed {tolerance:.0e})")
    return True, f"forward + backward match the PyTorch scan (relative error {errors[worst]:.1e})"


def check_mamba_kernels(batch: int = 2, length: int = 64, d_model: int = 16) -> tuple[bool, str]:
    """(works, detail): one forward + backward of a small Mamba layer through mamba_ssm's CUDA
    kernels, compared with the same weights on the pure-PyTorch scan. False without CUDA.
    Needs torch and pixelbyte: `runner.py --check-kernels` runs it once they are installed."""
    import copy

    import torch

    from pixelbyte.mamba import Mamba

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    torch.manual_seed(0)
    x0 = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(1))  # (B, L, D)
    results = []
    try:
        layer = Mamba(d_model, d_state=8, backend="cuda", device="cuda")
        reference = copy.deepcopy(layer)
        reference.backend = "torch"                        # same weights, pure-PyTorch scan
        for module in (layer, reference):
            x = x0.cuda().requires_grad_()
            y = module(x)                                  # (B, L, D)
            y.square().mean().backward()
            torch.cuda.synchronize()
            results.append((y.detach().float().cpu(), x.grad.float().cpu()))
    except Exception as err:  # ImportError, "no kernel image is available", undefined symbols...
        first_line = (str(err).strip().splitlines() or [""])[0]
        return False, f"{type(err).__name__}: {first_line}"
    (out, grad), (ref_out, ref_grad) = results
    ok, detail = kernel_check_verdict(out, ref_out, grad, ref_grad)
    return ok, f"{detail} on {torch.cuda.get_device_name()}"


def kernels_work(script: Path | None = None, timeout_s: float = 600) -> tuple[bool, str]:
    """check_mamba_kernels in a fresh process (so it imports what pip has just installed, and a
    crashing extension cannot take the runner down): ``script`` (default this file; the bundle's
    copy on Kaggle, where __file__ may be unset) with --check-kernels."""
    cmd = [sys.executable, str(script or Path(__file__).resolve()), "--check-kernels"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"the kernel check took over {timeout_s:.0f} s"
    try:
        verdict = json.loads(result.stdout.strip().splitlines()[-1])
        return bool(verdict["ok"]), str(verdict["detail"])
    except (IndexError, KeyError, json.JSONDecodeError):
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return False, f"the kernel check crashed (exit code {result.returncode}): {last}"


def kernel_sources(bundle: Path, online: bool, constraints: Path, facts: dict) -> list[tuple[str, list[str]]]:
    """(source, pip arguments) for the pinned kernels, fastest first: wheels in the bundle; the
    releases' prebuilt wheels for this torch / CUDA / Python; the sdists (their setup.py guesses
    a wheel and, when none fits, compiles CUDA for a long time: the time limit stops that)."""
    sources = []
    local = sorted(bundle.glob("causal_conv1d-*.whl")) + sorted(bundle.glob("mamba_ssm-*.whl"))
    if local:
        sources.append(("bundle wheels", ["--no-deps", *map(str, local)]))
    if online and facts.get("torch") and facts.get("cuda"):
        urls = prebuilt_wheel_urls(facts["torch"], facts["cuda"], facts["python"], facts["cxx11_abi"])
        sources.append(("release wheels", ["-c", str(constraints), *urls]))
    if online:
        sources.append(("PyPI sdists", ["--no-build-isolation", "-c", str(constraints),
                                        *pinned_requirements()]))
    return sources


def install_mamba_kernels(bundle: Path, online: bool, constraints: Path, facts: dict, limit_s: float) -> dict:
    """Install mamba-ssm + causal-conv1d for BysMamba, all attempts within ``limit_s`` seconds,
    and keep them only if their CUDA kernels pass the check. Returns what runner.json records:
    {"backend": "cuda" | "torch", "reason": ..., "attempts": [{"source", "outcome"}], "seconds"}."""
    started, attempts = time.time(), []

    def result(backend: str, reason: str) -> dict:
        if backend == "torch":
            log(f"WARNING: BysMamba uses the pure-PyTorch scan (backend torch: same results, slower) "
                f"because {reason}")
        else:
            log(f"BysMamba uses mamba-ssm's CUDA kernels: {reason}")
        return {"backend": backend, "reason": reason, "attempts": attempts,
                "seconds": round(time.time() - started, 1)}

    if not facts.get("gpus"):
        return result("torch", "there is no GPU")
    ok, detail = kernels_work(bundle / "runner.py")
    if ok:
        return result("cuda", f"already installed; {detail}")
    for source, args in kernel_sources(bundle, online, constraints, facts):
        left = limit_s - (time.time() - started)
        if left <= 0:
            attempts.append({"source": source, "outcome": f"not tried: the {limit_s:.0f} s limit is spent"})
            continue
        outcome = pip(*args, timeout_s=left)
        if outcome == "ok":
            ok, detail = kernels_work(bundle / "runner.py")
            outcome = f"installed; kernel check: {detail}"
        attempts.append({"source": source, "outcome": outcome})
        if ok:
            return result("cuda", detail)
    if not attempts:
        return result("torch", "no internet and no causal_conv1d / mamba_ssm wheels in the bundle")
    # Kernels that import but fail the check must not be picked by backend "auto": remove them.
    pip_uninstall("mamba-ssm", "causal-conv1d")
    return result("torch", "; ".join(f"{a['source']}: {a['outcome']}" for a in attempts))


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
        return json.loads(json.dumps(EMBEDDED_PARAMS)), "embedded by kaggle/cli.py push"
    elif (bundle / name).exists():
        source = bundle / name
    else:
        # next to this file (Kaggle may run the script in a kernel where __file__ is unset)
        source = Path(globals().get("__file__", "runner.py")).resolve().parent / name
    params = json.loads(source.read_text())
    if not isinstance(params, dict):      # (its notebooks and names are checked once pixelbyte is in)
        raise SystemExit(f"[runner] {source}: expected a JSON object")
    return params, str(source)


def split_settings(params: dict) -> tuple[dict, dict]:
    """(notebook parameters, runner settings): the params file's "runner" entry over RUNNER_SETTINGS."""
    params = dict(params)
    settings = {**RUNNER_SETTINGS, **params.pop("runner", {})}
    unknown = set(settings) - set(RUNNER_SETTINGS)
    if unknown:
        raise SystemExit(f"[runner] unknown runner settings {sorted(unknown)}; allowed: {sorted(RUNNER_SETTINGS)}")
    return params, settings


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


def apply_amp_policy(params: dict) -> tuple[dict, dict[str, str]]:
    """Turn fp16 AMP off for the model families pixelbyte.kaggle_env refuses it for; returns the
    parameters and {notebook: why} for every notebook that asked for AMP."""
    from pixelbyte.kaggle_env import amp_decision

    params, decisions = json.loads(json.dumps(params)), {}
    for name, values in params.items():
        if values.get("amp"):
            values["amp"], decisions[name] = amp_decision(values.get("model", ""), True)
            log(f"{name}: {decisions[name]}")
    return params, decisions


# --------------------------------------------------------------------------------------------
# Running


def stage_notebooks(bundle: Path, scratch: Path) -> Path:
    """Copy the bundle's notebooks to a writable folder (Kaggle inputs are read-only)."""
    from pixelbyte import pipeline

    target = scratch / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    for nb in pipeline.notebook_paths(folder=bundle):
        shutil.copy2(nb, target / nb.name)
    return target


def notebook_error(executed: Path) -> str | None:
    """"ename: evalue" of the first error output in an executed notebook (papermill keeps it)."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for output in (o for cell in cells for o in cell.get("outputs", [])):
        if output.get("output_type") == "error":
            lines = (output.get("evalue") or "").strip().splitlines()
            return f"{output.get('ename')}: {lines[-1] if lines else ''}"
    return None


def ddp_start_failed(values: dict, out_dir: Path) -> bool:
    """A multi-process (torchrun) training that failed before it logged one step: the way NCCL
    fails on a T4 pair, worth one retry with a single process."""
    if not (isinstance(values.get("nproc"), int) and values["nproc"] > 1):
        return False
    metrics = out_dir / "metrics.csv"        # the header is written at start, a row every 10 steps
    return not metrics.exists() or len(metrics.read_text().splitlines()) <= 1


def run_notebook(name: str, params: dict, timeout_s: float, notebooks: Path, out: Path, scratch: Path,
                 kernel: str | None, prepare_only: bool = False) -> str:
    """Execute one notebook with pixelbyte.pipeline in its own process; "ok" or "failed: why"."""
    params_file = scratch / f"params_{name}.json"
    params_file.write_text(json.dumps(params, indent=1))
    cmd = [sys.executable, "-m", "pixelbyte.pipeline", "--out", str(out), "--params", str(params_file),
           "--only", name, "--notebooks", str(notebooks), "--log-output", *(["--kernel", kernel] if kernel else []),
           *(["--prepare-only"] if prepare_only else [])]
    log(f"{name}: executing, at most {timeout_s:.0f} s")
    code = run_process(cmd, timeout_s)
    if code == 0:
        return "ok"
    error = notebook_error(out / f"{name}.ipynb")
    if code is None:
        return f"failed: stopped after {timeout_s:.0f} s (its budget or the run's deadline)" + (
            f"; {error}" if error else "")
    return f"failed: {error or f'exit code {code}'}"


def run_notebooks(names: list[str], params: dict, settings: dict, started: float, out: Path,
                  summary: dict, write, run=run_notebook) -> None:
    """Execute ``names`` in order, each within its budget (``settings["budget_s"]``) and the run's
    deadline (``settings["deadline_s"]`` after ``started``); a notebook whose multi-process start
    failed runs once more with one process. ``summary["status"]`` and ``summary["notebooks"]``
    are updated and ``write()`` called around every notebook, so a run killed by Kaggle still
    leaves its summary."""
    def attempt(name: str, params: dict) -> str:
        entry = summary["notebooks"][name]
        deadline_left = settings["deadline_s"] - (time.time() - started)
        budget_left = settings["budget_s"].get(name, float("inf")) - entry.get("seconds", 0)
        timeout = min(deadline_left, budget_left)
        if timeout < MIN_NOTEBOOK_S:
            return (f"skipped: {deadline_left:.0f} s left before the run's deadline" if deadline_left <= budget_left
                    else f"skipped: {budget_left:.0f} s left of its budget")
        summary["status"][name] = "running"
        entry["timeout_s"] = round(timeout)
        write()
        t0 = time.time()
        status = run(name, params, timeout)
        entry["seconds"] = round(entry.get("seconds", 0) + time.time() - t0, 1)
        return status

    for name in names:
        status = attempt(name, params)
        if status.startswith("failed") and ddp_start_failed(params.get(name, {}), out / name):
            log(f"{name}: the {params[name]['nproc']}-process start failed ({status}); retrying with one process")
            summary["notebooks"][name]["retried_single_process"] = status
            params = {**params, name: {**params[name], "nproc": 1}}
            status = attempt(name, params)
        summary["status"][name] = status
        write()
        log(f"{name}: {status} ({summary['notebooks'][name].get('seconds', 0):.0f} s)")


def set_up_session(bundle: Path, manifest: dict, settings: dict, scratch: Path, dry_run: bool) -> dict:
    """Install pixelbyte[run], the Mamba kernels (GPU only) and a Jupyter kernel for this Python;
    returns what runner.json records of the session."""
    if dry_run:
        log("dry run: no installs, no hub, CPU-sized parameters")
        return {"internet": False, "torch": {"gpus": 0}, "gpus": 0, "jupyter_kernel": None,
                "mamba": {"backend": "torch", "reason": "dry run", "attempts": []}, "mamba_backend": "torch"}
    online, facts = reachable("pypi.org"), torch_facts()
    log(f"internet: {'on' if online else 'off'}; torch: {facts}")
    constraints = torch_constraints(scratch)
    install_pixelbyte(bundle, manifest["wheel"], online, constraints)
    importlib.invalidate_caches()
    mamba = install_mamba_kernels(bundle, online, constraints, facts, settings["kernel_install_s"])
    return {"internet": online, "torch": facts, "gpus": facts["gpus"], "jupyter_kernel": register_kernel(),
            "mamba": mamba, "mamba_backend": mamba["backend"]}


def choose_dataset(params: dict, override: str | None, input_dir: Path, bundle: Path,
                   allow_hub: bool) -> tuple[dict, str | None, str]:
    """``params`` with ``"dataset": "auto"`` (or every dataset, given ``override``) replaced;
    returns them, the dataset and why."""
    params = json.loads(json.dumps(params))
    dataset, why = (override, "--dataset") if override else (None, "")
    if dataset is None and any(v.get("dataset") == "auto" for v in params.values()):
        dataset, why = resolve_dataset(input_dir, bundle, allow_hub)
    for values in params.values():
        if dataset is not None and (override or values.get("dataset") == "auto"):
            values["dataset"] = dataset
    if dataset is not None:
        log(f"dataset: {dataset} ({why})")
    return params, dataset, why


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
    ap.add_argument("--prepare-only", action="store_true",
                    help="stage the notebooks with their parameters injected, do not execute them")
    ap.add_argument("--check-kernels", action="store_true",
                    help="only check that mamba-ssm's CUDA kernels match the PyTorch scan; print JSON")
    # Kaggle starts scripts with its own argv; ignore what we do not know.
    args, unknown = ap.parse_known_args(argv)
    if args.check_kernels:
        ok, detail = check_mamba_kernels()
        print(json.dumps({"ok": ok, "detail": detail}), flush=True)
        return 0 if ok else 1
    if unknown:
        log(f"ignoring unknown arguments {unknown}")
    input_dir, working = Path(args.input), Path(args.working)
    working.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bundle = find_bundle(input_dir)
    manifest = json.loads((bundle / BUNDLE_MARKER).read_text())
    log(f"bundle {bundle}: pixelbyte {manifest.get('version')} (commit {manifest.get('git_commit')})")
    params, params_source = load_params(args.params, bundle, args.dry_run)
    params, settings = split_settings(params)
    log(f"parameters from {params_source}; deadline {settings['deadline_s']:.0f} s, budgets {settings['budget_s']}")
    scratch = Path(tempfile.mkdtemp(prefix="pixelbyte-runner-"))
    summary = {"status": {}, "notebooks": {}, "params_source": params_source, "dry_run": args.dry_run,
               "settings": settings, "bundle": str(bundle), "manifest": manifest}

    def write() -> None:
        summary["wall_time_s"] = round(time.time() - started, 1)
        (working / "runner.json").write_text(json.dumps(summary, indent=2) + "\n")

    write()
    summary.update(set_up_session(bundle, manifest, settings, scratch, args.dry_run))
    from pixelbyte import kaggle_env, pipeline

    try:                                                # unknown notebooks / parameters: refused
        pipeline.check_params(params, bundle, source=params_source)
    except ValueError as err:
        raise SystemExit(f"[runner] {err}") from None
    os.environ.update(kaggle_env.torchrun_env())        # inherited by the notebooks' torchrun
    summary["nccl_env"] = {k: os.environ[k] for k in kaggle_env.NCCL_ENV}
    params = params if args.dry_run else adapt_to_gpus(params, summary["gpus"])
    params, summary["amp"] = apply_amp_policy(params)
    params, summary["dataset"], summary["dataset_reason"] = choose_dataset(
        params, args.dataset, input_dir, bundle, allow_hub=not args.dry_run)

    out = working / RUN_FOLDER
    notebooks = stage_notebooks(bundle, scratch)
    names = [p.stem for p in pipeline.notebook_paths(args.only, notebooks)]
    summary["status"] = {name: "pending" for name in names}
    summary["notebooks"] = {name: {} for name in names}          # timeout_s, seconds, retries
    summary["run_dir"] = str(out)
    (working / "params_used.json").write_text(json.dumps(params, indent=2) + "\n")
    write()
    run = functools.partial(run_notebook, notebooks=notebooks, out=out, scratch=scratch,
                            kernel=summary["jupyter_kernel"], prepare_only=args.prepare_only)
    run_notebooks(names, params, settings, started, out, summary, write, run)
    shutil.rmtree(scratch, ignore_errors=True)
    summary["outputs"] = list_outputs(working)
    write()
    log(f"done in {summary['wall_time_s']:.0f} s: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()))
    log(f"outputs under {working}: " + ", ".join(f"{len(v)} {k}" for k, v in summary["outputs"].items()))
    return 0 if all(v == "ok" for v in summary["status"].values()) else 1


if __name__ == "__main__":
    exit_code = main()
    if exit_code:  # no SystemExit(0): Kaggle may run the script inside an IPython kernel
        sys.exit(exit_code)
