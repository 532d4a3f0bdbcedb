"""benchmarks/gpu_check.py: its --tiny mode (what CI can run: the CPU parts at tiny sizes, every GPU
part reported as skipped with the reason), and its harness: a check that raises is recorded and
the next one runs; the total budget and the per-check limits."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module              # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = load_module()


def test_tiny_mode_runs_the_cpu_parts_and_skips_the_gpu_parts(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["format"] == "pixelbyte-gpu-check-v1"
    assert [c["name"] for c in report["checks"]] == [c.name for c in gc.CHECKS]
    assert report["tolerances"] == json.loads(json.dumps(gc.TOLERANCES))
    for key in ("torch", "torch_cuda", "python", "cuda_available"):
        assert key in report["machine"], key
    assert report["elapsed_s"] < report["budget_s"]

    reason = "--tiny: CPU parts only" if torch.cuda.is_available() else "no CUDA device"
    items = {(c["name"], i["name"]): i for c in report["checks"] for i in c["items"]}
    for check in report["checks"]:
        assert check["status"] in ("passed", "skipped"), check
        gpu = [i for i in check["items"] if i["part"] == "gpu"]
        assert gpu, f"{check['name']} lists no GPU part"
        for item in gpu:
            assert item["status"] == "skipped" and item["reason"] == reason, item
        for item in check["items"]:
            if item["part"] == "cpu":
                assert item["status"] == "passed", item

    # the CPU parts, each within its stated tolerance
    for family in gc.FAMILIES:
        step = items[("train", f"{family} step fp32 cpu vs fp64 cpu")]
        for metric, bound in step["tolerance"].items():
            assert step[metric] <= bound, (family, metric, step[metric])
        trained = items[("train", f"{family} train fp32 cpu")]
        assert trained["loss_last"] < trained["loss_first"] and trained["steps"] >= gc.SIZES["tiny"]["min_steps"]
    scan = items[("scan", "chunked scan cpu vs fp64 reference")]
    assert scan["forward_rel"] <= scan["tolerance"]["forward_rel"]
    assert max(scan["backward_rel"].values()) <= scan["tolerance"]["backward_rel"]
    for family in gc.CAUSAL_FAMILIES:
        step = items[("generate", f"{family} step == forward cpu")]
        assert step["relative"] <= step["tolerance"] == gc.TOLERANCES["step_vs_forward"]
        assert items[("generate", f"{family} ms/token cpu batch 1")]["ms_per_token"] > 0
    for family in ("lstm", "bysmamba"):
        saved = items[("save_load", f"{family} trained on cpu -> save -> load on cpu")]
        assert saved["weights_identical"] and saved["logits_cpu_rel"] == 0.0
    selection = items[("cuda_tests", "select the CUDA tests")]
    assert "tests/test_train.py::test_amp_fp16_on_cuda" in {t["id"] for t in selection["tests"]}

    # the markdown table: one row per item, written beside the JSON and printed
    table = out.with_suffix(".md").read_text()
    assert "| check | item | part | status | result |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(items)
    assert "| mamba_kernels | mamba-ssm kernels vs torch backend | gpu | skipped |" in table
    assert table.splitlines()[0] in proc.stdout


@pytest.mark.filterwarnings("ignore:TrainConfig.amp=True ignored")
def test_the_gpu_code_paths_run_on_a_cpu_stand_in(monkeypatch, tmp_path):
    """The GPU mode's checks with the CPU standing in for the GPU (gpu_check.GPU = "cpu", CUDA's
    bookkeeping stubbed), tiny sizes: every item runs without an error (their numbers here say
    nothing about a GPU; fp16 AMP falls back to fp32 in the Trainer on a CPU)."""
    monkeypatch.setattr(gc, "GPU", "cpu")
    for name, stub in dict(synchronize=lambda *a: None, reset_peak_memory_stats=lambda *a: None,
                           max_memory_allocated=lambda *a: 0, is_bf16_supported=lambda *a: True,
                           get_device_name=lambda *a: "cpu stand-in", empty_cache=lambda *a: None).items():
        monkeypatch.setattr(torch.cuda, name, stub)
    sizes = dict(gc.SIZES["tiny"], train_steps=6, min_steps=2, loss_window=2, seq_length=16, stride=16)
    ctx = gc.Context(mode="gpu", cuda=True, no_gpu_reason=None, sizes=sizes, work_dir=tmp_path)
    checks = [c for c in gc.CHECKS if c.name in ("train", "generate", "save_load", "mamba_kernels")]
    records = gc.run_checks(checks, ctx, gc.Budget(300))
    items = {i["name"]: i for r in records for i in r["items"]}
    for record in records:
        assert record["status"] not in ("error", "timeout"), record
        for item in record["items"]:
            assert item["status"] != "error", item
            assert item["part"] == "gpu"
    for family in gc.FAMILIES:
        for precision in gc.PRECISIONS:
            assert items[f"{family} step {precision} cuda vs fp32 cpu"]["tolerance"] == gc.TOLERANCES["step"][precision]
            assert items[f"{family} train {precision} cuda"]["steps"] > 0
        assert items[f"{family} trained on cuda -> save -> load on cpu"]["weights_identical"]
    assert items["bysmamba ms/token cuda batch 4"]["ms_per_token"] > 0
    assert items["lstm step == forward cuda"]["weights"] == "trained by check train"
    if not gc.mamba_ssm_available():
        assert "mamba_ssm does not import" in items["mamba-ssm kernels vs torch backend"]["reason"]


# ---------------------------------------------------------------------------------------------
# The harness


def context():
    return gc.Context(mode="tiny", cuda=False, no_gpu_reason="no CUDA device", sizes={}, work_dir=Path("."))


def test_a_check_that_raises_is_recorded_and_the_next_one_runs():
    def broken(ctx, rec):
        rec.add("first", "cpu", "passed")
        raise ValueError("broken on purpose")

    def fine(ctx, rec):
        rec.add("ok", "cpu", "passed", summary="fine")

    def one_bad_item(ctx, rec):
        rec.item("bad", "cpu", lambda: 1 / 0)
        rec.item("good", "cpu", lambda: {"status": "passed"})

    checks = [gc.Check("broken", "", broken, 10), gc.Check("fine", "", fine, 10),
              gc.Check("items", "", one_bad_item, 10)]
    seen = []
    records = gc.run_checks(checks, context(), gc.Budget(60), on_update=lambda r: seen.append(len(r)))
    assert [r["status"] for r in records] == ["error", "passed", "failed"]
    assert records[0]["error"] == "ValueError: broken on purpose" and "broken on purpose" in records[0]["traceback"]
    assert records[0]["items"][0]["name"] == "first"                  # what it did before raising is kept
    bad, good = records[2]["items"]
    assert bad["status"] == "error" and bad["error"].startswith("ZeroDivisionError") and good["status"] == "passed"
    assert seen == [1, 2, 3]                                           # the report is rewritten after each check


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_each_check_gets_its_limit_capped_by_what_is_left_of_the_budget():
    clock = FakeClock()
    seen = {}

    def spend(seconds):
        def fn(ctx, rec):
            seen[len(seen)] = round(ctx.left(), 6)
            clock.now += seconds
            rec.add("x", "cpu", "passed")
        return fn

    checks = [gc.Check("a", "", spend(70), limit_s=60), gc.Check("b", "", spend(29), limit_s=50),
              gc.Check("c", "", spend(0), limit_s=50, min_s=3)]
    records = gc.run_checks(checks, context(), gc.Budget(100, clock=clock))
    assert [r["limit_s"] for r in records] == [60, 30, 1]              # b: 100 - 70 left; c: 1 s left
    assert seen == {0: 60, 1: 30}                                      # ctx.left() counts down from the limit
    assert [r["status"] for r in records] == ["passed", "passed", "skipped"]
    assert "total time budget spent" in records[2]["reason"] and records[2]["items"] == []
    budget = gc.Budget(10, clock=clock)
    clock.now += 25
    assert budget.left() == 0 and budget.elapsed() == 25


def test_time_a_check_leaves_of_its_limit_goes_to_the_next_ones():
    clock = FakeClock()

    def spend(seconds):
        def fn(ctx, rec):
            clock.now += seconds
            rec.add("x", "cpu", "passed")
        return fn

    checks = [gc.Check("a", "", spend(10), limit_s=60), gc.Check("b", "", spend(80), limit_s=50),
              gc.Check("c", "", spend(0), limit_s=20)]
    records = gc.run_checks(checks, context(), gc.Budget(200, clock=clock))
    assert [r["limit_s"] for r in records] == [60, 100, 40]            # b: 50 + 50 saved; c: 20 + 20


def test_a_check_past_its_limit_is_stopped_and_the_next_one_runs():
    def endless(ctx, rec):
        rec.add("before", "cpu", "passed")
        while True:
            try:                       # code that catches Exception cannot keep the check alive
                time.sleep(0.01)
            except Exception:
                pass

    checks = [gc.Check("slow", "", endless, limit_s=0.3, min_s=0, grace_s=0.2),
              gc.Check("next", "", lambda ctx, rec: rec.add("ok", "cpu", "passed"), limit_s=5)]
    t0 = time.monotonic()
    records = gc.run_checks(checks, context(), gc.Budget(30))
    assert time.monotonic() - t0 < 5
    assert records[0]["status"] == "timeout" and "time limit" in records[0]["reason"]
    assert records[0]["items"][0]["name"] == "before" and records[1]["status"] == "passed"


def test_cpu_items_and_gpu_items_make_the_check_status():
    items = []
    rec = gc.Recorder(items)
    rec.skip("g", "gpu", "no CUDA device")
    assert rec.status() == "skipped" and items[0]["summary"] == "skipped: no CUDA device"
    rec.add("c", "cpu", "passed")
    assert rec.status() == "passed"
    rec.add("d", "cpu", "failed")
    assert rec.status() == "failed"


# ---------------------------------------------------------------------------------------------
# The CUDA tests: selection and pytest's report


def test_cuda_tests_are_found_in_the_source():
    ids = {t["id"]: t["why"] for t in gc.cuda_test_ids()}
    assert ids["tests/test_train.py::test_amp_fp16_on_cuda"] == "skipif on CUDA"
    # a module-level mark used as a decorator
    assert ids["tests/test_mamba.py::test_torch_backend_matches_mamba_ssm_kernels"] == "skipif on CUDA"
    assert "tests/test_kaggle_env.py::test_kernel_check_runs_a_cuda_forward_and_backward" in ids
    assert not any("test_gpu_check" in i for i in ids)
    assert "tests/test_train.py::test_warmup_cosine_schedule_values" not in ids


def test_missing_imports_of_a_test_module(tmp_path):
    module = tmp_path / "test_x.py"
    (tmp_path / "helper.py").write_text("")
    module.write_text("import os\nimport not_a_module_here.sub\nfrom helper import x\nfrom . import y\n")
    assert gc.missing_imports(module) == ["not_a_module_here"]


def test_junit_report_is_read(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="0.1">'
        '<failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_gpu" time="0"><skipped message="needs CUDA"/></testcase>'
        '</testsuite></testsuites>')
    tests = gc.parse_junit(xml)
    assert [(t["id"], t["outcome"]) for t in tests] == [
        ("tests/test_a.py::test_ok", "passed"), ("tests/test_a.py::test_bad", "failed"),
        ("tests/test_b.py::test_gpu", "skipped")]
    assert tests[1]["message"] == "assert 1 == 2" and tests[2]["message"] == "needs CUDA"
