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
# # 05 · The copy skill
# Can a model reproduce a pattern it has seen earlier in the stream? Each family (LSTM,
# attention, causal BysMamba) is trained from scratch on each copy task, on an unlimited seeded
# stream of items, with the loss on the copy part only, then scored by greedy generation on
# held-out items, beside trivial baselines on the same items:
# - **image repeat**: a declared image whose bottom half of rows repeats its top half;
# - **text repeat**: `"phrase; phrase"`;
# - **selective copy** (the Mamba paper's headline task): letters scattered among spaces, `:`,
#   then the letters in order;
# - **sprite copy**: a real sprite (shape + image), its shape again, and the sprite again --
#   trained on the training split's sprites, scored on held-out ones.
#
# Scores: *token accuracy* (share of copy tokens right, position by position), *exact-sequence
# accuracy* (share of items copied without one error) and, for sprites, *pixel accuracy*.
# Length generalisation: a model trained at size L is scored at 2L and 4L (image rows, words,
# spaces, sprite side), and the table says where each family falls below 90% token accuracy.
#
# The defaults are sized for about three minutes on an idle 2-core CPU (`workers = 2`: two
# trainings at once, one core each); on a loaded machine it takes longer, and `budget_s` may
# cut the slowest runs short (the table says so). BysMamba keeps the paper's Mamba-1 mixer
# here: with `ssm = "mamba2"` it trains 2x faster but reached only 0.76 exact selective
# copy in 500 steps (Mamba-1: 0.79 in 500, 1.00 from step 400 of 800: the longer schedule keeps
# the learning rate up while it finds the task). On a GPU (Kaggle), the same tasks scale up
# -- wider models, more image rows, longer phrases, selective copy over 64 spaces with 8
# letters, sprites at their stored size (24 px, 1,200-token items) -- with these parameters
# (`kaggle/params_paper.json`, entry `"05_copy_task"`; about 2 h on a T4):
#
#     {"dim": 128, "hidden": {"lstm": 256, "attention": 256, "bysmamba": 16},
#      "image_rows": 12, "image_width": 12, "text_words": 4, "selective_length": 64,
#      "selective_recall": 8, "sprite_side": 24, "batch_size": 64, "lr": 0.002,
#      "max_steps": {"image": 3000, "text": 6000, "selective": 20000, "sprite": 4000},
#      "budget_s": {"image": 240, "text": 420, "selective": 900, "sprite": 540},
#      "eval_points": 10, "eval_items": 256, "sweep_items": 256, "device": "cuda", "threads": 0,
#      "workers": 1}

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
dataset = "embedded"      # where sprite copy's sprites come from: "embedded", a hub id or a parquet path
limit = 0                 # first N items only, 0 keeps all
test_size = 0.1           # share of items held out: sprite copy is scored on their sprites
families = "lstm,attention,bysmamba"   # model families, comma-separated
tasks = "image,text,selective,sprite"  # copy tasks, comma-separated
dim = 64                  # model width of every family
depth = 2                 # layers of every family
hidden = {"lstm": 128, "attention": 128, "bysmamba": 16}  # LSTM cells, attention FFN width, BysMamba d_state
n_heads = 4               # attention heads
expand = 2                # BysMamba inner width: expand x dim
ssm = "mamba"             # BysMamba mixer: mamba (Mamba-1, the paper's) | mamba2 (SSD, one head: faster on a CPU)
positions = False         # position inputs (segment, row, column, declared size)
image_rows = 6            # image repeat: rows (even: the bottom half repeats the top half)
image_width = 6           # image repeat: columns
image_colours = 4         # image repeat: colours per image
text_words = 2            # text repeat: words of 2-5 letters in the phrase
selective_length = 8      # selective copy: spaces the letters hide among
selective_recall = 2      # selective copy: letters to recall
sprite_side = 8           # sprite copy: sprites resized (nearest neighbour) so their longer side is this many px
size_factors = "1,2,4"    # length generalisation: score at these multiples of the trained size
batch_size = {"image": 16, "text": 32, "selective": 32, "sprite": 16}  # items per optimizer step, by task (or one for all)
lr = 3e-3                 # AdamW peak learning rate (warmup, cosine decay to lr / 10)
max_steps = {"image": 200, "text": 500, "selective": 800, "sprite": 200}  # optimizer steps per run, by task ...
budget_s = 150            # ... unless this many seconds of training run out first (by task or one for all; 0: no cap)
eval_points = 8           # points of each accuracy-vs-steps curve
eval_items = 64           # held-out items scored at each point of the curves
sweep_items = {"image": 128, "text": 128, "selective": 256, "sprite": 32}  # held-out items scored at each size, by task
seed = 0
device = "cpu"            # cpu | cuda | auto
threads = 1               # torch CPU threads, 0 keeps torch's default
workers = 2               # trainings run at once, one process each (a 2-core CPU: 2; one GPU: 1)
out_dir = "outputs/05_copy_task"
run_dir = "outputs"       # the pipeline's run folder (unused here)

# %%
# %matplotlib inline
import time
from pathlib import Path

import pandas as pd
import torch

from pixelbyte import copying, data, plots
from pixelbyte.config import DataConfig
from pixelbyte.models import config_parameters

cfg = copying.CopyConfig(
    families=families, tasks=tasks, dim=dim, depth=depth, hidden=hidden, n_heads=n_heads, expand=expand, ssm=ssm,
    positions=positions, image_rows=image_rows, image_width=image_width, image_colours=image_colours,
    text_words=text_words, selective_length=selective_length, selective_recall=selective_recall,
    sprite_side=sprite_side, size_factors=size_factors, batch_size=batch_size, lr=lr, max_steps=max_steps,
    budget_s=budget_s, eval_points=eval_points, eval_items=eval_items, sweep_items=sweep_items, seed=seed,
    device=device, threads=threads, workers=workers)
data_cfg = DataConfig(source=dataset, limit=limit or None, test_size=test_size)
if threads:
    torch.set_num_threads(threads)
out = Path(out_dir)
started = time.time()
configs = {f: cfg.model_config(f) for f in cfg.family_list}
pd.DataFrame([{"family": f, "config": c.name, "parameters": config_parameters(c)} for f, c in configs.items()])

# %% [markdown]
# ## The tasks
# Every item is a real PixelBytes stream; the copy (after `->` below; `|` is the segment end
# `\n`) is what the model generates from everything before it, and the only part it is trained
# and scored on. Sprite copy draws from the dataset's sprites: the training split's for
# training, the held-out split's for every score.

# %%
sprites_train, sprites_test = [], []
if "sprite" in cfg.task_list:
    seqs = data.load(data_cfg)
    train_idx, test_idx = data.split(seqs, data_cfg)
    sprites_train = copying.sprite_images([seqs[i] for i in train_idx])
    sprites_test = copying.sprite_images([seqs[i] for i in test_idx])
    print(f"{len(seqs)} items of {dataset!r}: {len(sprites_train)} training sprites, {len(sprites_test)} held out")
task_of = cfg.copy_tasks()
examples = {t: copying.held_out_items(task, 1, seed, sprites_test)[0] for t, task in task_of.items()}

# %%
# NBVAL_CHECK_OUTPUT
for t, item in examples.items():
    print(f"{task_of[t].label}: {len(item.ids)} tokens, {len(item.target_ids)} to copy")
    if t in ("text", "selective"):
        print(f"    {copying.show_ids(item.prompt_ids)!r} -> {copying.show_ids(item.target_ids)!r}")

# %%
figure = plots.copy_examples(examples)
plots.save_figure(figure, out / "examples.png") if figure else "no image task chosen"

# %% [markdown]
# ## Training
# Every (family, task) run starts from the same seed and trains on its own stream for the
# task's `max_steps` steps -- the same for every family, so the curves compare learning per
# step -- or fewer when `budget_s` seconds of training run out first (the pace is measured
# first and fixes the step count, so the learning-rate schedule and the curve span the whole
# run; the table's `stopped_by` says which). At `eval_points` points, `eval_items`
# held-out items are scored by greedy generation. Then each trained model is scored at every
# size of `size_factors` (length generalisation), on `sweep_items` held-out items per size.
# `workers` trainings run at once, one CPU core each; each run's rows are added to the CSV
# files as it finishes, so a run stopped early keeps what it did.

# %%
study = copying.run_study(cfg, out, sprites_train, sprites_test)

# %% [markdown]
# ## Accuracy against steps
# Greedy generation on held-out items at each point: token accuracy (solid) and exact-sequence
# accuracy (dashed) per family; grey lines are the best trivial baseline on the same items
# (repeat the last token, repeat the most frequent token; for sprites also an all-background
# image). A curve still rising at its last point says more steps would help; a flat one, that
# the family is stuck at this budget.

# %%
plots.save_figure(plots.copy_curves(study.curves, study.sweeps, task_of, cfg.family_list),
                  out / "accuracy_vs_steps.png")

# %% [markdown]
# ## Accuracy against task size: length generalisation
# Each model was trained at the size marked by the vertical line (L) and is scored, unchanged,
# at every size of `size_factors` x L: more image rows, more words, more spaces between the
# letters and their recall, larger sprites. Solid: token accuracy, dashed: exact-sequence;
# grey: the best baseline at each size.

# %%
plots.save_figure(plots.copy_sizes(study.sweeps, task_of, cfg.family_list), out / "accuracy_vs_size.png")

# %% [markdown]
# ## The table
# Per family and task, at the trained size: token, exact-sequence and (sprites) pixel accuracy
# with the best baseline beside each, the accuracies at the larger sizes, the smallest size at
# which token accuracy falls below 90% (`inf`: not within the sizes tested), what the curve of
# the task's headline score (exact for selective copy, pixels for sprites, tokens otherwise)
# did at its end (`reached` 99%, `still rising`, `plateaued`), steps (and whether
# `max_steps` or the budget ended the run) and tokens/s (stream positions per second of
# training). Also written as `copy_table.csv` and `.json`.

# %%
study.table.set_index(["task", "family"]).round(3)

# %% [markdown]
# ## In the skills report's format
# The same scores at the trained size as rows of the skills report (skill, metric, value,
# baseline, baseline_is, items), one set per family: what `skills.measure(..., copy=rows)`
# appends to a model's report (`copying.copy_rows(model, task)` measures them for any model).
# Also written as `copy_skills.csv`.

# %%
study.skills

# %% [markdown]
# ## The goals
# Causal BysMamba at >= 99% exact-sequence accuracy on selective copy at the trained size;
# >= 99% token accuracy on image and text repeat for the best family; pixel accuracy of sprite
# copy per family. A goal missed comes with what its curve did.

# %%
goals = copying.goals(study.table, study.curves)
goals.to_csv(out / "goals.csv", index=False)
print(f"05 took {time.time() - started:.0f} s of wall clock")
goals
