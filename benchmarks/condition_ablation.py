"""The condition, with and without: the main job's 02 recipe (LSTM dim 96, 256 cells, 2 layers,
positions, whole items in both orders, batch 16) trained for the same steps from the same seed,
once per variant, then the skills report's cross-modal rows on the same held-out items: swap
gains (bits per token, own partner minus another's) and retrieval among 8, both directions.

    python benchmarks/condition_ablation.py --steps 300 --items 64
    python benchmarks/condition_ablation.py --variants plain cond0.1 cond0.3

A variant is ``plain`` (no condition) or ``cond<dropout>`` (``condition=True`` with that
``condition_dropout``). Prints a table and writes JSON (default
benchmarks/results/condition_ablation.json) with the held-out loss and training time of each.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from pixelbyte import data, skills
from pixelbyte.config import RunConfig
from pixelbyte.train import train


@dataclass
class Args:
    variants: list[str] = field(default_factory=lambda: ["plain", "cond0.1"])
    steps: int = 300                       # optimizer steps, the same for every variant
    items: int = 64                        # held-out items scored
    seed: int = 0
    out_dir: str = "runs/condition_ablation"   # the runs (checkpoints, metrics)
    out: str = "benchmarks/results/condition_ablation.json"


def run_config(variant: str, args: Args) -> RunConfig:
    condition = variant != "plain"
    dropout = float(variant.removeprefix("cond")) if condition else 0.0
    return RunConfig.from_flat(
        source="embedded", test_size=0.1, unit="item", orders="both", model="lstm", dim=96, hidden=256,
        depth=2, objective="causal", positions=True, condition=condition, condition_dropout=dropout,
        batch_size=16, lr=5e-3, min_lr=5e-4, warmup_steps=30, epochs=1000, max_steps=args.steps,
        eval_every=args.steps, eval_batches=8, seed=args.seed, device="cpu", progress=False,
        out_dir=str(Path(args.out_dir) / variant))


def main(args: Args) -> dict:
    results = {}
    for variant in args.variants:
        run = run_config(variant, args)
        seqs = data.load(run.data)
        t0 = time.perf_counter()
        model, final = train(run, seqs=seqs, overwrite=True)
        train_s = time.perf_counter() - t0
        _, test_idx = data.split(seqs, run.data)
        # spread over the split, as the skills report does: the items are sorted by category
        items = skills.spread([i for i in (skills.Item.of(seqs[k]) for k in test_idx) if i is not None], args.items)
        captions = [i.caption for i in items]
        groups = None if skills.no_groups_reason(captions) else [skills.caption_group(c) for c in captions]
        rows = skills.cross_rows(model.eval(), items, skills.SkillsConfig(retrieval=(8,), seed=args.seed), groups)
        results[variant] = {"train_s": train_s, "val_loss": final.get("val_loss"),
                            "rows": {f"{r['skill']}: {r['metric']}": r["value"] for r in rows}}
        print(variant, json.dumps(results[variant]), flush=True)
    metrics = list(next(iter(results.values()))["rows"])
    print(f"\n{'metric':<90}" + "".join(f"{v:>10}" for v in results))
    for m in ["val_loss", *metrics]:
        values = [r["val_loss"] if m == "val_loss" else r["rows"][m] for r in results.values()]
        print(f"{m:<90}" + "".join(f"{v:>10.4f}" for v in values))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "items": args.items, "seed": args.seed,
                                          "recipe": "notebook 02's main-job defaults", "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
