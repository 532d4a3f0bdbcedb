"""Trainer: objectives, schedule, accumulation, exact resume after SIGKILL, DDP, guards, outputs.

Small real models (``PixelByteModel``, lstm; bysmamba once) on synthetic items from
tests/_train_worker.py; subprocess runs use that file as their script.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelbyte import tokenizer as tok
from pixelbyte.models import ModelConfig, PixelByteModel
from pixelbyte.train import (COLUMNS, CheckpointError, NonFiniteLossError, Trainer, TrainConfig,
                             build_parser, load_checkpoint, lr_at, main, param_groups)

from _train_worker import small_model, synthetic_datasets

WORKER = str(Path(__file__).with_name("_train_worker.py"))
ROOT = Path(__file__).resolve().parents[1]
V = tok.VOCAB_SIZE


def quick_cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 8, "epochs": 1, "log_every": 1, "progress": False,
                          "out_dir": str(tmp_path), "device": "cpu", **kw})


def run_worker(out_dir, train_config: dict, *extra, torchrun: bool = False, check: bool = True):
    cmd = [sys.executable, WORKER, str(out_dir), json.dumps(train_config), *extra]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + cmd[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def model_weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------
# Config, schedule, optimizer groups


@pytest.mark.parametrize("field, value, words", [
    ("objective", "last", ["objective", "'last'", "next", "causal"]),
    ("device", "tpu", ["device", "'tpu'", "auto", "cuda"]),
    ("batch_size", 0, ["batch_size", "0", ">= 1"]),
    ("max_steps", 0, ["max_steps", "None"]),
    ("min_lr", 1.0, ["min_lr", "lr=0.001"]),
    ("betas", (0.9, 1.5), ["betas", "[0, 1)"]),
    ("amp", "yes", ["amp", "True or False"]),
])
def test_config_errors_name_field_value_and_allowed(field, value, words):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value})
    for word in words:
        assert word in str(err.value)


def test_warmup_cosine_schedule_values(tmp_path):
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, cfg, 110) == pytest.approx(1e-4)           # (0 + 1) / 10 of lr
    assert lr_at(4, cfg, 110) == pytest.approx(5e-4)
    assert lr_at(9, cfg, 110) == pytest.approx(1e-3)           # warmup done
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)          # cosine starts at the peak
    assert lr_at(60, cfg, 110) == pytest.approx(5.5e-4)        # half way: (lr + min_lr) / 2
    assert lr_at(110, cfg, 110) == pytest.approx(1e-4)
    assert lr_at(500, cfg, 110) == pytest.approx(1e-4)         # stays at min_lr
    # the optimizer really used these values, step by step
    train_ds, val_ds = synthetic_datasets()
    cfg = quick_cfg(tmp_path, warmup_steps=3, min_lr=2e-4, max_steps=9)
    trainer = Trainer(small_model(), train_ds, val_ds, cfg)
    trainer.fit()
    used = [r["lr"] for r in trainer.history if r["split"] == "train"]
    assert used == pytest.approx([lr_at(k, cfg, 9) for k in range(9)], rel=1e-12)


def test_no_weight_decay_on_norms_biases_and_flagged_params():
    model = small_model(model="bysmamba")
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(n.endswith("A_log") for n in no_decay_names)     # 2-D but flagged _no_weight_decay
    assert all(n.endswith("bias") or "norm" in n or n.endswith(("A_log", "D", "alpha"))
               for n in no_decay_names), no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------
# Objectives: the loss is computed on the right positions


@dataclass
class EchoConfig:
    objective: str
    def to_dict(self):
        return asdict(self)


class EchoModel(nn.Module):
    """Logits that put 5.0 on one cell of each input window, so the loss is known exactly:
    per target, log(e^5 + V - 1) - 5 * [cell == target]."""

    def __init__(self, objective: str, row: int, col: int):
        super().__init__()
        self.config, self.row, self.col = EchoConfig(objective), row, col
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):                                           # x : (B, L, 3, 3)
        return 5.0 * F.one_hot(x[:, :, self.row, self.col], V).float() + 0.0 * self.unused  # (B, L, V)


def expected_echo_metrics(ds, objective):
    """From the raw token array, independent of the trainer: the echoed cell vs the target."""
    L, t = ds.cfg.seq_length, ds.tokens
    if objective == "next":   # last window's centre (token s+L-1) vs token s+L
        echoed = np.array([t[s + L - 1, 1, 1] for s in ds.starts])
        target = np.array([t[s + L, 1, 1] for s in ds.starts])
    else:                     # each window's left cell vs its own centre
        echoed = np.concatenate([t[s:s + L, 1, 0] for s in ds.starts])
        target = np.concatenate([t[s:s + L, 1, 1] for s in ds.starts])
    hit, pixel = echoed == target, tok.is_colour(target)
    return {"loss": math.log(math.exp(5) + V - 1) - 5 * hit.mean(), "accuracy": hit.mean(),
            "acc_pixel": hit[pixel].mean(), "acc_text": hit[~pixel].mean()}


@pytest.mark.parametrize("objective, cell", [("next", (1, 1)), ("causal", (1, 0))])
def test_objective_alignment_gives_the_exact_loss(tmp_path, objective, cell):
    train_ds, val_ds = synthetic_datasets(objective)
    n = len(train_ds)
    batch = next(b for b in range(16, 0, -1) if n % b == 0)       # one epoch covers every sample
    cfg = quick_cfg(tmp_path, objective=objective, batch_size=batch, log_every=n // batch)
    trainer = Trainer(EchoModel(objective, *cell), train_ds, val_ds, cfg)
    for ds in (train_ds, val_ds):
        expected, got = expected_echo_metrics(ds, objective), trainer.evaluate(ds)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-5), key
        assert got["bits_per_token"] == pytest.approx(expected["loss"] / math.log(2), abs=1e-5)
    trainer.fit()
    train_row = [r for r in trainer.history if r["split"] == "train"]
    assert len(train_row) == 1                                     # one row for the whole epoch
    assert train_row[0]["loss"] == pytest.approx(expected_echo_metrics(train_ds, objective)["loss"], abs=1e-6)


def test_objective_mismatch_is_a_clear_error(tmp_path):
    train_ds, val_ds = synthetic_datasets("next")
    with pytest.raises(ValueError, match=r"objective mismatch.*model.config.objective='causal'"):
        Trainer(small_model("causal"), train_ds, val_ds, quick_cfg(tmp_path))
    with pytest.raises(ValueError, match=r"TrainConfig.objective='causal'.*train_ds.cfg.objective='next'"):
        Trainer(small_model("next"), train_ds, val_ds, quick_cfg(tmp_path, objective="causal"))


def test_empty_or_too_small_datasets_are_clear_errors(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    with pytest.raises(ValueError, match=r"train_ds has \d+ samples, fewer than one optimizer step"):
        Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, batch_size=64, grad_accum=4))
    empty = torch.utils.data.Subset(val_ds, [])
    with pytest.raises(ValueError, match="val_ds is empty"):
        Trainer(small_model(), train_ds, empty, quick_cfg(tmp_path))
    with pytest.raises(SystemExit, match=r"seq_length=100000 .* longer than every item"):
        main(["--limit", "3", "--seq-length", "100000", "--out-dir", str(tmp_path), "--device", "cpu"])


# ---------------------------------------------------------------------------------------------
# Same trajectory: accumulation, DDP


def test_grad_accumulation_equals_a_bigger_batch(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    runs = {}
    for name, batch, accum in (("accum", 8, 2), ("big", 16, 1)):
        cfg = quick_cfg(tmp_path / name, batch_size=batch, grad_accum=accum, eval_every=3)
        trainer = Trainer(small_model(model="bysmamba", dim=8, hidden=4), train_ds, val_ds, cfg)
        trainer.fit()
        runs[name] = trainer
    a, b = (pd.DataFrame(runs[n].history) for n in ("accum", "big"))
    assert len(a) == len(b) == 6 + 2
    assert (a["step"] == b["step"]).all() and (a["split"] == b["split"]).all()
    np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5)
    for p, q in zip(runs["accum"].model.parameters(), runs["big"].model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def test_ddp_two_processes_match_one_process(tmp_path):
    train_config = {"batch_size": 8, "epochs": 1, "eval_every": 4, "log_every": 1}
    run_worker(tmp_path / "ddp", train_config, torchrun=True)
    ddp = json.loads((tmp_path / "ddp" / "final.json").read_text())
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    train_ds, val_ds = synthetic_datasets()
    single = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path / "one", **train_config))
    single.fit()
    a, b = pd.DataFrame(ddp["history"]), pd.DataFrame(single.history)
    assert len(a) == len(b) > 10 and (a["split"] == b["split"]).all()
    np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], atol=1e-6)
    weights = model_weights(tmp_path / "ddp" / "last.pt")
    for name, p in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], p, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Checkpoints: exact resume, guards, corrupt files


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    # dropout on, so RNG state restore matters; a checkpoint every 5 steps, killed at step 8 of 12
    train_config = {"batch_size": 8, "epochs": 2, "eval_every": 5, "log_every": 1}
    model_config = ["--model-config", json.dumps({"dropout": 0.2, "depth": 3})]
    run_worker(tmp_path / "full", train_config, *model_config)
    killed = run_worker(tmp_path / "cut", train_config, *model_config, "--kill-after-step", "8", check=False)
    assert killed.returncode == -9                                       # SIGKILL
    cut_rows = pd.read_csv(tmp_path / "cut" / "metrics.csv")
    assert cut_rows["step"].max() == 8 and load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 5
    resumed = run_worker(tmp_path / "cut", train_config, *model_config, "--resume")
    assert "resumed from" in resumed.stdout + resumed.stderr
    full, cut = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("full", "cut"))
    columns = ["step", "epoch", "split", "loss", "accuracy", "acc_text", "acc_pixel", "lr"]
    pd.testing.assert_frame_equal(full[columns], cut[columns], check_exact=True)   # rows 6-8 not doubled
    a, b = model_weights(tmp_path / "full" / "last.pt"), model_weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True)["optimizer"] for d in ("full", "cut"))
    assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"]) for i in a["state"])


def test_nan_loss_stops_at_that_step_and_keeps_last_good_checkpoint(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    model = small_model()
    calls = [0]

    def inject_nan(module, args, output):                     # the 7th training forward = step 7
        if module.training:
            calls[0] += 1
            if calls[0] == 7:
                return output * float("nan")
    model.register_forward_hook(inject_nan)
    trainer = Trainer(model, train_ds, val_ds, quick_cfg(tmp_path, eval_every=3))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert "step 7" in message and str(tmp_path / "last.pt") in message
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 6 and all(torch.isfinite(w).all() for w in ckpt["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())    # no update from the bad step
    assert max(r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())) == 6


@pytest.fixture()
def finished_run(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, max_steps=4, eval_every=2)).fit()
    return tmp_path, train_ds, val_ds


def test_corrupt_or_mismatched_checkpoint_is_reported_and_kept(finished_run):
    out_dir, train_ds, val_ds = finished_run
    last = out_dir / "last.pt"
    good = last.read_bytes()

    def resume(model=None, **kw):
        return Trainer(model or small_model(), train_ds, val_ds, quick_cfg(out_dir, max_steps=8, **kw)).fit(resume=True)

    last.write_bytes(good[: len(good) // 2])                          # truncated
    with pytest.raises(CheckpointError, match=rf"{last}: cannot be read, the file is truncated or corrupt"):
        resume()
    assert len(last.read_bytes()) == len(good) // 2                    # left as it was
    last.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resume()
    torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match="not a pixelbyte training checkpoint"):
        resume()
    torch.save({k: v for k, v in torch.load(out_dir / "best.pt", weights_only=True).items() if k != "optimizer"}, last)
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint, missing \['optimizer'\]"):
        resume()
    last.write_bytes(good)
    with pytest.raises(CheckpointError, match=r"another model config \(dim: checkpoint 18, now 20"):
        resume(small_model(dim=20))
    with pytest.raises(CheckpointError, match=r"batch_size: checkpoint 8, now 4"):
        resume(batch_size=4)
    assert last.read_bytes() == good
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        Trainer(small_model(), train_ds, val_ds, quick_cfg(out_dir / "new")).fit(resume=True)
    resume()                                                           # the good one still resumes


def test_failed_checkpoint_write_keeps_the_previous_file(finished_run, monkeypatch):
    out_dir, train_ds, val_ds = finished_run
    good = (out_dir / "last.pt").read_bytes()
    trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(out_dir, max_steps=4))

    def half_write_then_fail(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert (out_dir / "last.pt").read_bytes() == good
    assert not [p for p in out_dir.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# Outputs, AMP


def test_outputs_and_best_checkpoint_by_val_loss(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, epochs=2, lr=3e-2, eval_every=3))
    final = trainer.fit()
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert tuple(rows.columns) == COLUMNS
    assert set(rows["split"]) == {"train", "val"}
    pd.testing.assert_frame_equal(pd.DataFrame(json.loads((tmp_path / "metrics.json").read_text())), rows)
    run = json.loads((tmp_path / "run.json").read_text())
    assert {"train_config", "model_config", "versions", "git_commit", "device", "world_size", "datasets",
            "final"} <= set(run)
    assert run["datasets"]["train"]["samples"] == len(train_ds) and run["final"]["step"] == final["step"]
    val = rows[rows["split"] == "val"]
    best = val.loc[val["loss"].idxmin()]
    best_ckpt = load_checkpoint(tmp_path / "best.pt")
    assert best_ckpt["step"] == best["step"] == final["best_step"]
    assert best_ckpt["best_val_loss"] == pytest.approx(best["loss"]) == pytest.approx(final["best_val_loss"])
    reloaded = PixelByteModel.from_pretrained(tmp_path / "best_model")
    for name, w in reloaded.state_dict().items():
        assert torch.equal(w, best_ckpt["model"][name])
    assert 0.0 <= final["val_acc_text"] <= 1.0 and 0.0 <= final["val_acc_pixel"] <= 1.0


def test_best_checkpoint_is_the_lowest_val_loss_not_the_last(tmp_path, monkeypatch):
    train_ds, val_ds = synthetic_datasets()
    trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, max_steps=8, eval_every=2))
    scripted = iter([3.0, 1.0, 2.0, 4.0])                       # val losses at steps 2, 4, 6, 8
    real_evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a: {**real_evaluate(*a), "loss": next(scripted)})
    final = trainer.fit()
    assert final["best_step"] == 4 and final["best_val_loss"] == 1.0
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8


def test_amp_is_skipped_with_a_warning_on_cpu(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    with pytest.warns(UserWarning, match="amp=True ignored"):
        trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, amp=True, max_steps=2))
    assert not trainer.use_amp and not trainer.scaler.is_enabled()
    assert math.isfinite(trainer.fit()["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_fp16_on_cuda(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, amp=True, device="cuda", max_steps=4))
    assert trainer.use_amp and trainer.scaler.is_enabled()
    final = trainer.fit()
    assert math.isfinite(final["train_loss"]) and load_checkpoint(tmp_path / "last.pt")["scaler"]


def test_cli_flags_map_onto_the_configs_and_train(tmp_path):
    parser = build_parser(ModelConfig)
    text = parser.format_help()
    for flag in ("--grad-accum", "--eval-every", "--progress", "--model", "--hidden", "--bidirectional",
                 "--seq-length", "--stride", "--limit", "--source", "--resume"):
        assert flag in text
    args = parser.parse_args(["--amp=true", "--no-progress", "--n-heads", "auto", "--max-steps", "none",
                              "--betas", "0.8", "0.95", "--conv", "false"])
    assert (args.amp, args.progress, args.n_heads, args.max_steps, args.betas, args.conv) == \
        (True, False, "auto", None, [0.8, 0.95], False)
    final = main(["--model", "attention", "--dim", "16", "--hidden", "16", "--limit", "4", "--seq-length", "32",
                  "--stride", "64", "--batch-size", "4", "--max-steps", "3", "--device", "cpu", "--no-progress",
                  "--out-dir", str(tmp_path)])
    run = json.loads((tmp_path / "run.json").read_text())
    assert final["step"] == 3 and run["model_config"]["model"] == "attention"
    assert run["train_config"]["batch_size"] == 4 and run["datasets"]["train"]["window"]["seq_length"] == 32


def test_cli_args_rebuild_the_same_configs():
    """The notebook launches torchrun with cli_args(...): parsing them must give back the configs."""
    from pixelbyte.models import ModelConfig
    from pixelbyte.train import TrainConfig, build_parser, cli_args

    model_cfg = ModelConfig(model="attention", objective="causal", dim=36, hidden=32, depth=1, dropout=0.1)
    train_cfg = TrainConfig(objective="causal", max_steps=7, amp=True, betas=(0.8, 0.95), eval_batches=None)
    args = build_parser(ModelConfig).parse_args(cli_args(model_cfg, train_cfg, source="embedded", limit=None,
                                                         seq_length=32, stride=16))
    assert (args.source, args.limit, args.seq_length, args.stride) == ("embedded", None, 32, 16)
    for f in dataclasses.fields(TrainConfig):
        assert tuple(getattr(args, f.name)) == train_cfg.betas if f.name == "betas" else \
            getattr(args, f.name) == getattr(train_cfg, f.name), f.name
    for name, value in model_cfg.to_dict().items():
        assert getattr(args, name) == value, name
