"""Helpers for tests/test_train.py, also run as a script (a training run in its own process):

    python tests/_train_worker.py OUT_DIR '{"batch_size": 8, ...}' [--model lstm] [--kill-after-step N] [--resume]
    torchrun --nproc_per_node 2 tests/_train_worker.py OUT_DIR '{...}'

Data: synthetic items (random palette sprites + random captions) through the real encoder, so the
tests need neither the network nor the embedded parquet. Models: a real ``PixelByteModel``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pixelbyte import tokenizer as tok  # noqa: E402
from pixelbyte.data import WindowConfig, make_datasets  # noqa: E402
from pixelbyte.models import ModelConfig, PixelByteModel  # noqa: E402
from pixelbyte.train import Trainer, TrainConfig, cleanup_distributed  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz   "


def synthetic_sequences(n_items: int = 12, seed: int = 0) -> list[np.ndarray]:
    """Small random items encoded with the project's encoder: (L_i, 3, 3) uint8 each."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_items):
        h, w = rng.integers(3, 7, size=2)
        image = tok.PALETTE[rng.integers(0, len(tok.PALETTE), size=(h, w))]          # (h, w, 3) RGB
        caption = "".join(rng.choice(list(LETTERS), size=rng.integers(15, 40)))
        seqs.append(tok.encode_item(image, caption))
    return seqs


def synthetic_datasets(objective: str = "next", seq_length: int = 16, stride: int = 4, n_items: int = 12):
    return make_datasets(synthetic_sequences(n_items), WindowConfig(seq_length, stride, objective),
                         test_size=0.25, seed=0)


def small_model(objective: str = "next", model: str = "lstm", seed: int = 0, **kw) -> PixelByteModel:
    torch.manual_seed(seed)
    kw = {"dim": 18, "hidden": 16, "depth": 2, **kw}
    return PixelByteModel(ModelConfig(model=model, objective=objective, **kw))


def kill_at_forward(model: torch.nn.Module, n: int):
    """SIGKILL this process when training-mode forward number ``n`` starts (so n - 1 micro-steps ran)."""
    calls = [0]

    def hook(module, args):
        if module.training:
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
    model.register_forward_pre_hook(hook)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("train_config", help="JSON of TrainConfig fields")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--model-config", default="{}", help="JSON of extra ModelConfig fields")
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig(out_dir=args.out_dir, progress=False, **json.loads(args.train_config))
    train_ds, val_ds = synthetic_datasets(cfg.objective)
    model = small_model(cfg.objective, args.model, **json.loads(args.model_config))
    if args.kill_after_step is not None:
        kill_at_forward(model, args.kill_after_step * cfg.grad_accum + 1)
    try:
        trainer = Trainer(model, train_ds, val_ds, cfg)
        final = trainer.fit(resume=args.resume)
        if trainer.is_main:
            with open(os.path.join(args.out_dir, "final.json"), "w") as f:
                json.dump({"final": final, "history": trainer.history}, f)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
