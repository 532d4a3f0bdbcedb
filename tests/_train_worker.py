"""Helpers for tests/test_train.py (and test_config.py), also run as a script (a training run in
its own process):

    python tests/_train_worker.py OUT_DIR '{"batch_size": 8, ...}' [--model-config '{...}']
        [--samples-config '{"unit": "item"}'] [--kill-after-step N] [--resume]
    torchrun --nproc_per_node 2 tests/_train_worker.py OUT_DIR '{...}'

Data: synthetic items (random palette sprites + random captions) through the real encoder, so the
tests need neither the network nor the embedded parquet. Models: a real ``PixelByteModel``.
Runs: a real ``RunConfig`` whose samples are cut by ``data.make_datasets`` (the data section
names the synthetic source; only its split settings are used).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pixelbyte import tokenizer as tok  # noqa: E402
from pixelbyte.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig  # noqa: E402
from pixelbyte.data import make_datasets  # noqa: E402
from pixelbyte.models import PixelByteModel  # noqa: E402
from pixelbyte.train import Trainer, cleanup_distributed  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz   "
SYNTHETIC = "synthetic-test-items"        # DataConfig.source of these runs (never loaded)
N_ITEMS, TEST_SIZE = 12, 0.25


def synthetic_sequences(n_items: int = N_ITEMS, seed: int = 0) -> list[np.ndarray]:
    """Small random items encoded with the project's encoder: (L_i, 3, 3) uint8 each."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_items):
        h, w = rng.integers(3, 7, size=2)
        image = tok.PALETTE[rng.integers(0, len(tok.PALETTE), size=(h, w))]          # (h, w, 3) RGB
        caption = "".join(rng.choice(list(LETTERS), size=rng.integers(15, 40)))
        seqs.append(tok.encode_item(image, caption))
    return seqs


MODEL_DEFAULTS = {"model": "lstm", "dim": 18, "hidden": 16, "depth": 2}


def synthetic_run(objective: str = "next", seq_length: int = 16, stride: int = 4, model: dict | None = None,
                  samples: dict | None = None, **train) -> RunConfig:
    """The RunConfig of a small run on the synthetic items (``train``: TrainConfig fields)."""
    samples = {"seq_length": seq_length, "stride": stride, **(samples or {})}
    return RunConfig(data=DataConfig(source=SYNTHETIC, test_size=TEST_SIZE, split_seed=0),
                     samples=SampleConfig(**samples),
                     model=ModelConfig(**{**MODEL_DEFAULTS, "objective": objective, **(model or {})}),
                     train=TrainConfig(**{"progress": False, "device": "cpu", **train}))


def synthetic_datasets(objective: str = "next", seq_length: int = 16, stride: int = 4, n_items: int = N_ITEMS,
                       run: RunConfig | None = None):
    """(train, val) samples of the synthetic items: split by item (test_size 0.25, seed 0)."""
    run = run or synthetic_run(objective, seq_length, stride)
    return make_datasets(synthetic_sequences(n_items), run)


def small_model(objective: str = "next", model: str = "lstm", seed: int = 0, **kw) -> PixelByteModel:
    torch.manual_seed(seed)
    kw = {**MODEL_DEFAULTS, "model": model, **kw}
    return PixelByteModel(ModelConfig(objective=objective, **kw))


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
    parser.add_argument("--model-config", default="{}", help="JSON of ModelConfig fields (objective too)")
    parser.add_argument("--samples-config", default="{}", help="JSON of SampleConfig fields")
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")       # as pixelbyte.train's main
    torch.set_num_threads(1)
    model_kw = json.loads(args.model_config)
    run = synthetic_run(model=model_kw, samples=json.loads(args.samples_config), out_dir=args.out_dir,
                        **json.loads(args.train_config))
    train_ds, val_ds = synthetic_datasets(run=run)
    model = PixelByteModel.from_run(run)
    if args.kill_after_step is not None:
        kill_at_forward(model, args.kill_after_step * run.train.grad_accum + 1)
    try:
        trainer = Trainer(model, train_ds, val_ds, run)
        final = trainer.fit(resume=args.resume)
        if trainer.is_main:
            with open(os.path.join(args.out_dir, "final.json"), "w") as f:
                json.dump({"final": final, "history": trainer.history}, f)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
