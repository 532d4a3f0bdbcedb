"""Ship a trained model in the package: pixelbyte/pretrained/<name>/ (weights in fp16, its run,
a model card holding its skills report) and the README's pictures of what it does.

    .venv/bin/python scripts/ship_pretrained.py runs/long/best_model --train-dir runs/long --items 64

The weights are stored in fp16 (half the size; they load back into an fp32 model), and the
skills are measured on that reloaded model -- what a user gets from
``PixelByteModel.from_pretrained("pretrained")``. Writes benchmarks/results/skills_pretrained.json,
docs/pretrained_sprites.png and docs/pretrained_captions.png too.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from pixelbyte import data, plots, skills  # noqa: E402
from pixelbyte.models import PRETRAINED_DIR, PixelByteModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import skills as skills_benchmark  # noqa: E402  (benchmarks/skills.py: the report as a JSON)

CARD = """---
library_name: pixelbyte
tags: [pixelbytes, multimodal, pixel-art, text-and-image]
---
# {name}: a PixelByte model of the embedded emoji sprites

One token stream for text and pixel images: this {family} ({parameters:,} parameters) reads and
writes items of the form `"(h, w)"` -> image rows -> caption, and also caption -> `"(h, w)"` ->
image, token by token, with each token's causal 3x3 neighbourhood as its input and position
inputs (segment, row, column, declared size){condition}. It was trained by `pixelbyte` {version} on the
embedded emoji set ({items} items, {held_out} held out by item, never trained on).

```python
from pixelbyte import generate as gen
from pixelbyte.models import PixelByteModel
model = PixelByteModel.from_pretrained("pretrained")          # shipped in the package
out = gen.generate(model, [gen.shape_prompt(24, 24)], 24 * 25, temperature=0.8, stop_after_segments=1)
caption_first = gen.caption_to_sprite_prompt("red apple. food and drink, food fruit", (24, 24), caption_first=True)
drawn = gen.generate(model, [caption_first], 24 * 25, temperature=0.8, constrained=True, stop_after_segments=1{guidance})
```

## Training
{training}

## Skills (held-out items, every figure beside its baseline)
Measured by `python benchmarks/skills.py --checkpoint pretrained --items {scored}` on {scored} of the
{held_out} held-out items (images sampled at temperature {temperature}, freely for the dimensions
and from caption-first prompts with the declared shape kept for caption -> sprite; captions greedy).

{table}
{guided}
## Limits
Trained on 24-pixel emoji in the NES palette and their Unicode names; captions follow the
data's grammar ("name. group, subgroup"). Caption -> sprite draws the group's look (colours,
silhouette) more than the named object. Not trained on the Pokemon set.
"""


def training_summary(train_dir: Path | None) -> str:
    if train_dir is None or not (train_dir / "run.json").exists():
        return "(the training folder was not given)"
    info = json.loads((train_dir / "run.json").read_text())
    final, train = info.get("final") or {}, info["train"]
    return (f"`{info['model']['model']}` dim {info['model']['dim']}, hidden {info['model']['hidden']}, depth "
            f"{info['model']['depth']}, positions {info['model']['positions']}, condition "
            f"{info['model'].get('condition', False)} (dropout {info['model'].get('condition_dropout', 0)}); whole items in "
            f"{info['samples']['orders']} orders, batch {train['batch_size']}, AdamW lr {train['lr']} -> "
            f"{train['min_lr']}, {final.get('step')} steps ({final.get('epoch', 0):.1f} epochs) in "
            f"{final.get('train_seconds', 0) / 60:.0f} min on {info.get('device_name') or info.get('device')} "
            f"({info['world_size']} process, {final.get('tokens_per_s', 0):,.0f} tokens/s). Best held-out loss "
            f"{final.get('best_val_loss', float('nan')):.4f} nats/token at step {final.get('best_step')}. "
            f"The whole run description is `run.json` beside the weights.")


def guided_section(result: dict, guided: dict, items: int) -> str:
    """The sampled skills (dimensions, captions, drawings) with guidance beside without; the likelihood rows
    score the model itself, not a sampler, so guidance leaves them alone."""
    rows = [f"| {a['skill']} | {a['metric']} | {a['value']:.3f} | {b['value']:.3f} | {a['baseline']:.3g} |"
            for a, b in zip(result["table"], guided["table"])
            if not a["skill"].startswith("bits") and not a["metric"].startswith(("swap", "retrieval"))]
    g = f"{guided['guidance']:g}"
    return (f"\n## Sampled with classifier-free guidance {g}\n"
            f"`python benchmarks/skills.py --checkpoint pretrained --items {items} --guidance {g}`: every sample "
            f"drawn from uncond + {g} (cond - uncond), as in the example above (same items and seeds).\n\n"
            f"| skill | metric | without | with guidance {g} | baseline |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the save_pretrained folder to ship (e.g. <out_dir>/best_model)")
    ap.add_argument("--train-dir", default=None, help="the training's out_dir (its run.json: steps, time)")
    ap.add_argument("--name", default="emoji", help="folder under pixelbyte/pretrained/")
    ap.add_argument("--items", type=int, default=64, help="held-out items of the skills report")
    args = ap.parse_args(argv)

    target = Path(PRETRAINED_DIR) / args.name
    model = PixelByteModel.from_pretrained(args.checkpoint)
    shutil.rmtree(target, ignore_errors=True)
    model.half().save_pretrained(target)                       # fp16 on disk, fp32 when loaded
    result = skills_benchmark.measure(str(target), args.items)
    (ROOT / "benchmarks" / "results" / "skills_pretrained.json").write_text(json.dumps(result, indent=1) + "\n")
    guided = skills_benchmark.measure(str(target), args.items, guidance=2.0) if model.config.condition else None
    if guided:
        (ROOT / "benchmarks" / "results" / "skills_pretrained_guidance2.json").write_text(
            json.dumps(guided, indent=1) + "\n")

    reloaded = PixelByteModel.from_pretrained(str(target))
    run = reloaded.run
    seqs = data.load(run.data)
    train_idx, test_idx = data.split(seqs, run.data)
    report = skills.measure(reloaded, [seqs[i] for i in train_idx], [seqs[i] for i in test_idx],
                            skills.SkillsConfig(items=16, seed=1))
    ex = report.examples
    plots.save_figure(plots.sprite_rows({"caption first": ex["drawn"], "shape only (free)": ex["free_data"]},
                                        ex["references"], ex["reference_captions"],
                                        title="The shipped model on held-out items: reference, caption -> "
                                              "sprite, free sprite from the shape"),
                      ROOT / "docs" / "pretrained_sprites.png")
    labels = [f"ref: {r}\ngen: {g}" for r, g in zip(ex["reference_captions"][:8], ex["captions"][:8])]
    plots.save_figure(plots.sprite_grid(ex["references"][:8], labels, ncols=4, scale=2.0, wrap=28, max_lines=8,
                                        title="The shipped model: sprite -> caption on held-out sprites"),
                      ROOT / "docs" / "pretrained_captions.png")

    from pixelbyte import __version__

    (target / "README.md").write_text(CARD.format(
        name=f"pixelbyte-{args.name}", family=reloaded.config.model, parameters=reloaded.num_parameters(),
        version=__version__, items=len(seqs), held_out=len(test_idx), scored=args.items,
        temperature=result["temperature"], table=result["markdown"],
        guided=guided_section(result, guided, args.items) if guided else "",
        condition=("; every position also reads a summary of the item's completed segments (the caption while "
                   "drawing, the image while captioning), trained without it on "
                   f"{reloaded.config.condition_dropout:.0%} of the samples, so it can be guided"
                   if reloaded.config.condition else ""),
        guidance=", guidance=2.0" if reloaded.config.condition else "",
        training=training_summary(Path(args.train_dir) if args.train_dir else None)))
    size = sum(f.stat().st_size for f in target.iterdir())
    print(result["markdown"])
    print(f"shipped {target} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
