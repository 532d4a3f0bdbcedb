"""Kaggle packaging, offline: metadata, the kaggle_cli commands (--print-only) and the runner.

No network and no Kaggle credentials are needed. What is checked:
- kaggle/kernel-metadata.json and dataset-metadata.json, filled for a user, pass our checks
  (pixelbyte.kaggle_cli.*_problems) AND the kaggle CLI's own push/create code paths
  (KaggleApi.kernels_push / dataset_create_new with the network calls replaced by mocks);
- the CLI prints the expected kaggle commands with the username substituted, finds the
  username from --user / KAGGLE_USERNAME / kaggle.json, and explains missing credentials;
- kaggle/runner.py --dry-run against a fake /kaggle/input (the bundle mounted as
  datasets/<user>/<slug>/ plus a PixelBytes-like parquet) executes every notebook that exists
  and leaves the notebooks and their outputs in the fake /kaggle/working.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pixelbyte import kaggle_cli as kc

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT / "kaggle"
USER = "alice-test"

def _notebook_parameters(source: Path) -> set[str]:
    """Names assigned in a notebook's tagged parameters cell (the source of truth)."""
    import jupytext

    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    return {line.split("=")[0].strip() for line in cell.source.splitlines()
            if "=" in line and not line.lstrip().startswith("#")} - {"out_dir", "run_dir"}


# Notebook parameters (plus out_dir/run_dir, which the pipeline passes).
CONTRACT_PARAMS = {p.stem: _notebook_parameters(p) for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))}


def load_runner(path: Path = KAGGLE / "runner.py"):
    spec = importlib.util.spec_from_file_location(f"runner_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A HOME without kaggle.json and no KAGGLE_* variables."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN",
                 "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The real `bundle` command's output (wheel built offline), built once."""
    return kc.build_bundle(USER, tmp_path_factory.mktemp("bundle") / "bundle")


# --------------------------------------------------------------------------------------------
# Metadata


def test_templates_keep_the_username_placeholder():
    kernel = json.loads((KAGGLE / "kernel-metadata.json").read_text())
    dataset = json.loads((KAGGLE / "dataset-metadata.json").read_text())
    assert kernel["id"] == "{username}/pixelbyte-runner"
    assert kernel["dataset_sources"] == ["{username}/pixelbyte-bundle"]
    assert dataset["id"] == "{username}/pixelbyte-bundle"


def test_kernel_metadata_is_valid_for_t4x2():
    meta = kc.fill(kc.load_template("kernel-metadata.json"), USER)
    assert kc.kernel_metadata_problems(meta, KAGGLE) == []
    assert meta["id"] == f"{USER}/pixelbyte-runner"
    assert meta["kernel_type"] == "script" and meta["kernel_type"] in kc.KERNEL_TYPES
    assert meta["language"] == "python"
    assert meta["machine_shape"] == "NvidiaTeslaT4"        # GPU T4 x2
    assert meta["enable_gpu"] is True and meta["enable_tpu"] is False
    for key in kc.KERNEL_BOOLEANS:
        assert isinstance(meta[key], bool), key
    assert (KAGGLE / meta["code_file"]).is_file()
    assert meta["dataset_sources"] == [f"{USER}/pixelbyte-bundle"]
    assert "docker_image" not in meta                      # pinning an image can override the accelerator


def test_dataset_metadata_is_valid():
    meta = kc.fill(kc.load_template("dataset-metadata.json"), USER)
    assert kc.dataset_metadata_problems(meta) == []
    assert meta["id"] == f"{USER}/pixelbyte-bundle"
    assert len(meta["licenses"]) == 1


@pytest.mark.parametrize("change, field", [
    ({"id": "alice/Pixelbyte_Runner"}, "slug"),
    ({"id": "alice/runr"}, "characters"),
    ({"id": "pixelbyte-runner"}, "<username>/<slug>"),
    ({"title": "Something Else"}, "title"),
    ({"kernel_type": "notebooks"}, "kernel_type"),
    ({"language": "python3"}, "language"),
    ({"machine_shape": "T4x2"}, "machine_shape"),
    ({"enable_gpu": "true"}, "enable_gpu"),
    ({"is_private": 1}, "is_private"),
    ({"dataset_sources": ["pixelbyte-bundle"]}, "dataset_sources"),
    ({"code_file": "missing.py"}, "code_file"),
    ({"id": "{username}/pixelbyte-runner"}, "{username}"),
])
def test_kernel_metadata_problems_are_caught(change, field):
    meta = {**kc.fill(kc.load_template("kernel-metadata.json"), "alice"), **change}
    problems = kc.kernel_metadata_problems(meta, KAGGLE)
    assert problems and any(field in p for p in problems), problems


@pytest.mark.parametrize("change, field", [
    ({"id": "alice/pixel"}, "6..50"),
    ({"title": "Short"}, "title"),
    ({"subtitle": "too short"}, "subtitle"),
    ({"licenses": [{"name": "MIT"}]}, "licenses"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "other"}]}, "exactly one"),
])
def test_dataset_metadata_problems_are_caught(change, field):
    meta = {**kc.fill(kc.load_template("dataset-metadata.json"), "alice"), **change}
    problems = kc.dataset_metadata_problems(meta)
    assert problems and any(field in p for p in problems), problems


def test_title_slug_rule_matches_the_kaggle_cli_slugify():
    slugify = pytest.importorskip("slugify").slugify      # python-slugify, a kaggle dependency
    for title in ("PixelByte Runner", "PixelByte Bundle", "My  Kernel -- v2", "T4 x2: run!"):
        assert kc.slugify_title(title) == slugify(title)


KAGGLE_CLI_RUN = textwrap.dedent("""
    import json, shlex, sys
    from unittest import mock
    from requests.exceptions import HTTPError
    import kaggle.cli
    from kaggle import api

    user, commands = sys.argv[1], json.loads(sys.argv[2])
    api._authenticated = True
    api.config_values = {"username": user}
    client = mock.MagicMock()
    client.__enter__.return_value = client                  # `with build_kaggle_client() as kaggle`
    api.build_kaggle_client = lambda: client                # no network: requests are captured
    api.dataset_status = mock.Mock(side_effect=HTTPError("404"))   # the dataset does not exist yet
    api.upload_files = lambda *args, **kwargs: None
    output = client.kernels.kernels_api_client.list_kernel_session_output.return_value
    output.files, output.next_page_token, output.log = [], "", "fake log"
    exit_codes = {}
    for command in commands:
        sys.argv = shlex.split(command)
        try:
            kaggle.cli.main()
            exit_codes[command] = 0
        except SystemExit as err:
            exit_codes[command] = err.code
    kernel = client.kernels.kernels_api_client.save_kernel.call_args.args[0]
    dataset = client.datasets.dataset_api_client.create_dataset.call_args.args[0]
    print("RESULT " + json.dumps({
        "exit_codes": exit_codes,
        "slug": kernel.slug, "title": kernel.new_title, "language": kernel.language,
        "kernel_type": kernel.kernel_type, "is_private": kernel.is_private,
        "enable_gpu": kernel.enable_gpu, "enable_internet": kernel.enable_internet,
        "machine_shape": kernel.machine_shape, "dataset_sources": list(kernel.dataset_data_sources),
        "timeout": kernel.session_timeout_seconds, "text": kernel.text,
        "dataset": [dataset.owner_slug, dataset.slug, dataset.title, dataset.license_name,
                    dataset.is_private],
        "versioned": client.datasets.dataset_api_client.create_dataset_version.called}))
""")


def test_printed_commands_run_through_the_kaggle_cli_itself(capsys, bundle, tmp_path):
    """Every command `--print-only` prints goes through kaggle 2.2.5's own `kaggle.cli.main`
    (argument parsing, metadata reading and validation, request building) with only the HTTP
    client mocked: the commands are well-formed and the staged metadata is what the CLI sends."""
    pytest.importorskip("kagglesdk")
    kernel_dir, out = tmp_path / "kernel", tmp_path / "out"
    commands = [
        *cli(capsys, "push", "--user", USER, "--print-only", "--path", str(kernel_dir), "--timeout", "600"),
        *cli(capsys, "upload", "--user", USER, "--print-only", "--path", str(bundle)),
        *cli(capsys, "status", "--user", USER, "--print-only"),
        *cli(capsys, "output", "--user", USER, "--print-only", "--out", str(out)),
    ]
    commands = [c.split("   # ")[0] for c in commands]       # drop the printed notes
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["KAGGLE_CONFIG_DIR"] = str(tmp_path / "kaggle-config")   # no credentials, no ~ writes
    if importlib.util.find_spec("six") is None:
        # kaggle 2.2.5 imports `six` (kaggle/models/upload_file.py) without requiring it; its
        # one use (six.iteritems) is not reached here, so a stand-in module is enough.
        stub = tmp_path / "stub"
        stub.mkdir()
        (stub / "six.py").write_text("def iteritems(d):\n    return iter(d.items())\n")
        env["PYTHONPATH"] = os.pathsep.join([str(stub), env.get("PYTHONPATH", "")])
    script = tmp_path / "kaggle_cli_run.py"
    script.write_text(KAGGLE_CLI_RUN)
    proc = subprocess.run([sys.executable, str(script), USER, json.dumps(commands)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert "RESULT " in proc.stdout, proc.stdout + proc.stderr
    assert "does not resolve to the specified id" not in proc.stdout   # title/slug warning
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    status_probe = f"kaggle datasets status {USER}/pixelbyte-bundle"
    assert result["exit_codes"] == {c: (1 if c == status_probe else 0) for c in commands}
    assert result["slug"] == f"{USER}/pixelbyte-runner"
    assert result["title"] == "PixelByte Runner"
    assert (result["language"], result["kernel_type"]) == ("python", "script")
    assert result["machine_shape"] == "NvidiaTeslaT4"
    assert result["enable_gpu"] is True and result["enable_internet"] is True
    assert result["is_private"] is True and result["timeout"] == 600
    assert result["dataset_sources"] == [f"{USER}/pixelbyte-bundle"]
    assert "EMBEDDED_PARAMS = json.loads(" in result["text"]
    assert result["dataset"] == [USER, "pixelbyte-bundle", "PixelByte Bundle", "other", True]
    assert result["versioned"] is True
    assert (out / "pixelbyte-runner.log").read_text() == "fake log"


# --------------------------------------------------------------------------------------------
# Parameters


def test_params_files_use_contract_names_and_sizes():
    for name in kc.PARAMS_FILES:
        params = json.loads((KAGGLE / name).read_text())
        for notebook, values in params.items():
            allowed = set.union(*CONTRACT_PARAMS.values()) if notebook == "*" else CONTRACT_PARAMS[notebook]
            assert set(values) <= allowed, (name, notebook, set(values) - allowed)
        assert params["*"]["dataset"] == "auto"
    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    training = paper["02_training"]
    assert training["nproc"] == 2 and training["device"] == "cuda" and training["amp"] is True
    assert (training["seq_length"], training["stride"], training["batch_size"]) == (256, 32, 32)
    assert training["lr"] == 1e-3 and training["epochs"] == 200
    assert paper["04_model_comparison"]["configs"] == "paper"   # all model families
    ci = json.loads((KAGGLE / "params_ci.json").read_text())
    assert ci["*"]["limit"] <= 24
    assert all(v.get("max_steps", 0) <= 3 for v in ci.values())
    assert all(v.get("device", "cpu") == "cpu" for v in ci.values())


def test_runner_adapts_to_the_gpus_present():
    runner = load_runner()
    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    assert runner.adapt_to_gpus(paper, 2) == paper
    one = runner.adapt_to_gpus(paper, 1)["02_training"]
    assert one["nproc"] == 1 and one["device"] == "cuda"
    none = runner.adapt_to_gpus(paper, 0)
    assert none["02_training"]["device"] == "cpu" and none["02_training"]["amp"] is False
    assert none["02_training"]["nproc"] == 1 and none["03_generation"]["device"] == "cpu"


# --------------------------------------------------------------------------------------------
# Commands (--print-only)


def cli(capsys, *argv) -> list[str]:
    kc.main(list(argv))
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("kaggle ")]


def test_bundle_holds_wheel_notebooks_params_and_manifest(bundle):
    manifest = json.loads((bundle / kc.BUNDLE_MARKER).read_text())
    assert (bundle / manifest["wheel"]).is_file() and manifest["wheel"].endswith("-py3-none-any.whl")
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert manifest["notebooks"] == notebooks
    assert all((bundle / nb).is_file() for nb in notebooks)
    for name in (*kc.PARAMS_FILES, "runner.py"):
        assert (bundle / name).read_bytes() == (KAGGLE / name).read_bytes()
    meta = json.loads((bundle / kc.DATASET_METADATA).read_text())
    assert meta["id"] == f"{USER}/pixelbyte-bundle"
    assert not [p for p in bundle.iterdir() if p.is_dir()]   # flat: datasets skip folders
    runner = load_runner()
    requirements = runner.wheel_requirements(bundle / manifest["wheel"])
    names = {runner.requirement_name(r) for r in requirements}
    assert {"numpy", "datasets", "papermill", "ipykernel"} <= names and "pytest" not in names


def test_upload_print_only(capsys, bundle):
    lines = cli(capsys, "upload", "--user", USER, "--print-only", "--path", str(bundle))
    assert lines[0] == f"kaggle datasets status {USER}/pixelbyte-bundle"
    assert lines[1].startswith(f"kaggle datasets create -p {bundle}")
    assert lines[2].startswith(f"kaggle datasets version -p {bundle} -m ")
    lines = cli(capsys, "upload", "--user", USER, "--print-only", "--path", str(bundle), "--mode", "version",
                "-m", "new notebooks")
    assert lines == [f"kaggle datasets version -p {bundle} -m 'new notebooks'"]


def test_upload_without_bundle_says_build_it(tmp_path):
    with pytest.raises(SystemExit, match="bundle"):
        kc.main(["upload", "--user", USER, "--print-only", "--path", str(tmp_path)])


def test_push_print_only_stages_kernel_with_embedded_params(capsys, tmp_path):
    folder = tmp_path / "kernel"
    lines = cli(capsys, "push", "--user", USER, "--print-only", "--path", str(folder), "--timeout", "43200")
    assert lines == [f"kaggle kernels push -p {folder} -t 43200"]
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{USER}/pixelbyte-runner"
    assert meta["dataset_sources"] == [f"{USER}/pixelbyte-bundle"]
    assert sorted(p.name for p in folder.iterdir()) == ["kernel-metadata.json", "runner.py"]
    staged = load_runner(folder / "runner.py")
    assert staged.EMBEDDED_PARAMS == json.loads((KAGGLE / "params_paper.json").read_text())
    assert load_runner().EMBEDDED_PARAMS is None            # the source file is never edited


def test_status_and_output_print_only(capsys, tmp_path):
    assert cli(capsys, "status", "--user", USER, "--print-only") == [
        f"kaggle kernels status {USER}/pixelbyte-runner"]
    out = tmp_path / "runs" / "kaggle-x"
    assert cli(capsys, "output", "--user", USER, "--print-only", "--out", str(out)) == [
        f"kaggle kernels output {USER}/pixelbyte-runner -p {out}"]
    default = cli(capsys, "output", "--user", USER, "--print-only")[0]
    assert re.fullmatch(rf"kaggle kernels output {USER}/pixelbyte-runner -p runs/kaggle-\d{{8}}-\d{{6}}", default)


def test_username_from_env_then_kaggle_json(capsys, no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    assert cli(capsys, "status", "--print-only") == ["kaggle kernels status from-env/pixelbyte-runner"]
    monkeypatch.delenv("KAGGLE_USERNAME")
    for folder in (no_credentials / ".kaggle", no_credentials / ".config" / "kaggle"):
        folder.mkdir(parents=True)
        (folder / "kaggle.json").write_text(json.dumps({"username": "from-json", "key": "k"}))
        assert kc.find_username() == "from-json"
        (folder / "kaggle.json").unlink()
    assert kc.find_username("given") == "given"


def test_missing_credentials_say_where_to_put_them(no_credentials, capsys):
    with pytest.raises(SystemExit) as err:
        kc.main(["push", "--print-only"])
    message = str(err.value)
    assert "--user" in message and "KAGGLE_USERNAME" in message
    assert "~/.kaggle/kaggle.json" in message and "~/.config/kaggle/kaggle.json" in message


def test_bad_username_is_refused(no_credentials):
    with pytest.raises(SystemExit, match="owner slug"):
        kc.main(["status", "--print-only", "--user", "Not A User"])


def test_makefile_has_the_kaggle_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^KAGGLE_CLI = .* -m pixelbyte\.kaggle_cli$", makefile, re.M)
    for target in ("bundle", "upload", "push", "status", "output"):
        assert re.search(rf"^kaggle-{target}:.*\n\t\$\(KAGGLE_CLI\) {target}\b", makefile, re.M), target
    for target in ("setup", "run", "test"):
        assert f"{target}:\n\tpython3 tasks.py {target}" in makefile


# --------------------------------------------------------------------------------------------
# The runner


def test_runner_finds_the_bundle_under_either_mount_layout(tmp_path, bundle):
    runner = load_runner()
    for layout in ("pixelbyte-bundle", "datasets/someone/pixelbyte-bundle"):
        root = tmp_path / layout.replace("/", "_") / "input"
        (root / layout).mkdir(parents=True)
        (root / layout / kc.BUNDLE_MARKER).write_text("{}")
        assert runner.find_bundle(root) == root / layout
    with pytest.raises(SystemExit, match="no pixelbyte-bundle.json"):
        runner.find_bundle(tmp_path / "empty")


def write_pixelbytes_parquet(path: Path, rows: int) -> Path:
    import pyarrow.parquet as pq

    table = pq.read_table(ROOT / "pixelbyte" / "data" / "emoji_sprites.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, rows).select(["image", "caption"]), path)
    return path


def test_runner_picks_a_pixelbytes_parquet_and_skips_others(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    runner = load_runner()
    root = tmp_path / "input"
    (root / "other").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2]}), root / "other" / "train.parquet")   # wrong columns
    assert runner.find_local_dataset(root) is None
    good = write_pixelbytes_parquet(root / "pixelbytes-pokemon" / "data" / "train-00000.parquet", 3)
    assert runner.find_local_dataset(root) == str(good)
    assert runner.find_local_dataset(root, exclude=root / "pixelbytes-pokemon") is None
    dataset, why = runner.resolve_dataset(root, tmp_path / "bundle", allow_hub=False)
    assert dataset == str(good) and "parquet" in why
    assert runner.resolve_dataset(tmp_path / "nothing", tmp_path, allow_hub=False)[0] == "embedded"


def test_runner_installs_without_touching_torch(monkeypatch, tmp_path, bundle):
    """The install steps' pip calls (pip itself mocked): the wheel with --no-deps, then its
    requirements without torch, offline from the bundle first, PyPI only when that fails."""
    runner = load_runner()
    calls, answers = [], []
    monkeypatch.setattr(runner, "pip_install", lambda *args: calls.append(args) or answers.pop(0))
    constraints = tmp_path / "constraints.txt"

    answers[:] = [True, True]                                # everything already satisfied
    runner.install_pixelbyte(bundle, online=False, constraints=constraints)
    assert calls[0][:2] == ("--no-deps", "--force-reinstall") and calls[0][2].endswith(".whl")
    assert calls[1][:5] == ("--no-index", "--find-links", str(bundle), "-c", str(constraints))
    assert not any(a.startswith(("torch", "triton")) for a in calls[1])
    assert any(a.startswith("papermill") for a in calls[1])

    calls.clear()
    answers[:] = [True, False, True]                         # offline misses one: PyPI
    runner.install_pixelbyte(bundle, online=True, constraints=constraints)
    assert calls[2][:2] == ("-c", str(constraints)) and "--no-index" not in calls[2]
    answers[:] = [True, False]
    with pytest.raises(SystemExit, match="internet"):
        runner.install_pixelbyte(bundle, online=False, constraints=constraints)


def test_runner_mamba_install_and_fallback(monkeypatch, tmp_path):
    runner = load_runner()
    calls = []
    monkeypatch.setattr(runner, "pip_install", lambda *args: calls.append(args) or True)
    works = []
    monkeypatch.setattr(runner, "mamba_works", lambda: works.pop(0))
    assert runner.install_mamba(tmp_path, online=True, constraints=tmp_path / "c", n_gpus=0) == "torch"
    assert calls == []                                       # no GPU: nothing installed
    works[:] = [False, True]
    assert runner.install_mamba(tmp_path, online=True, constraints=tmp_path / "c", n_gpus=2) == "cuda"
    assert calls[-1][0] == "--no-build-isolation" and "mamba-ssm>=2.2" in calls[-1]
    (tmp_path / "mamba_ssm-2.2.4-cp311-cp311-linux_x86_64.whl").write_text("")
    works[:] = [False, False]                                # installed but does not import
    assert runner.install_mamba(tmp_path, online=False, constraints=tmp_path / "c", n_gpus=2) == "torch"
    assert calls[-1][0] == "--no-deps" and calls[-1][1].endswith("linux_x86_64.whl")


def test_runner_dry_run_executes_the_notebooks_into_working(tmp_path, bundle):
    """The Kaggle kernel's job, CPU-sized, against a fake /kaggle/input and /kaggle/working."""
    fake_input, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    mounted = fake_input / "datasets" / USER / "pixelbyte-bundle"
    mounted.mkdir(parents=True)
    for item in bundle.iterdir():
        if item.name != kc.DATASET_METADATA:                  # not uploaded as a file
            (mounted / item.name).write_bytes(item.read_bytes())
    parquet = write_pixelbytes_parquet(fake_input / "pixelbytes-pokemon" / "data" / "train-00000.parquet", 30)
    env = dict(os.environ, KAGGLE_INPUT=str(fake_input), KAGGLE_WORKING=str(working),
               MPLBACKEND="Agg", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    proc = subprocess.run([sys.executable, str(mounted / "runner.py"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    summary = json.loads((working / "runner.json").read_text())
    notebooks = [Path(n).stem for n in json.loads((mounted / kc.BUNDLE_MARKER).read_text())["notebooks"]]
    assert summary["status"] == {name: "ok" for name in notebooks}
    assert summary["dataset"] == str(parquet) and summary["dry_run"] is True
    used = json.loads((working / "params_used.json").read_text())
    assert used["*"]["dataset"] == str(parquet) and used["*"]["limit"] == 24
    run = working / "run"
    for name in notebooks:
        assert (run / f"{name}.ipynb").is_file(), name
        assert any((run / name).iterdir()), f"{name} wrote nothing"

    explore = run / "01_data_exploration"
    for png in ("sprites.png", "sequence_lengths.png", "token_frequencies.png", "context_windows.png"):
        assert (explore / png).stat().st_size > 1000, png
    stats = (explore / "token_stats.csv").read_text()
    assert re.search(r"^items,24(\.0)?$", stats, re.M), stats
    if "02_training" in notebooks:                            # docs/CONTRACTS.md outputs
        training = run / "02_training"
        assert (training / "metrics.csv").is_file() and (training / "last.pt").is_file()
        assert (training / "best_model").is_dir()
        assert list(training.glob("*.png"))
    for name in ("03_generation", "04_model_comparison"):
        if name in notebooks:
            assert list((run / name).rglob("*.png")) or list((run / name).rglob("*.csv")), name
