"""Model comparison: train and evaluate many configurations the same way, one table out.

    from pixelbyte import compare, data
    seqs = data.sequences(data.load_pixelbytes("embedded", limit=200))
    result = compare.compare(seqs, configs="paper", objectives="next,causal",
                             cfg=compare.CompareConfig(max_steps=40), out_dir="runs/compare")
    result.table          # one row per (config, objective): the columns of ``COLUMNS``
    result.histories      # metrics.csv rows of every run (validation curves)
    result.baselines      # repeat-last / most-frequent / random on the same chunks
    result.skipped        # runs that cannot exist (bidirectional or centre-only + causal)

One run (``run_config``) is: build the paper config with the objective, seed, train it with
``train.Trainer`` for a step count fixed before training (``max_steps``, else ``epochs``,
capped by ``budget_s`` through a timing probe), then evaluate the final weights:

- bits per token by modality (``evaluate.token_metrics``) on held-out windows;
- the paper's Hamming / cosine / BLEU (``evaluate.paper_metrics``) on held-out items;
- free dimension consistency: from the declared shapes of held-out items, sampled
  unconstrained, the share of prompts whose image has exactly the declared rows and widths
  (an image that never ends, or text written instead of an image, counts as a failure);
- copy tasks: a copy of the trained model is fine-tuned for ``copy_steps`` steps, with its own
  objective, on ``copy_items`` synthetic items of each kind (``text``: a phrase repeated;
  ``image``: a 6x6 sprite whose bottom half repeats its top half), then scored greedily on
  held-out items of the same kinds (``evaluate.score_copy``, token accuracy of the copied
  part). Items are left-padded with ``copy_window`` empty windows, so a ``next`` window sees
  the whole item before every target. Without this fine-tuning the copy score would measure
  nothing: the models never saw a repeated phrase or half-sprite in the data.

``budget_s`` (seconds per run, 0 = none): a few probe steps on a throw-away copy of the model
time one optimizer step, and the run gets ``budget_s / seconds_per_step`` steps (at most what
``max_steps`` / ``epochs`` give). The learning-rate schedule then fits the steps actually run,
and with ``budget_s = 0`` a run is fully deterministic for a seed on CPU. Validation during
training and the evaluation after it are not counted in the budget.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import data, evaluate, generate as gen, tokenizer as tok
from .models import (FAMILIES, PAPER_ABLATIONS, PAPER_BEST, PAPER_RESULTS, PAPER_RESULTS_SOURCE,
                     PixelByteModel, paper_config)
from .train import TrainConfig, Trainer, loss_and_sums

CONFIG_SETS = {"paper": PAPER_BEST + PAPER_ABLATIONS, "best": PAPER_BEST}
OBJECTIVES = ("next", "causal")
COPY_KINDS = ("text", "image")
SAMPLE_TEMPERATURE = 0.8      # free generation (dimension consistency, sprites)
EVAL_POINTS = 10              # validations per training run (the curves' points)
PROBE_STEPS = 3               # timed steps of the budget probe (after one warm-up step)
PUBLISHED_DATASET = "ffurfaro/PixelBytes-Pokemon"

# The table's columns, what each one is.
COLUMNS = {
    "run": "config/objective",
    "config": "paper config name (family_dir_embedding_conv_dim_hidden_depth)",
    "family": "rnn (LSTM) | ssm (BysMamba) | att (attention)",
    "objective": "next: the token after the window | causal: every position's own token",
    "params": "trainable parameters",
    "steps": "optimizer steps run",
    "epochs": "passes over the training windows",
    "train_tokens": "input positions seen in training (steps x batch x seq_length)",
    "train_time_s": "wall time of training, periodic validation included",
    "tokens_per_s": "training input positions per second (validation excluded)",
    "train_loss": "cross-entropy (nats) of the last logged training steps",
    "train_acc": "accuracy of the last logged training steps",
    "val_loss": "cross-entropy (nats) on held-out windows at the end",
    "val_acc": "accuracy on held-out windows at the end",
    "bpt": "bits per target token on held-out windows (token_metrics)",
    "bpt_text": "... text (byte) targets only",
    "bpt_pixel": "... pixel (colour) targets only",
    "hamming_mean": "paper metric on held-out items: 144 window ids, lower is better",
    "hamming_std": "",
    "cosine_mean": "paper metric: cosine similarity of the 144 ids, higher is better",
    "cosine_std": "",
    "bleu_mean": "paper metric: BLEU-4 of the 144 ids, higher is better",
    "bleu_std": "",
    "hamming_centre_mean": "Hamming on the 16 generated centre tokens only",
    "bleu_centre_mean": "BLEU on the 16 centre tokens only",
    "chunks": "80-token chunks scored (64 prompt + 16 generated)",
    "dim_consistency": "share of free images (from held-out shapes) with the declared size",
    "dim_image": "share of those free outputs that are an image at all (not text), ended or not",
    "copy_text_acc": "copy task, repeated phrase: token accuracy after the brief fine-tuning",
    "copy_image_acc": "copy task, repeated half-sprite: token accuracy after the fine-tuning",
    "eval_time_s": "wall time of all the evaluations of the run",
}
TIMING_COLUMNS = ("train_time_s", "tokens_per_s", "eval_time_s")


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class CompareConfig:
    seq_length: int = 64          # tokens per training window
    stride: int = 32              # tokens between window starts
    batch_size: int = 16          # windows per optimizer step
    lr: float = 3e-3              # AdamW peak learning rate (cosine decay to lr / 10)
    epochs: int = 1               # passes over the training windows ...
    max_steps: int = 40           # ... or this many optimizer steps (0 = use epochs)
    budget_s: float = 0.0         # wall-clock seconds of training per run, 0 = none
    test_size: float = 0.1        # share of items held out (validation + generation metrics)
    max_chunks: int = 16          # paper metrics: chunks scored, 0 = all held-out chunks
    metric_batches: int = 16      # token_metrics: held-out batches of 64 windows, 0 = all
    eval_batches: int = 8         # validation during training: batches, 0 = all
    n_samples: int = 3            # shape prompts for dimension consistency (0 = skip)
    copy_items: int = 32          # copy task: fine-tuning items per kind (0 = skip the task)
    copy_steps: int = 20          # copy task: fine-tuning steps
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "device":
                if value not in ("auto", "cpu", "cuda"):
                    raise ValueError(f"CompareConfig.device={value!r}: allowed values are auto, cpu, cuda")
                continue
            kind = float if f.type in ("float", float) else int
            minimum = 1 if f.name in ("seq_length", "stride", "batch_size", "epochs") else 0
            ok = (isinstance(value, (int, float)) if kind is float else isinstance(value, int)) \
                and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
            if not ok:
                raise ValueError(f"CompareConfig.{f.name}={value!r}: expected a {kind.__name__} >= {minimum}")
        if not 0 < self.test_size < 1:
            raise ValueError(f"CompareConfig.test_size={self.test_size!r}: must be in (0, 1)")
        if self.lr <= 0:
            raise ValueError(f"CompareConfig.lr={self.lr!r}: must be > 0")


def plan(configs: str = "paper", objectives: str = "next") -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Which (config name, objective) pairs to run, and which are skipped and why.

    ``configs``: "paper" (the 15 configurations), "best" (the paper's 6 best rows) or
    comma-separated names ("rnn_bi_pxby_conv_81_32_2,att_uni_pxby_conv_36_32_1").
    ``objectives``: "next", "causal" or "next,causal". The causal objective predicts each
    position's own token, so bidirectional configs (they see that token) and centre-only
    embeddings (their causal input is always 0) have no causal variant: they are skipped.
    """
    names = list(CONFIG_SETS[configs]) if configs in CONFIG_SETS else \
        [n.strip() for n in str(configs).split(",") if n.strip()]
    if not names:
        raise ValueError(f"configs={configs!r}: expected 'paper', 'best' or comma-separated config names")
    for name in names:
        try:
            paper_config(name)
        except ValueError as err:
            raise ValueError(f"configs: {err}") from None
    wanted = [o.strip() for o in str(objectives).split(",") if o.strip()]
    if not wanted or any(o not in OBJECTIVES for o in wanted):
        raise ValueError(f"objectives={objectives!r}: expected 'next', 'causal' or 'next,causal'")
    runs, skipped = [], []
    for objective in dict.fromkeys(wanted):
        for name in dict.fromkeys(names):
            cfg = paper_config(name)
            if objective == "causal" and cfg.bidirectional:
                skipped.append((name, objective, "bidirectional: sees the token it must predict"))
            elif objective == "causal" and cfg.embedding == "center":
                skipped.append((name, objective, "centre-only embedding: a causal input is always 0"))
            else:
                runs.append((name, objective))
    return runs, pd.DataFrame(skipped, columns=["config", "objective", "reason"])


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Splits:
    """Items split once (by item, seeded) and windowed per objective on demand."""
    train: list[np.ndarray]
    test: list[np.ndarray]
    train_idx: np.ndarray
    test_idx: np.ndarray
    cfg: CompareConfig
    _windows: dict = field(default_factory=dict, repr=False)

    @classmethod
    def make(cls, seqs: list[np.ndarray], cfg: CompareConfig) -> "Splits":
        train_idx, test_idx = data.split_items(len(seqs), cfg.test_size, cfg.seed)
        return cls([seqs[i] for i in train_idx], [seqs[i] for i in test_idx], train_idx, test_idx, cfg)

    def windows(self, objective: str) -> tuple[data.WindowDataset, data.WindowDataset]:
        """(train, held-out) ``WindowDataset`` for an objective."""
        if objective not in self._windows:
            window = data.WindowConfig(self.cfg.seq_length, self.cfg.stride, objective)
            self._windows[objective] = (data.WindowDataset(self.train, window),
                                        data.WindowDataset(self.test, window))
        return self._windows[objective]

    def shapes(self, n: int) -> list[tuple[int, int]]:
        """Declared (h, w) of the first ``n`` held-out items that have one."""
        out = []
        for seq in self.test if n > 0 else []:
            first = tok.decode(tok.centre_ids(seq))[0]
            shape = tok.parse_shape(first.text) if first.kind == "text" else None
            if shape is not None:
                out.append(shape)
            if len(out) == n:
                break
        return out


def _pad(item: evaluate.CopyItem, n: int) -> evaluate.CopyItem:
    """The item after ``n`` empty windows (id 0): a ``next`` window then sees all of it."""
    windows = np.concatenate([np.zeros((n, 3, 3), np.uint8), item.windows])
    return evaluate.CopyItem(item.kind, windows, item.copy_start + n, item.copy_end + n)


def copy_task_data(cfg: CompareConfig, objective: str):
    """(training WindowDataset, {kind: held-out padded CopyItems}) of the copy tasks."""
    train = {k: evaluate.copy_task_items(k, cfg.copy_items, seed=cfg.seed) for k in COPY_KINDS}
    held = {k: evaluate.copy_task_items(k, max(8, cfg.copy_items // 4), seed=cfg.seed + 1) for k in COPY_KINDS}
    window = max(len(i.windows) for items in (*train.values(), *held.values()) for i in items)
    padded = [_pad(i, window).windows for k in COPY_KINDS for i in train[k]]
    dataset = data.WindowDataset(padded, data.WindowConfig(window, 1, objective))
    return dataset, {k: [_pad(i, window) for i in items] for k, items in held.items()}


# ---------------------------------------------------------------------------------------------
# One run


def seconds_per_step(model: PixelByteModel, train_ds, objective: str, batch_size: int, lr: float,
                     device: torch.device, n: int = PROBE_STEPS) -> float:
    """Median time of ``n`` AdamW steps (after one warm-up step) on a copy of ``model``,
    the first batches of ``train_ds`` in order. Leaves the model and the global RNG alone."""
    probe = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    n_batches = min(n + 1, len(train_ds) // batch_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, range(n_batches * batch_size)),
                                         batch_size=batch_size)
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for x, y in loader:
            t0 = time.perf_counter()
            loss, _ = loss_and_sums(probe(x.to(device)), y.to(device), objective)   # x : (B, L, 3, 3)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:] if len(times) > 1 else times))


def _tokens_per_s(metrics: pd.DataFrame, tokens_per_step: int) -> float:
    """Overall training rate from the per-window rates of metrics.csv's train rows."""
    train = metrics[metrics["split"] == "train"]
    if train.empty:
        return float("nan")
    steps = train["step"].diff().fillna(train["step"].iloc[0]).to_numpy()
    seconds = (steps * tokens_per_step / train["tokens_per_s"].to_numpy()).sum()
    return float(steps.sum() * tokens_per_step / seconds)


def _train_config(cfg: CompareConfig, objective: str, steps: int, out_dir: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"objective": objective, "max_steps": steps, "batch_size": cfg.batch_size,
                          "lr": cfg.lr, "min_lr": cfg.lr / 10, "warmup_steps": min(50, steps // 10),
                          "eval_every": max(1, steps // EVAL_POINTS), "eval_batches": cfg.eval_batches or None,
                          "log_every": max(1, steps // 50), "seed": cfg.seed,
                          "device": cfg.device, "progress": False, "out_dir": str(out_dir), **kw})


def _copy_scores(model: PixelByteModel, cfg: CompareConfig, copy_data, out_dir: Path) -> dict:
    dataset, held = copy_data
    tuned = copy.deepcopy(model)
    train_cfg = _train_config(cfg, model.config.objective, cfg.copy_steps, out_dir,
                              eval_every=0, warmup_steps=0)
    Trainer(tuned, dataset, None, train_cfg).fit()
    window = dataset.cfg.seq_length               # re-run models see windows as long as in training
    return {f"copy_{kind}_acc": evaluate.score_copy(tuned, items, window=window)["token_accuracy"]
            for kind, items in held.items()}


def _quiet(on: bool):
    """Silence the Trainer's per-validation lines (stdout); warnings still show."""
    return contextlib.redirect_stdout(io.StringIO()) if on else contextlib.nullcontext()


def run_config(name: str, objective: str, splits: Splits, out_dir, copy_data=None,
               log=print, verbose: bool = False) -> tuple[dict, pd.DataFrame, PixelByteModel]:
    """Train and evaluate one paper config with one objective; returns (table row, its
    metrics.csv rows, the trained model). Files go to ``out_dir`` (the Trainer's);
    ``copy_data``: ``copy_task_data(cfg, objective)``, or None to skip the copy task;
    ``log``: where the one-line summary goes; ``verbose``: keep the Trainer's own lines."""
    cfg, out_dir = splits.cfg, Path(out_dir)
    model_cfg = paper_config(name, objective=objective)
    train_ds, val_ds = splits.windows(objective)
    torch.manual_seed(cfg.seed)
    model = PixelByteModel(model_cfg)
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_ds)} training windows, fewer than one batch of {cfg.batch_size}: "
                         f"lower batch_size, seq_length or stride, or use more items")
    steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.budget_s:
        device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and
                                                                 torch.cuda.is_available()) else "cpu")
        per_step = seconds_per_step(model, train_ds, objective, cfg.batch_size, cfg.lr, device)
        steps = max(1, min(steps, int(cfg.budget_s / per_step)))

    t0 = time.perf_counter()
    with _quiet(not verbose):
        final = Trainer(model, train_ds, val_ds, _train_config(cfg, objective, steps, out_dir)).fit()
    train_time = time.perf_counter() - t0
    metrics = pd.read_csv(out_dir / "metrics.csv")
    model.eval()

    t0 = time.perf_counter()
    row = {"run": f"{name}/{objective}", "config": name, "family": name.split("_")[0],
           "objective": objective, "params": model.num_parameters(), "steps": final["step"],
           "epochs": final["step"] / steps_per_epoch,
           "train_tokens": final["step"] * cfg.batch_size * cfg.seq_length, "train_time_s": train_time,
           "tokens_per_s": _tokens_per_s(metrics, cfg.batch_size * cfg.seq_length),
           "train_loss": final["train_loss"], "train_acc": final["train_accuracy"],
           "val_loss": final["val_loss"], "val_acc": final["val_accuracy"]}
    with torch.no_grad():
        bits = evaluate.token_metrics(model, val_ds, max_batches=cfg.metric_batches or None)
        bits = bits.set_index("modality")["bits_per_token"]
        row.update(bpt=bits["all"], bpt_text=bits["text"], bpt_pixel=bits["pixel"])

        paper = evaluate.paper_metrics(model, splits.test, max_chunks=cfg.max_chunks or None,
                                       train_seqs=splits.train, seed=cfg.seed, window=cfg.seq_length)
        summary = paper["summary"].set_index("method").loc["model"]
        row.update({f"{m}_{s}": summary[f"{m}_{s}"] for m in evaluate.METRICS for s in ("mean", "std")})
        row.update(hamming_centre_mean=summary["hamming_centre_mean"],
                   bleu_centre_mean=summary["bleu_centre_mean"], chunks=int(summary["chunks"]))

        shapes = splits.shapes(cfg.n_samples)
        if shapes:
            outs = gen.generate(model, [gen.shape_prompt(*s) for s in shapes], [h * (w + 1) + 8 for h, w in shapes],
                                temperature=SAMPLE_TEMPERATURE, seed=cfg.seed, stop_after_segments=1,
                                window=cfg.seq_length)
            counts = gen.dimension_consistency(outs)
            images = sum(any(s.kind == "image" for s in o.new_segments) for o in outs)
            row.update(dim_consistency=counts["consistent"] / len(shapes), dim_image=images / len(shapes))
        else:
            row.update(dim_consistency=float("nan"), dim_image=float("nan"))
    if copy_data is not None:
        with _quiet(not verbose):
            row.update(_copy_scores(model, cfg, copy_data, out_dir / "copy_task"))
    else:
        row.update({f"copy_{kind}_acc": float("nan") for kind in COPY_KINDS})
    row["eval_time_s"] = time.perf_counter() - t0
    log(f"{row['run']:38s} {row['params']:6d} params, {row['steps']:5d} steps in {train_time:5.0f} s, "
        f"val loss {row['val_loss']:.3f}, {row['bpt']:.2f} bits/token, Hamming {row['hamming_mean']:.3f}, "
        f"dims {row['dim_consistency']:.2f}, copy {row['copy_text_acc']:.2f}/{row['copy_image_acc']:.2f} "
        f"(eval {row['eval_time_s']:.0f} s)")
    history = metrics.assign(run=row["run"], config=name, family=row["family"], objective=objective)
    return {c: row.get(c, float("nan")) for c in COLUMNS}, history, model


# ---------------------------------------------------------------------------------------------
# All runs


@dataclass
class Comparison:
    table: pd.DataFrame           # one row per run, ``COLUMNS``
    histories: pd.DataFrame       # every run's metrics.csv rows + run, config, family, objective
    baselines: pd.DataFrame       # evaluate.summarize rows of the trivial baselines, same chunks
    skipped: pd.DataFrame         # config, objective, reason
    splits: Splits
    models: dict = field(default_factory=dict, repr=False)   # run -> trained PixelByteModel


def compare(seqs: list[np.ndarray], configs: str = "paper", objectives: str = "next",
            cfg: CompareConfig | None = None, out_dir="runs/compare", log=print,
            verbose: bool = False) -> Comparison:
    """Run every (config, objective) of ``plan(configs, objectives)`` on ``seqs`` (all items;
    split by item inside) with the settings of ``cfg``; each run's files go to
    ``out_dir/runs/<config>_<objective>/``."""
    cfg = cfg or CompareConfig()
    runs, skipped = plan(configs, objectives)
    splits = Splits.make(seqs, cfg)
    for objective in dict.fromkeys(o for _, o in runs):
        train_ds, val_ds = splits.windows(objective)
        log(f"objective {objective!r}: {len(train_ds):,} training windows ({train_ds.n_items} items), "
            f"{len(val_ds):,} held-out windows ({val_ds.n_items} items) of {cfg.seq_length} tokens")
    for _, row in skipped.iterrows():
        log(f"skipped {row['config']}/{row['objective']}: {row['reason']}")
    copy_sets = {o: copy_task_data(cfg, o) for o in dict.fromkeys(o for _, o in runs)} \
        if cfg.copy_items and cfg.copy_steps else {}
    rows, histories, models = [], [], {}
    for name, objective in runs:
        row, history, model = run_config(name, objective, splits, Path(out_dir) / "runs" / f"{name}_{objective}",
                                         copy_sets.get(objective), log=log, verbose=verbose)
        rows.append(row)
        histories.append(history)
        models[row["run"]] = model
    baselines = evaluate.paper_metrics(None, splits.test, max_chunks=cfg.max_chunks or None,
                                       train_seqs=splits.train, seed=cfg.seed)["summary"]
    baselines = baselines[baselines["method"] != "true_tokens"].reset_index(drop=True)
    return Comparison(pd.DataFrame(rows), pd.concat(histories, ignore_index=True), baselines, skipped,
                      splits, models)


# ---------------------------------------------------------------------------------------------
# Views of the table


def bar_summary(comparison: Comparison) -> pd.DataFrame:
    """Models and baselines in one ``evaluate.summarize``-like frame (method, family,
    <metric>_mean, <metric>_std) for ``plots.metric_bars``."""
    cols = [f"{m}_{s}" for m in evaluate.METRICS for s in ("mean", "std")]
    models = comparison.table[["run", "family", *cols]].rename(columns={"run": "method"})
    return pd.concat([models, comparison.baselines[["method", *cols]].assign(family="baseline")],
                     ignore_index=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: paper metrics as "mean +- std", numbers rounded, by run."""
    out = table.set_index("run").drop(columns=["config", "family", "objective"])
    for m in evaluate.METRICS:
        out[m] = [f"{a:.3f} +- {b:.3f}" for a, b in zip(out.pop(f"{m}_mean"), out.pop(f"{m}_std"))]
    out["tokens_per_s"] = out["tokens_per_s"].round(0)
    return out.round(3)


def winners(table: pd.DataFrame) -> pd.DataFrame:
    """For each score and objective, the best run(s) and family: ties list every run (or
    count them when more than 3)."""
    lower = {"val_loss", "bpt", "bpt_text", "bpt_pixel", "hamming_mean", "hamming_centre_mean"}
    scores = ["val_loss", "bpt", "bpt_text", "bpt_pixel", "hamming_mean", "cosine_mean", "bleu_mean",
              "hamming_centre_mean", "bleu_centre_mean", "dim_consistency", "copy_text_acc",
              "copy_image_acc", "tokens_per_s"]
    rows = []
    for objective, group in table.groupby("objective", sort=False):
        for score in scores:
            values = group[score].astype(float)
            if values.isna().all():
                continue
            value = values.min() if score in lower else values.max()
            tied = group[np.isclose(values, value)]
            runs = "; ".join(tied["run"]) if len(tied) <= 3 else f"{len(tied)} runs tied"
            rows.append({"objective": objective, "score": score, "best_run": runs,
                         "family": ", ".join(dict.fromkeys(tied["family"])), "value": value,
                         "lower_is_better": score in lower})
    return pd.DataFrame(rows)


def paper_comparison(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The paper's published numbers (its 6 best rows) beside ours for the same configs
    (objective ``next``, as in the paper). Column names say where each number comes from."""
    theirs = f"paper ({PAPER_RESULTS_SOURCE})"
    if PUBLISHED_DATASET.split("/")[1].lower() not in str(dataset).lower():
        theirs = f"paper ({PAPER_RESULTS_SOURCE} -- a different dataset)"
    ours = table[table["objective"] == "next"].set_index("config")
    rows = []
    for name, published in PAPER_RESULTS.items():
        row = {"config": name}
        for m in evaluate.METRICS:
            row[f"{m}: {theirs}"] = "{:.3f} +- {:.3f}".format(*published[m])
            row[f"{m}: ours ({dataset})"] = (f"{ours.loc[name, f'{m}_mean']:.3f} +- {ours.loc[name, f'{m}_std']:.3f}"
                                             if name in ours.index else "not run")
        rows.append(row)
    return pd.DataFrame(rows).set_index("config")


def best_per_family(table: pd.DataFrame) -> dict[str, str]:
    """family -> the run with the lowest paper Hamming in that family."""
    return {family: group.loc[group["hamming_mean"].idxmin(), "run"]
            for family, group in table.groupby("family", sort=False)}


def family_sprites(comparison: Comparison, captions: list[str], shapes: list[tuple[int, int]],
                   n_candidates: int = 2, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Caption -> sprite with the best run of each family (``best_per_family``):
    ``generate.caption_to_sprite`` (constrained, ``n_candidates`` sampled images ranked by
    p(caption | image)). Returns {"<family>: <run>": [image per caption]}."""
    out = {}
    for family, run in best_per_family(comparison.table).items():
        model = comparison.models[run]
        images = []
        with torch.no_grad():
            for i, (caption, shape) in enumerate(zip(captions, shapes)):
                best, _ = gen.caption_to_sprite(model, caption, tuple(shape), n_candidates=n_candidates,
                                                temperature=SAMPLE_TEMPERATURE, seed=seed + i,
                                                window=comparison.splits.cfg.seq_length)
                images.append(best.images[-1])
        out[f"{family}: {run}"] = images
    return out
