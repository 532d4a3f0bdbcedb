"""benchmarks/gpu_check.py at tiny sizes on the CPU: every check's code path runs (the GPU run
differs only in its device and sizes), the report and its table are written, and a check that
raises is recorded while the next one runs."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gc = load_module()


def test_tiny_run_on_the_cpu_measures_every_check(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["machine"]["device"] == "cpu"
    assert [c["name"] for c in report["checks"]] == list(gc.CHECKS)
    items = {i["name"]: i for c in report["checks"] for i in c["items"]}

    for size in ("paper", "shipped"):
        for family in gc.FAMILIES:
            if (size, family) == ("shipped", "bysmamba_bi"):
                continue
            for precision in ("fp32", "amp"):
                run = items[f"{size} {family} {precision}"]
                assert run["steps"] == gc.SIZES["tiny"]["steps"] and run["tokens_per_s"] > 0
                assert run["loss_last"] < run["loss_first"]
            # on a CPU the Trainer ignores amp=True: the two runs are the same computation
            assert items[f"{size} {family} loss fp32 vs amp"]["loss_rel"] == 0.0
    compiled = items["paper attention eager vs compiled"]
    assert compiled["status"] == "passed" and compiled["compiled_tokens_per_s"] > 0
    for name in ("Mamba kernels vs torch", "Mamba2 kernels vs torch"):
        assert items[name]["status"] == "skipped" and items[name]["summary"] == "needs a CUDA device"
    for family in ("lstm", "attention", "bysmamba"):
        greedy = items[f"shipped {family}: trained on cpu, greedy on cpu"]
        assert greedy["status"] == "passed" and greedy["tokens"] == gc.SIZES["tiny"]["new_tokens"]
    estimate = items["kaggle/params_paper.json on this device"]
    params = json.loads(gc.KAGGLE_PARAMS.read_text())["runner"]
    assert 0 < estimate["per_notebook_s"]["02_training"] <= params["budget_s"]["02_training"]
    assert params["kernel_install_s"] < estimate["total_s"] <= params["deadline_s"]

    # the markdown table: one row per item, written beside the JSON and printed
    table = out.with_suffix(".md").read_text()
    assert "| check | item | status | result |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(items)
    assert table.splitlines()[0] in proc.stdout


def test_a_check_that_raises_is_recorded_and_the_next_one_runs():
    def broken(ctx):
        yield {"name": "first", "status": "passed", "summary": ""}
        raise ValueError("broken on purpose")

    def fine(ctx):
        yield {"name": "ok", "status": "passed", "summary": "fine"}

    def skipped(ctx):
        yield {"name": "gpu part", "status": "skipped", "summary": "needs a CUDA device"}

    seen = []
    records = gc.run_checks({"broken": broken, "fine": fine, "skipped": skipped}, None,
                            on_update=lambda r: seen.append(len(r)))
    assert [r["status"] for r in records] == ["error", "passed", "skipped"]
    assert records[0]["error"] == "ValueError: broken on purpose" and "broken on purpose" in records[0]["traceback"]
    assert records[0]["items"][0]["name"] == "first"            # what it measured before raising is kept
    assert seen == [1, 2, 3]                                     # the report is rewritten after each check


def test_unknown_check_is_refused():
    with pytest.raises(SystemExit):
        gc.main(["--only", "train,nope"])
