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
# # 02 · Training
# Train one PixelByte model and watch it learn. The defaults are the main job's recipe, the one
# that learned most per CPU second in our measurements: an LSTM (dim 96, 256 cells, 2 layers)
# on whole items (a sample holds a declared shape with its whole image and caption), in both
# segment orders (shape -> image -> caption and caption -> shape -> image), with position
# inputs (row, column, declared size) and a condition (every position also reads a summary of
# the item's completed segments: the caption while the image is drawn, the image while the
# caption is written; 10% of the samples train without it, so 03 can guide with it), trained
# for a fixed 535 steps (about 4 minutes on 2 CPU cores; a fixed count, not a wall-clock budget,
# so the same seed gives the same model on any machine). Every field of the run is a
# parameter; `unit="window"` with `objective="next"` is the paper's setup (Kaggle runner:
# seq 256, stride 32, batch 32, 2 GPUs).

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
dataset = "embedded"      # "embedded", "ffurfaro/PixelBytes-Pokemon" or a parquet path
limit = 0                 # first N items only, 0 keeps all
test_size = 0.1           # share of items held out (by item)
split_seed = 0            # seed of the item split
resize = False            # downscale images larger than the tokenizer's max side (else they are refused)
unit = "item"             # item: whole items | window: seq_length-token windows inside items (the paper's)
orders = "both"           # item samples: data | caption_first | both (every item in both orders)
seq_length = 128          # window samples: tokens per window
stride = 64               # window samples: tokens between window starts
model = "lstm"            # lstm | attention | bysmamba
bidirectional = False     # bidirectional first (and last, bysmamba) layer; needs objective "next"
embedding = "pxby"        # pxby: the 3x3 window | center: the centre token only
conv = True               # 3x3 conv mix inside the PxBy embedding
dim = 96                  # embedding width
hidden = 256              # LSTM hidden size / Mamba state size / attention MLP width
depth = 2                 # layers
d_conv = 4                # Mamba causal conv width
expand = 2                # Mamba inner expansion
ssm = "mamba"             # BysMamba mixer: mamba (Mamba-1, the paper's) | mamba2 (SSD: ~4x faster on a CPU)
headdim = None            # ssm mamba2: channels per head, dividing expand * dim (None: all of them, one head)
objective = "causal"      # causal: every position predicts its token | next: the token after the window
positions = True          # position inputs: segment, row, column, declared (h, w); needs unit "item"
condition = True          # every position also reads a summary of the item's completed segments (caption <-> image); needs unit "item"
condition_dropout = 0.1   # share of training samples without their condition (classifier-free guidance in 03)
dropout = 0.0             # after the embedding, between LSTM layers, on residual branches
batch_size = 16           # global batch (all GPUs together)
lr = 5e-3                 # AdamW peak learning rate
min_lr = 5e-4             # end of the cosine decay
warmup_steps = 30         # linear warmup steps
epochs = 1000             # passes over the training samples (the budget or max_steps usually ends first)
max_steps = 535           # optimizer steps, 0 means use epochs (the main job: ~4 of its 15 minutes on 2 cores)
budget_s = 0              # wall-clock seconds of training, 0 means no cap (a budget fixes the steps by speed)
eval_every = 200          # validate + checkpoint every N steps, 0 means each epoch end
eval_batches = 8          # validation batches per evaluation, 0 means all
seed = 0
device = "auto"           # auto | cpu | cuda
amp = False               # fp16 mixed precision (CUDA only)
threads = 0               # torch CPU threads, 0 keeps torch's default
nproc = 1                 # processes; above 1 the notebook launches torchrun (Kaggle T4 x2: 2)
out_dir = "outputs/02_training"
run_dir = "outputs"

# %%
# %matplotlib inline
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from pixelbyte import data, plots
from pixelbyte.config import RunConfig, check
from pixelbyte.models import PixelByteModel
from pixelbyte.train import train

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
check("nproc", nproc, int, minimum=1)
check("threads", threads, int, minimum=0)
run = RunConfig.from_flat(
    source=dataset, limit=limit or None, test_size=test_size, split_seed=split_seed, resize=resize,
    unit=unit, orders=orders, seq_length=seq_length, stride=stride,
    model=model, bidirectional=bidirectional, embedding=embedding, conv=conv, dim=dim, hidden=hidden,
    depth=depth, d_conv=d_conv, expand=expand, ssm=ssm, headdim=headdim, objective=objective, positions=positions,
    condition=condition, condition_dropout=condition_dropout,
    dropout=dropout,
    batch_size=batch_size, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, epochs=epochs,
    max_steps=max_steps or None, budget_s=budget_s, eval_every=eval_every, eval_batches=eval_batches or None,
    seed=seed, device=device, amp=amp, out_dir=out_dir)
if threads:
    torch.set_num_threads(threads)
out = Path(out_dir)

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):
    n_parameters = PixelByteModel(run.model).num_parameters()
print(f"{run.model.name} ({run.model.model}, objective {objective!r}, positions {positions}): "
      f"{n_parameters:,} parameters")

# %% [markdown]
# ## Data
# Items are split before any sample is cut, so nothing of a held-out item is ever trained on.
# Whole-item batches are padded to their longest item (padding is not in the loss) and drawn
# from groups sorted by length, so little of each batch is padding.

# %%
seqs = data.load(run.data)
train_ds, val_ds = data.make_datasets(seqs, run)
info = train_ds.describe(batch_size)
print(f"{len(seqs)} items -> {len(train_ds):,} training samples ({train_ds.n_items} items), "
      f"{len(val_ds):,} validation samples ({val_ds.n_items} items)")
pd.Series(info)

# %% [markdown]
# ## Train
# One process trains in this kernel; several are launched with `torchrun` (DDP) on the same
# run description (`run.json`), and write the same files.

# %%
if nproc == 1:
    net, final = train(run, seqs=seqs, overwrite=True)
else:
    out.mkdir(parents=True, exist_ok=True)
    config = run.save(out / "requested_run.json")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "pixelbyte.train", "--config", str(config), "--overwrite"], check=True)
    final = json.loads((out / "run.json").read_text())["final"]
print(json.dumps(final, indent=1))

# %% [markdown]
# ## Learning curves
# Validation rows come every `eval_every` steps; accuracy and bits per token are split into
# text bytes, pixels and structure tokens (`\t`, `\n`).

# %%
metrics = pd.read_csv(out / "metrics.csv")
plots.save_figure(plots.training_curves(metrics, title=f"{run.model.name} on {dataset}"), out / "curves.png")

# %%
val = metrics[metrics["split"] == "val"]
val.tail(5)
