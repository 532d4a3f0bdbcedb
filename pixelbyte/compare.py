"""Model comparison: train and evaluate many paper configurations the same way, one table out.

    result = compare.compare(seqs, configs="paper", objectives="next,causal",
                             cfg=compare.CompareConfig(max_steps=40), out_dir="runs/compare")
    result.table          # one row per (config, objective): the columns of ``COLUMNS``

Each run (``CompareConfig.run``) is trained by the ``Trainer`` on its objective's samples, then scored
on held-out items: bits per token by modality, the paper's Hamming / cosine / BLEU, the skills report
and the copy skill of its architecture (``copying``, once per config). Configs whose causal variant
cannot exist are skipped, with the reason.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import copying, data, evaluate, skills
from .config import (DEVICES, HUB_DATASET, OBJECTIVES, SSMS, UNITS, DataConfig, ModelConfig, RunConfig,
                     SampleConfig, TrainConfig, _check_choice, _check_ints, _check_numbers, _fail, comma_list)
from .models import (PAPER_ABLATIONS, PAPER_BEST, PAPER_RESULTS, PAPER_RESULTS_SOURCE, PixelByteModel, paper_config)
from .train import Trainer, in_processes

CONFIG_SETS = {"paper": PAPER_BEST + PAPER_ABLATIONS, "best": PAPER_BEST}
COPY_TASKS = ("selective", "image", "text")   # copy columns: copying.TASKS at their CPU sizes
EVAL_POINTS = 10              # validations per training run (the curves' points)

# The table's columns, what each one is.
COLUMNS = {
    "run": "config/objective",
    "config": "paper config name (family_dir_embedding_conv_dim_hidden_depth)",
    "family": "rnn (LSTM) | ssm (BysMamba) | att (attention)",
    "objective": "next: the token after the window | causal: every position's own token",
    "samples": "what a training sample was: window (seq_length tokens) | item (whole items, both orders)",
    "mixer": "the sequence mixer: lstm | attention | mamba (Mamba-1) | mamba2 (SSD)",
    "params": "trainable parameters",
    "steps": "optimizer steps run",
    "epochs": "passes over the training samples",
    "train_tokens": "real (not padding) input positions seen in training",
    "train_time_s": "wall time of training, periodic validation included",
    "tokens_per_s": "training input positions per second (validation excluded)",
    "train_loss": "cross-entropy (nats) of the last logged training steps",
    "train_acc": "accuracy of the last logged training steps",
    "val_loss": "cross-entropy (nats) on held-out samples at the end",
    "val_acc": "accuracy on held-out samples at the end",
    "bpt": "bits per target token on held-out samples (token_metrics)",
    "bpt_text": "... text (byte) targets only",
    "bpt_pixel": "... pixel (colour) targets only",
    "hamming_mean": "paper metric on held-out items: 144 window ids, lower is better", "hamming_std": "",
    "cosine_mean": "paper metric: cosine similarity of the 144 ids, higher is better", "cosine_std": "",
    "bleu_mean": "paper metric: BLEU-4 of the 144 ids, higher is better", "bleu_std": "",
    "hamming_centre_mean": "Hamming on the 16 generated centre tokens only",
    "bleu_centre_mean": "BLEU on the 16 centre tokens only",
    "chunks": "80-token chunks scored (64 prompt + 16 generated)",
    "dims_data": "skills: share of free images from held-out shapes with the declared size (data order)",
    "dims_caption_first": "skills: the same after caption, then shape (caption-first order)",
    "caption_group": "skills: sprite -> caption, share of captions in the reference's group",
    "caption_name": "skills: sprite -> caption, name similarity to the reference (difflib ratio)",
    "sprite_group": "skills: caption -> sprite, share of drawings the sprite classifier puts in the caption's group",
    "swap_caption_to_image": "skills: bits per image token an item's image gains after its own caption vs another's",
    "swap_image_to_caption": "skills: bits per caption token its caption gains after its own sprite vs another's",
    "retrieval8_sprite": "skills: among 8 held-out items (fewer if fewer are scored), "
                         "share of captions whose likeliest sprite is their own",
    "retrieval8_caption": "skills: among 8 held-out items (fewer if fewer are scored), "
                          "share of sprites whose likeliest caption is their own",
    "channel8_sprite": "skills: retrieval8_sprite by p(sprite | caption) / p(sprite) (the noisy channel)",
    "channel8_caption": "skills: retrieval8_caption by p(caption | sprite) / p(caption)",
    "copy_selective": "copy (05's code): selective copy, exact-sequence accuracy of the architecture trained on it",
    "copy_image": "copy: image repeat (bottom rows repeat the top), token accuracy",
    "copy_text": "copy: text repeat (a phrase repeated), token accuracy",
    "eval_time_s": "wall time of all the evaluations of the run",
}
SKILL_COLUMNS = {
    "dims_data": ("dimensions", "data order: shape -> image"),
    "dims_caption_first": ("dimensions", "caption-first: caption, shape -> image"),
    "caption_group": ("sprite -> caption", "group accuracy"),
    "caption_name": ("sprite -> caption", "name similarity"),
    "sprite_group": ("caption -> sprite", "group accuracy (classifier)"),
    "swap_caption_to_image": ("caption -> sprite", "swap gain: own caption minus another's, bits per image token"),
    "swap_image_to_caption": ("sprite -> caption", "swap gain: own sprite minus another's, bits per caption token"),
    "retrieval8_sprite": ("caption -> sprite", "retrieval: top-1 sprite among 8 by p(sprite | caption)"),
    "retrieval8_caption": ("sprite -> caption", "retrieval: top-1 caption among 8 by p(caption | sprite)"),
    "channel8_sprite": ("caption -> sprite", "retrieval: top-1 sprite among 8 by p(sprite | caption) / p(sprite)"),
    "channel8_caption": ("sprite -> caption", "retrieval: top-1 caption among 8 by p(caption | sprite) / p(caption)"),
}
TIMING_COLUMNS = ("train_time_s", "tokens_per_s", "eval_time_s")


# Configuration
@dataclass
class CompareConfig:
    unit: str = "item"            # samples of causal runs: item (whole items, both orders, positions) | window
    ssm: str = "mamba"            # BysMamba's mixer: mamba (the paper's Mamba-1) | mamba2 (SSD, one head)
    seq_length: int = 64          # window samples: tokens per window (all next runs)
    stride: int = 32              # window samples: tokens between window starts
    batch_size: int = 16          # samples per optimizer step
    lr: float = 3e-3              # AdamW peak learning rate (cosine decay to lr / 10)
    epochs: int = 1               # passes over the training samples ...
    max_steps: int = 40           # ... or this many optimizer steps (0 = use epochs)
    budget_s: float = 0.0         # wall-clock seconds of training per run, 0 = none
    max_chunks: int = 16          # paper metrics: chunks scored, 0 = all held-out chunks
    metric_batches: int = 16      # token_metrics: held-out batches of 16 samples, 0 = all
    eval_batches: int = 8         # validation during training: batches, 0 = all
    skill_items: int = 8          # held-out items of the skills report (0 = skip the skills)
    copy_tasks: str = ",".join(COPY_TASKS)  # copy tasks each config's architecture is trained on ("" = none)
    copy_steps: int = 200         # copy tasks: training steps per task (0 = skip them)
    copy_items: int = 64          # copy tasks: held-out items scored per task
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda
    workers: int = 1              # configs trained at once, one process and one CPU thread each
    threads: int = 0              # torch CPU threads of the notebook's process, 0 keeps torch's default

    def __post_init__(self):
        _check_choice(self, "unit", UNITS)
        _check_choice(self, "ssm", SSMS)
        _check_choice(self, "device", DEVICES)
        _check_ints(self, ("seq_length", "stride", "batch_size", "epochs", "workers"), 1)
        _check_ints(self, ("max_steps", "max_chunks", "metric_batches", "eval_batches", "skill_items", "copy_steps",
                           "copy_items", "seed", "threads"), 0)
        _check_numbers(self, ["lr"], above=True)
        _check_numbers(self, ["budget_s"])
        if not isinstance(self.copy_tasks, str) or any(t not in COPY_TASKS for t in comma_list(self.copy_tasks)):
            _fail(self, "copy_tasks", f"expected comma-separated values among {list(COPY_TASKS)} "
                                      f"(05 also has {[k for k in copying.KINDS if k not in COPY_TASKS]})")

    def samples(self, objective: str) -> SampleConfig:
        if objective == "causal" and self.unit == "item":
            return SampleConfig(unit="item", orders="both")
        return SampleConfig(unit="window", seq_length=self.seq_length, stride=self.stride)

    def model(self, name: str, **changes) -> ModelConfig:
        """A paper config with this comparison's BysMamba mixer."""
        model = paper_config(name, **changes)
        return replace(model, ssm=self.ssm) if model.model == "bysmamba" else model

    def run(self, name: str, objective: str, data_cfg: DataConfig, out_dir: Path, steps: int) -> RunConfig:
        """The RunConfig of one (paper config, objective) of this comparison."""
        samples = self.samples(objective)
        model = self.model(name, objective=objective, positions=samples.unit == "item")
        return RunConfig(data=data_cfg, samples=samples, model=model,
                         train=TrainConfig(max_steps=steps, budget_s=self.budget_s, batch_size=self.batch_size,
                                           lr=self.lr, min_lr=self.lr / 10, warmup_steps=min(50, steps // 10),
                                           eval_every=max(1, steps // EVAL_POINTS),
                                           eval_batches=self.eval_batches or None, log_every=max(1, steps // 50),
                                           seed=self.seed, device=self.device, progress=False, out_dir=str(out_dir)))


def plan(configs: str = "paper", objectives: str = "next") -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """The (config name, objective) runs, and the skipped ones with why. ``configs``: "paper" (15),
    "best" (the paper's 6 best rows) or comma-separated names; ``objectives``: "next", "causal" or both."""
    names = list(CONFIG_SETS[configs]) if configs in CONFIG_SETS else comma_list(configs)
    if not names:
        raise ValueError(f"configs={configs!r}: expected 'paper', 'best' or comma-separated config names")
    try:
        base = {name: paper_config(name) for name in names}
    except ValueError as err:
        raise ValueError(f"configs: {err}") from None
    wanted = comma_list(objectives)
    if not wanted or any(o not in OBJECTIVES for o in wanted):
        raise ValueError(f"objectives={objectives!r}: expected 'next', 'causal' or 'next,causal'")
    runs, skipped = [], []
    for objective in dict.fromkeys(wanted):
        for name, cfg in base.items():
            if objective == "causal" and cfg.bidirectional:
                skipped.append((name, objective, "bidirectional: sees the token it must predict"))
            elif objective == "causal" and cfg.embedding == "center":
                skipped.append((name, objective, "centre-only embedding: a causal input is always 0"))
            else:
                runs.append((name, objective))
    if not runs:
        raise ValueError(f"configs={configs!r} with objectives={objectives!r}: no run is possible ("
                         + "; ".join(f"{n}: {r}" for n, _, r in skipped) + "); add objective 'next' "
                         "or a unidirectional config with the pxby embedding")
    return runs, pd.DataFrame(skipped, columns=["config", "objective", "reason"])


# Data
@dataclass
class Splits:
    """Items split once (by item, seeded), cut into samples per objective on demand; the skills
    report's sprite classifier, fitted once here and shipped to the workers."""
    train: list[np.ndarray]
    test: list[np.ndarray]
    data: DataConfig
    cfg: CompareConfig
    classifier: skills.SpriteClassifier | None = field(default=None, repr=False)
    _samples: dict = field(default_factory=dict, repr=False)

    @classmethod
    def make(cls, seqs: list[np.ndarray], data_cfg: DataConfig, cfg: CompareConfig) -> "Splits":
        train_idx, test_idx = data.split(seqs, data_cfg)
        train = [seqs[i] for i in train_idx]
        return cls(train, [seqs[i] for i in test_idx], data_cfg, cfg,
                   skills.fit_classifier(train) if cfg.skill_items else None)

    def samples(self, objective: str):
        """(train, held-out) samples of an objective."""
        if objective not in self._samples:
            kind = self.cfg.samples(objective)
            self._samples[objective] = tuple(data.make_samples(s, kind, objective) for s in (self.train, self.test))
        return self._samples[objective]


# One run
def copy_columns(name: str, cfg: CompareConfig, out_dir: Path) -> dict:
    """Copy scores of a config's architecture, causal and trained from scratch on each of ``cfg.copy_tasks``."""
    base = paper_config(name)     # a copy is generated token by token: no bidirectional, no centre-only input
    if base.bidirectional or base.embedding == "center" or not cfg.copy_steps:
        return {}
    out = {}
    for t in comma_list(cfg.copy_tasks):
        _, _, sweep = copying.train_and_sweep(cfg.model(name, objective="causal"), copying.TASKS[t], factors=(1,),
                                              sweep_items=cfg.copy_items, max_steps=cfg.copy_steps, batch_size=32,
                                              lr=cfg.lr, eval_points=1, eval_items=16, seed=cfg.seed,
                                              device=cfg.device, out_dir=str(out_dir / t))
        out[f"copy_{t}"] = float(sweep.set_index("method").loc["model", copying.HEADLINE[t]])
    return out


@contextlib.contextmanager
def _quiet(on: bool):
    """Silence the Trainer's per-validation log lines; warnings still show."""
    logger = logging.getLogger("pixelbyte.train")
    level = logger.level
    logger.setLevel(logging.WARNING if on else level)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_config(name: str, objective: str, splits: Splits, out_dir, copy_scores: dict | None = None,
               log=print, verbose: bool = False) -> tuple[dict, pd.DataFrame, PixelByteModel, skills.Skills | None]:
    """Train and evaluate one paper config with one objective: (table row, its metrics.csv rows, the
    model, its skills report). ``copy_scores``: ``copy_columns``; ``verbose``: the Trainer's log lines."""
    cfg, out_dir = splits.cfg, Path(out_dir)
    train_ds, val_ds = splits.samples(objective)
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_ds)} training samples, fewer than one batch of {cfg.batch_size}: "
                         f"lower batch_size, seq_length or stride, or use more items")
    run = cfg.run(name, objective, splits.data, out_dir, cfg.max_steps or cfg.epochs * steps_per_epoch)
    model = PixelByteModel.from_run(run)
    t0 = time.perf_counter()
    with _quiet(not verbose):
        final = Trainer(model, train_ds, val_ds, run).fit(overwrite=True)
    train_time = time.perf_counter() - t0
    model.eval()

    t0 = time.perf_counter()
    row = {"run": f"{name}/{objective}", "config": name, "family": name.split("_")[0],
           "objective": objective, "samples": run.samples.unit, "params": model.num_parameters(),
           "mixer": run.model.ssm if run.model.model == "bysmamba" else run.model.model,
           "steps": final["step"], "epochs": final["epoch"],
           "train_tokens": final["tokens_per_s"] * final["train_seconds"], "train_time_s": train_time,
           "tokens_per_s": final["tokens_per_s"], "train_loss": final["train_loss"],
           "train_acc": final["train_accuracy"], "val_loss": final["val_loss"], "val_acc": final["val_accuracy"]}
    report = None
    with torch.no_grad():
        bits = evaluate.token_metrics(model, val_ds, batch_size=16, max_batches=cfg.metric_batches or None)
        bits = bits.set_index("modality")["bits_per_token"]
        row.update(bpt=bits["all"], bpt_text=bits["text"], bpt_pixel=bits["pixel"])
        paper = evaluate.paper_metrics(model, splits.test, max_chunks=cfg.max_chunks or None,
                                       train_seqs=splits.train, seed=cfg.seed)
        summary = paper["summary"].set_index("method").loc["model"]
        row.update({f"{m}_{s}": summary[f"{m}_{s}"] for m in evaluate.METRICS for s in ("mean", "std")})
        row.update(hamming_centre_mean=summary["hamming_centre_mean"],
                   bleu_centre_mean=summary["bleu_centre_mean"], chunks=int(summary["chunks"]))
        if cfg.skill_items:
            report = skills.measure(model, splits.train, splits.test,
                                    skills.SkillsConfig(items=cfg.skill_items, seed=cfg.seed, retrieval=(8,)),
                                    splits.classifier)
            row.update({column: report.value(skill, metric) for column, (skill, metric) in SKILL_COLUMNS.items()})
    row.update(copy_scores or {})
    row["eval_time_s"] = time.perf_counter() - t0
    log(f"{row['run']:38s} {row['params']:7,d} params, {row['steps']:5d} steps in {train_time:5.0f} s, "
        f"val loss {row['val_loss']:.3f}, {row['bpt']:.2f} bits/token, Hamming {row['hamming_mean']:.3f}, "
        f"dims {row.get('dims_data', math.nan):.2f}, caption group {row.get('caption_group', math.nan):.2f}, "
        f"sprite group {row.get('sprite_group', math.nan):.2f} (eval {row['eval_time_s']:.0f} s)")
    history = pd.read_csv(out_dir / "metrics.csv").assign(run=row["run"], config=name, family=row["family"],
                                                          objective=objective)
    return {c: row.get(c, math.nan) for c in COLUMNS}, history, model, report


# All runs
@dataclass
class Comparison:
    table: pd.DataFrame           # one row per run, ``COLUMNS``
    histories: pd.DataFrame       # every run's metrics.csv rows + run, config, family, objective
    baselines: pd.DataFrame       # evaluate.summarize rows of the trivial baselines, same chunks
    skill_baselines: pd.DataFrame  # the skills report's baselines (the same for every run)
    skipped: pd.DataFrame         # config, objective, reason
    splits: Splits
    models: dict = field(default_factory=dict, repr=False)    # run -> trained PixelByteModel
    reports: dict = field(default_factory=dict, repr=False)   # run -> skills.Skills


def _config_job(job: dict) -> tuple[list, list[str]]:
    """Every run of one paper config (its copy skill first, once for all its objectives), as a job of
    ``in_processes``: models travel back as state dicts, log lines as text (unless the job brings its
    own ``log``: in this process)."""
    lines, name, splits, out_dir, verbose = [], job["name"], job["splits"], job["out_dir"], job["verbose"]
    with _quiet(not verbose):
        copy = copy_columns(name, splits.cfg, out_dir / "copy" / name)
    results = [run_config(name, objective, splits, out_dir / "runs" / f"{name}_{objective}", copy,
                          log=job.get("log", lines.append), verbose=verbose) for objective in job["objectives"]]
    return [(row, history, model.run, model.state_dict(), report) for row, history, model, report in results], lines


def compare(seqs: list[np.ndarray], configs: str = "paper", objectives: str = "next",
            cfg: CompareConfig | None = None, out_dir="runs/compare", log=print,
            verbose: bool = False, data_cfg: DataConfig | None = None, workers: int | None = None) -> Comparison:
    """Run every (config, objective) of ``plan(configs, objectives)`` on ``seqs`` (split by item inside),
    ``workers`` (default ``cfg.workers``) configs at once: the table is the same either way. Runs write
    to ``out_dir/runs/<config>_<objective>/``; comparison.csv and histories.csv get each config's rows as
    it finishes, then every file is written in the plan's order."""
    cfg = replace(cfg or CompareConfig(), **({} if workers is None else {"workers": workers}))
    data_cfg, out_dir = data_cfg or DataConfig(), Path(out_dir)
    runs, skipped = plan(configs, objectives)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.csv", "histories.csv"):
        (out_dir / name).unlink(missing_ok=True)
    skipped.to_csv(out_dir / "skipped.csv", index=False)
    splits = Splits.make(seqs, data_cfg, cfg)
    for objective in dict.fromkeys(o for _, o in runs):
        train_ds, val_ds = splits.samples(objective)
        log(f"objective {objective!r}: {len(train_ds):,} training samples ({train_ds.n_items} items), "
            f"{len(val_ds):,} held-out samples ({val_ds.n_items} items), {cfg.samples(objective).unit} samples")
    for _, row in skipped.iterrows():
        log(f"skipped {row['config']}/{row['objective']}: {row['reason']}")
    by_config = {name: [o for n, o in runs if n == name] for name, _ in runs}
    here = cfg.workers == 1 or len(by_config) == 1           # in_processes then runs the jobs here
    jobs = [dict(name=n, objectives=o, out_dir=out_dir, verbose=verbose,
                 **(dict(splits=splits, log=log) if here else dict(splits=replace(splits, _samples={}))))
            for n, o in by_config.items()]                   # (a worker re-cuts the samples: cheap views)
    results = [[] for _ in jobs]
    for k, (done, lines) in in_processes(_config_job, jobs, cfg.workers):
        for line in lines:
            log(line)
        for row, history, run, state, report in done:
            model = PixelByteModel.from_run(run)
            model.load_state_dict(state)
            results[k].append((row, history, model.eval(), report))
        copying.append_csv(out_dir / "comparison.csv", pd.DataFrame([r[0] for r in results[k]]))
        copying.append_csv(out_dir / "histories.csv", pd.concat([r[1] for r in results[k]]), "%.6g")
    ordered = [r for done in results for r in done]          # the plan's order, whatever finished first
    reports = {row["run"]: report for row, _, _, report in ordered}
    baselines = evaluate.paper_metrics(None, splits.test, max_chunks=cfg.max_chunks or None,
                                       train_seqs=splits.train, seed=cfg.seed)["summary"]
    baselines = baselines[baselines["method"] != "true_tokens"].reset_index(drop=True)
    first = next((r for r in reports.values() if r is not None), None)
    columns = ["skill", "metric", "baseline", "baseline_is"]
    skill_baselines = first.table[columns] if first is not None else pd.DataFrame(columns=columns)
    result = Comparison(pd.DataFrame([r[0] for r in ordered]), pd.concat([r[1] for r in ordered], ignore_index=True),
                        baselines, skill_baselines, skipped, splits,
                        {row["run"]: model for row, _, model, _ in ordered}, reports)
    result.table.to_csv(out_dir / "comparison.csv", index=False)
    result.histories.to_csv(out_dir / "histories.csv", index=False, float_format="%.6g")
    baselines.to_csv(out_dir / "baselines.csv", index=False)
    skill_baselines.to_csv(out_dir / "skill_baselines.csv", index=False)
    return result


# Views of the table
def bar_summary(comparison: Comparison) -> pd.DataFrame:
    """Models and baselines in one frame (method, family, <metric>_mean, <metric>_std) for ``plots.metric_bars``."""
    cols = [f"{m}_{s}" for m in evaluate.METRICS for s in ("mean", "std")]
    models = comparison.table[["run", "family", *cols]].rename(columns={"run": "method"})
    return pd.concat([models, comparison.baselines[["method", *cols]].assign(family="baseline")], ignore_index=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: paper metrics as "mean +- std", numbers rounded, by run."""
    out = table.set_index("run").drop(columns=["config", "family", "objective", "samples", "mixer"])
    for m in evaluate.METRICS:
        out[m] = [f"{a:.3f} +- {b:.3f}" for a, b in zip(out.pop(f"{m}_mean"), out.pop(f"{m}_std"))]
    out["tokens_per_s"] = out["tokens_per_s"].round(0)
    return out.round(3)


def winners(table: pd.DataFrame) -> pd.DataFrame:
    """For each score and objective, the best run(s) and family (ties: every run, or their count past 3)."""
    lower = {"val_loss", "bpt", "bpt_text", "bpt_pixel", "hamming_mean", "hamming_centre_mean"}
    scores = ["val_loss", "bpt", "bpt_text", "bpt_pixel", "hamming_mean", "cosine_mean", "bleu_mean",
              "hamming_centre_mean", "bleu_centre_mean", *SKILL_COLUMNS,
              *(f"copy_{t}" for t in COPY_TASKS), "tokens_per_s"]
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
    if HUB_DATASET.split("/")[1].lower() not in str(dataset).lower():
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
    """family -> its best run: the highest sum of the skills (dimensions in both orders, caption
    group, sprite group) when they were measured, else the lowest paper Hamming."""
    shares = ["dims_data", "dims_caption_first", "caption_group", "sprite_group"]      # all in [0, 1]
    skill_sum = table[shares].sum(axis=1, min_count=1)
    score = skill_sum if skill_sum.notna().any() else -table["hamming_mean"]
    return {family: table.loc[score[group.index].idxmax(), "run"]
            for family, group in table.groupby("family", sort=False)}


def family_sprites(comparison: Comparison, n: int = 6) -> tuple[list, list[str], dict[str, list]]:
    """Caption -> sprite by the best run of each family, from its skills report: (references, captions,
    {"<family>: <run>": [drawing per caption]}) for the first ``n`` reported items."""
    best = best_per_family(comparison.table)
    reports = {run: comparison.reports.get(run) for run in best.values()}
    first = next((r for r in reports.values() if r is not None), None)
    if first is None:
        return [], [], {}
    rows = {f"{family}: {run}": reports[run].examples["drawn"][:n] for family, run in best.items()
            if reports[run] is not None}
    return first.examples["references"][:n], first.examples["reference_captions"][:n], rows
