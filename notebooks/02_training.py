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
# Train one PixelByte model on token windows and watch it learn. Every knob of the paper's
# design space is a parameter; the defaults are CPU-sized (a couple of minutes), the Kaggle
# runner passes the paper's (seq 256, stride 32, batch 32, 200 epochs, 2 GPUs).

# %% tags=["parameters"]
dataset = "embedded"      # "embedded", "ffurfaro/PixelBytes-Pokemon" or a parquet path
limit = 0                 # first N items only, 0 keeps all
model = "lstm"            # lstm | attention | bysmamba
bidirectional = False     # bidirectional first (and last, bysmamba) layer; needs objective "next"
embedding = "pxby"        # pxby: the 3x3 window | center: the centre token only
conv = True               # 3x3 conv mix inside the PxBy embedding
dim = 81                  # embedding width
hidden = 64               # LSTM hidden size / Mamba state size / attention MLP width
depth = 2                 # layers
d_conv = 4                # Mamba causal conv width
expand = 2                # Mamba inner expansion
objective = "causal"      # causal: every position predicts its token | next: the token after the window
seq_length = 128          # tokens per training window
stride = 64               # tokens between window starts
test_size = 0.1           # share of items held out
batch_size = 32           # global batch (all GPUs together)
lr = 3e-3                 # AdamW peak learning rate
epochs = 1                # passes over the training windows...
max_steps = 300           # ...or this many optimizer steps, 0 means use epochs
eval_every = 100          # validate + checkpoint every N steps, 0 means each epoch end
seed = 0
device = "auto"           # auto | cpu | cuda
amp = False               # fp16 mixed precision (CUDA only)
nproc = 1                 # processes; above 1 the notebook launches torchrun (Kaggle T4 x2: 2)
out_dir = "outputs/02_training"
run_dir = "outputs"

# %%
# %matplotlib inline
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from pixelbyte import data, plots
from pixelbyte.models import ModelConfig, PixelByteModel
from pixelbyte.params import check
from pixelbyte.train import TrainConfig, Trainer, cli_args

check("dataset", dataset, str)
check("limit", limit, int, minimum=0)
check("nproc", nproc, int, minimum=1)
check("test_size", test_size, float)
model_cfg = ModelConfig(model=model, bidirectional=bidirectional, embedding=embedding, conv=conv, dim=dim,
                        hidden=hidden, depth=depth, d_conv=d_conv, expand=expand, objective=objective)
train_cfg = TrainConfig(objective=objective, epochs=epochs, max_steps=max_steps or None, batch_size=batch_size,
                        lr=lr, min_lr=lr / 10, warmup_steps=min(50, (max_steps or 1000) // 10),
                        eval_every=eval_every, seed=seed, device=device, amp=amp, out_dir=out_dir)
window_cfg = data.WindowConfig(seq_length=seq_length, stride=stride, objective=objective)
out = Path(out_dir)
torch.manual_seed(seed)
net = PixelByteModel(model_cfg)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{model_cfg.name} ({model_cfg.model}, objective {objective!r}): {net.num_parameters():,} parameters")

# %% [markdown]
# ## Data
# Items are split before windowing, so no window of a validation item is ever trained on.

# %%
items = data.load_pixelbytes(dataset, limit=limit or None)
train_ds, val_ds = data.make_datasets(data.sequences(items), window_cfg, test_size, seed)
print(f"{len(items)} items -> {len(train_ds):,} training windows ({train_ds.n_items} items), "
      f"{len(val_ds):,} validation windows ({val_ds.n_items} items), {seq_length} tokens each")

# %% [markdown]
# ## Train
# One process trains in this kernel; several are launched with `torchrun` (DDP), which
# writes the same files.

# %%
if nproc == 1:
    final = Trainer(net, train_ds, val_ds, train_cfg).fit()
else:
    flags = cli_args(model_cfg, train_cfg, source=dataset, limit=limit or None, seq_length=seq_length,
                     stride=stride, test_size=test_size)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "pixelbyte.train", *flags], check=True)
    final = json.loads((out / "run.json").read_text())["final"]
print(json.dumps(final, indent=1))

# %% [markdown]
# ## Learning curves
# Validation rows come every `eval_every` steps; accuracy is split into text bytes and pixels.

# %%
metrics = pd.read_csv(out / "metrics.csv")
plots.save_figure(plots.training_curves(metrics, title=f"{model_cfg.name} on {dataset}"), out / "curves.png")

# %%
val = metrics[metrics["split"] == "val"]
val.tail(5)
