"""Speed and peak memory of one Mamba layer, forward + backward, on CPU, per scan strategy.

    python benchmarks/scan_speed.py                       # full grid, a few minutes on 2 cores
    python benchmarks/scan_speed.py --states 16 --lengths 256 --repeats 2   # quick look

Strategies (all the same weights and math, see pixelbyte/mamba.py):
- loop:     autograd through a loop over time steps (`unbind`), `Mamba(scan_impl="reference")`
- chunked:  32-step chunks, recomputed in a hand-written backward (two custom ops; the default)
- compiled: the same with the chunk body under torch.compile (cold compile ~50 s per config;
            not in the default set)
- mambapy:  mambapy 1.2.0's MambaBlock, parallel (Blelloch) scan, pads L to a power of 2

Each (strategy, N, L) runs in its own subprocess so that the peak RSS (getrusage ru_maxrss) is
that configuration's alone. Time = median over --repeats runs after --warmup runs.
Prints a markdown table; writes JSON to benchmarks/results/scan_speed.json. The "load" column is
the machine's 1-minute load average after the run: above the thread count, other processes were
competing for the cores and the times are inflated (compare "min ms", least affected).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# ----------------------------------------------------------------------------- defaults
BATCH = 32  # sequences per batch
D_MODEL = 64  # model width; d_inner = 2 * D_MODEL
STATES = [16, 64]  # d_state N
LENGTHS = [256, 1024]  # sequence length L
STRATEGIES = ["loop", "chunked", "mambapy"]  # add "compiled" to try torch.compile
REPEATS = 3  # timed runs per config (median reported)
WARMUP = 1  # untimed runs first
THREADS = 2  # torch intra-op threads
OUT = Path(__file__).parent / "results" / "scan_speed.json"
# --------------------------------------------------------------------------------------


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_layer(strategy, d_model, d_state):
    import torch
    from pixelbyte.mamba import Mamba

    torch.manual_seed(0)
    if strategy in ("loop", "chunked", "compiled"):
        scan_impl = {"loop": "reference", "chunked": "chunked", "compiled": "compiled"}[strategy]
        return Mamba(d_model, d_state=d_state, backend="torch", scan_impl=scan_impl)
    if strategy == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        config = MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, expand_factor=2, d_conv=4)
        layer = MambaBlock(config)  # pscan=True by default
        layer.load_state_dict(Mamba(d_model, d_state=d_state).state_dict(), strict=True)
        return layer
    raise ValueError(f"strategy={strategy!r} is not one of loop, chunked, compiled, mambapy")


def worker(config):
    """Runs one configuration in this process and prints one JSON line."""
    import torch

    torch.set_num_threads(config["threads"])
    layer = build_layer(config["strategy"], config["d_model"], config["d_state"])
    x = torch.randn(config["batch"], config["seqlen"], config["d_model"], requires_grad=True)
    base_rss = peak_rss_mb()

    def fwd_bwd():
        start = time.perf_counter()
        layer(x).square().mean().backward()
        return time.perf_counter() - start

    warmup_s = [fwd_bwd() for _ in range(config["warmup"])]
    times = [fwd_bwd() for _ in range(config["repeats"])]
    median_s = statistics.median(times)
    result = dict(config, median_ms=1000 * median_s, min_ms=1000 * min(times),
                  times_ms=[1000 * t for t in times],
                  warmup_ms=[1000 * t for t in warmup_s],
                  tokens_per_s=config["batch"] * config["seqlen"] / median_s,
                  peak_rss_mb=peak_rss_mb(), base_rss_mb=base_rss,
                  load_avg_1min=os.getloadavg()[0])  # other processes on the machine skew timings
    print(json.dumps(result))


def run_config(config):
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(config, error=proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(results):
    lines = ["| N | L | strategy | fwd+bwd ms (median) | min ms | tokens/s | peak RSS MB | vs loop | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    loop_ms = {(r["d_state"], r["seqlen"]): r["median_ms"] for r in results
               if r["strategy"] == "loop" and "median_ms" in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['d_state']} | {r['seqlen']} | {r['strategy']} | "
                         f"error: {r['error']} | | | | | |")
            continue
        base = loop_ms.get((r["d_state"], r["seqlen"]))
        speedup = f"{base / r['median_ms']:.2f}x" if base else ""
        lines.append(f"| {r['d_state']} | {r['seqlen']} | {r['strategy']} | {r['median_ms']:,.0f} | "
                     f"{r['min_ms']:,.0f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{speedup} | {r['load_avg_1min']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--d-model", type=int, default=D_MODEL)
    parser.add_argument("--states", type=int, nargs="+", default=STATES)
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES,
                        choices=["loop", "chunked", "compiled", "mambapy"])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one config as JSON
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    import torch

    results = []
    for d_state in args.states:
        for seqlen in args.lengths:
            for strategy in args.strategies:
                config = dict(strategy=strategy, batch=args.batch, d_model=args.d_model,
                              d_state=d_state, seqlen=seqlen, repeats=args.repeats,
                              warmup=args.warmup, threads=args.threads)
                result = run_config(config)
                results.append(result)
                print(f"N={d_state} L={seqlen} {strategy}: "
                      + (f"{result['median_ms']:,.0f} ms, peak {result['peak_rss_mb']:,.0f} MB"
                         if "median_ms" in result else result["error"]), file=sys.stderr)

    table = markdown_table(results)
    print(f"\nOne Mamba layer fwd+bwd, B={args.batch}, d_model={args.d_model}, fp32, "
          f"{args.threads} threads, torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
                machine=platform.machine(), processor=platform.processor(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"))
    args.out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
