"""The skills report of a trained model on its run's held-out items: a table and a JSON.

    python benchmarks/skills.py --checkpoint pretrained              # the shipped model
    python benchmarks/skills.py --checkpoint runs/<ts>/02_training/best_model --items 64
    python benchmarks/skills.py --checkpoint pretrained --guidance 2   # sampled with guidance 2

The held-out split, the data source and the sample settings come from the checkpoint's own run
(run.json). Prints the markdown table (every figure beside its baseline) and writes everything
to --out as JSON (default benchmarks/results/skills_<name>.json, <name> from the checkpoint's
last three folders). Quality numbers are measured here, never in timed unit tests.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pixelbyte import __version__, data, git_commit, skills
from pixelbyte.models import PixelByteModel

RESULTS = Path(__file__).parent / "results"


def measure(checkpoint: str, items: int, seed: int = 0, temperature: float = 0.8,
            caption_temperature: float = 0.0, retrieval: tuple = (8, 32), guidance: float | None = None) -> dict:
    model = PixelByteModel.from_pretrained(checkpoint).eval()
    run = model.run
    if run is None or run.data is None:
        raise SystemExit(f"{checkpoint}: no run.json with its data; the held-out items are unknown")
    try:
        seqs = data.load(run.data)
    except (OSError, ValueError) as err:          # the data moved, was deleted, or the hub is out of reach
        raise SystemExit(f"{checkpoint}: cannot load the data of its run ({run.data.source}): {err}") from None
    train_idx, test_idx = data.split(seqs, run.data)
    start = time.perf_counter()
    report = skills.measure(model, [seqs[i] for i in train_idx], [seqs[i] for i in test_idx],
                            skills.SkillsConfig(items=items, seed=seed, temperature=temperature,
                                                caption_temperature=caption_temperature, retrieval=retrieval,
                                                guidance=guidance))
    return {"checkpoint": checkpoint, "model": model.config.to_dict(), "run": run.to_dict(),
            "parameters": model.num_parameters(), "held_out_items": len(test_idx),
            "scored_items": len(report.examples["references"]),
            "temperature": temperature, "caption_temperature": caption_temperature, "retrieval": list(retrieval),
            "guidance": guidance, "seed": seed, "seconds": time.perf_counter() - start,
            "table": report.table.to_dict(orient="records"), "markdown": report.markdown(),
            "machine": {"torch": torch.__version__, "python": platform.python_version(),
                        "pixelbyte": __version__, "git_commit": git_commit()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="pretrained", help="a save_pretrained folder, hub id or 'pretrained'")
    ap.add_argument("--items", type=int, default=64, help="held-out items scored by the generation skills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of images")
    ap.add_argument("--caption-temperature", type=float, default=0.0, help="captions: 0 = greedy")
    ap.add_argument("--retrieval", default="8,32", help="retrieval among K held-out items, for each K (comma-separated)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale of every sample (condition models); none = 1")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/skills_<name>.json)")
    args = ap.parse_args(argv)
    result = measure(args.checkpoint, args.items, args.seed, args.temperature, args.caption_temperature,
                     tuple(int(k) for k in args.retrieval.split(",")), args.guidance)
    print(result["markdown"])
    print(f"\n{result['scored_items']} of {result['held_out_items']} held-out items, {result['seconds']:.0f} s")
    folder = Path(args.checkpoint)          # runs/<ts>/02_training/best_model: skills_<ts>_02_training_best_model
    name = "_".join(folder.resolve().parts[-3:]) if folder.is_dir() else args.checkpoint.replace("/", "_")
    name += "" if args.guidance is None else f"_guidance{args.guidance:g}"    # never over the unguided report
    out = Path(args.out) if args.out else RESULTS / f"skills_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
