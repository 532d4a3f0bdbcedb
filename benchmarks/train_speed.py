"""Training tokens/s of the main job's recipe (notebook 02's defaults: LSTM dim 96, 256 cells,
2 layers, whole items in both orders, positions, batch 16), for one or more source trees,
interleaved: round r times every tree once before round r + 1, so a busy machine slows all
trees alike. A step is what the Trainer does per batch: collate (the data path, where the
positions are computed), forward, backward, AdamW.

    python benchmarks/train_speed.py --tree before=/path/to/old/checkout after=.
    python benchmarks/train_speed.py --tree after=. --model bysmamba --rounds 3

Prints a table (median tokens/s per tree, ratio to the first) and writes JSON
(default benchmarks/results/train_speed.json).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tyro
from dataclasses import dataclass, field

RECIPE = dict(dim=96, hidden=256, depth=2, objective="causal", positions=True)


@dataclass
class Args:
    tree: list[str] = field(default_factory=lambda: ["after=."])   # name=path of a source tree
    model: str = "lstm"                   # lstm | attention | bysmamba
    steps: int = 12                       # timed steps per round (after 2 warm-up steps)
    rounds: int = 5                       # interleaved rounds
    batch_size: int = 16
    threads: int = 0                      # torch threads, 0 keeps torch's default
    out: str = "benchmarks/results/train_speed.json"


def worker(model_name: str, steps: int, batch_size: int, threads: int) -> list[float]:
    """Runs inside the tree's interpreter: tokens/s of each timed step."""
    import torch

    from pixelbyte import data
    from pixelbyte.config import DataConfig, ModelConfig
    from pixelbyte.models import PixelByteModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = data.ItemDataset(data.load(DataConfig()), orders="both")
    order = ds.epoch_order(torch.Generator().manual_seed(0), batch_size).tolist()
    model = PixelByteModel(ModelConfig(model=model_name, **RECIPE))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rates = []
    for s in range(steps + 2):
        idx = order[s * batch_size:(s + 1) * batch_size]
        t0 = time.perf_counter()
        x, y, *positions = ds.collate([ds[i] for i in idx])
        _, loss = model(x, y, *positions)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= 2:
            rates.append(int((y != 0).sum()) / (time.perf_counter() - t0))
    return rates


def main(args: Args) -> dict:
    trees = dict(t.split("=", 1) for t in args.tree)
    rates: dict[str, list[float]] = {name: [] for name in trees}
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import train_speed as b; "
            f"print(json.dumps(b.worker({args.model!r}, {args.steps}, {args.batch_size}, {args.threads})))")
    for r in range(args.rounds):
        for name, path in trees.items():
            env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()), TQDM_DISABLE="1")
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(path).resolve(),
                                 capture_output=True, text=True, check=True)
            rates[name] += json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}/{args.rounds} {name}: median {statistics.median(rates[name]):,.0f} tokens/s",
                  flush=True)
    first = next(iter(trees))
    result = {"model": args.model, "recipe": RECIPE, "batch_size": args.batch_size, "steps": args.steps,
              "rounds": args.rounds, "threads": args.threads or "default", "trees": trees,
              "median_tokens_per_s": {n: statistics.median(v) for n, v in rates.items()}}
    result["ratio_to_" + first] = {n: result["median_tokens_per_s"][n] / result["median_tokens_per_s"][first]
                                   for n in trees}
    print(f"\n{'tree':<10} {'median tokens/s':>16} {'ratio':>7}")
    for n in trees:
        print(f"{n:<10} {result['median_tokens_per_s'][n]:>16,.0f} {result['ratio_to_' + first][n]:>7.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
