"""Speed and memory of pixelbyte against the original PixelBytes approach, side by side.

    python benchmarks/run.py                        # full run, ~3 min on 2 cores
    python benchmarks/run.py --quick                # tiny sizes, seconds: checks that it all runs
    python benchmarks/run.py --only training --threads 2 --repeats 7

The original system, as its code worked, is re-implemented here as the anchor:
- data: the seed's windowing materialises every window as its own int64 (L+1, 3, 3) tensor,
  72 * (L+1) bytes per window, versus ``WindowDataset`` (one shared uint8 array, 9 bytes per
  token, a sample is a view);
- training: the seed's last-token objective (``next``: the loss reads the last position only)
  versus ``causal`` (every position is a target), same model, same batch -> supervised targets/s;
- generation: re-running the model over the whole window for every new token versus the
  stateful generator (``model.step``).
Sections (``--only``): data, training, generation; then the targets, each met / missed with its
measured ratio (and why, when missed). Every figure is a median over ``--repeats`` runs after
warm-up; each measurement runs in its own subprocess, so its peak RSS (getrusage) is its own
(``--quick`` runs them in-process: RSS figures are then the whole run's). The machine (cores,
load average at start and end, torch, device, threads) is in the output. Threads: on a machine
shared with other jobs keep ``--threads 1``; more threads than free cores make every op wait.
BysMamba trains with each mixer option: Mamba-1 with the eager chunked scan and with
``scan_impl="compiled"`` (the compiled one starts from an empty inductor cache, so its first step
shows the cold compile), and Mamba-2 (``ssm="mamba2"``). The ratio target reads the "pair"
measurement: the LSTM of the same parameter count and every BysMamba option train in one
process with their steps interleaved, on 1 and 2 threads, at the paper's window and on whole
items; one step of the fastest option is profiled (where its time goes).
Prints a markdown table per section; writes everything to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# measure this checkout's pixelbyte, not another one installed in the environment
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ----------------------------------------------------------------------------- defaults
SEQ_LENGTH = 256             # tokens per training window (the seed's seq_length)
BATCH = 32                   # training batch (the seed's)
STRIDES = [1, 32]            # windowing strides for the data section (the seed used 32)
CONTEXTS = [64, 256, 1024]   # tokens of context before the timed generated tokens
NEW_TOKENS = 16              # generated (timed) tokens per generation run
STEP_ONLY_TOKENS = 64        # model.step calls timed after each context (no generator around them)
REPEATS = 5                  # timed runs per figure (median reported)
WARMUP = 2                   # untimed runs first (the first one is timed apart: compile)
THREADS = 1                  # torch intra-op threads (1: the machine is shared; tiny models)
SEED_PREFIX_WINDOWS = 20_000  # the seed's stride-1 windows would need ~11 GB: time a prefix
OUT = Path(__file__).parent / "results" / "benchmark.json"
# The paper's main size (dim 81, hidden/state 64, depth 2) per family, as in PAPER_CONFIGS, plus
# the LSTM with the parameter count of the BysMamba (hidden 66: 90,983 vs 91,868 parameters),
# and BysMamba with the Mamba-2 mixer (expand 1 by the paper's budget rule): at the paper's size
# with one head of 81 channels (the default headdim; 80,842 parameters: no x_proj / dt_proj,
# one decay per head) and with 3 heads of 27 (81,178), and with d_state 96, the size with the
# paper config's parameter count (91,850).
MODELS = {"lstm": "rnn_uni_pxby_conv_81_64_2", "attention": "att_uni_pxby_conv_81_64_2",
          "bysmamba": "ssm_uni_pxby_conv_81_64_2", "lstm_same_params": "rnn_uni_pxby_conv_81_66_2",
          "bysmamba_mamba2": "ssm_uni_pxby_conv_81_64_2", "bysmamba_mamba2_3heads": "ssm_uni_pxby_conv_81_64_2",
          "bysmamba_mamba2_96": "ssm_uni_pxby_conv_81_96_2"}
FAMILY_FIELDS = {"bysmamba_mamba2": dict(ssm="mamba2"), "bysmamba_mamba2_3heads": dict(ssm="mamba2", headdim=27),
                 "bysmamba_mamba2_96": dict(ssm="mamba2")}
PAIR_SHAPES = [(BATCH, SEQ_LENGTH), (16, 640)]  # (batch, tokens): the paper's window; whole items
PAIR_THREADS = [1, 2]        # the ratio target is measured at each thread count
QUICK = dict(seq_length=32, batch=4, strides=[1, 8], contexts=[8, 16, 32], new_tokens=4,
             repeats=2, warmup=1, items=24, seed_prefix_windows=200, pair_shapes=[(4, 32), (2, 64)],
             model_overrides=dict(dim=18, hidden=8, headdim=9))
# Targets (ratios measured in one run on one machine)
STORAGE_BYTES_PER_TOKEN = 9  # uint8 3x3 window, shared by every sample that contains it
TARGETS_PER_S_RATIO = 100    # causal supervised targets/s >= 100x the last-token objective
GENERATION_SPEEDUP = 50      # stateful >= 50x faster than window re-runs at the longest context
GENERATION_GROWTH = 1.3      # stateful cost at the longest context <= 1.3x its cost at the shortest
BYSMAMBA_VS_LSTM = 2 / 3     # BysMamba training tokens/s >= 2/3 of the LSTM of the same parameter count
# --------------------------------------------------------------------------------------

SECTIONS = ("data", "training", "generation")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_sequences(items):
    """The embedded dataset as one (L_i, 3, 3) uint8 array per item (first ``items`` if given)."""
    from pixelbyte import data

    return data.sequences(data.load_pixelbytes("embedded", limit=items))


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def setup_torch(job):
    import torch

    torch.set_num_threads(job["threads"])
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()


def memory_fields(job, base_rss):
    out = {"peak_rss_mb": peak_rss_mb(), "base_rss_mb": base_rss}
    if job["device"] == "cuda":
        import torch

        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ----------------------------------------------------------------------------- data


def seed_windows(seqs, seq_length, stride, limit=None):
    """The original windowing: each window, input (L, 3, 3) plus the token after it, copied into
    its own int64 tensor of shape (L+1, 3, 3) -- 72 * (L+1) bytes, whatever the stride.
    Same windows as WindowDataset(objective="next"); stops after ``limit`` windows."""
    import torch

    windows = []
    for seq in seqs:
        seq = torch.as_tensor(seq, dtype=torch.int64)                  # (L_i, 3, 3)
        for start in range(0, len(seq) - seq_length, stride):
            windows.append(seq[start:start + seq_length + 1].clone())  # (L+1, 3, 3) int64
            if limit is not None and len(windows) >= limit:
                return windows
    return windows


def n_next_windows(seqs, seq_length, stride):
    return sum(len(range(0, len(s) - seq_length, stride)) for s in seqs)


def data_job(job):
    """One windowing (``job["windowing"]`` seed | ours) at one stride: build time, bytes, RSS."""
    from pixelbyte import data

    seqs = load_sequences(job["items"])
    n_tokens = sum(len(s) for s in seqs)
    L, stride = job["seq_length"], job["stride"]
    n_windows = n_next_windows(seqs, L, stride)
    base_rss = peak_rss_mb()
    result = dict(job, n_tokens=n_tokens, n_windows=n_windows)
    if job["windowing"] == "seed":
        bytes_per_window = (L + 1) * 9 * 8                             # int64 (L+1, 3, 3)
        limit = job["prefix_windows"] if stride == 1 else None

        def build():
            return seed_windows(seqs, L, stride, limit)
    else:
        def build():
            return data.WindowDataset(seqs, L, stride, "next")
    times = []
    for i in range(1 + job["repeats"]):                                # the first one: warm-up
        start = time.perf_counter()
        built = build()
        times.append(time.perf_counter() - start)
        if i < job["repeats"]:
            del built
    build_s = statistics.median(times[1:])
    if job["windowing"] == "seed":
        n_built = len(built)
        assert sum(w.numel() * w.element_size() for w in built) == n_built * bytes_per_window
        result.update(windows_built=n_built, build_s=build_s * n_windows / max(1, n_built),
                      measured_build_s=build_s, extrapolated=n_built < n_windows,
                      storage_bytes=n_windows * bytes_per_window, index_bytes=0,
                      bytes_per_window=bytes_per_window)
    else:
        assert len(built) == n_windows, (len(built), n_windows)
        result.update(windows_built=len(built), build_s=build_s, measured_build_s=build_s,
                      extrapolated=False, storage_bytes=built.tokens.nbytes,
                      index_bytes=built.starts.nbytes, bytes_per_window=None)
    del built
    result["storage_bytes_per_token"] = result["storage_bytes"] / n_tokens
    result["total_bytes_per_token"] = (result["storage_bytes"] + result["index_bytes"]) / n_tokens
    result.update(memory_fields(job, base_rss))
    return result


# ----------------------------------------------------------------------------- training


def model_config(family, overrides, **fields):
    """The paper config of a family (``MODELS``) with its fields (``FAMILY_FIELDS``), then the
    run's overrides (--quick sizes), then ``fields``."""
    from pixelbyte.models import paper_config

    return paper_config(MODELS[family], **{**FAMILY_FIELDS.get(family, {}), **overrides, **fields})


def training_loss(model, x, y):
    """Cross-entropy of one batch, the one place that calls the model in training steps: the
    model owns its objective's loss. y : (B,) for the seed's last-token objective (``next``),
    (B, L) for ``causal``."""
    return model(x, y)[1]


def training_batch(seqs, seq_length, batch, objective, seed=0):
    """``batch`` real samples of the objective's WindowDataset: x (B, L, 3, 3), y (B,) | (B, L)."""
    import numpy as np
    import torch
    from pixelbyte import data

    ds = data.WindowDataset(seqs, seq_length, 1, objective)
    picks = np.random.default_rng(seed).choice(len(ds), batch, replace=len(ds) < batch)
    xs, ys = zip(*(ds[int(i)] for i in picks))
    return torch.stack(xs), torch.stack(ys)


def training_job(job):
    """Training steps (forward + backward + AdamW) of one model on one objective."""
    import torch
    from pixelbyte.models import PixelByteModel

    setup_torch(job)
    if job.get("inductor_cache"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = job["inductor_cache"]
    seqs = load_sequences(job["items"])
    x, y = training_batch(seqs, job["seq_length"], job["batch"], job["objective"])
    device = job["device"]
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    cfg = model_config(job["family"], job["model_overrides"], objective=job["objective"],
                       scan_impl=job["scan_impl"])
    model = PixelByteModel(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = training_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed():
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    base_rss = peak_rss_mb()
    first_step_s = timed()[0]                                          # includes any compile
    for _ in range(job["warmup"] - 1):
        timed()
    times = [timed() for _ in range(job["repeats"])]
    step_s = statistics.median(t[0] for t in times)
    cpu_s = statistics.median(t[1] for t in times)
    tokens = x.shape[0] * x.shape[1]
    targets = tokens if job["objective"] == "causal" else x.shape[0]
    memory = memory_fields(job, base_rss)                              # before the profiled step
    scan_share = scan_time_share(step, device) if cfg.model == "bysmamba" and cfg.ssm == "mamba" \
        and device == "cpu" else None
    return dict(job, parameters=model.num_parameters(), step_ms=1e3 * step_s, cpu_ms=1e3 * cpu_s,
                step_ms_all=[1e3 * t[0] for t in times], first_step_s=first_step_s,
                tokens_per_s=tokens / step_s, targets_per_s=targets / step_s,
                scan_share=scan_share, **memory)


def pair_job(job):
    """The BysMamba / LSTM ratios with all models in one process, their steps interleaved
    (LSTM, BysMamba eager, BysMamba compiled, BysMamba Mamba-2, ..., LSTM, ...): load from other
    jobs hits them alike. Then one profiled step of the fastest BysMamba option."""
    import torch
    from pixelbyte.models import PixelByteModel

    setup_torch(job)
    if job.get("inductor_cache"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = job["inductor_cache"]
    seqs = load_sequences(job["items"])
    x, y = training_batch(seqs, job["seq_length"], job["batch"], "causal")
    device = job["device"]
    x, y = x.to(device), y.to(device)
    steps, parameters = {}, {}
    for name, family, scan_impl in job["runs"]:
        torch.manual_seed(0)
        cfg = model_config(family, job["model_overrides"], objective="causal", scan_impl=scan_impl)
        model = PixelByteModel(cfg).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        parameters[name] = model.num_parameters()

        def step(model=model, optimizer=optimizer):
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            loss = training_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            return time.perf_counter() - wall, time.process_time() - cpu

        for _ in range(job["warmup"]):
            step()
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(job["repeats"]):
        for name, step in steps.items():
            times[name].append(step())
    tokens = x.shape[0] * x.shape[1]
    step_ms = {n: 1e3 * statistics.median(t[0] for t in v) for n, v in times.items()}
    fastest = min((n for n in steps if n.startswith("bysmamba")), key=step_ms.get, default=None)
    return dict(job, parameters=parameters, step_ms=step_ms,
                cpu_ms={n: 1e3 * statistics.median(t[1] for t in v) for n, v in times.items()},
                tokens_per_s={n: tokens / (ms / 1e3) for n, ms in step_ms.items()},
                profiled=fastest, profile=profile_step(steps[fastest]) if fastest else None)


def profile_step(step, top=12):
    """Where one (untimed) training step spends its time: the ops with the most self time,
    each with its share of the profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if _cuda() else [])]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total_us} for e in events[:top]] \
        + [{"op": "total (all ops)", "calls": sum(e.count for e in events), "self_ms": total_us / 1e3,
            "share": 1.0}]


def _cuda():
    import torch

    return torch.cuda.is_available()


def scan_time_share(step, device):
    """Share of one (profiled, untimed) training step spent in the selective scan, forward and
    backward (the ``pixelbyte::chunked_scan`` custom ops, the chunk kernels included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        total_us = 1e6 * (time.perf_counter() - start)
    scan_us = sum(e.cpu_time_total for e in prof.key_averages()
                  if e.key in ("pixelbyte::chunked_scan", "pixelbyte::chunked_scan_backward"))
    return scan_us / total_us


# ----------------------------------------------------------------------------- generation


def step_only_ms(model, windows, contexts, new_tokens, device, repeats):
    """ms per ``model.step`` (no generator around it) right after each context length: median
    over ``new_tokens`` steps of ``repeats`` passes."""
    import numpy as np
    import torch

    samples = {c: [] for c in contexts}
    with torch.inference_mode():
        for _ in range(repeats):
            state = model.init_state(1, device=device)
            per_step = []
            for t in range(max(contexts) + new_tokens):
                x_t = torch.from_numpy(windows[t:t + 1]).long().to(device)  # (1, 3, 3)
                sync(device)
                start = time.perf_counter()
                _, state = model.step(x_t, state)
                sync(device)
                per_step.append(1e3 * (time.perf_counter() - start))
            for c in contexts:
                samples[c] += per_step[c:c + new_tokens]
    return {c: float(np.median(samples[c])) for c in contexts}


def generation_job(job):
    """ms per generated token, stateful vs window re-run, at each context length."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from generation_latency import context_ids, per_token_ms  # benchmarks/generation_latency.py
    from pixelbyte import tokenizer as tok
    from pixelbyte.models import PixelByteModel

    setup_torch(job)
    contexts, new_tokens = job["contexts"], job["new_tokens"]
    ids = context_ids(max(contexts) + max(new_tokens, STEP_ONLY_TOKENS))
    windows = tok.windows_from_ids(ids).astype(np.int64)             # (n, 3, 3)
    torch.manual_seed(0)
    cfg = model_config(job["family"], job["model_overrides"])
    model = PixelByteModel(cfg).to(job["device"]).eval()
    base_rss = peak_rss_mb()
    modes = {"stateful": True, "window re-run": False}
    for use_state in modes.values():
        per_token_ms(model, ids[:min(contexts)], 2, use_state)       # warm-up
    samples = {mode: {ctx: [] for ctx in contexts} for mode in modes}
    for _ in range(job["repeats"]):      # interleaved: a burst of load hits every figure alike
        for mode, use_state in modes.items():
            for ctx in contexts:
                samples[mode][ctx] += per_token_ms(model, ids[:ctx], new_tokens, use_state)
    ms = {mode: {ctx: statistics.median(v) for ctx, v in row.items()} for mode, row in samples.items()}
    step_ms = step_only_ms(model, windows, contexts, max(new_tokens, STEP_ONLY_TOKENS), job["device"],
                           job["repeats"])
    return dict(job, parameters=model.num_parameters(), ms_per_token=ms, step_only_ms=step_ms,
                **memory_fields(job, base_rss))


JOBS = {"data": data_job, "training": training_job, "pair": pair_job, "generation": generation_job}


def run_job(job, isolate):
    """Runs one job in a fresh subprocess (clean peak RSS) or in this process."""
    if not isolate:
        return JOBS[job["section"]](job)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return dict(job, error=last)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- plan


def plan(args, sizes, device, inductor_cache):
    common = dict(threads=args.threads, device=device, items=sizes["items"],
                  model_overrides=sizes["model_overrides"])
    jobs = []
    if "data" in args.only:
        for stride in sizes["strides"]:
            for windowing in ("seed", "ours"):
                jobs.append(dict(common, section="data", windowing=windowing, stride=stride,
                                 seq_length=sizes["seq_length"], repeats=args.repeats,
                                 prefix_windows=sizes["seed_prefix_windows"]))
    if "training" in args.only:
        train = dict(common, section="training", seq_length=sizes["seq_length"], batch=sizes["batch"],
                     repeats=args.repeats, warmup=sizes["warmup"], inductor_cache=inductor_cache)
        runs = [(family, "chunked") for family in ("lstm", "attention", "bysmamba")]
        if args.compile:
            runs.append(("bysmamba", "compiled"))
        runs += [("bysmamba_mamba2", "chunked"), ("lstm_same_params", "chunked")]
        for family, scan_impl in runs:
            for objective in ("next", "causal"):
                jobs.append(dict(train, family=family, config=MODELS[family], scan_impl=scan_impl,
                                 objective=objective))
        pair = [("lstm_same_params", "lstm_same_params", "chunked"), ("bysmamba", "bysmamba", "chunked")]
        if args.compile:
            pair.append(("bysmamba compiled", "bysmamba", "compiled"))
        pair += [("bysmamba mamba2", "bysmamba_mamba2", "chunked"),
                 ("bysmamba mamba2 3 heads", "bysmamba_mamba2_3heads", "chunked"),
                 ("bysmamba mamba2 d_state 96", "bysmamba_mamba2_96", "chunked")]
        for threads in args.pair_threads:
            for batch, seq_length in sizes["pair_shapes"]:
                jobs.append(dict(train, section="pair", runs=pair, threads=threads, batch=batch,
                                 seq_length=seq_length))
    if "generation" in args.only:
        for family in ("lstm", "attention", "bysmamba", "bysmamba_mamba2"):
            jobs.append(dict(common, section="generation", family=family, config=MODELS[family],
                             contexts=sizes["contexts"], new_tokens=sizes["new_tokens"],
                             repeats=max(1, args.repeats // 2)))
    return jobs


def machine_info(args, device):
    import torch

    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    info = dict(cpu_count=os.cpu_count(), cpu_model=cpu_model or platform.processor(),
                platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, device=device, threads=args.threads,
                load_average_start=list(os.getloadavg()),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return info


# ----------------------------------------------------------------------------- targets


def _find(results, **fields):
    return next((r for r in results if all(r.get(k) == v for k, v in fields.items()) and "error" not in r), None)


def targets(results, sizes, threads):
    """Verdicts: one dict per target with the measured value, met (True/False/None) and why."""
    out = []

    def add(name, target, measured, met, detail, why=None):
        out.append(dict(name=name, target=target, measured=measured, met=met, detail=detail,
                        why=None if met or met is None else why))

    # data: storage per token
    data = [r for r in results if r["section"] == "data" and "error" not in r]
    ours = [r for r in data if r["windowing"] == "ours"]
    if ours:
        worst = max(r["storage_bytes_per_token"] for r in ours)
        detail = "; ".join(
            f"stride {r['stride']}: seed {s['storage_bytes_per_token']:,.0f} B/token "
            f"({s['bytes_per_window']:,} B/window) vs ours {r['storage_bytes_per_token']:.1f} B/token "
            f"(+ {r['index_bytes'] / r['n_tokens']:.2f} B/token of int64 window starts): "
            f"{s['storage_bytes_per_token'] / r['storage_bytes_per_token']:,.0f}x less"
            for r in ours for s in [_find(data, windowing="seed", stride=r["stride"])] if s)
        add("window storage (bytes per token)", f"<= {STORAGE_BYTES_PER_TOKEN} B/token, uint8 shared",
            worst, worst <= STORAGE_BYTES_PER_TOKEN, detail,
            why="the token array is not stored as uint8 (3x3 windows of 1 byte per cell)")
    else:
        add("window storage (bytes per token)", f"<= {STORAGE_BYTES_PER_TOKEN} B/token", None, None,
            "data section not run")

    # training: supervised targets/s, causal vs the seed's last-token objective
    train = [r for r in results if r["section"] == "training"]
    for family in ("lstm", "attention", "bysmamba"):
        nxt = _find(train, family=family, objective="next", scan_impl="chunked")
        cau = _find(train, family=family, objective="causal", scan_impl="chunked")
        name = f"supervised targets/s, {family}: causal / last-token"
        if not (nxt and cau):
            add(name, f">= {TARGETS_PER_S_RATIO}x", None, None, "training section not run (or failed)")
            continue
        ratio = cau["targets_per_s"] / nxt["targets_per_s"]
        step_ratio = cau["step_ms"] / nxt["step_ms"]
        add(name, f">= {TARGETS_PER_S_RATIO}x", ratio, ratio >= TARGETS_PER_S_RATIO,
            f"{cau['targets_per_s']:,.0f} vs {nxt['targets_per_s']:,.0f} targets/s; a causal step "
            f"costs {step_ratio:.2f}x a last-token step and supervises L={cau['seq_length']} "
            f"targets per window instead of 1",
            why=f"with L={cau['seq_length']} the ratio can be at most ~{cau['seq_length']}x "
                f"(--quick uses short windows)" if cau["seq_length"] < TARGETS_PER_S_RATIO * 1.2 else
                f"a causal step costs {step_ratio:.2f}x a last-token step (loss over every position)")

    # training: every BysMamba option vs the LSTM of the same parameter count, tokens/s. The
    # verdict reads the interleaved pairs (all models in one process, steps alternating), at
    # each thread count and shape; it is met when the worst of them is.
    pairs = [r for r in results if r["section"] == "pair" and "error" not in r]
    options = [n for n in (pairs[0]["step_ms"] if pairs else {}) if n != "lstm_same_params"]
    if not options:
        add("BysMamba training tokens/s vs the LSTM of the same parameter count",
            f">= {BYSMAMBA_VS_LSTM:.2f}x", None, None, "training section not run (or failed)")
    for option in options:
        ratios = [(r, r["tokens_per_s"][option] / r["tokens_per_s"]["lstm_same_params"]) for r in pairs]
        worst = min(ratio for _, ratio in ratios)
        r0 = pairs[0]
        detail = "; ".join(
            f"{r['threads']} thread(s), B={r['batch']} L={r['seq_length']}: {ratio:.2f}x "
            f"({r['tokens_per_s'][option]:,.0f} vs {r['tokens_per_s']['lstm_same_params']:,.0f} tokens/s)"
            for r, ratio in ratios) + (f"; {r0['parameters'][option]:,} vs "
                                       f"{r0['parameters']['lstm_same_params']:,} parameters")
        family = {name: family for name, family, _ in r0["runs"]}[option]
        cfg = model_config(family, r0["model_overrides"])
        tokens, d_inner = r0["batch"] * r0["seq_length"], cfg.expand * cfg.dim
        if cfg.ssm == "mamba2":
            why = (f"the Mamba-2 mixer's work per layer is matmuls (in_proj to 2*Dn + 2*N + H = "
                   f"{2 * d_inner + 2 * cfg.hidden + d_inner // cfg.headdim} outputs, out_proj, the SSD's "
                   "chunk products) that run as fast as the LSTM's, plus elementwise passes over "
                   f"(B, L, Dn + 2N) = (B, L, {d_inner + 2 * cfg.hidden}) tensors (causal conv, SiLU, "
                   "gate, RMSNorm, decays) that are bound by memory bandwidth on one core. Two threads "
                   "split those passes well, the LSTM's recurrence less.")
        else:
            why = (f"the selective scan updates B*L*Dn*N = {tokens:,} x {d_inner} x {cfg.hidden} = "
                   f"{tokens * d_inner * cfg.hidden:,} states per layer, each with an exp, in the "
                   "forward pass and again in the backward pass (each chunk is recomputed to keep memory "
                   "flat, then walked back), all elementwise vector work; the rest of the step "
                   "(in_proj, x_proj and out_proj matmuls, norms) is about as much work as the whole "
                   "LSTM step, whose recurrence is GEMMs in one fused oneDNN op."
                   + (" The eager scan also issues ~10 small PyTorch ops per time step in each "
                      "direction; scan_impl='compiled' fuses each chunk into one C++ loop nest."
                      if "compiled" not in option else ""))
        add(f"BysMamba ({option.removeprefix('bysmamba').strip() or 'mamba, chunked scan'}) training "
            f"tokens/s vs the LSTM of the same parameter count",
            f">= {BYSMAMBA_VS_LSTM:.2f}x at every thread count and shape", worst,
            worst >= BYSMAMBA_VS_LSTM, detail, why=why)

    # generation
    gen = [r for r in results if r["section"] == "generation"]
    for family in ("lstm", "attention", "bysmamba", "bysmamba_mamba2"):
        r = _find(gen, family=family)
        if r is None:
            for what in ("speed-up", "growth"):
                add(f"generation {what}, {family}", "", None, None, "generation section not run (or failed)")
            continue
        ms = {mode: {int(c): v for c, v in row.items()} for mode, row in r["ms_per_token"].items()}
        lo, hi = min(ms["stateful"]), max(ms["stateful"])
        stateful, rerun = ms["stateful"], ms["window re-run"]
        step = {int(c): v for c, v in r["step_only_ms"].items()}
        speedup = rerun[hi] / stateful[hi]
        add(f"generation speed-up at {hi} tokens, {family}: re-run / stateful",
            f">= {GENERATION_SPEEDUP}x", speedup, speedup >= GENERATION_SPEEDUP,
            f"{rerun[hi]:.2f} vs {stateful[hi]:.2f} ms/token",
            why=f"re-running {family} over {hi} tokens costs only {rerun[hi]:.1f} ms "
                f"({1e3 * rerun[hi] / hi:.0f} us per window token, all in a few batched ops), while "
                f"a stateful token costs {stateful[hi]:.2f} ms (model.step alone: {step[hi]:.2f} ms), "
                f"almost all fixed per-call overhead at batch 1: the embedding, "
                f"{r['config'].split('_')[-1]} layer steps and the head are each a few tiny ops")
        growth = stateful[hi] / stateful[lo]
        add(f"generation cost growth {lo} -> {hi} tokens, {family} (stateful)",
            f"<= {GENERATION_GROWTH}x", growth, growth <= GENERATION_GROWTH,
            f"{stateful[lo]:.2f} -> {stateful[hi]:.2f} ms/token (re-run: {rerun[lo]:.2f} -> "
            f"{rerun[hi]:.2f}, {rerun[hi] / rerun[lo]:.1f}x)",
            why="attention attends over its whole KV cache at every step: O(context) per token"
                if family == "attention" else "per-token cost should not depend on the context here; "
                "a large growth means the run was disturbed (see the load average)")
    return out


# ----------------------------------------------------------------------------- tables


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, spec=",.0f"):
    return "" if value is None else format(value, spec)


def data_table(results):
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["windowing"], r["stride"], "error: " + r["error"]] + [""] * 6)
            continue
        note = (f"time and RSS of the first {r['windows_built']:,} windows; build time extrapolated, "
                f"bytes computed" if r["extrapolated"] else "")
        what = "seed: int64 copy per window" if r["windowing"] == "seed" else "ours: WindowDataset (uint8 + views)"
        rows.append([what, r["stride"], f"{r['n_windows']:,}", fmt(1e3 * r["build_s"], ",.1f"),
                     fmt(r["storage_bytes"] / 2**20, ",.1f"), fmt(r["storage_bytes_per_token"], ",.1f"),
                     fmt(r["index_bytes"] / r["n_tokens"], ",.2f"), fmt(r["peak_rss_mb"], ",.0f"), note])
    return table(["windowing", "stride", "windows", "build ms", "window storage MB", "storage B/token",
                  "index B/token", "peak RSS MB", "note"], rows)


def training_table(results):
    rows = []
    for r in results:
        name = f"{r['family']} ({r['config']})" + (" compiled scan" if r["scan_impl"] == "compiled" else "")
        if "error" in r:
            rows.append([name, r["objective"], "error: " + r["error"]] + [""] * 6)
            continue
        rows.append([name, f"{r['parameters']:,}", "last token (seed)" if r["objective"] == "next" else "causal",
                     fmt(r["step_ms"]), fmt(r["tokens_per_s"]), fmt(r["targets_per_s"]),
                     fmt(r["first_step_s"], ".1f"), fmt(r["peak_rss_mb"])])
    return table(["model", "params", "objective", "step ms", "tokens/s", "targets/s",
                  "first step s", "peak RSS MB"], rows)


def pair_table(results):
    """One row per model, one column per pair job (threads, shape): tokens/s and the ratio to
    the LSTM's tokens/s in that job."""
    ok = [r for r in results if "error" not in r]
    errors = [f"{r['threads']} thread(s), B={r['batch']} L={r['seq_length']}: error: {r['error']}"
              for r in results if "error" in r]
    if not ok:
        return table(["pair job"], [[e] for e in errors])
    header = ["model (causal)", "params"] + [f"{r['threads']} thr, B={r['batch']} L={r['seq_length']}"
                                             for r in ok]
    rows = []
    for name in ok[0]["step_ms"]:
        rows.append([name, f"{ok[0]['parameters'][name]:,}"] + [
            f"{r['tokens_per_s'][name]:,.0f} ({r['tokens_per_s'][name] / r['tokens_per_s']['lstm_same_params']:.2f}x)"
            for r in ok])
    return table(header, rows) + "".join(f"\n\n{e}" for e in errors)


def profile_table(results):
    """The profile of the fastest BysMamba option in the first pair job (1 thread, paper window)."""
    r = next((r for r in results if "error" not in r and r.get("profile")), None)
    if r is None:
        return "no profile (pair job not run or failed)"
    rows = [[p["op"], p["calls"], fmt(p["self_ms"], ",.1f"), fmt(100 * p["share"], ".0f") + "%"]
            for p in r["profile"]]
    return (f"{r['profiled']}, {r['threads']} thread(s), B={r['batch']} L={r['seq_length']}, one "
            f"training step:\n\n" + table(["op", "calls", "self ms", "share"], rows))


def generation_table(results):
    ok = [r for r in results if "error" not in r]
    if not ok:
        return table(["model", "error"], [[r["family"], r["error"]] for r in results])
    contexts = ok[0]["contexts"]
    rows = []
    for r in ok:
        for mode in ("stateful", "window re-run"):
            row = {int(c): v for c, v in r["ms_per_token"][mode].items()}
            rows.append([r["family"], mode] + [fmt(row[c], ".2f") for c in contexts]
                        + [fmt(row[max(contexts)] / row[min(contexts)], ".1f") + "x"])
        step = {int(c): v for c, v in r["step_only_ms"].items()}
        rows.append([r["family"], "model.step only"] + [fmt(step[c], ".2f") for c in contexts]
                    + [fmt(step[max(contexts)] / step[min(contexts)], ".1f") + "x"])
    return table(["model", "mode"] + [f"ctx {c}" for c in contexts]
                 + [f"{max(contexts)} / {min(contexts)}"], rows)


def targets_table(verdicts):
    rows = []
    for v in verdicts:
        met = {True: "met", False: "**missed**", None: "not measured"}[v["met"]]
        measured = "" if v["measured"] is None else (
            f"{v['measured']:.1f} B/token" if "storage" in v["name"] else f"{v['measured']:,.2f}x")
        rows.append([v["name"], v["target"], measured, met, v["detail"] + (f" -- why: {v['why']}" if v["why"] else "")])
    return table(["target", "wanted", "measured", "verdict", "details"], rows)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed runs per figure ({REPEATS})")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also train BysMamba with scan_impl='compiled' (default: on, off with --quick)")
    parser.add_argument("--pair-threads", type=int, nargs="+", default=PAIR_THREADS,
                        help=f"thread counts of the interleaved ratio measurement ({PAIR_THREADS})")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="one subprocess per measurement (default: on, off with --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)          # internal: one job as JSON
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(JOBS[job["section"]](job)))
        return None
    if args.threads < 1 or min(args.pair_threads) < 1:
        parser.error(f"--threads and --pair-threads must be >= 1, got {args.threads} and {args.pair_threads}")
    sizes = dict(seq_length=SEQ_LENGTH, batch=BATCH, strides=STRIDES, contexts=CONTEXTS,
                 new_tokens=NEW_TOKENS, repeats=REPEATS, warmup=WARMUP, items=None,
                 seed_prefix_windows=SEED_PREFIX_WINDOWS, pair_shapes=PAIR_SHAPES, model_overrides={})
    if args.quick:
        sizes.update(QUICK)
    args.repeats = sizes["repeats"] if args.repeats is None else args.repeats
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    args.compile = (not args.quick) if args.compile is None else args.compile
    args.isolate = (not args.quick) if args.isolate is None else args.isolate

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if not args.isolate:
        torch.set_num_threads(args.threads)
    machine = machine_info(args, device)
    print(f"# Benchmarks: {machine['cpu_count']} CPUs ({machine['cpu_model']}), device {device}, "
          f"{args.threads} thread(s), torch {machine['torch']}, load average "
          f"{', '.join(f'{x:.2f}' for x in machine['load_average_start'])}", flush=True)

    # a fresh inductor cache: the compiled scan's first step shows a cold compile
    with tempfile.TemporaryDirectory(prefix="pixelbyte-inductor-") as inductor_cache:
        results = []
        for job in plan(args, sizes, device, inductor_cache if args.isolate else None):
            start = time.perf_counter()
            result = run_job(job, args.isolate)
            results.append(result)
            label = " ".join(str(job[k]) for k in ("section", "family", "windowing", "stride", "objective",
                                                   "scan_impl") if k in job)
            if job["section"] == "pair":
                label += f" {job['threads']} thread(s) B={job['batch']} L={job['seq_length']}"
            print(f"  {label}: {'error: ' + result['error'] if 'error' in result else 'done'} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    machine["load_average_end"] = list(os.getloadavg())

    report = {"machine": machine, "settings": dict(sizes, repeats=args.repeats, quick=args.quick,
                                                   compile=args.compile, isolate=args.isolate,
                                                   only=args.only)}
    tables = {}
    by_section = {s: [r for r in results if r["section"] == s] for s in SECTIONS}
    if "data" in args.only:
        tables["data"] = data_table(by_section["data"])
    if "training" in args.only:
        tables["training"] = training_table(by_section["training"])
        tables["pair"] = pair_table([r for r in results if r["section"] == "pair"])
        tables["profile"] = profile_table([r for r in results if r["section"] == "pair"])
    if "generation" in args.only:
        tables["generation"] = generation_table(by_section["generation"])
    verdicts = targets(results, sizes, args.threads)
    tables["targets"] = targets_table(verdicts)
    for section in SECTIONS:
        report[section] = by_section[section]
    report["training_pair"] = [r for r in results if r["section"] == "pair"]
    report["targets"] = verdicts
    report["tables"] = tables

    titles = {
        "data": f"Data: windowing the embedded dataset (L={sizes['seq_length']}, next-token windows)",
        "training": f"Training: forward + backward + AdamW, B={sizes['batch']}, L={sizes['seq_length']}, "
                    f"median step of {args.repeats}",
        "pair": "Training, the ratio target: causal steps interleaved in one process, tokens/s "
                "(ratio to lstm_same_params), median step of each job",
        "profile": "Where the time goes: the fastest BysMamba option, one profiled step (self CPU time)",
        "generation": "Generation: ms per generated token (median), batch 1, greedy",
        "targets": "Targets (ratios from this run)",
    }
    for name, text in tables.items():
        print(f"\n## {titles[name]}\n\n{text}")
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in machine['load_average_end'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
