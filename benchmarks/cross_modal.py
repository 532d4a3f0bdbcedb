"""How much one modality tells a trained model about the other, per token and per item, under
classifier-free guidance, beside what the captions' categories could tell at most.

    python benchmarks/cross_modal.py --checkpoint pretrained --items 64
    python benchmarks/cross_modal.py --checkpoint runs/<ts>/02_training/best_model --scales 1

On the checkpoint's own held-out items (its run.json), both directions (caption -> sprite scores
the image after a caption, sprite -> caption the caption after a shape and image), for each
guidance scale s (logits uncond + s (cond - uncond), what ``generate(..., guidance=s)`` samples;
1 is the model itself, 0 its unconditional stream; condition models only, others get s = 1):
- own bits per token: the scored segment after its own partner;
- the skills report's swap gain (another item's partner, of another group where captions have
  groups, minus its own) per token and per item, the share likelier after their own, and
  retrieval among 8 by likelihood and by the noisy channel.
Per item is what the per-token goals mean in information: a caption of 40 tokens and an image of
520 turn the same bits into very different per-token numbers. Beside them, the dataset's side:
tokens per item of each segment and, where the captions have groups, the entropy of the training
captions' group and category (group and subgroup, the text after the name) -- the bits a model
that read only the category would have to gain per item. Prints a table and writes JSON
(default benchmarks/results/cross_modal_<name>.json).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from pixelbyte import data, git_commit, skills
from pixelbyte.models import PixelByteModel

RESULTS = Path(__file__).parent / "results"
SEGMENT = {"caption -> sprite": 1, "sprite -> caption": 2}     # the scored segment: image, caption


@dataclass
class Args:
    checkpoint: str = "pretrained"         # a save_pretrained folder, hub id or 'pretrained'
    items: int = 64                        # held-out items scored, spread over the split
    scales: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 3.0)   # guidance scales (condition models)
    seed: int = 0
    out: str | None = None                 # JSON (default benchmarks/results/cross_modal_<name>.json)


def entropy_bits(labels) -> float:
    counts = np.array(list(Counter(labels).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def dataset_side(train: list[skills.Item], items: list[skills.Item]) -> dict:
    captions = [i.caption for i in train]
    out = {"image_tokens_per_item": float(np.mean([len(i.segments[1]) for i in items])),
           "caption_tokens_per_item": float(np.mean([len(i.segments[2]) for i in items]))}
    why = skills.no_groups_reason(captions)
    if why:
        return {**out, "categories": why}
    return {**out, "group_bits": entropy_bits(map(skills.caption_group, captions)),
            "category_bits": entropy_bits(c.rsplit(". ", 1)[-1] for c in captions),
            "categories": len({c.rsplit(". ", 1)[-1] for c in captions})}


def own_bits_per_token(model, items: list[skills.Item], direction: str, guidance) -> float:
    """Bits per token of each item's scored segment after its own partner (the shape is not the image)."""
    streams, starts = zip(*(skills.pair_stream(i, i, direction) for i in items))
    skip = [len(i.segments[0]) if direction == "caption -> sprite" else 0 for i in items]
    bits = skills.stream_bits(model, list(streams), [s + k for s, k in zip(starts, skip)], guidance=guidance)
    return float(sum(b.sum() for b in bits) / sum(map(len, bits)))


def measure(args: Args) -> dict:
    model = PixelByteModel.from_pretrained(args.checkpoint).eval()
    if model.run is None or model.run.data is None:
        raise SystemExit(f"{args.checkpoint}: no run.json with its data; the held-out items are unknown")
    try:
        seqs = data.load(model.run.data)
    except (OSError, ValueError) as err:          # the data moved, was deleted, or the hub is out of reach
        raise SystemExit(f"{args.checkpoint}: cannot load the data of its run ({model.run.data.source}): {err}") from None
    train_idx, test_idx = data.split(seqs, model.run.data)
    decoded = lambda idx: [i for i in (skills.Item.of(seqs[k]) for k in idx) if i is not None]  # noqa: E731
    train, items = decoded(train_idx), skills.spread(decoded(test_idx), args.items)
    side = dataset_side(train, items)
    groups = None if skills.no_groups_reason([i.caption for i in train]) else [
        skills.caption_group(i.caption) for i in items]
    scales = args.scales if model.config.condition else (1.0,)
    cfg = skills.SkillsConfig(items=args.items, retrieval=(8,), seed=args.seed)
    rows, start = [], time.perf_counter()
    with torch.no_grad():
        for scale in scales:
            guidance = None if scale == 1.0 else scale
            by = {(r["skill"], r["metric"].split(":")[0] + (" pmi" if " / p(" in r["metric"] else "")): r["value"]
                  for r in skills.cross_rows(model, items, cfg, groups, guidance)}
            for direction, segment in SEGMENT.items():
                tokens = float(np.mean([len(i.segments[segment]) for i in items]))
                gain = by[direction, "swap gain"]
                rows.append({"direction": direction, "guidance": scale,
                             "own_bits_per_token": own_bits_per_token(model, items, direction, guidance),
                             "gain_bits_per_token": gain, "gain_nats_per_token": gain * np.log(2),
                             "gain_bits_per_item": gain * tokens, "share_own_likelier": by[direction, "swap"],
                             "retrieval8": by[direction, "retrieval"], "retrieval8_noisy_channel":
                             by[direction, "retrieval pmi"]})
            print(f"guidance {scale}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"checkpoint": args.checkpoint, "items": len(items), "held_out_items": len(test_idx),
            "seed": args.seed, "dataset": side, "rows": rows, "seconds": time.perf_counter() - start,
            "git_commit": git_commit(), "torch": torch.__version__}


def table(result: dict) -> str:
    side = result["dataset"]
    lines = [f"{result['checkpoint']}: {result['items']} held-out items; per item {side['image_tokens_per_item']:.0f} "
             f"image and {side['caption_tokens_per_item']:.1f} caption tokens; "
             + (f"captions' group {side['group_bits']:.2f} bits, category (group, subgroup; "
                f"{side['categories']} of them) {side['category_bits']:.2f} bits"
                if "group_bits" in side else str(side["categories"])), "",
             "| direction | guidance | own bits/token | swap gain bits/token (nats) | gain bits/item "
             "| own likelier | retrieval@8 | noisy channel@8 |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['direction']} | {r['guidance']:g} | {r['own_bits_per_token']:.4f} | "
                     f"{r['gain_bits_per_token']:.4f} ({r['gain_nats_per_token']:.4f}) | {r['gain_bits_per_item']:.2f} | "
                     f"{r['share_own_likelier']:.3f} | {r['retrieval8']:.3f} | {r['retrieval8_noisy_channel']:.3f} |")
    return "\n".join(lines)


def main(args: Args) -> dict:
    result = measure(args)
    print(table(result))
    name = "_".join(Path(args.checkpoint).parts[-3:]).replace("/", "_")
    out = Path(args.out) if args.out else RESULTS / f"cross_modal_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "markdown": table(result)}, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
