"""Training: a plain-PyTorch Trainer for PixelByte models (nanoGPT-like, one file).

    python -m pixelbyte.train --model lstm --epochs 2 --out-dir runs/lstm
    torchrun --nproc_per_node 2 -m pixelbyte.train --model lstm ...      # DDP, 2 GPUs (Kaggle T4 x2)
    python -m pixelbyte.train ... --resume                               # continue from runs/.../last.pt

From Python::

    trainer = Trainer(model, train_ds, val_ds, TrainConfig(objective="next", epochs=2))
    final = trainer.fit()            # or .fit(resume=True)

What one optimizer step is: ``grad_accum`` micro-batches of ``batch_size`` samples each, where
``batch_size`` is the *global* micro-batch (all ranks together; each rank takes its
``batch_size // world_size`` slice of the same shuffled global batch), so a run on 1 or N
processes sees the same samples per step. Each epoch is ``len(train_ds) // (batch_size *
grad_accum)`` steps (the remainder of the shuffled order is dropped), so (epoch, batch in epoch)
follows from the step count and a resumed run replays the same order from the middle of an epoch.

Objectives (``WindowDataset`` aligns inputs and targets, see ``data.py``):
- ``next``: logits (B, L, V) -> the last position's (B, V) against the token after the window (B,);
- ``causal``: every position's logits against its own centre token (B, L).

Distributed: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; nccl on CUDA, gloo on CPU; rank 0
alone logs and writes files, metrics are summed over ranks. Multi-node is the same code
(``torchrun --nnodes N --node-rank i --rdzv-endpoint HOST:PORT``); resuming then needs out_dir on a
file system every node can read.

Out dir: ``metrics.csv`` / ``metrics.json`` (one row per log or eval), ``run.json`` (configs,
versions, sizes, final metrics), ``last.pt`` / ``best.pt`` (full training state, atomic writes)
and ``best_model/`` (``save_pretrained`` of the best weights, for generation).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm.auto import tqdm

from . import __version__
from . import tokenizer as tok

OBJECTIVES = ("next", "causal")
DEVICES = ("auto", "cpu", "cuda")
COLUMNS = ("step", "epoch", "split", "loss", "accuracy", "bits_per_token", "acc_text",
           "acc_pixel", "lr", "tokens_per_s", "wall_time")
CHECKPOINT_FORMAT = "pixelbyte-train-checkpoint-v1"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "loader_gen", "epoch_start_gen", "step",
                   "epoch", "batch_in_epoch", "best_val_loss", "best_step", "history", "wall_time", "world_size",
                   "train_config", "model_config", "dataset_sizes")
# TrainConfig fields that change the trajectory: a resumed run must use the checkpoint's values
RESUME_MUST_MATCH = ("objective", "batch_size", "grad_accum", "seed", "lr", "min_lr",
                     "warmup_steps", "weight_decay", "betas", "grad_clip", "amp")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, truncated, or from another model/run."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the run stopped before updating the weights with it."""


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class TrainConfig:
    objective: str = "next"          # next: loss on the last position (the seed) | causal: every position
    epochs: int = 1                  # passes over the training windows ...
    max_steps: int | None = None     # ... or a number of optimizer steps (overrides epochs)
    batch_size: int = 32             # global micro-batch, all ranks together
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 1e-3                 # AdamW peak learning rate
    min_lr: float = 1e-4             # end of the cosine decay (= lr for a constant schedule)
    warmup_steps: int = 0            # linear warmup steps before the cosine decay
    weight_decay: float = 0.01       # not applied to norms, biases, `_no_weight_decay` params
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0           # max global grad norm; 0 = off
    eval_every: int = 0              # eval + checkpoint every N steps; 0 = at each epoch end
    eval_batches: int | None = None  # evaluate on the first N val batches only (None = all)
    log_every: int = 10              # a train row in metrics.csv every N steps
    seed: int = 0                    # data order, dropout (seed + rank), python/numpy RNGs
    device: str = "auto"             # auto | cpu | cuda
    amp: bool = False                # fp16 autocast + GradScaler (CUDA only; T4 has no bf16)
    compile: bool = False            # torch.compile the model
    num_workers: int = 0             # DataLoader worker processes
    out_dir: str = "runs/train"      # metrics, run.json, checkpoints
    progress: bool = True            # tqdm bar per epoch (also off with TQDM_DISABLE=1)

    def __post_init__(self):
        self.betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas

        def check(name, ok, allowed):
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {allowed}")

        def is_int(v, minimum, optional=False):
            return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= minimum)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("objective", self.objective in OBJECTIVES, f"allowed values are {list(OBJECTIVES)}")
        check("device", self.device in DEVICES, f"allowed values are {list(DEVICES)}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            check(name, is_int(getattr(self, name), 1), "must be an integer >= 1")
        for name in ("warmup_steps", "eval_every", "num_workers", "seed"):
            check(name, is_int(getattr(self, name), 0), "must be an integer >= 0")
        for name in ("max_steps", "eval_batches"):
            check(name, is_int(getattr(self, name), 1, optional=True), "must be None or an integer >= 1")
        check("lr", is_num(self.lr) and self.lr > 0, "must be a number > 0")
        check("min_lr", is_num(self.min_lr) and 0 <= self.min_lr <= self.lr, f"must be in [0, lr={self.lr}]")
        for name in ("weight_decay", "grad_clip"):
            check(name, is_num(getattr(self, name)) and getattr(self, name) >= 0, "must be a number >= 0")
        check("betas", isinstance(self.betas, tuple) and len(self.betas) == 2
              and all(is_num(b) and 0 <= b < 1 for b in self.betas), "must be two numbers in [0, 1)")
        for name in ("amp", "compile", "progress"):
            check(name, isinstance(getattr(self, name), bool), "must be True or False")
        check("out_dir", isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "",
              "must be a non-empty path")


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


# ---------------------------------------------------------------------------------------------
# Losses and metrics


def select_targets(logits: torch.Tensor, y: torch.Tensor, objective: str):
    """The (N, V) predictions and (N,) targets the loss is computed on."""
    if objective == "next":
        return logits[:, -1, :], y                                  # (B, V), (B,)
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)      # (B*L, V), (B*L,)


def loss_and_sums(logits: torch.Tensor, y: torch.Tensor, objective: str):
    """Mean cross-entropy (for backward) and summable stats
    [loss_sum, n, correct, n_pixel, correct_pixel] (float64, detached)."""
    pred, target = select_targets(logits, y, objective)
    loss = F.cross_entropy(pred.float(), target)
    with torch.no_grad():
        correct = pred.argmax(-1) == target
        pixel = target >= tok.FIRST_COLOUR_ID                       # tokenizer.is_colour, on tensors
        n = target.numel()
        sums = torch.stack([loss.detach().double() * n, torch.tensor(float(n), device=loss.device).double(),
                            correct.sum().double(), pixel.sum().double(), (correct & pixel).sum().double()])
    return loss, sums


def metrics_from_sums(sums) -> dict:
    loss_sum, n, correct, n_pixel, correct_pixel = [float(v) for v in sums]
    loss = loss_sum / n if n else float("nan")
    nan = float("nan")
    return {"loss": loss, "accuracy": correct / n if n else nan, "bits_per_token": loss / math.log(2),
            "acc_text": (correct - correct_pixel) / (n - n_pixel) if n > n_pixel else nan,
            "acc_pixel": correct_pixel / n_pixel if n_pixel else nan}


# ---------------------------------------------------------------------------------------------
# Data order and distributed setup


class ShardedBatchSampler(Sampler):
    """This rank's slices of the global micro-batches of one epoch's order, from batch ``start``.

    Global batch b is ``order[b*B : (b+1)*B]``; rank r takes the r-th of ``world_size`` equal
    slices, so every rank count sees the same global batches (a DistributedSampler that keeps
    batches whole). ``start`` skips batches already trained on (resume mid-epoch)."""

    def __init__(self, order: torch.Tensor, batch_size: int, n_batches: int, start: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.order, self.batch_size, self.n_batches, self.start = order.tolist(), batch_size, n_batches, start
        self.per_rank, self.rank = batch_size // world_size, rank

    def __iter__(self):
        for b in range(self.start, self.n_batches):
            lo = b * self.batch_size + self.rank * self.per_rank
            yield self.order[lo:lo + self.per_rank]

    def __len__(self):
        return self.n_batches - self.start


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).
    Starts the process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device='cuda' but torch.cuda.is_available() is False")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    torch_device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return rank, world_size, torch_device


def cleanup_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Files


def atomic_torch_save(obj, path: Path):
    """Write to a temp file in the same folder, fsync, then os.replace: a crash leaves either the
    old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # persist the rename itself (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(text: str, path: Path):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint; ``CheckpointError`` naming the file and the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read, the file is truncated or corrupt "
                              f"({path.stat().st_size} bytes; {type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pixelbyte training checkpoint (format "
                              f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    return ckpt


def config_dict(config) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))


def _diff(saved: dict, current: dict, keys=None) -> list[str]:
    keys = keys if keys is not None else sorted(set(saved) | set(current))
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (tuples come back as lists)
    return [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
            for k in keys if norm(saved.get(k)) != norm(current.get(k))]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Train ``model`` (``forward(x (B, L, 3, 3)) -> logits (B, L, V)``) on ``WindowDataset``s.

    The trainer uses only ``model(x)``, ``model.config.objective`` / ``.to_dict()`` (checked
    against the datasets and ``cfg``), ``model.is_causal`` and ``model.save_pretrained`` (optional).
    """

    def __init__(self, model: nn.Module, train_ds, val_ds, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world_size, self.device = setup_distributed(cfg.device)
        self.is_main = self.rank == 0
        self._check_inputs(model, train_ds, val_ds)
        self.model, self.train_ds, self.val_ds = model.to(self.device), train_ds, val_ds
        self.out_dir = Path(cfg.out_dir)

        self.use_amp = cfg.amp and self.device.type == "cuda"
        if cfg.amp and not self.use_amp:
            warnings.warn("TrainConfig.amp=True ignored: fp16 autocast + GradScaler need CUDA; "
                          "training in fp32 on CPU", stacklevel=2)
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
        self.last_good_checkpoint: Path | None = None
        self.t0 = time.perf_counter()                                   # wall_time origin (reset by fit)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.rank)                         # dropout differs per rank

    # -- checks -----------------------------------------------------------------------------

    def _check_inputs(self, model, train_ds, val_ds):
        cfg = self.cfg
        model_objective = getattr(getattr(model, "config", None), "objective", None)
        sources = {"TrainConfig.objective": cfg.objective, "model.config.objective": model_objective,
                   "train_ds.cfg.objective": getattr(getattr(train_ds, "cfg", None), "objective", None),
                   "val_ds.cfg.objective": getattr(getattr(val_ds, "cfg", None), "objective", None)}
        found = {k: v for k, v in sources.items() if v is not None}
        if len(set(found.values())) > 1:
            raise ValueError("objective mismatch: " + ", ".join(f"{k}={v!r}" for k, v in found.items())
                             + "; build the model, the datasets and TrainConfig with the same objective")
        if cfg.objective == "causal" and getattr(model, "is_causal", True) is False:
            raise ValueError("objective 'causal' needs a causal model, but model.is_causal is False "
                             "(a bidirectional model sees token t in the left cell of window t+1)")
        if cfg.batch_size % self.world_size:
            raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is the global batch and must be "
                             f"divisible by the world size {self.world_size}")
        for name, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
            if ds is not None and len(ds) == 0:
                raise ValueError(f"{name} is empty (0 samples): no item is long enough for a window, "
                                 f"or the source has no items")
        need = cfg.batch_size * cfg.grad_accum
        if len(train_ds) < need:
            raise ValueError(f"train_ds has {len(train_ds)} samples, fewer than one optimizer step takes "
                             f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} = {need}); "
                             f"lower batch_size or the stride")

    # -- main loop --------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict:
        """Train to ``total_steps``; evaluate + checkpoint every ``eval_every`` steps (or each
        epoch end) and at the end. ``resume=True`` continues exactly from ``out_dir/last.pt``.
        Returns the final metrics (last train window, last eval, best val loss)."""
        cfg = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load(self.out_dir / "last.pt")
        elif self.is_main and (self.out_dir / "last.pt").exists():
            warnings.warn(f"starting a fresh run in {self.out_dir}: its last.pt/best.pt will be replaced "
                          f"(use fit(resume=True) to continue it)", stacklevel=2)
        if self.is_main:                                # (a resumed run drops rows logged after last.pt)
            self._append_csv(self.history, rewrite=True)
            self._write_metrics_json()
            self._write_run_json()
        self.t0 = time.perf_counter()
        window = torch.zeros(5, dtype=torch.float64)                    # train stats since last log
        window_tokens, window_t0 = 0, time.perf_counter()
        last_eval_step = self.step if resume else None  # checkpoints are written at eval points
        micro_per_epoch = self.steps_per_epoch * cfg.grad_accum
        self.train_model.train()

        while self.step < self.total_steps:
            epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
            if step_in_epoch == 0:                      # new epoch: draw its order
                self.epoch_start_gen_state = self.loader_gen.get_state()
            else:                                       # resumed mid-epoch: replay the same order
                self.loader_gen.set_state(self.epoch_start_gen_state)
            order = torch.randperm(len(self.train_ds), generator=self.loader_gen)
            sampler = ShardedBatchSampler(order, cfg.batch_size, micro_per_epoch, step_in_epoch * cfg.grad_accum,
                                          self.rank, self.world_size)
            batches = iter(self._loader(self.train_ds, sampler))
            n_steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
            bar = tqdm(total=n_steps, initial=step_in_epoch, desc=f"epoch {epoch + 1}", leave=False,
                       disable=self._bar_disabled(), dynamic_ncols=True)
            epoch_tokens, epoch_t0 = 0, time.perf_counter()
            for _ in range(step_in_epoch, n_steps):
                sums, tokens = self._train_step(batches)
                window += sums
                window_tokens += tokens
                epoch_tokens += tokens
                bar.update(1)
                bar.set_postfix(loss=f"{float(sums[0] / sums[1]):.4f}",
                                tok_s=f"{epoch_tokens / (time.perf_counter() - epoch_t0):.0f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    tokens_per_s = window_tokens / (time.perf_counter() - window_t0)
                    self._add_row("train", metrics_from_sums(window), tokens_per_s)
                    window.zero_()
                    window_tokens, window_t0 = 0, time.perf_counter()
                epoch_done = self.step % self.steps_per_epoch == 0
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_done) \
                        or self.step == self.total_steps:
                    eval_t0 = time.perf_counter()
                    self._eval_and_checkpoint()
                    last_eval_step = self.step
                    paused = time.perf_counter() - eval_t0     # keep eval time out of tokens/s
                    window_t0, epoch_t0 = window_t0 + paused, epoch_t0 + paused
            bar.close()
            del batches

        if last_eval_step != self.step:                 # resumed at the very end, or nothing to do
            self._eval_and_checkpoint()
        final = self._final_metrics()
        if self.is_main:
            self._write_metrics_json()
            self._write_run_json(final)
        return final

    def _train_step(self, batches) -> tuple[torch.Tensor, int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the global stats sums."""
        cfg = self.cfg
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            x, y = next(batches)
            x = x.to(self.device, non_blocking=True)                                      # (b, L, 3, 3)
            y = y.to(self.device, non_blocking=True)                                      # (b,) | (b, L)
            sync = micro == cfg.grad_accum - 1 or self.world_size == 1
            with (contextlib.nullcontext() if sync else self.train_model.no_sync()), self._autocast():
                logits = self.train_model(x)                                              # (b, L, V)
                loss, micro_sums = loss_and_sums(logits, y, cfg.objective)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            sums += micro_sums
            tokens += x.shape[0] * x.shape[1] * self.world_size
        if self.world_size > 1:
            dist.all_reduce(sums)
        sums = sums.cpu()
        if not math.isfinite(float(sums[0])):
            self._stop_non_finite(f"loss {float(sums[0] / sums[1])}")
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

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, ds=None, max_batches: int | None = None) -> dict:
        """Metrics of the current model on ``ds`` (default: val), in a fixed order, first
        ``max_batches`` global batches only if given; summed over all ranks."""
        ds = self.val_ds if ds is None else ds
        n = len(ds) if max_batches is None else min(len(ds), max_batches * self.cfg.batch_size)
        per_rank = self.cfg.batch_size // self.world_size
        was_training = self.forward_model.training
        self.forward_model.eval()
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        tokens, t0 = 0, time.perf_counter()
        for x, y in self._loader(Subset(ds, range(self.rank, n, self.world_size)), batch_size=per_rank):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                _, batch_sums = loss_and_sums(self.forward_model(x), y, self.cfg.objective)
            sums += batch_sums
            tokens += x.shape[0] * x.shape[1]
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
            if self.is_main:
                tqdm.write(f"step {self.step}: val loss {val['loss']:.4f}, acc {val['accuracy']:.3f} "
                           f"(text {val['acc_text']:.3f}, pixel {val['acc_pixel']:.3f})"
                           + (" *best*" if improved else ""))
        self.save(improved)

    # -- logging ----------------------------------------------------------------------------

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
        atomic_write_text(json.dumps(rows, indent=1), self.out_dir / "metrics.json")

    def _write_run_json(self, final: dict | None = None):
        info = {"train_config": asdict(self.cfg), "model_config": config_dict(getattr(self.model, "config", None)),
                "model_class": type(self.model).__name__,
                "n_parameters": sum(p.numel() for p in self.model.parameters()),
                "versions": {"pixelbyte": __version__, "torch": torch.__version__,
                             "python": platform.python_version(), "numpy": np.__version__},
                "git_commit": _git_commit(), "device": str(self.device),
                "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                                else platform.processor() or platform.machine()),
                "world_size": self.world_size, "amp": self.use_amp,
                "datasets": {name: self._ds_info(ds) for name, ds in (("train", self.train_ds), ("val", self.val_ds))},
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "final": final}
        atomic_write_text(json.dumps(info, indent=2, default=str), self.out_dir / "run.json")

    @staticmethod
    def _ds_info(ds) -> dict | None:
        if ds is None:
            return None
        info = {"samples": len(ds)}
        for key in ("n_items", "n_tokens"):
            if hasattr(ds, key):
                info[key] = int(getattr(ds, key))
        if hasattr(ds, "cfg"):
            info["window"] = config_dict(ds.cfg)
        return info

    def _final_metrics(self) -> dict:
        last = {split: next((r for r in reversed(self.history) if r["split"] == split), None)
                for split in ("train", "val")}
        final = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "best_val_loss": self.best_val_loss
                 if math.isfinite(self.best_val_loss) else None, "best_step": self.best_step}
        for split, row in last.items():
            for k in ("loss", "accuracy", "bits_per_token", "acc_text", "acc_pixel"):
                final[f"{split}_{k}"] = row[k] if row else None
        return final

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(rng, _rng_state())   # every rank's dropout RNG, for exact DDP resume
        else:
            rng = [_rng_state()]
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "loader_gen": self.loader_gen.get_state(),
                "epoch_start_gen": self.epoch_start_gen_state, "step": self.step,
                "epoch": self.step // self.steps_per_epoch, "batch_in_epoch": self.step % self.steps_per_epoch,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step, "history": self.history,
                "wall_time": self.wall_offset + time.perf_counter() - self.t0, "world_size": self.world_size,
                "train_config": asdict(self.cfg), "model_config": config_dict(getattr(self.model, "config", None)),
                "dataset_sizes": self._dataset_sizes()}

    def _dataset_sizes(self) -> dict:
        return {"train": len(self.train_ds), "val": len(self.val_ds) if self.val_ds is not None else None}

    def save(self, best: bool = False):
        """Write last.pt (and best.pt + best_model/ when ``best``), rank 0 only, atomically."""
        state = self.state_dict()
        if not self.is_main:
            return
        self._write_metrics_json()
        atomic_torch_save(state, self.out_dir / "last.pt")
        self.last_good_checkpoint = self.out_dir / "last.pt"
        if best:
            atomic_torch_save(state, self.out_dir / "best.pt")
            if hasattr(self.model, "save_pretrained"):
                final, tmp, old = (self.out_dir / n for n in ("best_model", ".best_model.tmp", ".best_model.old"))
                shutil.rmtree(tmp, ignore_errors=True)
                self.model.save_pretrained(tmp)
                if final.exists():
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str | Path):
        """Restore the full training state from a checkpoint of the same model and data order."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        problems = _diff(ckpt["model_config"], config_dict(getattr(self.model, "config", None)))
        if problems:
            raise CheckpointError(f"{path}: saved for another model config ({'; '.join(problems)})")
        problems = _diff(ckpt["train_config"], asdict(self.cfg), RESUME_MUST_MATCH)
        problems += _diff(ckpt["dataset_sizes"], self._dataset_sizes(), ["train"])
        if problems:
            raise CheckpointError(f"{path}: cannot resume exactly, the run differs from the checkpoint's "
                                  f"({'; '.join(problems)})")
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
        self.last_good_checkpoint = path
        if self.is_main:
            tqdm.write(f"resumed from {path} at step {self.step} ({ckpt['batch_in_epoch']} of "
                       f"{self.steps_per_epoch} steps into epoch {ckpt['epoch'] + 1}), "
                       f"best val loss {self.best_val_loss:.4f}")

    # -- helpers ----------------------------------------------------------------------------

    def _loader(self, ds, batch_sampler=None, batch_size=None) -> DataLoader:
        # own generator for the workers' base seed, so building a loader leaves the global RNG alone
        gen = torch.Generator().manual_seed(self.cfg.seed)
        kw = dict(batch_sampler=batch_sampler) if batch_sampler is not None else dict(batch_size=batch_size)
        return DataLoader(ds, num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                          generator=gen, **kw)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()

    def _bar_disabled(self) -> bool:
        return not (self.cfg.progress and self.is_main) or os.environ.get("TQDM_DISABLE", "") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# Command line: every TrainConfig and ModelConfig field is a flag (--grad-accum 2, --no-progress)


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` after each field of a config dataclass, for --help."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", source, flags=re.M))


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_config_args(group, cls, skip=(), choices=None):
    """One flag per dataclass field, typed from its default value."""
    comments, choices = _field_comments(cls), choices or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flag, kw = "--" + f.name.replace("_", "-"), {"default": default, "dest": f.name,
                                                    "help": comments.get(f.name, " ")}
        if isinstance(default, bool):   # --amp, --amp=false, --no-amp
            kw.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
            group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", default=default,
                               help=argparse.SUPPRESS)
        elif isinstance(default, (tuple, list)):
            kw.update(nargs=len(default), type=type(default[0]) if default else str)
        elif default is None:   # optional: type from the annotation, 'none' to unset
            base = int if "int" in str(f.type) else float if "float" in str(f.type) else str
            kw["type"] = lambda v, base=base: None if v.lower() == "none" else base(v)
        elif isinstance(default, int) and "str" in str(f.type):   # e.g. n_heads: int | str ("auto")
            kw["type"] = lambda v: int(v) if v.lstrip("-").isdigit() else v
        else:
            kw["type"] = type(default)
        if f.name in choices:
            kw["choices"] = choices[f.name]
        group.add_argument(flag, **kw)


def cli_args(model_cfg, train_cfg: TrainConfig, **data_args) -> list[str]:
    """The ``python -m pixelbyte.train`` flags that rebuild these configs (for torchrun):
    ``cli_args(model_cfg, train_cfg, source="embedded", seq_length=256, stride=32, ...)``."""
    def flag(name, value):
        value = "none" if value is None else str(value).lower() if isinstance(value, bool) else value
        if isinstance(value, (tuple, list)):
            return ["--" + name.replace("_", "-"), *map(str, value)]
        return [f"--{name.replace('_', '-')}={value}"]

    values = {**data_args, **model_cfg.to_dict(), **dataclasses.asdict(train_cfg)}
    return [x for name, value in values.items() for x in flag(name, value)]


def build_parser(model_config_cls=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pixelbyte.train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a PixelByte model. Multi-GPU: torchrun --nproc_per_node N -m pixelbyte.train ...",
        epilog="Optional values take 'none'. Outputs go to --out-dir: metrics.csv/json, run.json, "
               "last.pt, best.pt, best_model/.")
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="embedded",
                      help="'embedded', a hub id (ffurfaro/PixelBytes-Pokemon) or a parquet file/folder")
    data.add_argument("--seq-length", type=int, default=256, help="tokens per window")
    data.add_argument("--stride", type=int, default=32, help="tokens between window starts")
    data.add_argument("--limit", type=lambda v: None if v.lower() == "none" else int(v), default=None,
                      help="keep the first N items (quick runs)")
    data.add_argument("--test-size", type=float, default=0.1, help="share of items held out for validation")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    _add_config_args(parser.add_argument_group("training (TrainConfig)"), TrainConfig,
                     choices={"objective": list(OBJECTIVES), "device": list(DEVICES)})
    if model_config_cls is not None:
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        _add_config_args(parser.add_argument_group("model (ModelConfig; --objective is shared)"),
                         model_config_cls, skip=train_fields)
    return parser


def main(argv=None) -> dict | None:
    from . import data
    from .models import ModelConfig, PixelByteModel

    parser = build_parser(ModelConfig)
    args = parser.parse_args(argv)
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    try:
        cfg = TrainConfig(**{name: getattr(args, name) for name in train_fields})
        model_kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig)
                    if f.init and f.name not in train_fields}
        if "objective" in {f.name for f in dataclasses.fields(ModelConfig)}:
            model_kw["objective"] = cfg.objective
        model_cfg = ModelConfig(**model_kw)
        window = data.WindowConfig(args.seq_length, args.stride, cfg.objective)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    try:
        items = data.load_pixelbytes(args.source, limit=args.limit)
        train_ds, val_ds = data.make_datasets(data.sequences(items), window, args.test_size, cfg.seed)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"pixelbyte.train: cannot build the datasets from {args.source!r} "
                         f"(seq_length {args.seq_length}, stride {args.stride}, limit {args.limit}): {err}")
    torch.manual_seed(cfg.seed)     # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = PixelByteModel(model_cfg)
    try:
        trainer = Trainer(model, train_ds, val_ds, cfg)
        final = trainer.fit(resume=args.resume)
        if trainer.is_main:
            print(json.dumps(final, indent=1))
        return final
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
