"""Training: a plain-PyTorch Trainer for PixelByte models (nanoGPT-like, one file).

    python -m pixelbyte.train --model.model lstm --train.epochs 2 --train.out-dir runs/lstm
    python -m pixelbyte.train --config run.json [--resume]          # a whole RunConfig from a file
    torchrun --nproc_per_node 2 -m pixelbyte.train --config run.json     # DDP

    model, final = train(run)                             # load data, build samples and model, fit
    final = Trainer(model, train_ds, val_ds, run).fit()   # with datasets of your own

``batch_size`` is the global micro-batch (each rank takes its slice of it), so 1 or N processes
see the same samples per step; the epoch order follows from the step count, so a resumed run
replays it.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shutil
import sys
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm   # log lines that keep a bar whole

from . import __version__, data, git_commit, kaggle_env
from . import tokenizer as tok
from .config import RUNTIME_FIELDS, DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig, \
    _is_int, atomic_write, field_diff, resolve_device
from .models import CheckpointError, PixelByteModel, loss_sums, metrics_from_sums

log = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "split", "loss", "accuracy", "bits_per_token", "acc_text", "acc_pixel",
           "acc_structure", "bpt_text", "bpt_pixel", "bpt_structure", "lr", "tokens_per_s", "wall_time")
CHECKPOINT_FORMAT = "pixelbyte-train-checkpoint-v2"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "loader_gen", "epoch_start_gen", "step",
                   "epoch", "batch_in_epoch", "best_val_loss", "best_step", "history", "wall_time", "world_size",
                   "run", "total_steps", "dataset_sizes")
PROBE_STEPS = 6             # budget_s: steps timed (after the first) to fix the step count


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the run stopped before updating the weights with it."""


class RunFolderBusy(RuntimeError):
    """Another training holds the lock of the output folder, or the folder holds a run."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the training state was checkpointed to out_dir/last.pt first (when a step was taken)."""


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over
    ``warmup_steps``, then cosine decay to ``min_lr`` reached at ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices; not norms, biases, 1-D params or ``p._no_weight_decay``."""
    norm_params = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower()
                   for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim < 2 or id(p) in norm_params or name.endswith("bias")
                or getattr(p, "_no_weight_decay", False))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def real_tokens(x: torch.Tensor, y: torch.Tensor) -> int:
    """Input positions that are not padding: all of a window batch (``next``), the non-pad targets of a causal one."""
    return int((y != tok.PAD_ID).sum()) if y.dim() == 2 else x.shape[0] * x.shape[1]


def in_processes(fn, jobs: list, workers: int = 1):
    """Yield ``(k, fn(jobs[k]))`` per job: in order here with ``workers=1``, else as they finish in that many
    spawned one-thread processes (small trainings do not scale with threads); ``fn`` must be picklable."""
    if not _is_int(workers, 1):
        raise ValueError(f"workers={workers!r}: expected an integer >= 1")
    if workers == 1 or len(jobs) <= 1:
        yield from enumerate(map(fn, jobs))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {pool.submit(fn, job): k for k, job in enumerate(jobs)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def shard_batches(order: torch.Tensor, batch_size: int, n_batches: int, start: int = 0, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This rank's slices of one epoch's global micro-batches from batch ``start`` (resume mid-epoch):
    batch b is ``order[b*B : (b+1)*B]`` and rank r takes its r-th of ``world_size`` equal slices, so
    every rank count sees the same global batches (a DistributedSampler that keeps batches whole)."""
    order, per_rank = order.tolist(), batch_size // world_size
    first = start * batch_size + rank * per_rank
    return [order[lo:lo + per_rank] for lo in range(first, n_batches * batch_size, batch_size)]


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).
    Starts the process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        torch_device = torch.device("cuda", torch.cuda.current_device())
    if world_size > 1 and not dist.is_initialized():
        os.environ.update(kaggle_env.torchrun_env())    # NCCL on GPUs without peer access (T4 x2)
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return rank, world_size, torch_device


def cleanup_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


def tokens_crc32(ds) -> int | None:
    """crc32 of a dataset's tokens (``WindowDataset.tokens``, ``ItemDataset.items``); None for others."""
    arrays = [ds.tokens] if hasattr(ds, "tokens") else getattr(ds, "items", None)
    if not isinstance(arrays, list):             # a stream made on the fly (CopyStream.items is a method)
        return None
    return functools.reduce(lambda crc, a: zlib.crc32(np.ascontiguousarray(a), crc), arrays, 0)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint; ``CheckpointError`` naming the file and the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        best, hint = path.with_name("best.pt"), ""
        if path.name == "last.pt":
            with contextlib.suppress(CheckpointError):
                load_checkpoint(best)
                hint = f"; {best} is intact: copy it to {path} to resume from its step"
        raise CheckpointError(f"{path}: cannot be read, the file is truncated or corrupt "
                              f"({path.stat().st_size} bytes; {type(err).__name__}: {err}){hint}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a pixelbyte training checkpoint of this version (format "
                              f"{found!r}, expected {CHECKPOINT_FORMAT!r}); start a fresh run")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    return ckpt


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict):
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Trainer:
    """Train ``model`` (``model(x, y[, positions]) -> (logits, loss)``, ``model.select``, ``model.config``) on
    ``train_ds`` / ``val_ds`` (``__getitem__ -> (x, y)``; optional ``epoch_order``, ``collate``, ``describe``).
    ``run``: the RunConfig the datasets were built from, or just a TrainConfig (datasets made by hand)."""

    def __init__(self, model: nn.Module, train_ds, val_ds, run: RunConfig | TrainConfig):
        if isinstance(run, TrainConfig):
            run = RunConfig(data=None, samples=None, model=model.config, train=run)
        self.run, self.cfg = run, run.train
        self.rank, self.world_size, self.device = setup_distributed(self.cfg.device)
        self.is_main = self.rank == 0
        self._check_inputs(model, train_ds, val_ds)
        self.model, self.train_ds, self.val_ds = model.to(self.device), train_ds, val_ds
        self.model.run = run
        self.out_dir = Path(self.cfg.out_dir)
        cfg = self.cfg

        self.use_amp, why = kaggle_env.amp_decision(run.model.model, cfg.amp and self.device.type == "cuda")
        if cfg.amp and not self.use_amp:
            warnings.warn("TrainConfig.amp=True ignored: " + (why if self.device.type == "cuda" else
                          "fp16 autocast + GradScaler need CUDA; training in fp32 on CPU"), stacklevel=2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                           fused=self.device.type == "cuda" or None)
        self.steps_per_epoch = len(train_ds) // (cfg.batch_size * cfg.grad_accum)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_at(step, cfg, self.total_steps) / cfg.lr)

        self.forward_model = torch.compile(model) if cfg.compile else model       # eval uses this
        self.train_model = self.forward_model                                      # train: + DDP
        if self.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        # training state (all of it goes into checkpoints)
        self.step, self.best_val_loss, self.best_step, self.history = 0, float("inf"), None, []
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)       # shuffling order, same on all ranks
        self.epoch_start_gen_state = self.loader_gen.get_state()
        self.wall_offset, self.last_lr = 0.0, self.optimizer.param_groups[0]["lr"]
        self.budget_fixed = not cfg.budget_s                            # step count final?
        self.last_good_checkpoint: Path | None = None
        self.t0 = time.perf_counter()                                   # wall_time origin (reset by fit)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.rank)                         # dropout differs per rank

    def _check_inputs(self, model, train_ds, val_ds):
        cfg, objective = self.cfg, model.config.objective
        differs = field_diff("model", self.run.model, model.config, ("run", "model"), RUNTIME_FIELDS["model"])
        if differs:
            raise ValueError(f"the run describes another model than the one given: {'; '.join(differs)}")
        for name, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
            ds_objective = getattr(ds, "objective", None)
            if ds_objective is not None and ds_objective != objective:
                raise ValueError(f"objective mismatch: model.config.objective={objective!r}, "
                                 f"{name}.objective={ds_objective!r}; build the datasets for the "
                                 f"model's objective")
            if ds is not None and len(ds) == 0:
                raise ValueError(f"{name} is empty (0 samples): no item is long enough for a window, "
                                 f"or the source has no items")
        if cfg.batch_size % self.world_size:
            raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is the global batch and must be "
                             f"divisible by the world size {self.world_size}")
        need = cfg.batch_size * cfg.grad_accum
        if len(train_ds) < need:
            raise ValueError(f"train_ds has {len(train_ds)} samples, fewer than one optimizer step takes "
                             f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} = {need}); "
                             f"lower batch_size or the stride")

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Train to ``total_steps``, evaluating and checkpointing every ``eval_every`` steps (or each epoch end)
        and at the end; ``resume`` continues exactly from out_dir/last.pt, ``overwrite`` replaces a run there.
        Returns the final metrics (last train window, last eval, best val loss, tokens/s)."""
        with self._claim_out_dir(resume, overwrite):
            try:
                return self._fit(resume)
            except KeyboardInterrupt:
                if self.step:
                    self.save()
                where = f"checkpoint {self.out_dir / 'last.pt'} written: resume with --resume (fit(resume=True))" \
                    if self.step else "no step taken, nothing saved"
                raise TrainingInterrupted(f"interrupted at step {self.step} of {self.total_steps}; {where}") from None

    @contextlib.contextmanager
    def _claim_out_dir(self, resume: bool, overwrite: bool):
        """Rank 0 holds out_dir's lock for the whole run (released on exit, and by the OS when the
        process dies, so a crash leaves no stale lock)."""
        if not self.is_main:
            yield
            return
        lock = FileLock(self.out_dir / ".lock")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderBusy(f"{self.out_dir} is in use by another training (its lock "
                                f"{self.out_dir / '.lock'} is held); wait for it to finish or "
                                f"choose another out_dir") from None
        except OSError as err:                   # a file in the way, a read-only folder, a full disk
            what = "write to" if self.out_dir.is_dir() else "create"
            raise RunFolderBusy(f"cannot {what} the output folder {self.out_dir}: {err.strerror or err}") from None
        try:
            for stale in self.out_dir.glob(".*.tmp*"):           # partial writes of a killed run
                if stale.is_dir():                                # .best_model.tmp (save_pretrained)
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
            started = [n for n in ("last.pt", "best.pt", "metrics.csv") if (self.out_dir / n).exists()]
            if started and not (resume or overwrite):
                raise RunFolderBusy(f"{self.out_dir} already holds a run ({', '.join(started)}): "
                                    f"resume it (fit(resume=True), --resume), replace it "
                                    f"(fit(overwrite=True), --overwrite) or choose another out_dir")
            if overwrite and not resume:          # nothing of the old run may be resumed by mistake
                for name in ("last.pt", "best.pt", "metrics.csv", "metrics.json", "run.json"):
                    (self.out_dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / "best_model", ignore_errors=True)
            yield
        finally:
            lock.release()

    def _fit(self, resume: bool) -> dict:
        cfg = self.cfg
        if resume:
            self.load(self.out_dir / "last.pt")
        if self.is_main:                                # (a resumed run drops rows logged after last.pt)
            self._append_csv(self.history, rewrite=True)
            self._write_metrics_json()
            self._write_run_json()
        self.t0 = time.perf_counter()
        window = torch.zeros(len(tok.MODALITIES), 3, dtype=torch.float64)   # train stats since last log
        window_tokens, window_t0 = 0, time.perf_counter()
        train_tokens, train_seconds = 0, 0.0
        first_step = self.step                          # train_seconds times the steps from here
        last_eval_step = self.step if resume else None  # checkpoints are written at eval points
        self.train_model.train()

        while self.step < self.total_steps:
            epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
            if step_in_epoch == 0:                      # new epoch: draw its order
                self.epoch_start_gen_state = self.loader_gen.get_state()
            else:                                       # resumed mid-epoch: replay the same order
                self.loader_gen.set_state(self.epoch_start_gen_state)
            if hasattr(self.train_ds, "epoch_order"):
                order = self.train_ds.epoch_order(self.loader_gen, cfg.batch_size)
            else:
                order = torch.randperm(len(self.train_ds), generator=self.loader_gen)
            batches = iter(self._loader(self.train_ds, shard_batches(order, cfg.batch_size, self.steps_per_epoch
                                        * cfg.grad_accum, step_in_epoch * cfg.grad_accum, self.rank, self.world_size)))
            n_steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
            bar = tqdm(total=n_steps, initial=step_in_epoch, desc=f"epoch {epoch + 1}", leave=False,
                       dynamic_ncols=True, disable=not (cfg.progress and self.is_main)
                       or os.environ.get("TQDM_DISABLE", "") not in ("", "0"))
            for _ in range(step_in_epoch, n_steps):
                if self.step >= self.total_steps:      # the budget probe shortened the run
                    break
                t_step = time.perf_counter()
                sums, tokens = self._train_step(batches)
                train_seconds += time.perf_counter() - t_step
                window += sums
                window_tokens += tokens
                train_tokens += tokens
                bar.update(1)
                bar.set_postfix(loss=f"{float(sums[:, 1].sum() / sums[:, 0].sum()):.4f}",
                                tok_s=f"{train_tokens / max(train_seconds, 1e-9):.0f}", refresh=False)
                self._fix_budget(train_seconds, self.step - first_step, train_tokens)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._add_row("train", metrics_from_sums(window), window_tokens / (time.perf_counter() - window_t0))
                    window.zero_()
                    window_tokens, window_t0 = 0, time.perf_counter()
                # eval_every 0: at each epoch end
                if self.step % (cfg.eval_every or self.steps_per_epoch) == 0 or self.step == self.total_steps:
                    eval_t0 = time.perf_counter()
                    self._eval_and_checkpoint()
                    last_eval_step = self.step
                    window_t0 += time.perf_counter() - eval_t0      # keep eval time out of tokens/s
            bar.close()
            del batches

        if last_eval_step != self.step:                 # resumed at the very end, or nothing to do
            self._eval_and_checkpoint()
        final = {**self._final_metrics(), "tokens_per_s": train_tokens / train_seconds if train_seconds else math.nan,
                 "train_seconds": train_seconds}
        if self.is_main:
            self._write_metrics_json()
            self._write_run_json(final)
        if self.world_size > 1:     # leave together: a rank tearing gloo down while rank 0 still writes can abort
            dist.barrier()
        return final

    def _fix_budget(self, train_seconds: float, steps_timed: int, tokens_timed: int = 0):
        """With ``budget_s``: after PROBE_STEPS steps, fix the step count to what the budget allows
        (the same on every rank: the slowest rank's pace counts)."""
        if self.budget_fixed or steps_timed < PROBE_STEPS:
            return
        seconds_per_step = train_seconds / steps_timed
        lengths = getattr(self.train_ds, "lengths", None)
        if lengths is not None and tokens_timed:
            # whole items: the probe steps draw short or long batches by chance; time per token
            # x the epoch's mean tokens per step does not depend on which they drew
            seconds_per_step = train_seconds / tokens_timed * float(np.mean(lengths)) \
                * self.cfg.batch_size * self.cfg.grad_accum
        pace = torch.tensor([seconds_per_step], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(pace, op=dist.ReduceOp.MAX)
        self.total_steps = max(self.step, min(self.total_steps, int(self.cfg.budget_s / float(pace))))
        self.budget_fixed = True
        self._log(f"budget {self.cfg.budget_s:.0f} s at {float(pace):.3f} s/step: {self.total_steps} steps")

    def _train_step(self, batches) -> tuple[torch.Tensor, int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the global stats sums."""
        cfg = self.cfg
        sums = torch.zeros(len(tok.MODALITIES), 3, dtype=torch.float64, device=self.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            x, y, *positions = (t.to(self.device, non_blocking=True) for t in next(batches))
            # x (b, L, 3, 3), y (b,) | (b, L), positions (b, L, 7) when the dataset gives them
            sync = micro == cfg.grad_accum - 1 or self.world_size == 1
            with (contextlib.nullcontext() if sync else self.train_model.no_sync()), self._autocast():
                logits, loss = self.train_model(x, y, *positions)                         # (b, L, V), ()
            self.scaler.scale(loss / cfg.grad_accum).backward()
            sums += loss_sums(*self.model.select(logits.detach(), y))
            tokens += real_tokens(x, y) * self.world_size
        if self.world_size > 1:
            dist.all_reduce(sums)
        sums = sums.cpu()
        if not math.isfinite(float(sums[:, 1].sum())):
            self._stop_non_finite(f"loss {float(sums[:, 1].sum() / sums[:, 0].sum())}")
        self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        if not self.use_amp and not torch.isfinite(norm):   # (with AMP the scaler skips such steps)
            self._stop_non_finite(f"gradient norm {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = self.optimizer.param_groups[0]["lr"]           # the lr this step used
        self.scheduler.step()
        self.step += 1
        return sums, tokens

    def _stop_non_finite(self, what: str):
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        raise NonFiniteLossError(
            f"non-finite {what} at step {self.step + 1} (epoch {epoch + 1}, batch {batch + 1}); stopped before "
            f"the optimizer update and without checkpointing this state. Last good checkpoint: "
            f"{self.last_good_checkpoint or 'none written yet'}")

    @torch.no_grad()
    def evaluate(self, ds=None, max_batches: int | None = None) -> dict:
        """Metrics of the current model on ``ds`` (default: val), in a fixed order, first
        ``max_batches`` global batches only if given; summed over all ranks."""
        ds = self.val_ds if ds is None else ds
        chosen = data.evenly_spaced(len(ds), None if max_batches is None else max_batches * self.cfg.batch_size)
        per_rank = self.cfg.batch_size // self.world_size
        was_training = self.forward_model.training
        self.forward_model.eval()
        sums = torch.zeros(len(tok.MODALITIES), 3, dtype=torch.float64, device=self.device)
        tokens, t0 = 0, time.perf_counter()
        for batch in self._loader(Subset(ds, chosen[self.rank::self.world_size].tolist()), batch_size=per_rank,
                                 collate=getattr(ds, "collate", None)):
            x, y, *positions = (t.to(self.device) for t in batch)
            with self._autocast():
                logits, _ = self.forward_model(x, None, *positions)
            sums += loss_sums(*self.model.select(logits, y))
            tokens += real_tokens(x, y)
        tokens = torch.tensor([float(tokens)], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(tokens)
        self.forward_model.train(was_training)
        return {**metrics_from_sums(sums.cpu()), "tokens_per_s": float(tokens) / (time.perf_counter() - t0)}

    def _eval_and_checkpoint(self):
        improved = False
        if self.val_ds is not None:
            val = self.evaluate(self.val_ds, self.cfg.eval_batches)
            self._add_row("val", val, val.pop("tokens_per_s"))
            improved = val["loss"] < self.best_val_loss
            if improved:
                self.best_val_loss, self.best_step = val["loss"], self.step
            self._log(f"step {self.step}: val loss {val['loss']:.4f}, acc {val['accuracy']:.3f} "
                      f"(text {val['acc_text']:.3f}, pixel {val['acc_pixel']:.3f})" + (" *best*" if improved else ""))
        self.save(improved)

    def _log(self, message: str):
        if self.is_main:
            with logging_redirect_tqdm():
                log.info(message)

    def _add_row(self, split: str, metrics: dict, tokens_per_s: float):
        row = {**{k: metrics[k] for k in COLUMNS if k in metrics}, "split": split, "step": self.step,
               "epoch": (self.step - 1) // self.steps_per_epoch + 1,           # 1-based epoch of that step
               "lr": self.last_lr,                                             # lr of the step just taken
               "tokens_per_s": tokens_per_s, "wall_time": self.wall_offset + time.perf_counter() - self.t0}
        self.history.append({k: row[k] for k in COLUMNS})
        if self.is_main:
            self._append_csv(self.history[-1:])

    def _append_csv(self, rows: list[dict], rewrite: bool = False):
        with open(self.out_dir / "metrics.csv", "w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if rewrite:
                writer.writeheader()
            writer.writerows({k: ("" if _missing(v) else v) for k, v in r.items()} for r in rows)

    def _write_metrics_json(self):
        rows = [{k: (None if _missing(v) else v) for k, v in r.items()} for r in self.history]
        atomic_write(self.out_dir / "metrics.json", json.dumps(rows, indent=1))

    def _write_run_json(self, final: dict | None = None):
        info = {**self.run.to_dict(), "model_class": type(self.model).__name__,
                "n_parameters": sum(p.numel() for p in self.model.parameters()),
                "versions": {"pixelbyte": __version__, "torch": torch.__version__,
                             "python": platform.python_version(), "numpy": np.__version__},
                "git_commit": git_commit(), "device": str(self.device),
                "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                                else platform.processor() or platform.machine()),
                "world_size": self.world_size, "amp": self.use_amp,
                "datasets": {name: self._ds_info(ds) for name, ds in (("train", self.train_ds), ("val", self.val_ds))},
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "final": final}
        atomic_write(self.out_dir / "run.json", json.dumps(info, indent=2, default=str))

    def _ds_info(self, ds) -> dict | None:
        if ds is None:
            return None
        return ds.describe(self.cfg.batch_size) if hasattr(ds, "describe") else {"samples": len(ds)}

    def _final_metrics(self) -> dict:
        last = {split: next((r for r in reversed(self.history) if r["split"] == split), None)
                for split in ("train", "val")}
        final = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "best_val_loss": self.best_val_loss
                 if math.isfinite(self.best_val_loss) else None, "best_step": self.best_step}
        metrics = COLUMNS[COLUMNS.index("loss"):COLUMNS.index("lr")]
        return {**final, **{f"{split}_{k}": row[k] if row else None for split, row in last.items() for k in metrics}}

    def state_dict(self) -> dict:
        rng = [_rng_state()] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(rng, rng[0])         # every rank's dropout RNG, for exact DDP resume
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "loader_gen": self.loader_gen.get_state(),
                "epoch_start_gen": self.epoch_start_gen_state, "step": self.step,
                "epoch": self.step // self.steps_per_epoch, "batch_in_epoch": self.step % self.steps_per_epoch,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step, "history": self.history,
                "wall_time": self.wall_offset + time.perf_counter() - self.t0, "world_size": self.world_size,
                "run": self.run.to_dict(), "total_steps": self.total_steps if self.budget_fixed else None,
                "dataset_sizes": self._dataset_sizes}

    @functools.cached_property
    def _dataset_sizes(self) -> dict:
        """Samples per dataset and a crc32 of their tokens: a resumed run must see the same data."""
        pairs = (("train", self.train_ds), ("val", self.val_ds))
        return {**{name: None if ds is None else len(ds) for name, ds in pairs},
                **{f"{name} tokens crc32": tokens_crc32(ds) for name, ds in pairs}}

    def save(self, best: bool = False):
        """Write last.pt (and best.pt + best_model/ when ``best``), rank 0 only, atomically."""
        state = self.state_dict()
        if not self.is_main:
            return
        self._write_metrics_json()
        self.last_good_checkpoint = atomic_write(self.out_dir / "last.pt", functools.partial(torch.save, state))
        if best:
            atomic_write(self.out_dir / "best.pt", functools.partial(torch.save, state))
            if hasattr(self.model, "save_pretrained"):
                final, tmp, old = (self.out_dir / n for n in ("best_model", ".best_model.tmp", ".best_model.old"))
                for stale in (tmp, old):                           # left by a run killed mid-swap
                    shutil.rmtree(stale, ignore_errors=True)
                try:
                    self.model.save_pretrained(tmp)
                except BaseException:                              # a full disk: leave no half-written folder
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                if final.exists():
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str | Path):
        """Restore the full training state from a checkpoint of the same run (every difference is named)."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        # every field but the runtime ones and eval_batches (how much of val is scored) shapes the trajectory
        problems = RunConfig.from_dict(ckpt["run"]).diff(self.run, ("checkpoint", "now"), skip=["train.eval_batches"])
        problems += [f"{name}{'' if ' ' in name else ' samples'}: checkpoint {ckpt['dataset_sizes'][name]}, now {n}"
                     for name, n in self._dataset_sizes.items() if ckpt["dataset_sizes"].get(name, n) != n]
        if problems:
            raise CheckpointError(f"{path}: cannot resume exactly, this run differs from the checkpoint's "
                                  f"({'; '.join(problems)}); resume with the checkpoint's settings or "
                                  f"start a fresh run (overwrite, or another out_dir)")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt["scaler"]:
                self.scaler.load_state_dict(ckpt["scaler"])
            self.loader_gen.set_state(ckpt["loader_gen"])
            self.epoch_start_gen_state = ckpt["epoch_start_gen"]
            if ckpt["world_size"] == self.world_size:
                _set_rng_state(ckpt["rng"][self.rank])
            elif self.is_main:
                warnings.warn(f"{path}: saved with world size {ckpt['world_size']}, resuming with "
                              f"{self.world_size}; data order is the same, dropout RNG streams are not")
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint "
                                  f"({type(err).__name__}: {err})") from err
        self.step, self.best_val_loss, self.best_step = ckpt["step"], ckpt["best_val_loss"], ckpt["best_step"]
        self.history, self.wall_offset = list(ckpt["history"]), ckpt["wall_time"]
        if ckpt["total_steps"] is not None:             # a budget probe already fixed the step count
            self.total_steps, self.budget_fixed = ckpt["total_steps"], True
        self.last_good_checkpoint = path
        self._log(f"resumed from {path} at step {self.step} ({ckpt['batch_in_epoch']} of {self.steps_per_epoch} "
                  f"steps into epoch {ckpt['epoch'] + 1}), best val loss {self.best_val_loss:.4f}")

    def _loader(self, ds, batch_sampler=None, batch_size=None, collate=None) -> DataLoader:
        # own generator for the workers' base seed, so building a loader leaves the global RNG alone
        gen = torch.Generator().manual_seed(self.cfg.seed)
        kw = dict(batch_sampler=batch_sampler) if batch_sampler is not None else dict(batch_size=batch_size)
        return DataLoader(ds, num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                          generator=gen, collate_fn=collate or getattr(ds, "collate", None), **kw)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()


def train(run: RunConfig, resume: bool = False, overwrite: bool = False, seqs=None):
    """Load ``run.data`` (or use ``seqs``), cut ``run.samples``, build ``run.model`` from
    ``run.train.seed`` and fit. Returns (model, final metrics)."""
    if run.data is None or run.samples is None:
        raise ValueError("train(run) needs run.data and run.samples; with datasets of your own use Trainer")
    seqs = data.load(run.data) if seqs is None else seqs
    train_ds, val_ds = data.make_datasets(seqs, run)
    model = PixelByteModel.from_run(run)
    return model, Trainer(model, train_ds, val_ds, run).fit(resume=resume, overwrite=overwrite)


# Command line: every RunConfig field is a flag (tyro builds them, with the fields' comments)


@dataclass
class TrainCommand:
    """Train a PixelByte model. Multi-GPU: torchrun --nproc_per_node N -m pixelbyte.train ...
    Outputs go to --train.out-dir: metrics.csv/json, run.json, last.pt, best.pt, best_model/."""

    data: DataConfig = field(default_factory=DataConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    config: str | None = None   # a run.json to start from (saved by a run, or written by hand); flags override it
    resume: bool = False        # continue exactly from OUT_DIR/last.pt
    overwrite: bool = False     # replace a run already in OUT_DIR

    @property
    def run(self) -> RunConfig:
        return RunConfig(data=self.data, samples=self.samples, model=self.model, train=self.train)


def parse_command(argv=None) -> TrainCommand:
    """Flags -> TrainCommand; ``--config run.json`` sets the defaults the other flags override."""
    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    run = RunConfig.load(config) if config else RunConfig()
    if run.data is None or run.samples is None:
        raise ValueError(f"{config}: the run records no data or sample settings (it was trained on "
                         f"datasets built by hand); it cannot be rebuilt from the command line")
    default = TrainCommand(data=run.data, samples=run.samples, model=run.model, train=run.train, config=config)
    return tyro.cli(TrainCommand, args=argv, default=default, prog="python -m pixelbyte.train")


def main(argv=None) -> dict | None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        command = parse_command(argv)
        model, final = train(command.run, resume=command.resume, overwrite=command.overwrite)
    except (ValueError, TypeError, OSError, CheckpointError, RunFolderBusy, NonFiniteLossError,
            TrainingInterrupted) as err:          # OSError: a missing file, no network, a full disk
        sys.exit(f"pixelbyte.train: {err}")
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(final, indent=1))
    return final


if __name__ == "__main__":
    main()
