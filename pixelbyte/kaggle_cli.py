"""Kaggle: build the bundle, upload it, push the runner kernel (GPU T4 x2), watch it, fetch it.

    python -m pixelbyte.kaggle_cli bundle           # build/kaggle/bundle/: wheel, notebooks, params
    python -m pixelbyte.kaggle_cli upload           # kaggle datasets create (first time) | version
    python -m pixelbyte.kaggle_cli push             # build/kaggle/kernel/, then kaggle kernels push
    python -m pixelbyte.kaggle_cli status [--wait]  # kaggle kernels status
    python -m pixelbyte.kaggle_cli output           # kaggle kernels output -> runs/kaggle-<timestamp>/

Every command takes ``--user NAME`` (default: $KAGGLE_USERNAME, then the "username" of
kaggle.json in $KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle) and ``--print-only`` (print
the kaggle commands instead of running them). The kaggle CLI runs as a subprocess from the
repository root, so the printed commands can be pasted there as they are.

The templates in ``kaggle/`` carry the placeholder ``{username}``; the staged copies under
``build/kaggle/`` have it filled in and are checked here (``kernel_metadata_problems``,
``dataset_metadata_problems``) with the rules ``kaggle kernels push`` / ``kaggle datasets
create`` apply, before anything is sent.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAGGLE_DIR = ROOT / "kaggle"
BUILD_DIR = ROOT / "build" / "kaggle"
BUNDLE_DIR = BUILD_DIR / "bundle"
KERNEL_DIR = BUILD_DIR / "kernel"
PLACEHOLDER = "{username}"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
BUNDLE_MARKER = "pixelbyte-bundle.json"
PARAMS_FILES = ("params_paper.json", "params_ci.json")
EMBED_LINE = "EMBEDDED_PARAMS = None"

# What `kaggle kernels push` accepts (kaggle 2.2.5: KaggleApi.valid_push_* and kernels_push).
KERNEL_TYPES = ("script", "notebook")
LANGUAGES = ("python", "r", "rmarkdown")
# machine_shape: kagglesdk documents NvidiaTeslaT4 (= "GPU T4 x2"), NvidiaTeslaP100, Tpu1VmV38;
# the CLI's --accelerator help adds TpuV5E8 and says P100 / TPU v3-8 are retired (accepted with
# a warning, run on a replacement).
MACHINE_SHAPES = ("NvidiaTeslaT4", "TpuV5E8", "NvidiaTeslaP100", "Tpu1VmV38")
KERNEL_BOOLEANS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
# Dataset licences `kaggle datasets create` knows (docs/datasets_metadata.md of kaggle-cli).
DATASET_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0")
# Slug syntax of KaggleApi._validate_slug_syntax (owners may also use "_").
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
OWNER_RE = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")

CREDENTIALS_HELP = (
    "no Kaggle username found. Pass --user NAME, or set KAGGLE_USERNAME (with KAGGLE_KEY), or "
    "save a kaggle.json ({\"username\": ..., \"key\": ...}, from https://www.kaggle.com/settings/api) "
    "as ~/.kaggle/kaggle.json or ~/.config/kaggle/kaggle.json (chmod 600; $KAGGLE_CONFIG_DIR "
    "overrides the folder). With an access token (KAGGLE_API_TOKEN or ~/.kaggle/access_token) "
    "the username is not stored locally: pass --user.")


class KaggleSetupError(RuntimeError):
    """Something to fix on this machine before talking to Kaggle (credentials, bundle...)."""


# --------------------------------------------------------------------------------------------
# Username


def config_dirs() -> list[Path]:
    """Where the kaggle CLI looks for kaggle.json, in its order."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    home = Path(os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle", xdg / "kaggle"]


def find_username(user: str | None = None) -> str:
    """--user, else $KAGGLE_USERNAME, else kaggle.json's "username"; checked as an owner slug."""
    source = "--user"
    if not user and os.environ.get("KAGGLE_USERNAME"):
        user, source = os.environ["KAGGLE_USERNAME"], "KAGGLE_USERNAME"
    if not user:
        for folder in config_dirs():
            path = folder / "kaggle.json"
            if path.is_file():
                try:
                    user = json.loads(path.read_text()).get("username")
                except (json.JSONDecodeError, AttributeError) as err:
                    raise KaggleSetupError(f"{path} is not a JSON object with a username: {err}")
                source = str(path)
                if user:
                    break
    if not user:
        raise KaggleSetupError(CREDENTIALS_HELP)
    if not OWNER_RE.match(user):
        raise KaggleSetupError(f"Kaggle username {user!r} (from {source}) is not a valid owner slug: "
                               "lowercase letters, digits, single '-' or '_' inside")
    return user


# --------------------------------------------------------------------------------------------
# Metadata: fill the templates, check them as the kaggle CLI would


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


def slugify_title(title: str) -> str:
    """The slug Kaggle derives from a title (python-slugify's result for ASCII titles)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _ref_problems(field: str, ref, min_slug: int = 1, max_slug: int = 50) -> list[str]:
    if not isinstance(ref, str) or ref.count("/") != 1:
        return [f"{field}={ref!r}: expected '<username>/<slug>'"]
    owner, slug = ref.split("/")
    problems = []
    if not OWNER_RE.match(owner):
        problems.append(f"{field}={ref!r}: owner {owner!r} is not a valid username slug")
    if not SLUG_RE.match(slug):
        problems.append(f"{field}={ref!r}: slug {slug!r} must be lowercase letters/digits with "
                        "single '-' inside")
    if not min_slug <= len(slug) <= max_slug:
        problems.append(f"{field}={ref!r}: slug must have {min_slug}..{max_slug} characters")
    return problems


def kernel_metadata_problems(meta: dict, folder: Path | None = None) -> list[str]:
    """What `kaggle kernels push` (or the server) would refuse or silently change; [] if fine."""
    problems = []
    for key in ("id", "title", "code_file", "language", "kernel_type"):
        if not meta.get(key):
            problems.append(f"{key}: required")
    if problems:
        return problems
    problems += _ref_problems("id", meta["id"], min_slug=5)
    title = meta["title"]
    if len(title) < 5:
        problems.append(f"title={title!r}: at least 5 characters")
    slug = meta["id"].split("/")[-1]
    if slugify_title(title) != slug:
        problems.append(f"title={title!r} gives the slug {slugify_title(title)!r}, not {slug!r}: "
                        "Kaggle would create a kernel under another id")
    if meta["language"] not in LANGUAGES:
        problems.append(f"language={meta['language']!r}: allowed {list(LANGUAGES)}")
    if meta["kernel_type"] not in KERNEL_TYPES:
        problems.append(f"kernel_type={meta['kernel_type']!r}: allowed {list(KERNEL_TYPES)}")
    for key in KERNEL_BOOLEANS:
        if key in meta and not isinstance(meta[key], bool):
            problems.append(f"{key}={meta[key]!r}: must be a JSON boolean")
    shape = meta.get("machine_shape")
    if shape is not None and shape not in MACHINE_SHAPES:
        problems.append(f"machine_shape={shape!r}: allowed {list(MACHINE_SHAPES)}")
    if shape == "NvidiaTeslaT4" and meta.get("enable_gpu") is not True:
        problems.append("machine_shape NvidiaTeslaT4 needs enable_gpu true")
    for key in ("dataset_sources", "kernel_sources", "competition_sources", "model_sources"):
        if key in meta and not isinstance(meta[key], list):
            problems.append(f"{key}: must be a list")
    for ref in meta.get("dataset_sources", []):
        problems += _ref_problems("dataset_sources", ref)
    if any(PLACEHOLDER in json.dumps(v) for v in meta.values()):
        problems.append(f"{PLACEHOLDER} is not filled in")
    if folder is not None and not (Path(folder) / meta["code_file"]).is_file():
        problems.append(f"code_file={meta['code_file']!r}: no such file in {folder}")
    return problems


def dataset_metadata_problems(meta: dict) -> list[str]:
    """What `kaggle datasets create` would refuse; [] if fine."""
    problems = []
    for key in ("id", "title", "licenses"):
        if not meta.get(key):
            problems.append(f"{key}: required")
    if problems:
        return problems
    problems += _ref_problems("id", meta["id"], min_slug=6, max_slug=50)
    if not 6 <= len(meta["title"]) <= 50:
        problems.append(f"title={meta['title']!r}: 6..50 characters")
    subtitle = meta.get("subtitle")
    if subtitle and not 20 <= len(subtitle) <= 80:
        problems.append(f"subtitle: 20..80 characters, has {len(subtitle)}")
    licenses = meta["licenses"]
    if not (isinstance(licenses, list) and len(licenses) == 1 and isinstance(licenses[0], dict)):
        problems.append("licenses: exactly one {'name': ...}")
    elif licenses[0].get("name") not in DATASET_LICENSES:
        problems.append(f"licenses: {licenses[0].get('name')!r} is not a Kaggle licence name")
    if any(PLACEHOLDER in json.dumps(v) for v in meta.values()):
        problems.append(f"{PLACEHOLDER} is not filled in")
    return problems


def _check(problems: list[str], what: str) -> None:
    if problems:
        raise KaggleSetupError(f"{what}:\n  " + "\n  ".join(problems))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Building the bundle and the kernel folder (local files only)


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def package_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def build_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the package (no stale build/ files in it)."""
    with tempfile.TemporaryDirectory(prefix="pixelbyte-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "pixelbyte", src / "pixelbyte",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)]
        try:  # offline builds: use this environment's setuptools instead of fetching one
            import setuptools  # noqa: F401
            import wheel  # noqa: F401
            cmd.insert(4, "--no-build-isolation")
        except ImportError:
            pass
        print("+ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"pixelbyte-{package_version()}-*.whl"))
    if not wheels:
        raise KaggleSetupError(f"pip wheel left no pixelbyte wheel in {dest}")
    return wheels[-1]


def build_bundle(user: str, out: Path = BUNDLE_DIR, wheels: list[str] = ()) -> Path:
    """Fill ``out`` (emptied first) with what the runner kernel needs, flat:

    pixelbyte-<version>-py3-none-any.whl, extra wheels (``wheels``: e.g. mamba_ssm / causal_conv1d
    wheels built for Kaggle's torch, or pure-python requirements for offline kernels), the
    notebooks NN_*.ipynb, params_paper.json, params_ci.json, runner.py, pixelbyte-bundle.json
    (manifest, the runner's marker) and dataset-metadata.json (not uploaded as a file).
    Flat because `kaggle datasets create` skips sub-folders unless zipped.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheel = build_wheel(out)
    extra = []
    for item in wheels:
        path = Path(item)
        files = sorted(path.glob("*.whl")) if path.is_dir() else [path]
        for f in files:
            if f.suffix != ".whl" or not f.is_file():
                raise KaggleSetupError(f"--wheels {item}: {f} is not a wheel file")
            shutil.copy2(f, out / f.name)
            extra.append(f.name)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise KaggleSetupError(f"no notebooks/NN_*.ipynb in {ROOT}")
    for nb in notebooks:
        shutil.copy2(nb, out / nb.name)
    for name in (*PARAMS_FILES, "runner.py"):
        shutil.copy2(KAGGLE_DIR / name, out / name)
    manifest = {
        "name": "pixelbyte", "version": package_version(), "wheel": wheel.name,
        "extra_wheels": extra, "notebooks": [nb.name for nb in notebooks],
        "params": list(PARAMS_FILES), "git_commit": git_commit(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / BUNDLE_MARKER, manifest)
    write_dataset_metadata(user, out)
    return out


def write_dataset_metadata(user: str, folder: Path) -> dict:
    meta = fill(load_template(DATASET_METADATA), user)
    _check(dataset_metadata_problems(meta), f"{DATASET_METADATA} for {user}")
    _write_json(folder / DATASET_METADATA, meta)
    return meta


def embed_params(runner_source: str, params: dict) -> str:
    """runner.py with its EMBEDDED_PARAMS line set to ``params``."""
    if runner_source.count(EMBED_LINE + "\n") != 1:
        raise KaggleSetupError(f"kaggle/runner.py must contain the line {EMBED_LINE!r} exactly once")
    literal = f"EMBEDDED_PARAMS = json.loads({json.dumps(params)!r})"
    return runner_source.replace(EMBED_LINE + "\n", literal + "\n")


def stage_kernel(user: str, params_file: Path, out: Path = KERNEL_DIR) -> Path:
    """build/kaggle/kernel/: runner.py (params embedded) + kernel-metadata.json (user filled)."""
    params = json.loads(Path(params_file).read_text())
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise KaggleSetupError(f"{params_file}: expected {{notebook name or '*': {{parameter: value}}}}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    meta = fill(load_template(KERNEL_METADATA), user)
    (out / meta["code_file"]).write_text(embed_params((KAGGLE_DIR / "runner.py").read_text(), params))
    _check(kernel_metadata_problems(meta, out), f"{KERNEL_METADATA} for {user}")
    _write_json(out / KERNEL_METADATA, meta)
    return out


# --------------------------------------------------------------------------------------------
# Running the kaggle CLI


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def kaggle_executable() -> list[str]:
    """The kaggle CLI: on PATH, else next to this Python (a venv's bin/ need not be on PATH)."""
    found = shutil.which("kaggle")
    beside = Path(sys.executable).parent / ("kaggle.exe" if os.name == "nt" else "kaggle")
    if found:
        return [found]
    if beside.exists():
        return [str(beside)]
    raise KaggleSetupError("the kaggle CLI is not installed: pip install -e '.[kaggle]'")


def run_kaggle(args: list[str], print_only: bool, capture: bool = False, note: str = ""):
    """Print `kaggle <args>` and run it from the repository root (unless print_only)."""
    print(shlex.join(["kaggle", *args]) + (f"   # {note}" if note else ""), flush=True)
    if print_only:
        return None
    result = subprocess.run([*kaggle_executable(), *args], cwd=ROOT, text=True,
                            capture_output=capture)
    if capture:
        print(result.stdout or "", end="", flush=True)
        print(result.stderr or "", end="", file=sys.stderr, flush=True)
    return result


def _fail_if(result, what: str) -> None:
    if result is not None and result.returncode != 0:
        import importlib.util

        hint = ""
        if importlib.util.find_spec("six") is None:  # kaggle 2.2.5 imports six, does not require it
            hint = " (if it says \"No module named 'six'\": pip install six)"
        raise KaggleSetupError(f"`kaggle {what}` failed with exit code {result.returncode}{hint}")


# --------------------------------------------------------------------------------------------
# Commands


def cmd_bundle(args) -> None:
    user = find_username(args.user)
    out = build_bundle(user, Path(args.out), args.wheels)
    files = sorted(p.name for p in out.iterdir())
    print(f"bundle for {dataset_id(user)} in {_display(out)}: {', '.join(files)}")


def cmd_upload(args) -> None:
    user = find_username(args.user)
    folder = Path(args.path)
    if not (folder / BUNDLE_MARKER).exists():
        raise KaggleSetupError(f"no bundle in {_display(folder)}: run "
                               "`python -m pixelbyte.kaggle_cli bundle` (or make kaggle-bundle) first")
    ref = write_dataset_metadata(user, folder)["id"]
    manifest = json.loads((folder / BUNDLE_MARKER).read_text())
    message = args.message or (f"pixelbyte {manifest['version']} "
                               f"({manifest.get('git_commit') or 'no git'}, {manifest['built']})")
    create = ["datasets", "create", "-p", _display(folder), *(["--public"] if args.public else [])]
    version = ["datasets", "version", "-p", _display(folder), "-m", message]
    mode = args.mode
    if mode == "auto":
        if args.print_only:
            run_kaggle(["datasets", "status", ref], True)
            run_kaggle(create, True, note="if the status command fails: first upload")
            run_kaggle(version, True, note="otherwise")
            return
        exists = run_kaggle(["datasets", "status", ref], False, capture=True).returncode == 0
        mode = "version" if exists else "create"
    _fail_if(run_kaggle(create if mode == "create" else version, args.print_only, capture=False),
             f"datasets {mode}")
    if not args.print_only:
        print(f"uploaded. Before `push`, wait until `kaggle datasets status {ref}` says ready.")


def cmd_push(args) -> None:
    user = find_username(args.user)
    folder = stage_kernel(user, Path(args.params), Path(args.path))
    push = ["kernels", "push", "-p", _display(folder)]
    if args.timeout:
        push += ["-t", str(args.timeout)]
    _fail_if(run_kaggle(push, args.print_only), "kernels push")
    if not args.print_only:
        print(f"pushed {kernel_id(user)}: follow it with `python -m pixelbyte.kaggle_cli status "
              f"--wait` or `kaggle kernels logs {kernel_id(user)} --follow`")


def cmd_status(args) -> None:
    ref = kernel_id(find_username(args.user))
    while True:
        result = run_kaggle(["kernels", "status", ref], args.print_only, capture=True)
        if result is None:
            return
        _fail_if(result, "kernels status")
        state = result.stdout.lower()
        if not args.wait or any(word in state for word in ("complete", "error", "cancel")):
            return
        time.sleep(args.interval)


def cmd_output(args) -> None:
    ref = kernel_id(find_username(args.user))
    out = Path(args.out) if args.out else ROOT / "runs" / f"kaggle-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.print_only:
        out.mkdir(parents=True, exist_ok=True)
    _fail_if(run_kaggle(["kernels", "output", ref, "-p", _display(out)], args.print_only),
             "kernels output")
    if not args.print_only:
        files = [p for p in out.rglob("*") if p.is_file()]
        print(f"{len(files)} files in {_display(out)}; the run is in {_display(out / 'run')}, "
              f"the runner's summary in {_display(out / 'runner.json')}")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--user", default=None,
                        help="Kaggle username (default $KAGGLE_USERNAME, then kaggle.json)")
    common.add_argument("--print-only", action="store_true",
                        help="print the kaggle commands instead of running them")
    ap = argparse.ArgumentParser(prog="python -m pixelbyte.kaggle_cli", description=__doc__,
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
                   help="auto: `datasets status` decides between create and version")
    p.add_argument("-m", "--message", default=None, help="version notes")
    p.add_argument("--public", action="store_true", help="create the dataset public (default private)")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("push", parents=[common], help="stage build/kaggle/kernel/ and push it (runs it)")
    p.add_argument("--params", default=str(KAGGLE_DIR / "params_paper.json"),
                   help="parameters embedded in the runner (default kaggle/params_paper.json)")
    p.add_argument("--path", default=str(KERNEL_DIR), help="kernel staging folder")
    p.add_argument("--timeout", type=int, default=None, help="session timeout in seconds (kaggle -t)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("status", parents=[common], help="kaggle kernels status")
    p.add_argument("--wait", action="store_true", help="poll until complete, error or cancelled")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("output", parents=[common], help="download the kernel's outputs")
    p.add_argument("--out", default=None, help="folder (default runs/kaggle-<timestamp>)")
    p.set_defaults(func=cmd_output)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (KaggleSetupError, subprocess.CalledProcessError) as err:
        sys.exit(f"kaggle_cli {args.command}: error: {err}")


if __name__ == "__main__":
    main()
