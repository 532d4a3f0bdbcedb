"""Per-token generation latency (ms/token, median) against context length, per model family:
the stateful generator (``model.step``, O(1) per token) versus re-running the whole window per
token (what the original code did, and the only way for bidirectional models).

    python benchmarks/generation_latency.py            # prints a markdown table
    python benchmarks/generation_latency.py --contexts 64 256 --new-tokens 16

Writes benchmarks/results/generation_latency.json. Untrained weights (latency does not depend on
them); the context is real pixelbyte tokens (embedded dataset items, concatenated). A token's
latency is the time between two consecutive model calls that produce generated tokens, so it
includes the generator's own work (context window, sampling), not only the model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pixelbyte import data, generate as G, tokenizer as tok
from pixelbyte.models import ModelConfig, PixelByteModel

# -- defaults (override on the command line) -------------------------------------------------
FAMILIES = ["lstm", "attention", "bysmamba"]
CONTEXTS = [64, 256, 1024]      # tokens of context before the timed tokens
NEW_TOKENS = 32                 # tokens generated (timed) per run
REPEATS = 3                     # runs per (family, mode, context); the median is over all tokens
DIM, HIDDEN, DEPTH = 81, 64, 2  # the paper's main size
THREADS = 1                     # torch intra-op threads (1 is fastest for models this small)
OUT = Path(__file__).parent / "results" / "generation_latency.json"


class Timed:
    """Wraps a model and timestamps the end of every step / forward call."""

    def __init__(self, model):
        self.model, self.config, self.is_causal = model, model.config, model.is_causal
        self.stamps: list[float] = []

    training = property(lambda self: self.model.training)

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        self.model.eval()

    def train(self, mode=True):
        self.model.train(mode)

    def init_state(self, batch_size, device=None):
        return self.model.init_state(batch_size, device)

    def step(self, x_t, state):
        out = self.model.step(x_t, state)
        self.stamps.append(time.perf_counter())
        return out

    def __call__(self, x):
        out = self.model(x)
        self.stamps.append(time.perf_counter())
        return out


def context_ids(n: int) -> list[int]:
    """n real token ids: embedded dataset items one after the other."""
    seqs = data.sequences(data.load_pixelbytes(limit=8))
    ids = np.concatenate([tok.centre_ids(s) for s in seqs]).astype(int).tolist()
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def per_token_ms(model, prompt: list[int], new_tokens: int, use_state: bool) -> list[float]:
    """Latencies (ms) of the generated tokens after the first."""
    timed = Timed(model)
    generator = G.Generator(timed, use_state=use_state, window=len(prompt) + new_tokens)
    generator.generate(prompt, new_tokens)
    stamps = timed.stamps[-new_tokens:]                        # the calls that made new tokens
    return [1e3 * (b - a) for a, b in zip(stamps[:-1], stamps[1:])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--contexts", nargs="+", type=int, default=CONTEXTS)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for name in ("new_tokens", "repeats", "threads"):
        if getattr(args, name) < (2 if name == "new_tokens" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if min(args.contexts) < 1:
        parser.error(f"--contexts must be positive, got {args.contexts}")

    torch.set_num_threads(args.threads)
    ids = context_ids(max(args.contexts))
    results = []
    for family in args.families:
        torch.manual_seed(0)
        model = PixelByteModel(ModelConfig(model=family, dim=DIM, hidden=HIDDEN, depth=DEPTH)).eval()
        for mode, use_state in (("stateful", True), ("window re-run", False)):
            per_token_ms(model, ids[:64], 4, use_state)                       # warm-up
            for ctx in args.contexts:
                samples = []
                for _ in range(args.repeats):
                    samples += per_token_ms(model, ids[:ctx], args.new_tokens, use_state)
                results.append({"family": family, "mode": mode, "context": ctx,
                                "median_ms_per_token": statistics.median(samples),
                                "tokens_timed": len(samples),
                                "parameters": model.num_parameters()})
                ms = results[-1]["median_ms_per_token"]
                print(f"{family:9s} {mode:13s} ctx {ctx:5d}: {ms:8.2f} ms/token", flush=True)

    # markdown table: one row per (family, mode), one column per context
    header = "| family | mode | " + " | ".join(f"ctx {c}" for c in args.contexts) + \
             f" | {max(args.contexts)} / {min(args.contexts)} |"
    lines = [header, "|" + "---|" * (len(args.contexts) + 3)]
    for family in args.families:
        for mode in ("stateful", "window re-run"):
            row = {r["context"]: r["median_ms_per_token"] for r in results
                   if r["family"] == family and r["mode"] == mode}
            growth = row[max(args.contexts)] / row[min(args.contexts)]
            lines.append(f"| {family} | {mode} | " + " | ".join(f"{row[c]:.2f}" for c in args.contexts)
                         + f" | {growth:.1f}x |")
    table = "\n".join(lines)
    print("\nms per generated token (median), batch 1, CPU, "
          f"{args.threads} thread(s), dim {DIM} hidden {HIDDEN} depth {DEPTH}\n")
    print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": "median ms per generated token, batch 1, greedy, objective 'next', untrained weights",
        "config": {"dim": DIM, "hidden": HIDDEN, "depth": DEPTH, "new_tokens": args.new_tokens,
                   "repeats": args.repeats, "threads": args.threads},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                    "torch": torch.__version__},
        "results": results, "table_markdown": table}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
