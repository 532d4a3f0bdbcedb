"""benchmarks/run.py: the --quick run produces every section and every target verdict (no timing
assertions: the numbers depend on the machine), and the seed's windowing it measures yields the
same windows as WindowDataset."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def load_run_module():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_section_and_target(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    machine = report["machine"]
    for key in ("cpu_count", "torch", "device", "threads", "load_average_start", "load_average_end"):
        assert key in machine, key
    assert machine["device"] in ("cpu", "cuda") and machine["threads"] == 1

    # data: both windowings at both strides, bytes per token for each
    data = report["data"]
    assert {(r["windowing"], r["stride"]) for r in data} == {(w, s) for w in ("seed", "ours")
                                                             for s in report["settings"]["strides"]}
    for r in data:
        assert "error" not in r, r
        assert r["storage_bytes_per_token"] > 0 and r["build_s"] >= 0 and r["peak_rss_mb"] > 0
    # training: every family on both objectives, with throughput and targets/s
    training = report["training"]
    runs = {(r["family"], r["objective"]) for r in training}
    for family in ("lstm", "attention", "bysmamba", "bysmamba_mamba2", "lstm_same_params"):
        assert {(family, "next"), (family, "causal")} <= runs
    for r in training:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["targets_per_s"] > 0 and r["peak_rss_mb"] > 0
    # the ratio target's pairs: LSTM and every BysMamba option interleaved in one process, at
    # each thread count and shape (the paper's window, whole items), the fastest option profiled
    pairs = report["training_pair"]
    assert {(r["threads"], r["batch"], r["seq_length"]) for r in pairs} == {
        (t, b, l) for t in (1, 2) for b, l in report["settings"]["pair_shapes"]}
    options = {"lstm_same_params", "bysmamba", "bysmamba mamba2", "bysmamba mamba2 3 heads",
               "bysmamba mamba2 d_state 96"}
    for pair in pairs:
        assert "error" not in pair, pair
        assert set(pair["step_ms"]) == options and min(pair["step_ms"].values()) > 0
        assert pair["profiled"] in options and pair["profile"][-1]["op"] == "total (all ops)"
    # generation: both modes at every context, per family
    generation = report["generation"]
    assert {r["family"] for r in generation} == {"lstm", "attention", "bysmamba", "bysmamba_mamba2"}
    contexts = {str(c) for c in report["settings"]["contexts"]}
    for r in generation:
        assert "error" not in r, r
        for mode in ("stateful", "window re-run"):
            assert set(r["ms_per_token"][mode]) == contexts

    # targets: every kind present, each with a verdict; a missed one says why
    names = [t["name"] for t in report["targets"]]
    assert any(n.startswith("window storage") for n in names)
    assert sum(n.startswith("supervised targets/s") for n in names) == 3
    assert sum(n.startswith("generation speed-up") for n in names) == 4
    assert sum(n.startswith("generation cost growth") for n in names) == 4
    assert sum(n.startswith("BysMamba") for n in names) == len(options) - 1  # one per option
    for t in report["targets"]:
        assert {"name", "target", "measured", "met", "detail", "why"} <= set(t)
        assert t["met"] in (True, False, None)
        if t["met"] is False:
            assert t["why"], t
    storage = next(t for t in report["targets"] if t["name"].startswith("window storage"))
    assert storage["met"] is True and storage["measured"] <= 9

    # markdown tables, printed and stored
    assert set(report["tables"]) == {"data", "training", "pair", "profile", "generation", "targets"}
    assert "| target |" in proc.stdout and "| windowing |" in proc.stdout


def test_seed_windowing_matches_window_dataset():
    from pixelbyte import data

    run = load_run_module()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 113, size=(n, 3, 3)).astype(np.uint8) for n in (5, 12, 30)]
    L, stride = 6, 4
    windows = run.seed_windows(seqs, L, stride)
    ds = data.WindowDataset(seqs, L, stride, "next")
    assert len(windows) == len(ds) == run.n_next_windows(seqs, L, stride)
    for window, (x, y) in zip(windows, (ds[i] for i in range(len(ds)))):
        assert window.dtype == torch.int64 and window.shape == (L + 1, 3, 3)
        assert torch.equal(window[:L], x) and int(window[L, 1, 1]) == int(y)
    assert len(run.seed_windows(seqs, L, 1, limit=3)) == 3
