"""The embedded default dataset (pixelbyte/data/emoji_sprites.parquet) and plots.sprite_grid.

The parquet file is built by scripts/build_embedded_dataset.py; these tests check what the
package relies on: it loads with datasets and pandas, images are small RGB sprites in the NES
palette, captions are already in the token vocabulary, and every item encodes.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelbyte import tokenizer as tok

PARQUET = Path(__file__).resolve().parents[1] / "pixelbyte" / "data" / "emoji_sprites.parquet"
COLUMNS = {"image", "caption", "name", "group", "subgroup"}
SIZE = 24  # --size used to build the shipped file


@pytest.fixture(scope="module")
def ds():
    import datasets

    return datasets.Dataset.from_parquet(str(PARQUET))


@pytest.fixture(scope="module")
def images(ds) -> list[Image.Image]:
    return [im.copy() for im in ds["image"]]  # decoded once, as PIL images


def test_file_is_shipped_and_small():
    assert PARQUET.is_file()
    assert PARQUET.stat().st_size < 2_000_000
    assert (PARQUET.parent / "README.md").is_file()  # the dataset card


def test_loads_with_datasets_and_pandas(ds, tmp_path):
    import datasets
    import pandas as pd

    assert COLUMNS <= set(ds.column_names)
    assert isinstance(ds.features["image"], datasets.Image)
    assert len(ds) > 500
    assert isinstance(ds[0]["image"], Image.Image)

    via_loader = datasets.load_dataset("parquet", data_files=str(PARQUET), split="train",
                                       cache_dir=str(tmp_path))
    assert len(via_loader) == len(ds) and isinstance(via_loader[0]["image"], Image.Image)

    df = pd.read_parquet(PARQUET)
    assert COLUMNS <= set(df.columns) and len(df) == len(ds)
    first = df["image"].iloc[0]
    assert first["path"] is None and first["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(first["bytes"])).format == "PNG"


def test_images_are_rgb_sprites_in_the_palette(images):
    palette = {tuple(c) for c in tok.PALETTE.tolist()}
    for im in images:
        assert im.mode == "RGB"
        assert max(im.size) == SIZE and min(im.size) >= 1
    pixels = np.concatenate([np.asarray(im).reshape(-1, 3) for im in images])
    colours = {tuple(c) for c in np.unique(pixels, axis=0).tolist()}
    assert colours <= palette, f"non-palette colours: {sorted(colours - palette)[:5]}"


def test_captions_are_clean_and_in_vocabulary(ds):
    for cap, name, group, subgroup in zip(ds["caption"], ds["name"], ds["group"], ds["subgroup"]):
        assert cap and cap.strip() == cap
        assert tok.normalize_text(cap) == (cap, 0)
        assert name and group and subgroup
    assert ds["caption"][0] == "grinning face. smileys and emotion, face smiling"


def test_every_item_encodes(ds, images):
    seqs = [tok.encode_item(im, cap) for im, cap in zip(images, ds["caption"])]
    assert len(seqs) == len(ds)
    for seq, im in zip(seqs[:50], images[:50]):
        assert seq.dtype == np.uint8 and seq.shape[1:] == (3, 3)
        decoded, caption = tok.decode_item(seq)
        assert decoded.shape == (im.size[1], im.size[0], 3)
        assert np.array_equal(decoded, np.asarray(im))


def test_sprite_grid_returns_a_figure(ds, images, tmp_path):
    from matplotlib.figure import Figure

    from pixelbyte.plots import save_figure, sprite_grid

    fig = sprite_grid(images[:10], ds["caption"][:10], ncols=4, title="t")
    assert isinstance(fig, Figure)
    assert sum(len(ax.get_images()) for ax in fig.axes) == 10
    assert len(fig.axes) == 12  # 3 rows x 4 columns, the last two left empty
    assert all(not ax.axison for ax in fig.axes)
    assert save_figure(fig, tmp_path / "sub" / "grid.png") is fig
    assert Image.open(tmp_path / "sub" / "grid.png").format == "PNG"

    bare = sprite_grid([np.asarray(images[0])])  # arrays, no captions
    assert sum(len(ax.get_images()) for ax in bare.axes) == 1
    with pytest.raises(ValueError):
        sprite_grid(images[:2], ["one caption"])
