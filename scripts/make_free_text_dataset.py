#!/usr/bin/env python
"""A parquet of sprites captioned with free-text paragraphs, without caption groups.

The paper's dataset pairs sprites with Pokedex-like paragraphs, whose "groups" (the start of
the last sentence) are nearly all distinct. This builds a stand-in with no download: the
embedded emoji sprites (``pixelbyte.data``), each with a paragraph of about 350 characters
assembled from seeded sentence templates, the first naming the sprite's commonest colour, the
last holding a number (so no two share a "group"). The skills report must run on it and leave
its group metrics out (tests/test_skills.py).

    .venv/bin/python scripts/make_free_text_dataset.py runs/free_text.parquet --items 200
"""
from __future__ import annotations

import argparse

import numpy as np

from pixelbyte import data, tokenizer as tok

COLOURS = {"black": (0, 0, 0), "grey": (128, 128, 128), "red": (200, 30, 30), "orange": (240, 140, 20),
           "yellow": (240, 220, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "purple": (140, 60, 170),
           "pink": (240, 130, 180), "brown": (130, 80, 40)}
PLACES = ("in deep forests", "near quiet lakes", "on rocky mountain slopes", "in crowded cities",
          "under old bridges", "in dry deserts", "along sandy shores", "inside hollow trees")
HABITS = ("sleeps through the day", "hunts at dusk", "gathers shiny stones", "sings before it rains",
          "hides from loud noises", "follows travellers for miles", "digs long tunnels", "dances when it is happy")
TRAITS = ("its tail glows faintly", "its skin feels cold", "its eyes see in the dark", "its voice carries far",
          "its shell is as hard as iron", "its fur sheds water", "its claws never stop growing")
TALES = ("old stories say it brings luck", "farmers leave food out for it", "children draw it on walls",
         "sailors follow it home in fog", "few have seen it up close", "it is said to remember every face")


def colour_name(rgb: np.ndarray) -> str:
    """The named colour nearest to the commonest non-white colour of an (h, w, 3) sprite."""
    pixels = rgb.reshape(-1, 3).astype(np.int64)
    coloured = pixels[(pixels < 235).any(1)]
    if not len(coloured):
        return "white"
    values, counts = np.unique(coloured, axis=0, return_counts=True)
    return min(COLOURS, key=lambda name: int(((np.array(COLOURS[name]) - values[counts.argmax()]) ** 2).sum()))


def paragraph(colour: str, rng: np.random.Generator, length: int = 330) -> str:
    """A lowercase paragraph of at least ``length`` characters about a creature of ``colour``."""
    sentences = [f"this {colour} creature lives {rng.choice(PLACES)}.", f"it {rng.choice(HABITS)}."]
    while len(" ".join(sentences)) < length - 60:
        pick = rng.integers(3)
        sentences.append("{}, and {}.".format(*rng.choice(TRAITS, 2, replace=False)) if pick == 0 else
                         f"when startled, it {rng.choice(HABITS)}." if pick == 1 else f"{rng.choice(TALES)}.")
    sentences.append(f"it was first recorded {int(rng.integers(2, 1000))} years ago {rng.choice(PLACES)}.")
    return " ".join(sentences)


def make(path, items: int = 200, seed: int = 0) -> str:
    """Write ``items`` embedded sprites (evenly spread) with paragraph captions to a parquet
    file (columns ``image``, ``caption``); returns its path."""
    import datasets

    sprites = datasets.Dataset.from_parquet(str(data.EMBEDDED_PATH)).select_columns(["image"])
    sprites = sprites.select(data.evenly_spaced(len(sprites), items).tolist())
    rng = np.random.default_rng(seed)
    captions = [paragraph(colour_name(tok.load_rgb(row["image"])), rng) for row in sprites]
    sprites.add_column("caption", captions).to_parquet(str(path))
    return str(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the parquet file to write")
    ap.add_argument("--items", type=int, default=200, help="sprites (evenly spread over the embedded set)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"wrote {make(args.out, args.items, args.seed)}")
