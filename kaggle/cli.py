"""Kaggle: build the bundle, upload it, push the runner kernel and the notebooks (GPU T4 x2),
watch them, fetch their outputs. A thin layer over the kaggle library's `KaggleApi` (kaggle >= 1.8.4).

    python kaggle/cli.py bundle               # build/kaggle/bundle/: wheel, notebooks, params, runner
    python kaggle/cli.py upload               # the bundle as the dataset {user}/pixelbyte-bundle
    python kaggle/cli.py push                 # the runner kernel {user}/pixelbyte-runner (starts it)
    python kaggle/cli.py push-notebooks       # every notebook as a notebook kernel {user}/pixelbyte-NN-name
    python kaggle/cli.py status [--wait]      # a kernel's state (default the runner)
    python kaggle/cli.py output               # the runner's outputs -> runs/kaggle-<timestamp>/
    python kaggle/cli.py setup-cell [--check] # the notebooks' install cell (kaggle/setup_cell.py)

The repository's tooling, not part of the package: it reads kaggle/, notebooks/ and writes
build/kaggle/ and runs/ of the checkout it sits in (the package itself knows no repository).

Credentials are the kaggle library's own (kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY,
KAGGLE_API_TOKEN, `kaggle auth login`). ``--user NAME`` fills the ids without them (bundle,
--print-only). Every step prints the equivalent ``kaggle`` CLI command first; ``--print-only``
stops there, so the commands can be pasted from the repository root.

The templates in ``kaggle/`` carry the placeholder ``{username}``; the staged copies under
``build/kaggle/`` have it filled in and are checked (``kernel_metadata_problems``) for what Kaggle
would refuse or, worse, accept and run on another machine than asked.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from pixelbyte import git_commit, pipeline

ROOT = Path(__file__).resolve().parent.parent      # the checkout: kaggle/ is this file's folder
KAGGLE_DIR = ROOT / "kaggle"
NOTEBOOKS_DIR = ROOT / "notebooks"
BUILD_DIR = ROOT / "build" / "kaggle"
BUNDLE_DIR = BUILD_DIR / "bundle"
KERNEL_DIR = BUILD_DIR / "kernel"
NOTEBOOK_KERNELS_DIR = BUILD_DIR / "notebooks"
SETUP_CELL = KAGGLE_DIR / "setup_cell.py"
PLACEHOLDER = "{username}"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
BUNDLE_MARKER = "pixelbyte-bundle.json"
PARAMS_FILES = ("params_paper.json", "params_ci.json")
# Requirements of pixelbyte that Kaggle's image lacks (tyro for `python -m pixelbyte.train`, with
# its own), shipped in the bundle so the setup cell and the runner install with internet off.
# Repacked from this environment's installed copies: the versions the tests ran with.
BUNDLED_REQUIREMENTS = ("tyro", "docstring-parser", "typeguard", "typing-extensions")
EMBED_LINE = "EMBEDDED_PARAMS = None"

# kaggle 1.8.4 is the first release whose `kernels push` sends kernel-metadata.json's
# machine_shape and has --accelerator (Kaggle/kaggle-cli#907); older ones drop the field
# silently and the kernel runs on the default machine. 1.8+ needs Python >= 3.11.
KAGGLE_MIN_VERSION = "1.8.4"
# GPU machine shapes (kaggle-cli docs/kernels.md, "Accelerators available as of Feb 2026";
# NvidiaTeslaT4 is "GPU T4 x2"). Some are only lent to competitions or admins: Kaggle decides.
GPU_SHAPES = ("NvidiaTeslaT4", "NvidiaTeslaT4Highmem", "NvidiaL4", "NvidiaL4X1", "NvidiaTeslaA100",
              "NvidiaH100", "NvidiaRtxPro6000")
REFUSED_SHAPES = {
    "NvidiaTeslaP100": "retired (Kaggle runs a T4 instead), and its sm_60 has no kernels in current "
                       "CUDA torch builds (cu128)",
    **{tpu: "a TPU: pixelbyte trains on CUDA GPUs" for tpu in ("TpuV38", "Tpu1VmV38", "TpuV5E8", "TpuV6E8")},
}
# Notebooks that read an earlier notebook's outputs through `run_dir` (docs/CONTRACTS.md): as
# notebook kernels they get that notebook kernel's output attached and `run_dir` pointed at it.
NOTEBOOK_INPUTS = {"03_generation": "02_training"}
NOTEBOOK_RUN_DIR = "outputs"        # the notebooks' default run_dir, relative to /kaggle/working
# Where Kaggle mounts an attached kernel's output (datasets: /kaggle/input/datasets/<user>/<slug>/;
# older sessions: /kaggle/input/<slug>/). Only a hint: the notebook searches /kaggle/input for
# what it reads (pixelbyte.kaggle_env.find_run_output).
KERNEL_OUTPUT_MOUNT = "/kaggle/input/notebooks/{user}/{slug}"
TERMINAL_STATES = ("complete", "error", "cancel_requested", "cancel_acknowledged")
# Kaggle runs at most two GPU batch sessions per account at once and refuses a third push with
# "Maximum batch GPU session count ... reached": pushes wait for a free slot and retry on it.
MAX_GPU_SESSIONS = 2
GPU_LIMIT_ERROR = "maximum batch gpu session count"
SESSION_HOURS = 12                  # a session's longest run: older kernels are not polled


class KaggleSetupError(RuntimeError):
    """Something to fix before (or after) talking to Kaggle: credentials, versions, metadata..."""


# --------------------------------------------------------------------------------------------
# The kaggle library


def kaggle_version() -> str | None:
    try:
        return metadata.version("kaggle")
    except metadata.PackageNotFoundError:
        return None


def require_kaggle(version: str | None = None) -> None:
    """Refuse a missing kaggle library, or one older than KAGGLE_MIN_VERSION."""
    version = version or kaggle_version()
    if version is None:
        raise KaggleSetupError("the kaggle library is not installed: pip install -e '.[kaggle]' "
                               f"(kaggle>={KAGGLE_MIN_VERSION}, Python >= 3.11)")
    from packaging.version import Version   # a kaggle dependency

    if Version(version) < Version(KAGGLE_MIN_VERSION):
        raise KaggleSetupError(
            f"kaggle {version} is too old: before {KAGGLE_MIN_VERSION} `kernels push` ignores machine_shape "
            f"and the kernel runs without the T4 x2. pip install -U 'kaggle>={KAGGLE_MIN_VERSION}' "
            "(Python >= 3.11)")


def kaggle_api_class():
    # `import kaggle` authenticates at import time and prints its credentials help when that
    # fails; kaggle_api() authenticates again and reports it, so the import stays quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def kaggle_api():
    """An authenticated KaggleApi (kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, an access token or
    `kaggle auth login`, in the library's order)."""
    require_kaggle()
    api = kaggle_api_class()()
    try:
        api.authenticate()
    except SystemExit:       # it has printed how to set credentials up
        raise KaggleSetupError("no Kaggle credentials (see the kaggle library's help above); "
                               "`bundle` and `--print-only` also work with --user NAME") from None
    return api


def connect(user: str | None, print_only: bool):
    """(KaggleApi, or None with --print-only; the Kaggle username). --user with --print-only
    needs no credentials at all."""
    if print_only and user:
        return None, user
    api = kaggle_api()
    return (None if print_only else api), user or api.get_config_value("username")


def call(what: str, fn, *args, **kwargs):
    """A kaggle library call whose refusals (ValueError) and HTTP errors name ``what``."""
    from requests.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except (ValueError, HTTPError) as err:
        raise KaggleSetupError(f"{what}: {err}") from err


def print_command(args: list[str], note: str = "") -> None:
    print(shlex.join(["kaggle", *args]) + (f"   # {note}" if note else ""), flush=True)


# --------------------------------------------------------------------------------------------
# Metadata: fill the templates, check them


def fill(value, user: str):
    """Replace {username} everywhere in a JSON-like value."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, user)
    if isinstance(value, list):
        return [fill(v, user) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, user) for k, v in value.items()}
    return value


def load_template(name: str) -> dict:
    return json.loads((KAGGLE_DIR / name).read_text())


def kernel_id(user: str) -> str:
    return fill(load_template(KERNEL_METADATA)["id"], user)


def dataset_id(user: str) -> str:
    return fill(load_template(DATASET_METADATA)["id"], user)


def notebook_slug(stem: str) -> str:
    """01_data_exploration -> pixelbyte-01-data-exploration (the notebook kernel's slug)."""
    return "pixelbyte-" + stem.replace("_", "-")


def kernel_metadata_problems(meta: dict, folder: Path | None = None) -> list[str]:
    """What Kaggle would refuse, or accept and run elsewhere than asked; [] if fine. The syntax
    checks are the kaggle library's (it repeats them on push); the library only warns when the
    title gives another slug than the id and never checks the machine."""
    from slugify import slugify     # python-slugify: the kaggle library's title -> slug rule

    api = kaggle_api_class()()
    problems = [f"{key}: required" for key in ("id", "title", "code_file", "language", "kernel_type")
                if not meta.get(key)]
    if problems:
        return problems
    if PLACEHOLDER in json.dumps(meta):
        problems.append(f"{PLACEHOLDER} is not filled in")
    for field, check, refs in (("id", api.validate_kernel_string, [meta["id"]]),
                               ("dataset_sources", api.validate_dataset_string, meta.get("dataset_sources", [])),
                               ("kernel_sources", api.validate_kernel_string, meta.get("kernel_sources", []))):
        for ref in refs:
            try:
                check(ref)
            except ValueError as err:
                problems.append(f"{field}={ref!r}: {err}")
    slug = meta["id"].split("/")[-1]
    if slugify(meta["title"]) != slug:
        problems.append(f"title={meta['title']!r} gives the slug {slugify(meta['title'])!r}, not {slug!r}: "
                        "Kaggle would create the kernel under another id")
    for key, allowed in (("language", api.valid_push_language_types), ("kernel_type", api.valid_push_kernel_types)):
        if meta[key] not in allowed:
            problems.append(f"{key}={meta[key]!r}: allowed {list(allowed)}")
    shape = meta.get("machine_shape")
    if shape in REFUSED_SHAPES:
        problems.append(f"machine_shape={shape!r} is refused: {REFUSED_SHAPES[shape]}; allowed {list(GPU_SHAPES)}")
    elif shape not in GPU_SHAPES:
        problems.append(f"machine_shape={shape!r}: allowed {list(GPU_SHAPES)} (NvidiaTeslaT4 is GPU T4 x2)")
    if meta.get("enable_gpu") is not True:
        problems.append(f"enable_gpu={meta.get('enable_gpu')!r}: must be true for machine_shape {shape!r}")
    if folder is not None and not (Path(folder) / meta["code_file"]).is_file():
        problems.append(f"code_file={meta['code_file']!r}: no such file in {folder}")
    return problems


def notebook_kernel_metadata(user: str, notebook: Path) -> dict:
    """The runner kernel's metadata (GPU T4 x2, the bundle attached) turned into the notebook
    kernel {user}/pixelbyte-NN-name, titled so that it slugifies to that id."""
    meta = fill(load_template(KERNEL_METADATA), user)
    meta.update(id=f"{user}/{notebook_slug(notebook.stem)}", code_file=notebook.name, kernel_type="notebook",
                title="PixelByte " + notebook.stem.replace("_", " ").title())
    if notebook.stem in NOTEBOOK_INPUTS:
        meta["kernel_sources"] = [f"{user}/{notebook_slug(NOTEBOOK_INPUTS[notebook.stem])}"]
    return meta


def check_kernel_metadata(meta: dict, folder: Path) -> None:
    problems = kernel_metadata_problems(meta, folder)
    if problems:
        raise KaggleSetupError(f"{folder / KERNEL_METADATA}:\n  " + "\n  ".join(problems))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# The notebooks' setup cell (kaggle/setup_cell.py): import pixelbyte, else install it


def setup_cell_source() -> str:
    return SETUP_CELL.read_text().rstrip("\n")


def is_setup_cell(cell) -> bool:
    """A code cell whose first line is the setup cell's first line (the marker)."""
    marker = setup_cell_source().splitlines()[0]
    return cell.cell_type == "code" and cell.source.splitlines()[:1] == [marker]


def with_setup_cell(nb):
    """``nb`` (nbformat) with the canonical setup cell as its first code cell: inserted, or an
    older copy refreshed and moved there. Other cells are left as they are."""
    import nbformat

    nb = copy.deepcopy(nb)
    found = [c for c in nb.cells if is_setup_cell(c)]
    cells = [c for c in nb.cells if not is_setup_cell(c)]
    cell = found[0] if found else nbformat.v4.new_code_cell()
    cell.source = setup_cell_source()
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    nb.cells = cells[:first_code] + [cell] + cells[first_code:]
    return nb


def read_notebook(path: Path):
    """A notebook from its .ipynb (nbformat) or its Jupytext percent .py."""
    if path.suffix == ".py":
        import jupytext
        return jupytext.read(path)
    import nbformat
    return nbformat.read(path, as_version=4)


def write_notebook(nb, path: Path) -> None:
    if path.suffix == ".py":
        import jupytext
        jupytext.write(nb, path, fmt="py:percent")
    else:
        import nbformat
        nbformat.write(nb, path)


def setup_cell_problem(path: Path) -> str | None:
    """Why ``path`` does not carry exactly the canonical setup cell first; None if it does."""
    nb = read_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    found = [c for c in code if is_setup_cell(c)]
    if not found:
        return "has no setup cell"
    if len(found) > 1:
        return f"has {len(found)} setup cells"
    if found[0] is not code[0]:
        return "has the setup cell, but not as its first code cell"
    if found[0].source != setup_cell_source():
        return f"has a setup cell that differs from {SETUP_CELL.relative_to(ROOT)}"
    return None


def refresh_setup_cells(notebooks: list[Path]) -> list[Path]:
    """Insert or refresh the setup cell in each notebook's .py source and its paired .ipynb
    (outputs kept); returns the files that changed."""
    changed = []
    for notebook in notebooks:
        for path in (notebook.with_suffix(".py"), notebook.with_suffix(".ipynb")):
            if not path.exists():
                continue
            nb = read_notebook(path)
            updated = with_setup_cell(nb)
            if [(c.cell_type, c.source) for c in updated.cells] != [(c.cell_type, c.source) for c in nb.cells]:
                write_notebook(updated, path)
                changed.append(path)
    return changed


# --------------------------------------------------------------------------------------------
# Building the bundle and the kernel folders (local files only)


def build_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the package (no stale build/ files in it)."""
    with tempfile.TemporaryDirectory(prefix="pixelbyte-wheel-") as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "pixelbyte", src / "pixelbyte",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
        try:  # offline builds: use this environment's setuptools instead of fetching one
            import setuptools  # noqa: F401
            import wheel  # noqa: F401
            cmd.insert(4, "--no-build-isolation")
        except ImportError:
            pass
        print("+ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheels = sorted(dist.glob("pixelbyte-*.whl"))
        if len(wheels) != 1:
            raise KaggleSetupError(f"pip wheel left {[w.name for w in wheels]} instead of one pixelbyte wheel")
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest))


def wheel_from_installed(name: str, dest: Path) -> Path:
    """A wheel of the installed pure-python distribution ``name``, rebuilt from its RECORD (no
    network: the exact version installed here). Scripts outside site-packages are left out;
    pip recreates console scripts from entry_points.txt."""
    import base64
    import hashlib
    import zipfile

    dist = metadata.distribution(name)
    wheel_info = dist.read_text("WHEEL") or ""
    if "Root-Is-Purelib: true" not in wheel_info:
        raise KaggleSetupError(f"{name} is not a pure-python distribution: add its wheel with --wheels")
    tags = [line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:")]
    project = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    info_dir = f"{project}-{dist.version}.dist-info"
    path = Path(dest) / f"{project}-{dist.version}-{tags[0] if tags else 'py3-none-any'}.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or []:
            parts = Path(file).parts
            if parts[0] == ".." or "__pycache__" in parts or (parts[0].endswith(".dist-info") and parts[-1] in skip):
                continue
            arcname = str(file) if not parts[0].endswith(".dist-info") else f"{info_dir}/{'/'.join(parts[1:])}"
            data = Path(file.locate()).read_bytes()
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        wheel.writestr(f"{info_dir}/RECORD", "\n".join([*record, f"{info_dir}/RECORD,,"]) + "\n")
    return path


def wheel_version(wheel: Path) -> str:
    from packaging.utils import parse_wheel_filename

    return str(parse_wheel_filename(Path(wheel).name)[1])


def copy_notebook(notebook: Path, dest: Path, parameters: dict | None = None) -> Path:
    """``notebook`` written to ``dest`` with the setup cell and, if given, papermill's injected
    ``parameters`` cell (how a Kaggle notebook kernel gets parameters: it runs as it is)."""
    import nbformat

    path = Path(dest) / notebook.name
    nbformat.write(with_setup_cell(nbformat.read(notebook, as_version=4)), path)
    if parameters:
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook

        nbformat.write(parameterize_notebook(load_notebook_node(str(path)), parameters), path)
    return path


def build_bundle(user: str, out: Path = BUNDLE_DIR, wheels: list[str] = ()) -> Path:
    """Fill ``out`` (emptied first) with what the runner kernel needs, flat:

    pixelbyte-<version>-py3-none-any.whl, the wheels of BUNDLED_REQUIREMENTS, extra wheels
    (``wheels``: e.g. mamba_ssm / causal_conv1d wheels built for Kaggle's torch), the
    notebooks NN_*.ipynb (with the setup cell), params_paper.json, params_ci.json, runner.py,
    pixelbyte-bundle.json (manifest, the runner's marker) and dataset-metadata.json (read by the
    upload, not a dataset file). Flat because `kaggle datasets create` skips sub-folders.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheel = build_wheel(out)
    requirements = [wheel_from_installed(name, out).name for name in BUNDLED_REQUIREMENTS]
    extra = []
    for item in wheels:
        path = Path(item)
        files = sorted(path.glob("*.whl")) if path.is_dir() else [path]
        for f in files:
            if f.suffix != ".whl" or not f.is_file():
                raise KaggleSetupError(f"--wheels {item}: {f} is not a wheel file")
            shutil.copy2(f, out / f.name)
            extra.append(f.name)
    notebooks = [copy_notebook(nb, out) for nb in pipeline.notebook_paths(folder=NOTEBOOKS_DIR)]
    for name in (*PARAMS_FILES, "runner.py"):
        shutil.copy2(KAGGLE_DIR / name, out / name)
    manifest = {
        "name": "pixelbyte", "version": wheel_version(wheel), "wheel": wheel.name,
        "requirement_wheels": requirements, "extra_wheels": extra, "notebooks": [nb.name for nb in notebooks],
        "params": list(PARAMS_FILES), "git_commit": git_commit(ROOT),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / BUNDLE_MARKER, manifest)
    write_dataset_metadata(user, out)
    return out


def write_dataset_metadata(user: str, folder: Path) -> dict:
    """The filled dataset-metadata.json; its rules are checked by the kaggle library on upload."""
    meta = fill(load_template(DATASET_METADATA), user)
    _write_json(folder / DATASET_METADATA, meta)
    return meta


def embed_params(runner_source: str, params: dict) -> str:
    """runner.py with its EMBEDDED_PARAMS line set to ``params``."""
    if runner_source.count(EMBED_LINE + "\n") != 1:
        raise KaggleSetupError(f"kaggle/runner.py must contain the line {EMBED_LINE!r} exactly once")
    literal = f"EMBEDDED_PARAMS = json.loads({json.dumps(params)!r})"
    return runner_source.replace(EMBED_LINE + "\n", literal + "\n")


def stage_kernel(user: str, params_file: Path, out: Path = KERNEL_DIR, public: bool = False) -> Path:
    """build/kaggle/kernel/: runner.py (params embedded) + kernel-metadata.json (user filled;
    private unless ``public``)."""
    params = json.loads(Path(params_file).read_text())
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise KaggleSetupError(f"{params_file}: expected {{notebook name or '*': {{parameter: value}}}}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    meta = {**fill(load_template(KERNEL_METADATA), user), "is_private": not public}
    (out / meta["code_file"]).write_text(embed_params((KAGGLE_DIR / "runner.py").read_text(), params))
    check_kernel_metadata(meta, out)
    _write_json(out / KERNEL_METADATA, meta)
    return out


def stage_notebook_kernel(user: str, notebook: Path, out: Path, public: bool = False) -> Path:
    """``out``: the notebook (setup cell; `run_dir` pointed at the kernel output it reads, if it
    reads one) + its kernel-metadata.json (private unless ``public``)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    needs = NOTEBOOK_INPUTS.get(notebook.stem)
    mount = KERNEL_OUTPUT_MOUNT.format(user=user, slug=notebook_slug(needs)) if needs else None
    parameters = {"run_dir": f"{mount}/{NOTEBOOK_RUN_DIR}"} if needs else None
    copy_notebook(notebook, out, parameters)
    meta = {**notebook_kernel_metadata(user, notebook), "is_private": not public}
    check_kernel_metadata(meta, out)
    _write_json(out / KERNEL_METADATA, meta)
    return out


# --------------------------------------------------------------------------------------------
# Talking to Kaggle


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def push_problems(response) -> list[str]:
    """What a `kernels push` response reports without failing (the CLI prints it and exits 0)."""
    if response is None:
        return ["no response"]
    problems = [f"error: {response.error}"] if response.error else []
    for label, items in (("dataset sources", response.invalid_dataset_sources),
                         ("kernel sources", response.invalid_kernel_sources),
                         ("competition sources", response.invalid_competition_sources),
                         ("model sources", response.invalid_model_sources),
                         ("tags", response.invalid_tags)):
        if items:
            problems.append(f"not valid {label}: {list(items)}")
    return problems


def push_kernel(api, folder: Path, timeout: int | None = None) -> None:
    """`kaggle kernels push` of a staged folder, its machine_shape sent as --accelerator too: a
    CLI too old for it then fails loudly ("unrecognized arguments") instead of running elsewhere."""
    meta = json.loads((Path(folder) / KERNEL_METADATA).read_text())
    shape = meta["machine_shape"]
    print_command(["kernels", "push", "-p", _display(folder), "--accelerator", shape,
                   *(["-t", str(timeout)] if timeout else [])])
    if api is None:
        return
    response = call(f"kaggle kernels push {meta['id']}", api.kernels_push, str(folder),
                    timeout=str(timeout) if timeout else None, acc=shape)
    problems = push_problems(response)
    if problems:
        hint = ""
        if response is not None and response.invalid_dataset_sources:
            hint = ("\n  upload the bundle first (python kaggle/cli.py upload) and wait until "
                    f"`kaggle datasets status {meta['dataset_sources'][0]}` says ready")
        if response is not None and response.invalid_kernel_sources:
            hint += "\n  a kernel source must exist and have run once (push-notebooks pushes in order)"
        raise KaggleSetupError(f"kaggle kernels push {meta['id']}: " + "; ".join(problems) + hint)
    print(f"{meta['id']}: version {response.version_number} pushed, running on {shape}: {response.url}", flush=True)


def kernel_state(api, ref: str) -> tuple[str, str]:
    """(status, failure message) of a kernel's latest session: the response's status field
    (queued, running, complete, error, ...), never a search through printed text."""
    response = call(f"kaggle kernels status {ref}", api.kernels_status, ref)
    return response.status.name.lower(), response.failure_message or ""


def wait_for_kernel(api, ref: str, interval: float, sleep=time.sleep) -> tuple[str, str]:
    """Poll until the kernel reaches a terminal state; prints each change; returns the last."""
    last = None
    while True:
        state, message = kernel_state(api, ref)
        if state != last:
            print(f"{time.strftime('%H:%M:%S')} {ref}: {state}" + (f" ({message})" if message else ""), flush=True)
            last = state
        if state in TERMINAL_STATES:
            return state, message
        sleep(interval)


def wait_for_bundle(api, user: str, interval: float, sleep=time.sleep) -> None:
    """Poll the bundle dataset until Kaggle has processed its latest upload ("ready"): a kernel
    pushed before that is refused ("not valid dataset sources") or gets the previous version."""
    ref = dataset_id(user)
    print_command(["datasets", "status", ref], note="the kernels are pushed once it says ready")
    last = None
    while api is not None:
        state = call(f"kaggle datasets status {ref}", api.dataset_status, ref)
        if state == "ready":
            return
        if state in ("failed", "deleted"):
            raise KaggleSetupError(f"the bundle {ref} is {state}: upload it again (python kaggle/cli.py upload)")
        if state != last:
            print(f"{time.strftime('%H:%M:%S')} waiting for the bundle {ref} to be ready: {state}", flush=True)
            last = state
        sleep(interval)


def busy_gpu_kernels(api) -> list[str]:
    """The user's GPU kernels (run in the last SESSION_HOURS) whose session is queued or running."""
    since = time.time() - SESSION_HOURS * 3600
    kernels = call("kaggle kernels list --mine", api.kernels_list, mine=True, page_size=100) or []
    refs = [k.ref for k in kernels if k.enable_gpu and (k.last_run_time is None or k.last_run_time.timestamp() > since)]
    return [ref for ref in refs if kernel_state(api, ref)[0] in ("queued", "running")]


def push_when_a_gpu_is_free(api, folder: Path, interval: float, timeout: int | None = None,
                            sleep=time.sleep) -> None:
    """push_kernel once fewer than MAX_GPU_SESSIONS of the user's GPU kernels run, saying what it
    waits for; a push Kaggle still refuses for that reason (a session the list missed) is retried."""
    last = None
    while api is not None:
        busy = busy_gpu_kernels(api)
        if len(busy) < MAX_GPU_SESSIONS:
            try:
                return push_kernel(api, folder, timeout)
            except KaggleSetupError as err:
                if GPU_LIMIT_ERROR not in str(err).lower():
                    raise
                busy = [f"Kaggle refused the push: {err}"]
        if busy != last:
            print(f"{time.strftime('%H:%M:%S')} waiting for a free GPU session (Kaggle runs {MAX_GPU_SESSIONS} per "
                  f"account at once; polling every {interval:.0f} s): {', '.join(busy)}", flush=True)
            last = busy
        sleep(interval)
    push_kernel(None, folder, timeout)


# --------------------------------------------------------------------------------------------
# Commands


def cmd_bundle(args) -> None:
    user = args.user or connect(None, print_only=True)[1]
    out = build_bundle(user, Path(args.out), args.wheels)
    files = sorted(p.name for p in out.iterdir())
    print(f"bundle for {dataset_id(user)} in {_display(out)}: {', '.join(files)}")


def cmd_upload(args) -> None:
    api, user = connect(args.user, args.print_only)
    folder = Path(args.path)
    if not (folder / BUNDLE_MARKER).exists():
        raise KaggleSetupError(f"no bundle in {_display(folder)}: run "
                               "`python kaggle/cli.py bundle` (or make kaggle-bundle) first")
    ref = write_dataset_metadata(user, folder)["id"]
    manifest = json.loads((folder / BUNDLE_MARKER).read_text())
    notes = args.message or (f"pixelbyte {manifest['version']} "
                             f"({manifest.get('git_commit') or 'no git'}, {manifest['built']})")
    create = ["datasets", "create", "-p", _display(folder), *(["--public"] if args.public else [])]
    version = ["datasets", "version", "-p", _display(folder), "-m", notes]
    mode = args.mode
    if mode == "auto":
        print_command(["datasets", "status", ref], note="fails when the dataset does not exist yet")
        if api is None:
            print_command(create, note="first upload")
            print_command(version, note="later uploads")
            return
        from requests.exceptions import HTTPError
        try:
            api.dataset_status(ref)
            mode = "version"
        except HTTPError:
            mode = "create"
    print_command(create if mode == "create" else version)
    if api is None:
        return
    if mode == "create":
        result = call("kaggle datasets create", api.dataset_create_new, str(folder), public=args.public, quiet=False)
    else:
        result = call("kaggle datasets version", api.dataset_create_version, str(folder), notes, quiet=False)
    if result.error or (result.status or "").lower() != "ok" or result.invalid_tags:
        raise KaggleSetupError(f"kaggle datasets {mode} {ref}: status {result.status!r}, error {result.error!r}"
                               + (f", not valid tags {list(result.invalid_tags)}" if result.invalid_tags else ""))
    print(f"uploaded {ref} ({result.url}). Before `push`, wait until `kaggle datasets status {ref}` says ready.")


def cmd_push(args) -> None:
    api, user = connect(args.user, args.print_only)
    folder = stage_kernel(user, Path(args.params), Path(args.path), args.public)
    wait_for_bundle(api, user, args.interval)
    push_when_a_gpu_is_free(api, folder, args.interval, args.timeout)
    if api is not None:
        print(f"follow it with `python kaggle/cli.py status --wait` or "
              f"`kaggle kernels logs {kernel_id(user)} --follow`")


def cmd_push_notebooks(args) -> None:
    """Each notebook as a notebook kernel, in pipeline order; one that reads another notebook's
    outputs is pushed once that notebook kernel has completed."""
    api, user = connect(args.user, args.print_only)
    wait_for_bundle(api, user, args.interval)
    for notebook in pipeline.notebook_paths(args.only, NOTEBOOKS_DIR):
        folder = stage_notebook_kernel(user, notebook, Path(args.path) / notebook.stem, args.public)
        needs = NOTEBOOK_INPUTS.get(notebook.stem)
        if needs:
            ref = f"{user}/{notebook_slug(needs)}"
            print_command(["kernels", "status", ref], note=f"{notebook.stem} reads its outputs: wait until complete")
            if api is not None:
                state, message = wait_for_kernel(api, ref, args.interval)
                if state != "complete":
                    raise KaggleSetupError(f"{ref} ended {state} {message!r}: {notebook.stem} reads its "
                                           "outputs and was not pushed")
        push_when_a_gpu_is_free(api, folder, args.interval)


def _kernel_ref(user: str, kernel: str | None) -> str:
    if not kernel:
        return kernel_id(user)
    return kernel if "/" in kernel else f"{user}/{kernel}"


def cmd_status(args) -> None:
    api, user = connect(args.user, args.print_only)
    ref = _kernel_ref(user, args.kernel)
    print_command(["kernels", "status", ref])
    if api is None:
        return
    if args.wait:
        state, message = wait_for_kernel(api, ref, args.interval)
    else:
        state, message = kernel_state(api, ref)
        print(f"{ref}: {state}" + (f" ({message})" if message else ""))
    if state in TERMINAL_STATES and state != "complete":
        raise KaggleSetupError(f"{ref} ended {state}" + (f": {message}" if message else "")
                               + f"; its log: kaggle kernels logs {ref}")


def cmd_output(args) -> None:
    api, user = connect(args.user, args.print_only)
    ref = _kernel_ref(user, args.kernel)
    out = Path(args.out) if args.out else ROOT / "runs" / f"kaggle-{time.strftime('%Y%m%d-%H%M%S')}"
    print_command(["kernels", "output", ref, "-p", _display(out)])
    if api is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    files, _ = call(f"kaggle kernels output {ref}", api.kernels_output, ref, str(out), quiet=False)
    print(f"{len(files)} files in {_display(out)}; the run is in {_display(out / 'run')}, "
          f"the runner's summary in {_display(out / 'runner.json')}")


def cmd_setup_cell(args) -> None:
    notebooks = pipeline.notebook_paths(folder=NOTEBOOKS_DIR)
    if args.check:
        problems = [f"{path.relative_to(ROOT)}: {problem}" for nb in notebooks
                    for path in (nb.with_suffix(".py"), nb) if path.exists()
                    for problem in [setup_cell_problem(path)] if problem]
        if problems:
            raise KaggleSetupError("\n  ".join(["setup cell:", *problems,
                                                "fix: python kaggle/cli.py setup-cell"]))
        print(f"{len(notebooks)} notebooks carry the setup cell of {SETUP_CELL.relative_to(ROOT)}")
        return
    changed = refresh_setup_cells(notebooks)
    print(f"setup cell inserted or refreshed in {[str(p.relative_to(ROOT)) for p in changed]}" if changed
          else "every notebook already carries the setup cell")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--user", default=None,
                        help="Kaggle username (default: the kaggle library's credentials)")
    common.add_argument("--print-only", action="store_true",
                        help="print the kaggle CLI commands instead of calling Kaggle")
    ap = argparse.ArgumentParser(prog="python kaggle/cli.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bundle", parents=[common], help="build build/kaggle/bundle/")
    p.add_argument("--out", default=str(BUNDLE_DIR), help="bundle folder (emptied first)")
    p.add_argument("--wheels", nargs="*", default=[],
                   help="extra wheel files or folders of wheels to ship (mamba_ssm, causal_conv1d...)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("upload", parents=[common], help="upload the bundle as a Kaggle dataset")
    p.add_argument("--path", default=str(BUNDLE_DIR), help="bundle folder")
    p.add_argument("--mode", choices=("auto", "create", "version"), default="auto",
                   help="auto: create the dataset if `datasets status` does not find it, else version it")
    p.add_argument("-m", "--message", default=None, help="version notes")
    p.add_argument("--public", action="store_true",
                   help="create the dataset public, so others can attach it (default private; an existing "
                        "dataset's visibility is changed on its Settings page)")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("push", parents=[common], help="stage build/kaggle/kernel/ and push it (runs it)")
    p.add_argument("--params", default=str(KAGGLE_DIR / "params_paper.json"),
                   help="parameters embedded in the runner (default kaggle/params_paper.json)")
    p.add_argument("--path", default=str(KERNEL_DIR), help="kernel staging folder")
    p.add_argument("--timeout", type=int, default=None, help="session timeout in seconds (kaggle -t)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls for a free GPU session")
    p.add_argument("--public", action="store_true", help="publish the kernel (default private)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("push-notebooks", parents=[common],
                       help="push every notebook as a notebook kernel (GPU T4 x2, bundle attached)")
    p.add_argument("--only", nargs="*", default=None, help="notebook names (default all)")
    p.add_argument("--path", default=str(NOTEBOOK_KERNELS_DIR), help="staging folder, one sub-folder each")
    p.add_argument("--interval", type=float, default=60.0,
                   help="seconds between polls of an input kernel or for a free GPU session")
    p.add_argument("--public", action="store_true",
                   help="publish the notebook kernels, so others can open and Copy & Edit them (default private)")
    p.set_defaults(func=cmd_push_notebooks)

    p = sub.add_parser("status", parents=[common], help="a kernel's state (exit 1 if it failed)")
    p.add_argument("--kernel", default=None, help="slug or user/slug (default the runner kernel)")
    p.add_argument("--wait", action="store_true", help="poll until complete, error or cancelled")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("output", parents=[common], help="download a kernel's outputs")
    p.add_argument("--kernel", default=None, help="slug or user/slug (default the runner kernel)")
    p.add_argument("--out", default=None, help="folder (default runs/kaggle-<timestamp>)")
    p.set_defaults(func=cmd_output)

    p = sub.add_parser("setup-cell", help="insert or refresh the setup cell in notebooks/NN_*.py and .ipynb")
    p.add_argument("--check", action="store_true", help="only check; exit 1 naming the notebooks that differ")
    p.set_defaults(func=cmd_setup_cell)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (KaggleSetupError, subprocess.CalledProcessError) as err:
        sys.exit(f"kaggle/cli.py {args.command}: error: {err}")


if __name__ == "__main__":
    main()
