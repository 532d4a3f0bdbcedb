# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Data exploration
# What a PixelBytes dataset looks like: sprites and captions, how they become one token
# stream, how many tokens are text and how many are pixels, and what the causal 3x3 "PxBy"
# context of a token holds.

# %%
# pixelbyte setup: on Kaggle, install pixelbyte from the attached bundle; a no-op where it is installed
try:
    import pixelbyte
except ImportError:
    import glob, importlib, os, subprocess, sys
    inputs = os.environ.get("KAGGLE_INPUT", "/kaggle/input")
    wheels = sorted(glob.glob(f"{inputs}/**/pixelbyte-*.whl", recursive=True), key=os.path.getmtime)
    source = wheels[-1] if wheels else os.environ.get("PIXELBYTE_SOURCE")
    if not source:
        raise ImportError(f"pixelbyte is not installed and no pixelbyte-*.whl is under {inputs}: add the "
                          "pixelbyte-bundle dataset as an input, or set PIXELBYTE_SOURCE to a pip "
                          "requirement for pixelbyte (a wheel's URL, git+https://... of a copy of the code)")
    pip = [sys.executable, "-m", "pip", "install"]
    if wheels:  # the bundle also holds the requirements Kaggle's image lacks: offline first, then the index
        bundle = ["--find-links", os.path.dirname(source), source]
        if subprocess.run(pip + ["--no-index"] + bundle).returncode != 0:
            subprocess.run(pip + bundle, check=True)
    else:
        subprocess.run(pip + [source], check=True)
    importlib.invalidate_caches()
    import pixelbyte

# %% tags=["parameters"]
dataset = "embedded"   # "embedded", a hub id such as "ffurfaro/PixelBytes-Pokemon", or a parquet path
limit = 0              # keep only the first N items, 0 keeps all
n_sprites = 48         # sprites shown in the grid
seed = 0
out_dir = "outputs/01_data_exploration"   # PNG and CSV files land here
run_dir = "outputs"                       # the pipeline's run folder (unused here)

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np
import pandas as pd

from pixelbyte import data, plots, tokenizer as tok
from pixelbyte.config import check

check("dataset", dataset, str)
check("limit", limit, int, minimum=0)
check("n_sprites", n_sprites, int, minimum=1)
check("seed", seed, int, minimum=0)
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)

ds = data.load_pixelbytes(dataset, limit=limit or None)
seqs = data.sequences(ds)
print(f"{len(ds)} items from {dataset!r}; columns {ds.column_names}")

# %% [markdown]
# The first item, as text and as the token stream the models read (checked in CI).

# %%
# NBVAL_CHECK_OUTPUT
first = tok.decode(tok.centre_ids(seqs[0]))
print(f"caption: {ds[0]['caption']!r}")
print(f"segments: {[s.kind for s in first]}; declared shape {first[0].text!r}; image {first[1].image.shape}")
print(f"{len(seqs[0])} tokens: {int(tok.is_colour(tok.centre_ids(seqs[0])).sum())} pixels, "
      f"{len(seqs[0]) - int(tok.is_colour(tok.centre_ids(seqs[0])).sum())} text/separators")

# %% [markdown]
# ## Sprites and captions
# Each item is a small pixel-art image in the NES palette and a lowercase caption.

# %%
rng = np.random.default_rng(seed)
pick = np.sort(rng.choice(len(ds), size=min(n_sprites, len(ds)), replace=False))
rows = ds.select(pick)
fig = plots.sprite_grid([np.asarray(im.convert("RGB")) for im in rows["image"]], rows["caption"],
                        title=f"{dataset}: {len(pick)} of {len(ds)} sprites")
plots.save_figure(fig, out / "sprites.png")

# %% [markdown]
# ## Tokens by modality and sequence lengths
# An item is three segments: the shape text `"(h, w)"`, the image rows, the caption.

# %%
stats = data.token_stats(seqs)
lengths = pd.DataFrame({
    "tokens": [len(s) for s in seqs],
    "pixel_tokens": [int(tok.is_colour(tok.centre_ids(s)).sum()) for s in seqs],
})
lengths["text_tokens"] = lengths["tokens"] - lengths["pixel_tokens"]
lengths.to_csv(out / "sequence_lengths.csv", index_label="item")
pd.Series(stats).to_frame("value").to_csv(out / "token_stats.csv")
print(pd.Series(stats).to_string())
fig = plots.length_histogram(lengths)
plots.save_figure(fig, out / "sequence_lengths.png")

# %% [markdown]
# ## Token frequencies
# Which tokens the models see most: the background colour and the space dominate.

# %%
fig = plots.token_frequencies(np.concatenate([tok.centre_ids(s) for s in seqs]))
plots.save_figure(fig, out / "token_frequencies.png")

# %% [markdown]
# ## The causal 3x3 context of a token
# Every token carries its row above (up-left, up, up-right) and its left neighbour; the
# cells to the right and below are always 0, so no token sees its future.

# %%
fig = plots.context_windows(seqs[int(pick[0])], n=6, seed=seed)
plots.save_figure(fig, out / "context_windows.png")

# %% [markdown]
# ## The palette
# 55 NES colours, token ids 58..112.

# %%
fig = plots.palette()
plots.save_figure(fig, out / "palette.png")
