"""Kaggle packaging, offline: metadata, the kaggle/cli.py commands and the runner.

No network and no Kaggle credentials are needed. What is checked:
- kaggle/kernel-metadata.json (runner and notebook kernels) and dataset-metadata.json, filled for
  a user, pass kaggle/cli.py's checks AND go through the real kaggle library
  (`KaggleApi`: its metadata validation and request building) with only the HTTP client
  mocked; what Kaggle answers (invalid sources, errors, kernel states) is faked at that level;
- the commands `--print-only` prints run through the kaggle CLI's own parser (`kaggle.cli.main`);
- the runner's decisions (installs, kernel check fallback, AMP, budgets and deadline, DDP retry,
  runner.json after every notebook) with fakes, a real notebook stopped at its budget, and
  kaggle/runner.py --dry-run against a fake /kaggle/input executing every notebook.
"""
from __future__ import annotations

import email
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path
from unittest import mock

import nbformat
import pytest
import torch

from pixelbyte import kaggle_env, pipeline

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT / "kaggle"
NOTEBOOKS = ROOT / "notebooks"


def load_kaggle_cli():
    """kaggle/cli.py (the repository's tooling, not part of the package), loaded once."""
    if "kaggle_cli" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kaggle_cli", KAGGLE / "cli.py")
        sys.modules["kaggle_cli"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["kaggle_cli"]


kc = load_kaggle_cli()
USER = "alice-test"
# The kaggle library picks (and creates) its config folder when first imported: point it at a
# throw-away folder before anything imports it, so no test reads or writes ~/.kaggle.
os.environ["KAGGLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="kaggle-config-")
SUBPROCESS_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")},
                  "PYTHONPATH": str(ROOT), "KAGGLE_CONFIG_DIR": os.environ["KAGGLE_CONFIG_DIR"]}


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
    """A HOME without kaggle.json and no KAGGLE_* variables but the throw-away config folder."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def api(monkeypatch, no_credentials):
    """The real KaggleApi with only its HTTP client mocked (``api.client``); kaggle/cli.py uses it."""
    pytest.importorskip("kagglesdk")
    instance = kc.kaggle_api_class()()
    instance.config_values = {"username": USER}
    client = mock.MagicMock()
    client.__enter__.return_value = client                  # `with build_kaggle_client() as kaggle`
    instance.build_kaggle_client = lambda: client
    instance.upload_files = lambda *args, **kwargs: None    # no blob uploads
    instance.client = client
    client.datasets.dataset_api_client.get_dataset_status.return_value = dataset_status("READY")
    monkeypatch.setattr(kc, "kaggle_api", lambda: instance)
    return instance


def push_response(**fields):
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelResponse

    response = ApiSaveKernelResponse()
    response.version_number, response.url = 3, "https://www.kaggle.com/code/x"
    for name, value in fields.items():
        setattr(response, name, value)
    return response


def dataset_status(state: str):
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetStatusResponse
    from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus

    response = ApiGetDatasetStatusResponse()
    response.status = DatabundleVersionStatus[state]
    return response


def session_status(state: str, message: str = ""):
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusResponse
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    response = ApiGetKernelSessionStatusResponse()
    response.status = KernelWorkerStatus[state]
    response.failure_message = message
    return response


def cli(capsys, *argv) -> list[str]:
    kc.main(list(argv))
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("kaggle ")]


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
    assert (meta["kernel_type"], meta["language"]) == ("script", "python")
    assert meta["machine_shape"] == "NvidiaTeslaT4"        # GPU T4 x2
    assert meta["enable_gpu"] is True and meta["enable_tpu"] is False
    assert (KAGGLE / meta["code_file"]).is_file()
    assert meta["dataset_sources"] == [f"{USER}/pixelbyte-bundle"]
    assert "docker_image" not in meta                      # pinning an image can override the accelerator


@pytest.mark.parametrize("notebook", pipeline.notebook_paths(folder=NOTEBOOKS), ids=lambda p: p.stem)
def test_notebook_kernel_metadata_is_valid(notebook, tmp_path):
    meta = kc.notebook_kernel_metadata(USER, notebook)
    (tmp_path / notebook.name).write_text("{}")
    assert kc.kernel_metadata_problems(meta, tmp_path) == []
    assert meta["id"] == f"{USER}/pixelbyte-{notebook.stem.replace('_', '-')}"
    assert (meta["kernel_type"], meta["code_file"], meta["machine_shape"]) == ("notebook", notebook.name,
                                                                             "NvidiaTeslaT4")
    assert meta["dataset_sources"] == [f"{USER}/pixelbyte-bundle"] and meta["enable_gpu"] is True


@pytest.mark.parametrize("shape", kc.GPU_SHAPES)
def test_every_gpu_shape_is_accepted(shape):
    meta = {**kc.fill(kc.load_template("kernel-metadata.json"), USER), "machine_shape": shape}
    assert kc.kernel_metadata_problems(meta, KAGGLE) == []


@pytest.mark.parametrize("change, message", [
    ({"id": "alice/Pixelbyte_Runner"}, "gives the slug"),
    ({"id": "alice/runr"}, "five characters"),                 # the kaggle library's rule
    ({"id": "pixelbyte-runner"}, "form of"),
    ({"title": "Something Else"}, "another id"),
    ({"kernel_type": "notebooks"}, "kernel_type"),
    ({"language": "python3"}, "language"),
    ({"machine_shape": "T4x2"}, "allowed ['NvidiaTeslaT4'"),
    ({"machine_shape": None}, "machine_shape=None"),
    ({"machine_shape": "NvidiaTeslaP100"}, "refused: retired"),
    ({"machine_shape": "TpuV5E8"}, "refused: a TPU"),
    ({"enable_gpu": False}, "enable_gpu"),
    ({"dataset_sources": ["pixelbyte-bundle"]}, "dataset_sources"),
    ({"code_file": "missing.py"}, "code_file"),
    ({"id": "{username}/pixelbyte-runner"}, "{username}"),
])
def test_kernel_metadata_problems_are_caught(change, message):
    meta = {**kc.fill(kc.load_template("kernel-metadata.json"), "alice"), **change}
    problems = kc.kernel_metadata_problems(meta, KAGGLE)
    assert problems and any(message in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# The kaggle library: version floor, requests it builds, answers it gets (HTTP mocked)


@pytest.mark.parametrize("version", ["1.6.17", "1.7.4.5", "1.8.3"])
def test_a_kaggle_cli_that_drops_machine_shape_is_refused(monkeypatch, no_credentials, version):
    monkeypatch.setattr(kc, "kaggle_version", lambda: version)
    with pytest.raises(SystemExit, match=rf"kaggle {re.escape(version)} is too old.*machine_shape.*>=1\.8\.4"):
        kc.main(["push", "--user", USER])
    monkeypatch.setattr(kc, "kaggle_version", lambda: None)
    with pytest.raises(SystemExit, match="not installed"):
        kc.main(["status"])
    kc.require_kaggle("2.2.5")
    kc.require_kaggle(kc.KAGGLE_MIN_VERSION)


def test_push_sends_the_accelerator_and_the_staged_metadata(api, capsys, tmp_path):
    save = api.client.kernels.kernels_api_client.save_kernel
    save.return_value = push_response()
    lines = cli(capsys, "push", "--path", str(tmp_path / "kernel"), "--timeout", "600")
    assert lines == [f"kaggle datasets status {USER}/pixelbyte-bundle   # the kernels are pushed once it says ready",
                     f"kaggle kernels push -p {tmp_path / 'kernel'} --accelerator NvidiaTeslaT4 -t 600"]
    request = save.call_args.args[0]                      # built by KaggleApi.kernels_push itself
    assert request.slug == f"{USER}/pixelbyte-runner" and request.new_title == "PixelByte Runner"
    assert request.machine_shape == "NvidiaTeslaT4" and request.enable_gpu is True
    assert (request.kernel_type, request.language) == ("script", "python")
    assert request.is_private is True and request.enable_internet is True
    assert request.session_timeout_seconds == 600
    assert list(request.dataset_data_sources) == [f"{USER}/pixelbyte-bundle"]
    assert "EMBEDDED_PARAMS = json.loads(" in request.text


def test_push_waits_until_the_uploaded_bundle_is_ready(api, capsys, tmp_path):
    datasets = api.client.datasets.dataset_api_client
    save = api.client.kernels.kernels_api_client.save_kernel
    save.return_value = push_response()
    datasets.get_dataset_status.side_effect = [dataset_status("BLOBS_RECEIVED"), dataset_status("BLOBS_DECOMPRESSED"),
                                               dataset_status("READY")]
    kc.main(["push", "--path", str(tmp_path / "kernel"), "--interval", "0"])
    assert datasets.get_dataset_status.call_count == 3 and save.call_count == 1
    assert f"waiting for the bundle {USER}/pixelbyte-bundle to be ready: blobs_received" in capsys.readouterr().out
    datasets.get_dataset_status.side_effect = [dataset_status("FAILED")]
    with pytest.raises(SystemExit, match="pixelbyte-bundle is failed: upload it again"):
        kc.main(["push-notebooks", "--path", str(tmp_path / "nb"), "--interval", "0"])
    assert save.call_count == 1


def test_public_publishing_is_an_option_of_the_push_commands(api, capsys, tmp_path):
    """Private by default; --public publishes the runner and the notebook kernels, so others
    can open them and Copy & Edit (the bundle: upload --public)."""
    save = api.client.kernels.kernels_api_client.save_kernel
    save.return_value = push_response()
    kc.main(["push", "--path", str(tmp_path / "kernel")])
    kc.main(["push", "--path", str(tmp_path / "kernel"), "--public"])
    kc.main(["push-notebooks", "--path", str(tmp_path / "nb"), "--only", "01_data_exploration", "--public"])
    assert [c.args[0].is_private for c in save.call_args_list] == [True, False, False]
    assert json.loads((tmp_path / "nb" / "01_data_exploration" / kc.KERNEL_METADATA).read_text())["is_private"] is False


@pytest.mark.parametrize("fields, message", [
    ({"invalid_dataset_sources": [f"{USER}/pixelbyte-bundle"]}, "(?s)not valid dataset sources.*upload the bundle"),
    ({"invalid_kernel_sources": [f"{USER}/pixelbyte-02-training"]}, "not valid kernel sources"),
    ({"error": "Notebook quota exceeded"}, "error: Notebook quota exceeded"),
])
def test_push_fails_on_what_the_cli_only_prints(api, tmp_path, fields, message):
    """`kaggle kernels push` prints "The following are not valid dataset sources..." and exits 0."""
    api.client.kernels.kernels_api_client.save_kernel.return_value = push_response(**fields)
    with pytest.raises(SystemExit, match=message):
        kc.main(["push", "--path", str(tmp_path / "kernel")])


def test_status_reads_the_status_field_not_the_text(api, monkeypatch, capsys):
    """A username like "error-complete" must not end the wait (the old substring match did)."""
    api.config_values = {"username": "error-complete"}
    states = api.client.kernels.kernels_api_client.get_kernel_session_status
    states.side_effect = [session_status("QUEUED"), session_status("RUNNING"), session_status("COMPLETE")]
    kc.main(["status", "--wait", "--interval", "0"])
    assert states.call_count == 3
    request = states.call_args.args[0]
    assert (request.user_name, request.kernel_slug) == ("error-complete", "pixelbyte-runner")
    out = capsys.readouterr().out
    assert "error-complete/pixelbyte-runner: running" in out and out.rstrip().endswith("complete")
    states.side_effect = [session_status("ERROR", "OOM in 02_training")]
    with pytest.raises(SystemExit, match="ended error: OOM in 02_training"):
        kc.main(["status", "--kernel", "pixelbyte-02-training"])


def test_upload_creates_then_versions_through_the_library(api, bundle, capsys):
    from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse
    from requests.exceptions import HTTPError

    datasets = api.client.datasets.dataset_api_client
    ok = ApiCreateDatasetResponse()
    ok.status, ok.url = "ok", "https://www.kaggle.com/datasets/x"
    datasets.create_dataset.return_value = datasets.create_dataset_version.return_value = ok
    datasets.get_dataset_status.side_effect = HTTPError("404")          # not there yet: create
    cli(capsys, "upload", "--path", str(bundle))
    request = datasets.create_dataset.call_args.args[0]
    assert (request.owner_slug, request.slug, request.title) == (USER, "pixelbyte-bundle", "PixelByte Bundle")
    assert request.license_name == "other" and request.is_private is True
    datasets.get_dataset_status.side_effect = None                       # there: new version
    cli(capsys, "upload", "--path", str(bundle), "-m", "new notebooks")
    assert datasets.create_dataset_version.call_args.args[0].body.version_notes == "new notebooks"
    refused = ApiCreateDatasetResponse()
    refused.status, refused.error = "error", "Invalid license name"
    datasets.create_dataset_version.return_value = refused
    with pytest.raises(SystemExit, match="Invalid license name"):
        kc.main(["upload", "--path", str(bundle)])


@pytest.mark.parametrize("change, message", [
    ({"title": "Short"}, "title must be between 6 and 50"),
    ({"subtitle": "too short"}, "Subtitle length"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "other"}]}, "exactly one license"),
])
def test_the_library_refuses_bad_dataset_metadata(api, bundle, tmp_path, monkeypatch, change, message):
    from requests.exceptions import HTTPError

    api.client.datasets.dataset_api_client.get_dataset_status.side_effect = HTTPError("404")
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / kc.BUNDLE_MARKER).write_text((bundle / kc.BUNDLE_MARKER).read_text())
    template = {**kc.load_template(kc.DATASET_METADATA), **change}
    monkeypatch.setattr(kc, "load_template", lambda name: template)
    with pytest.raises(SystemExit, match=message):
        kc.main(["upload", "--path", str(folder)])


def test_push_notebooks_pushes_in_order_and_waits_for_inputs(api, capsys, tmp_path):
    save = api.client.kernels.kernels_api_client.save_kernel
    save.return_value = push_response()
    states = api.client.kernels.kernels_api_client.get_kernel_session_status
    states.side_effect = [session_status("RUNNING"), session_status("COMPLETE")]
    kc.main(["push-notebooks", "--path", str(tmp_path), "--interval", "0"])
    notebooks = pipeline.notebook_paths(folder=NOTEBOOKS)
    requests = [c.args[0] for c in save.call_args_list]
    assert [r.slug for r in requests] == [f"{USER}/{kc.notebook_slug(nb.stem)}" for nb in notebooks]
    for request, notebook in zip(requests, notebooks):
        assert (request.kernel_type, request.machine_shape) == ("notebook", "NvidiaTeslaT4")
        assert list(request.dataset_data_sources) == [f"{USER}/pixelbyte-bundle"]
        cells = json.loads(request.text)["cells"]
        first_code = next(c for c in cells if c["cell_type"] == "code")
        assert first_code["source"] == kc.setup_cell_source(), notebook.stem
        needs = kc.NOTEBOOK_INPUTS.get(notebook.stem)
        assert list(request.kernel_data_sources) == ([f"{USER}/{kc.notebook_slug(needs)}"] if needs else [])
        if needs:
            injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
            assert f'run_dir = "/kaggle/input/notebooks/{USER}/{kc.notebook_slug(needs)}/outputs"' in injected["source"]
    assert states.call_count == 2                     # waited for 02 before pushing 03
    save.reset_mock()
    states.side_effect = [session_status("ERROR", "boom")]
    with pytest.raises(SystemExit, match="ended error.*03_generation reads its outputs"):
        kc.main(["push-notebooks", "--path", str(tmp_path), "--only", "02_training", "03_generation"])
    assert [c.args[0].slug for c in save.call_args_list] == [f"{USER}/pixelbyte-02-training"]


class FakeKaggle:
    """Kaggle's GPU sessions as one account sees them: at most two run at once and a third push is
    refused with Kaggle's message; a session runs ``duration`` API calls (the fake's clock).
    ``listed`` False: `kernels list` does not show them yet (the push must still retry)."""

    def __init__(self, duration: int = 30, listed: bool = True):
        self.clock, self.duration, self.listed = 0, duration, listed
        self.ends, self.pushed, self.refused = {}, [], 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def running(self) -> list[str]:
        return [ref for ref, end in self.ends.items() if end > self.clock]

    def kernels_push(self, folder, timeout=None, acc=None):
        ref = json.loads((Path(folder) / kc.KERNEL_METADATA).read_text())["id"]
        self.tick()
        if len(self.running()) >= 2:
            self.refused += 1
            return push_response(error="Maximum batch GPU session count of 2 reached.")
        self.ends[ref] = self.clock + self.duration
        self.pushed.append(ref)
        return push_response()

    def kernels_status(self, ref):
        self.tick()
        return session_status("RUNNING" if ref in self.running() else "COMPLETE")

    def dataset_status(self, ref):
        return "ready"

    def kernels_list(self, mine=False, page_size=20, **kwargs):
        from types import SimpleNamespace

        self.tick()
        return [SimpleNamespace(ref=ref, enable_gpu=True, last_run_time=None) for ref in self.ends] if self.listed else []


@pytest.mark.parametrize("listed", [True, False], ids=["waits-for-a-slot", "retries-a-refused-push"])
def test_push_notebooks_never_asks_for_a_third_gpu_session(monkeypatch, capsys, tmp_path, listed):
    pytest.importorskip("kagglesdk")
    fake = FakeKaggle(listed=listed)
    monkeypatch.setattr(kc, "connect", lambda user, print_only: (fake, USER))
    kc.main(["push-notebooks", "--path", str(tmp_path), "--interval", "0"])
    notebooks = pipeline.notebook_paths(folder=NOTEBOOKS)
    assert fake.pushed == [f"{USER}/{kc.notebook_slug(nb.stem)}" for nb in notebooks]     # all, in order
    assert (fake.refused == 0) is listed                          # refused only where the list missed them
    out = capsys.readouterr().out
    assert "waiting for a free GPU session (Kaggle runs 2 per account at once" in out
    assert ("Maximum batch GPU session count" in out) is not listed


def test_03_as_a_notebook_kernel_finds_02s_checkpoint_wherever_kaggle_mounts_it(tmp_path, monkeypatch):
    """03 staged as push-notebooks stages it, its opening cells executed against a fake
    /kaggle/input holding 02's output (the shipped model as its best_model) where Kaggle mounts a
    kernel's output now: it loads that checkpoint, the injected run_dir being only a hint. The
    older layout is found too, and when nothing is mounted the error says what was searched."""
    import shutil

    from nbclient import NotebookClient

    from pixelbyte.models import PRETRAINED

    inputs, slug = tmp_path / "input", kc.notebook_slug("02_training")
    mounted = inputs / "notebooks" / USER / slug / "outputs" / "02_training" / "best_model"
    shutil.copytree(PRETRAINED["pretrained"], mounted)
    staged = kc.stage_notebook_kernel(USER, NOTEBOOKS / "03_generation.ipynb", tmp_path / "stage")
    nb = nbformat.read(staged / "03_generation.ipynb", as_version=4)
    last = next(i for i, c in enumerate(nb.cells) if "PixelByteModel.from_pretrained(checkpoint)" in c.source)
    nb.cells = nb.cells[:last + 1]
    monkeypatch.setenv("KAGGLE_INPUT", str(inputs))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert f"from {mounted}" in printed, printed

    hint = "/kaggle/input/pixelbyte-02-training/outputs"
    old = tmp_path / "old" / slug / "outputs" / "02_training" / "best_model"
    old.mkdir(parents=True)
    assert kaggle_env.find_run_output(hint, "02_training/best_model", str(tmp_path / "old")) == str(old)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no 02_training/best_model: searched {hint}/02_training/"
                                                rf"best_model and {tmp_path}/empty/\*\*/02_training/best_model$"):
        kaggle_env.find_run_output(hint, "02_training/best_model", str(tmp_path / "empty"))
    assert kaggle_env.find_run_output(str(tmp_path / "old" / slug / "outputs"), "02_training/best_model",
                                      "/nonexistent") == str(old)          # the hint first


def test_notebooks_default_run_dir_is_the_one_push_notebooks_mounts():
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert re.search(rf'^run_dir = "{kc.NOTEBOOK_RUN_DIR}"', source.read_text(), re.M), source.name


def test_output_downloads_through_the_library(api, capsys, tmp_path):
    output = api.client.kernels.kernels_api_client.list_kernel_session_output.return_value
    output.files, output.next_page_token, output.log = [], "", "fake log"
    cli(capsys, "output", "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "pixelbyte-runner.log").read_text() == "fake log"


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
    kernels = [c.args[0] for c in client.kernels.kernels_api_client.save_kernel.call_args_list]
    print("RESULT " + json.dumps({
        "exit_codes": exit_codes,
        "kernels": [[k.slug, k.kernel_type, k.machine_shape, k.enable_gpu, list(k.dataset_data_sources)]
                    for k in kernels],
        "versioned": client.datasets.dataset_api_client.create_dataset_version.called}))
""")


def test_printed_commands_run_through_the_kaggle_cli_itself(capsys, bundle, tmp_path):
    """Every command `--print-only` prints goes through kaggle's own `kaggle.cli.main` (argument
    parsing, --accelerator included, metadata reading and validation, request building)."""
    pytest.importorskip("kagglesdk")
    out = tmp_path / "out"
    commands = [
        *cli(capsys, "push", "--user", USER, "--print-only", "--path", str(tmp_path / "kernel")),
        *cli(capsys, "push-notebooks", "--user", USER, "--print-only", "--path", str(tmp_path / "notebooks")),
        *cli(capsys, "upload", "--user", USER, "--print-only", "--path", str(bundle)),
        *cli(capsys, "status", "--user", USER, "--print-only"),
        *cli(capsys, "output", "--user", USER, "--print-only", "--out", str(out)),
    ]
    commands = [c.split("   # ")[0] for c in commands]       # drop the printed notes
    env = dict(SUBPROCESS_ENV)
    if importlib.util.find_spec("six") is None:
        # kaggle 2.2.5 imports `six` (kaggle/models/upload_file.py) without requiring it; its
        # one use (six.iteritems) is not reached here, so a stand-in module is enough.
        stub = tmp_path / "stub"
        stub.mkdir()
        (stub / "six.py").write_text("def iteritems(d):\n    return iter(d.items())\n")
        env["PYTHONPATH"] = os.pathsep.join([str(stub), env["PYTHONPATH"]])
    script = tmp_path / "kaggle_cli_run.py"
    script.write_text(KAGGLE_CLI_RUN)
    proc = subprocess.run([sys.executable, str(script), USER, json.dumps(commands)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert "RESULT " in proc.stdout, proc.stdout + proc.stderr
    assert "does not resolve to the specified id" not in proc.stdout   # title/slug warning
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    status_probe = f"kaggle datasets status {USER}/pixelbyte-bundle"
    assert result["exit_codes"] == {c: (1 if c == status_probe else 0) for c in commands}
    slugs = [f"{USER}/pixelbyte-runner"] + [f"{USER}/{kc.notebook_slug(nb.stem)}" for nb in pipeline.notebook_paths(folder=NOTEBOOKS)]
    assert [k[0] for k in result["kernels"]] == slugs
    for slug, kernel_type, shape, gpu, sources in result["kernels"]:
        assert (shape, gpu, sources) == ("NvidiaTeslaT4", True, [f"{USER}/pixelbyte-bundle"]), slug
        assert kernel_type == ("script" if slug.endswith("runner") else "notebook")
    assert result["versioned"] is True
    assert (out / "pixelbyte-runner.log").read_text() == "fake log"


def kaggle_cli_subprocess(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KAGGLE / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)


def test_username_and_credentials_are_the_kaggle_librarys(tmp_path):
    pytest.importorskip("kagglesdk")
    config = tmp_path / "config"
    config.mkdir()
    env = {**SUBPROCESS_ENV, "HOME": str(tmp_path / "home"), "KAGGLE_CONFIG_DIR": str(config)}
    proc = kaggle_cli_subprocess(["status", "--print-only"], {**env, "KAGGLE_USERNAME": "from-env", "KAGGLE_KEY": "k"})
    assert proc.stdout.splitlines() == ["kaggle kernels status from-env/pixelbyte-runner"], proc.stderr
    (config / "kaggle.json").write_text(json.dumps({"username": "from-json", "key": "k"}))
    (config / "kaggle.json").chmod(0o600)
    proc = kaggle_cli_subprocess(["status", "--print-only"], env)
    assert proc.stdout.splitlines()[-1] == "kaggle kernels status from-json/pixelbyte-runner", proc.stderr
    (config / "kaggle.json").unlink()
    proc = kaggle_cli_subprocess(["push", "--print-only"], env)
    assert proc.returncode == 1 and "no Kaggle credentials" in proc.stderr and "--user" in proc.stderr
    assert "kaggle auth login" in proc.stdout                       # the library's own help


# --------------------------------------------------------------------------------------------
# The package: version, extras, bundle


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_number_from_pyproject(bundle):
    import pixelbyte

    version = pyproject()["project"]["version"]
    assert pixelbyte.__version__ == importlib.metadata.version("pixelbyte") == version
    manifest = json.loads((bundle / kc.BUNDLE_MARKER).read_text())
    assert manifest["version"] == kc.wheel_version(bundle / manifest["wheel"]) == version


def test_extras_the_runner_and_kaggle_need():
    extras = pyproject()["project"]["optional-dependencies"]
    assert sorted(extras["gpu"]) == sorted(load_runner().pinned_requirements())     # one set of pins
    assert {r.split(">=")[0] for r in extras["run"]} == {"papermill", "ipykernel"}  # no jupytext
    assert "kaggle>=" + kc.KAGGLE_MIN_VERSION in extras["kaggle"]


def test_bundle_holds_wheel_notebooks_params_and_manifest(bundle):
    from packaging.requirements import Requirement

    manifest = json.loads((bundle / kc.BUNDLE_MARKER).read_text())
    assert (bundle / manifest["wheel"]).is_file() and manifest["wheel"].endswith("-py3-none-any.whl")
    notebooks = [p.name for p in pipeline.notebook_paths(folder=NOTEBOOKS)]
    assert manifest["notebooks"] == notebooks
    for name in notebooks:
        assert kc.setup_cell_problem(bundle / name) is None, name
    for name in (*kc.PARAMS_FILES, "runner.py"):
        assert (bundle / name).read_bytes() == (KAGGLE / name).read_bytes()
    meta = json.loads((bundle / kc.DATASET_METADATA).read_text())
    assert meta["id"] == f"{USER}/pixelbyte-bundle"
    assert not [p for p in bundle.iterdir() if p.is_dir()]   # flat: datasets skip folders
    with zipfile.ZipFile(bundle / manifest["wheel"]) as wheel:
        info = email.message_from_bytes(wheel.read(next(n for n in wheel.namelist() if n.endswith("METADATA"))))
    requires = [Requirement(r) for r in info.get_all("Requires-Dist")]
    for_run = {r.name for r in requires if r.marker is None or r.marker.evaluate({"extra": "run"})}
    assert {"numpy", "datasets", "papermill", "ipykernel"} <= for_run
    assert not {"jupytext", "nbformat", "pytest"} & for_run                     # what offline kernels skip


def test_upload_print_only(capsys, bundle):
    lines = cli(capsys, "upload", "--user", USER, "--print-only", "--path", str(bundle))
    assert lines[0].startswith(f"kaggle datasets status {USER}/pixelbyte-bundle")
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
    assert lines[1:] == [f"kaggle kernels push -p {folder} --accelerator NvidiaTeslaT4 -t 43200"]
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{USER}/pixelbyte-runner"
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


def test_makefile_has_the_kaggle_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^KAGGLE_CLI = \S+ kaggle/cli\.py$", makefile, re.M)
    for target in ("bundle", "upload", "push", "push-notebooks", "status", "output", "setup-cell"):
        assert re.search(rf"^kaggle-{target}:.*\n\t\$\(KAGGLE_CLI\) {target}\b", makefile, re.M), target
    for target in ("setup", "run", "test"):
        assert f"{target}:\n\tpython3 tasks.py {target}" in makefile


# --------------------------------------------------------------------------------------------
# Parameters and the 12 h session


def test_params_files_use_contract_names_and_sizes():
    for name in kc.PARAMS_FILES:
        params = json.loads((KAGGLE / name).read_text())
        assert set(params["runner"]) <= set(load_runner().RUNNER_SETTINGS)
        for notebook, values in params.items():
            if notebook == "runner":
                continue
            allowed = set.union(*CONTRACT_PARAMS.values()) if notebook == "*" else CONTRACT_PARAMS[notebook]
            assert set(values) <= allowed, (name, notebook, set(values) - allowed)
        assert params["*"]["dataset"] == "auto"
    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    training = paper["02_training"]
    assert training["nproc"] == 2 and training["device"] == "cuda" and training["amp"] is True
    # the skills recipe at GPU size: whole items in both orders, positions, the paper's later LSTM
    assert (training["unit"], training["orders"], training["positions"]) == ("item", "both", True)
    assert (training["model"], training["dim"], training["hidden"], training["depth"]) == ("lstm", 128, 512, 2)
    comparison = paper["04_model_comparison"]
    assert comparison["configs"] == "paper" and comparison["objectives"] == "next,causal"   # all families
    assert comparison["unit"] == "item" and (comparison["seq_length"], comparison["stride"]) == (256, 32)
    ci = json.loads((KAGGLE / "params_ci.json").read_text())
    assert ci["*"]["limit"] <= 24
    assert all(v.get("max_steps", 0) <= 3 for k, v in ci.items() if k != "runner")
    assert all(v.get("device", "cpu") == "cpu" for k, v in ci.items() if k != "runner")


# Estimates (not measured: no T4 here), the README's budget table uses the same ones.
INSTALL_S = 5 * 60                 # pip of pixelbyte[run] on the Kaggle image (most already there)


def test_the_paper_run_fits_the_12_hour_session():
    from pixelbyte import compare

    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    settings = paper["runner"]
    budgets = settings["budget_s"]
    assert set(budgets) == set(CONTRACT_PARAMS)                         # every notebook has one
    assert sum(budgets.values()) + settings["kernel_install_s"] + INSTALL_S <= settings["deadline_s"]
    assert settings["deadline_s"] <= 12 * 3600 - 45 * 60                # time left to save outputs
    assert settings["kernel_install_s"] <= 15 * 60
    training = paper["02_training"]                          # a wall-clock budget, evaluations apart
    assert 0 < training["budget_s"] <= 0.85 * budgets["02_training"]
    comparison = paper["04_model_comparison"]
    runs = len(compare.plan(comparison["configs"], comparison["objectives"])[0])
    assert runs * comparison["budget_s"] <= 0.7 * budgets["04_model_comparison"]   # 30 % for scoring
    assert comparison["max_chunks"] > 0                                   # not every held-out chunk


def test_the_kaggle_readme_says_what_params_paper_runs_and_what_it_costs():
    """kaggle/README's budget table is params_paper.json's, and the steps say what they cost."""
    from pixelbyte import compare

    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    settings, readme = paper["runner"], (KAGGLE / "README.md").read_text()
    rows = {cells[0].strip("`"): cells[1:] for line in readme.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}
    assert rows["deadline"][0] == f"{settings['deadline_s']:,} s"
    assert rows["mamba-ssm + causal-conv1d"][0] == f"{settings['kernel_install_s']:,} s"
    for name, budget in settings["budget_s"].items():
        assert rows[name][0] == f"{budget:,} s", name
    assert f"{paper['01_data_exploration']['n_sprites']} sprites" in rows["01_data_exploration"][1]
    training = paper["02_training"]
    assert (f"{training['model'].upper()} (dim {training['dim']}, hidden {training['hidden']}, depth "
            f"{training['depth']}, {training['objective']}") in rows["02_training"][1]
    assert (f"batch {training['batch_size']}, {training['nproc']} processes, fp16 AMP, for a wall-clock budget "
            f"of {training['budget_s']:,} s; validation every {training['eval_every']:,} steps") in rows["02_training"][1]
    assert f"{paper['03_generation']['skill_items']} held-out items" in rows["03_generation"][1]
    comparison = paper["04_model_comparison"]
    runs = len(compare.plan(comparison["configs"], comparison["objectives"])[0])
    assert f"{runs} trainings x {comparison['budget_s']} s" in rows["04_model_comparison"][1]
    assert f"{comparison['copy_steps']:,}-step copy tasks" in rows["04_model_comparison"][1]
    for cost in ("verify your phone number", f"about {settings['deadline_s'] // 3600} of the ~30 GPU hours",
                 "waits until `kaggle datasets status <user>/pixelbyte-bundle` says ready"):
        assert cost in readme


def test_runner_adapts_to_the_gpus_present():
    runner = load_runner()
    paper = json.loads((KAGGLE / "params_paper.json").read_text())
    assert runner.adapt_to_gpus(paper, 2) == paper
    one = runner.adapt_to_gpus(paper, 1)["02_training"]
    assert one["nproc"] == 1 and one["device"] == "cuda"
    none = runner.adapt_to_gpus(paper, 0)
    assert none["02_training"]["device"] == "cpu" and none["02_training"]["amp"] is False
    assert none["02_training"]["nproc"] == 1 and none["03_generation"]["device"] == "cpu"


def test_amp_is_decided_per_model_family():
    runner = load_runner()
    paper, _ = runner.split_settings(json.loads((KAGGLE / "params_paper.json").read_text()))
    mamba, decisions = runner.apply_amp_policy({"02_training": {**paper["02_training"], "model": "bysmamba"}})
    assert mamba["02_training"]["amp"] is False and "NaN" in decisions["02_training"]
    lstm, decisions = runner.apply_amp_policy(paper)                  # the paper run's 02 is an LSTM
    assert lstm["02_training"]["amp"] is True and decisions["02_training"] == "amp on as asked"


# --------------------------------------------------------------------------------------------
# The runner: finding, installing, the kernels


def test_runner_finds_the_bundle_under_either_mount_layout(tmp_path):
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


def test_auto_dataset_falls_back_when_the_hub_answers_but_the_dataset_does_not_load(tmp_path, monkeypatch, capsys):
    """huggingface.co answers, but the dataset does not load (here: offline with an empty cache; on
    Kaggle: renamed, gated, a new revision): the runner says so and takes the attached parquet."""
    runner = load_runner()
    monkeypatch.setattr(runner, "hub_reachable", lambda: True)
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "PYTHONPATH": str(ROOT)}.items():
        monkeypatch.setenv(name, value)
    good = write_pixelbytes_parquet(tmp_path / "input" / "pixelbytes" / "train.parquet", 3)
    dataset, why = runner.resolve_dataset(tmp_path / "input", tmp_path / "bundle", allow_hub=True)
    assert dataset == str(good) and f"{runner.HUB_DATASET} does not load (ConnectionError" in why, why
    assert f"WARNING: {runner.HUB_DATASET} does not load" in capsys.readouterr().out
    monkeypatch.setattr(runner, "hub_dataset_loads", lambda name: (True, "one row loads"))
    assert runner.resolve_dataset(tmp_path / "input", tmp_path / "bundle", allow_hub=True)[0] == runner.HUB_DATASET


def test_runner_installs_pixelbyte_with_pips_extras_and_constraints(monkeypatch, tmp_path, bundle):
    """pip resolves pixelbyte[run] from the wheel itself (no METADATA parsing here), offline from
    the bundle first, PyPI only when that fails; torch stays pinned by the constraints file."""
    runner = load_runner()
    calls, answers = [], []
    monkeypatch.setattr(runner, "pip", lambda *args, **kw: calls.append(args) or answers.pop(0))
    constraints = tmp_path / "constraints.txt"
    wheel = json.loads((bundle / kc.BUNDLE_MARKER).read_text())["wheel"]
    requirement = f"pixelbyte[run] @ {(bundle / wheel).resolve().as_uri()}"

    answers[:] = ["ok"]
    runner.install_pixelbyte(bundle, wheel, online=False, constraints=constraints)
    assert calls == [(requirement, "-c", str(constraints), "--no-index", "--find-links", str(bundle))]
    calls.clear()
    answers[:] = ["pip exit code 1", "ok"]                   # offline misses one: PyPI
    runner.install_pixelbyte(bundle, wheel, online=True, constraints=constraints)
    assert calls[1] == (requirement, "-c", str(constraints))
    answers[:] = ["pip exit code 1"]
    with pytest.raises(SystemExit, match="internet"):
        runner.install_pixelbyte(bundle, wheel, online=False, constraints=constraints)


def test_pip_is_logged_and_time_limited(monkeypatch, capsys):
    runner = load_runner()
    seen = []
    monkeypatch.setattr(runner, "run_process", lambda cmd, timeout_s=None, env=None: seen.append((cmd, timeout_s)))
    assert runner.pip("mamba-ssm==2.3.1", timeout_s=900).startswith("timed out after")
    cmd, timeout = seen[0]
    assert cmd[1:4] == ["-m", "pip", "install"] and "-q" not in cmd and timeout == 900
    assert "mamba-ssm==2.3.1" in capsys.readouterr().out                  # the command is in the log


def test_kernel_sources_fastest_first(tmp_path):
    runner = load_runner()
    facts = {"torch": "2.10.0+cu128", "cuda": "12.8", "python": "cp312", "cxx11_abi": True, "gpus": 2}
    constraints = tmp_path / "c.txt"
    assert runner.kernel_sources(tmp_path, online=False, constraints=constraints, facts=facts) == []
    (tmp_path / "mamba_ssm-2.3.1+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl").write_text("")
    sources = runner.kernel_sources(tmp_path, online=True, constraints=constraints, facts=facts)
    assert [name for name, _ in sources] == ["bundle wheels", "release wheels", "PyPI sdists"]
    assert sources[0][1][0] == "--no-deps"
    assert sources[1][1][2:] == load_runner().prebuilt_wheel_urls("2.10.0+cu128", "12.8", "cp312", True)
    assert sources[2][1][-2:] == ["causal-conv1d==1.6.1", "mamba-ssm==2.3.1"]


def test_prebuilt_wheel_urls_are_the_release_file_names():
    """Named as causal-conv1d's and mamba's setup.py name them (and as their releases list them)."""
    assert load_runner().prebuilt_wheel_urls("2.10.0+cu128", "12.8", "cp312", True) == [
        "https://github.com/Dao-AILab/causal-conv1d/releases/download/v1.6.1.post4/"
        "causal_conv1d-1.6.1+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
        "https://github.com/state-spaces/mamba/releases/download/v2.3.1/"
        "mamba_ssm-2.3.1+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"]


@pytest.fixture
def mamba_fakes(monkeypatch):
    """The runner with pip, the kernel check and the uninstall replaced by recorders."""
    runner = load_runner()
    fake = {"pip": [], "outcomes": [], "checks": [], "uninstalled": False}

    def pip(*args, timeout_s=None):
        fake["pip"].append((args, timeout_s))
        outcome, seconds = fake["outcomes"].pop(0)
        time.sleep(seconds)
        return outcome

    monkeypatch.setattr(runner, "pip", pip)
    monkeypatch.setattr(runner, "kernels_work", lambda *args: fake["checks"].pop(0))
    monkeypatch.setattr(runner, "pip_uninstall", lambda *names: fake.update(uninstalled=names))
    return runner, fake


FACTS = {"torch": "2.10.0+cu128", "cuda": "12.8", "python": "cp312", "cxx11_abi": True, "gpus": 2}


def test_mamba_kernels_kept_only_when_the_cuda_check_passes(mamba_fakes, tmp_path):
    runner, fake = mamba_fakes
    record = runner.install_mamba_kernels(tmp_path, True, tmp_path / "c", {**FACTS, "gpus": 0}, 900)
    assert record["backend"] == "torch" and "no GPU" in record["reason"] and fake["pip"] == []
    fake["checks"] = [(True, "forward + backward match")]
    assert runner.install_mamba_kernels(tmp_path, True, tmp_path / "c", FACTS, 900)["backend"] == "cuda"
    fake["checks"] = [(False, "ImportError: No module named 'mamba_ssm'"), (True, "forward + backward match")]
    fake["outcomes"] = [("ok", 0)]
    record = runner.install_mamba_kernels(tmp_path, True, tmp_path / "c", FACTS, 900)
    assert record["backend"] == "cuda" and record["attempts"][0]["source"] == "release wheels"
    # installed and importable, but the CUDA step fails: removed, so backend "auto" cannot pick it
    fake["checks"] = [(False, "no module"), (False, "RuntimeError: no kernel image"), (False, "differs")]
    fake["outcomes"] = [("ok", 0), ("ok", 0)]
    record = runner.install_mamba_kernels(tmp_path, True, tmp_path / "c", FACTS, 900)
    assert record["backend"] == "torch" and fake["uninstalled"] == ("mamba-ssm", "causal-conv1d")
    assert "no kernel image" in record["reason"]


def test_mamba_install_time_limit_falls_back_to_torch(mamba_fakes, tmp_path, capsys):
    """The release wheels hang (pip compiles): the limit stops it, the sdists are not tried, and
    the fallback is in the log and in what runner.json records."""
    runner, fake = mamba_fakes
    fake["checks"] = [(False, "No module named 'mamba_ssm'")]
    fake["outcomes"] = [("timed out after 1 s", 1.2)]
    record = runner.install_mamba_kernels(tmp_path, True, tmp_path / "c", FACTS, limit_s=1.0)
    assert record["backend"] == "torch"
    assert record["attempts"] == [{"source": "release wheels", "outcome": "timed out after 1 s"},
                                  {"source": "PyPI sdists", "outcome": "not tried: the 1 s limit is spent"}]
    assert 0 < fake["pip"][0][1] <= 1.0                                    # pip got the time left
    assert "WARNING: BysMamba uses the pure-PyTorch scan" in capsys.readouterr().out
    assert "timed out" in record["reason"]


def test_kernel_check_runs_in_a_fresh_process(monkeypatch):
    """On a machine without CUDA the real check answers "no CUDA device" (exit 1), parsed."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    ok, detail = load_runner().kernels_work()
    import torch

    if not torch.cuda.is_available():
        assert (ok, detail) == (False, "no CUDA device")



def test_kernel_check_verdict():
    ref, grad = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    runner = load_runner()
    assert runner.kernel_check_verdict(ref + 1e-6, ref, grad, grad)[0] is True
    nan = ref.clone()
    nan[0, 0, 0] = float("nan")
    assert runner.kernel_check_verdict(nan, ref, grad, grad) == (False, "the CUDA kernels' output has NaN or inf")
    ok, detail = runner.kernel_check_verdict(ref, ref, grad * 1.5, grad)
    assert not ok and "input gradient differs" in detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_kernel_check_without_cuda():
    assert load_runner().check_mamba_kernels() == (False, "no CUDA device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernel_check_runs_a_cuda_forward_and_backward():
    ok, detail = load_runner().check_mamba_kernels()
    if importlib.util.find_spec("mamba_ssm") is None:       # then the check must say so, not crash
        assert not ok and "mamba_ssm" in detail, detail
    else:
        assert ok, detail


def test_kernel_pins_are_the_gpu_extra_of_pyproject():
    extra = sorted(pyproject()["project"]["optional-dependencies"]["gpu"])
    assert extra == sorted(f"{name}=={version}" for name, version, _ in load_runner().KERNEL_PACKAGES)

# --------------------------------------------------------------------------------------------
# The runner: running the notebooks


def fake_summary(names):
    return {"status": {n: "pending" for n in names}, "notebooks": {n: {} for n in names}}


def test_budgets_and_the_deadline_bound_each_notebook(tmp_path):
    runner = load_runner()
    names = ["01_a", "02_b", "03_c"]
    settings = {"deadline_s": 1000, "budget_s": {"01_a": 100, "02_b": 5000}}
    timeouts, summary = {}, fake_summary(names)
    run = lambda name, params, timeout: timeouts.setdefault(name, timeout) and "ok"  # noqa: E731
    runner.run_notebooks(names, {}, settings, time.time(), tmp_path, summary, lambda: None, run)
    assert timeouts["01_a"] == 100                                         # its budget
    assert 990 < timeouts["02_b"] <= 1000 and 990 < timeouts["03_c"] <= 1000   # the deadline
    summary = fake_summary(names)
    runner.run_notebooks(names, {}, settings, time.time() - 950, tmp_path, summary, lambda: None, run)
    assert summary["status"]["01_a"].startswith("skipped:") and "deadline" in summary["status"]["01_a"]


def test_runner_json_is_written_after_every_notebook(tmp_path):
    runner = load_runner()
    names = ["01_a", "02_b"]
    summary, path = fake_summary(names), tmp_path / "runner.json"
    write = lambda: path.write_text(json.dumps(summary))  # noqa: E731
    seen = []

    def run(name, params, timeout):
        seen.append(json.loads(path.read_text())["status"])               # what a killed run leaves
        return "ok" if name == "01_a" else "failed: ValueError: boom"

    runner.run_notebooks(names, {}, {"deadline_s": 1000, "budget_s": {}}, time.time(), tmp_path, summary, write, run)
    assert seen == [{"01_a": "running", "02_b": "pending"}, {"01_a": "ok", "02_b": "running"}]
    assert json.loads(path.read_text())["status"] == {"01_a": "ok", "02_b": "failed: ValueError: boom"}
    assert json.loads(path.read_text())["notebooks"]["02_b"]["seconds"] >= 0


def test_a_failed_two_process_start_is_retried_with_one_process(tmp_path):
    runner = load_runner()
    names, settings = ["02_training"], {"deadline_s": 1000, "budget_s": {}}
    calls = []

    def run(name, params, timeout):
        calls.append(params[name]["nproc"])
        return "ok" if params[name]["nproc"] == 1 else "failed: CalledProcessError: torchrun exit 1"

    summary = fake_summary(names)
    runner.run_notebooks(names, {"02_training": {"nproc": 2}}, settings, time.time(), tmp_path, summary, lambda: None, run)
    assert calls == [2, 1] and summary["status"]["02_training"] == "ok"
    assert "torchrun" in summary["notebooks"]["02_training"]["retried_single_process"]
    # it had trained (metrics rows were logged): a real failure, no retry
    (tmp_path / "02_training").mkdir()
    (tmp_path / "02_training" / "metrics.csv").write_text("step,loss\n10,2.3\n")
    calls.clear()
    summary = fake_summary(names)
    runner.run_notebooks(names, {"02_training": {"nproc": 2}}, settings, time.time(), tmp_path, summary, lambda: None, run)
    assert calls == [2] and summary["status"]["02_training"].startswith("failed")
    assert not runner.ddp_start_failed({"nproc": 1}, tmp_path / "nothing")


def test_pipeline_streams_what_cells_print_to_the_log(tmp_path):
    """`pixelbyte.pipeline --log-output`, as the runner starts it: what a cell prints to stdout
    and stderr is in the process's output (the Kaggle log) while it runs, not only in the
    executed notebook."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("out_dir = run_dir = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import sys\nprint('step 10: loss 2.5')\nprint('a warning', file=sys.stderr)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_print.ipynb")
    proc = subprocess.run([sys.executable, "-m", "pixelbyte.pipeline", "--notebooks", str(folder), "--out",
                           str(tmp_path / "out"), "--log-output"], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 10: loss 2.5" in proc.stdout, proc.stdout
    assert "a warning" in proc.stderr


@pytest.mark.slow
def test_a_notebook_past_its_budget_is_stopped_with_its_children(tmp_path, monkeypatch):
    """A real notebook (papermill, Jupyter kernel) that starts two child processes, one in a
    session of its own (as torch elastic starts DDP workers), and hangs: stopped at its budget
    with both children, and the reason is its status."""
    runner = load_runner()
    monkeypatch.setattr(runner, "STOP_GRACE_S", 20)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    folder, pid_file = tmp_path / "notebooks", tmp_path / "children.pid"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("out_dir = run_dir = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"import subprocess, time\n"
                                  f"children = [subprocess.Popen(['sleep', '600']),\n"
                                  f"            subprocess.Popen(['sleep', '600'], start_new_session=True)]\n"
                                  f"open({str(pid_file)!r}, 'w').write(' '.join(str(c.pid) for c in children))\n"
                                  f"time.sleep(600)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_hang.ipynb")
    started = time.time()
    status = runner.run_notebook("01_hang", {}, 20, folder, tmp_path / "out", tmp_path, kernel=None)
    assert status.startswith("failed: stopped after 20 s"), status
    assert time.time() - started < 60
    alive = [int(pid) for pid in pid_file.read_text().split()]
    for _ in range(50):
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    for pid in alive:
        os.kill(pid, 9)
    assert alive == [], "the notebook's child processes outlived the stop"


def test_runner_dry_run_stages_every_notebook_into_working(tmp_path, bundle):
    """The Kaggle kernel's job, CPU-sized, against a fake /kaggle/input and /kaggle/working, up to
    the notebooks' execution (nbval executes them, once per test run, in the test command)."""
    fake_input, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    mounted = fake_input / "datasets" / USER / "pixelbyte-bundle"
    mounted.mkdir(parents=True)
    for item in bundle.iterdir():
        if item.name != kc.DATASET_METADATA:                  # not uploaded as a file
            (mounted / item.name).write_bytes(item.read_bytes())
    parquet = write_pixelbytes_parquet(fake_input / "pixelbytes-pokemon" / "data" / "train-00000.parquet", 30)
    env = dict(SUBPROCESS_ENV, KAGGLE_INPUT=str(fake_input), KAGGLE_WORKING=str(working),
               MPLBACKEND="Agg", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    proc = subprocess.run([sys.executable, str(mounted / "runner.py"), "--dry-run", "--prepare-only"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    summary = json.loads((working / "runner.json").read_text())
    notebooks = [Path(n).stem for n in json.loads((mounted / kc.BUNDLE_MARKER).read_text())["notebooks"]]
    assert summary["status"] == {name: "ok" for name in notebooks}
    for name in notebooks:
        entry = summary["notebooks"][name]
        assert 0 < entry["seconds"] <= entry["timeout_s"] <= 600, (name, entry)
    assert summary["dataset"] == str(parquet) and summary["dry_run"] is True
    assert summary["nccl_env"] == {"NCCL_CUMEM_HOST_ENABLE": "0"}
    assert summary["mamba"]["backend"] == "torch" and summary["settings"]["deadline_s"] == 1800
    used = json.loads((working / "params_used.json").read_text())
    assert used["*"]["dataset"] == str(parquet) and used["*"]["limit"] == 24 and "runner" not in used
    run = working / "run"
    for name in notebooks:                 # staged with the dataset the runner chose and its run folder
        staged = (run / f"{name}.ipynb").read_text()
        assert str(run / name) in staged and str(parquet) in staged, name

def test_the_runners_hub_id_is_the_packages():
    from pixelbyte.config import EMBEDDED, HUB_DATASET

    runner = load_runner()
    assert (runner.HUB_DATASET, runner.EMBEDDED) == (HUB_DATASET, EMBEDDED)
