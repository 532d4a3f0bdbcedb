"""Trainer: schedule, the exact loss of each objective, training metrics == evaluation, accumulation,
exact resume after SIGKILL, DDP, the output folder's lock and guards, the wall-clock budget, the
CLI, outputs, and the issue's main check: a saved model gives back its run's held-out items.

Small real models (``PixelByteModel``, lstm; bysmamba once) on synthetic items from
tests/_train_worker.py; subprocess runs use that file as their script.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import types
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelbyte import data, evaluate as E, tokenizer as tok
from pixelbyte import train as train_module
from pixelbyte.config import SECTIONS, DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from pixelbyte.models import PixelByteModel
from pixelbyte.train import (COLUMNS, PROBE_STEPS, CheckpointError, NonFiniteLossError, RunFolderBusy, Trainer,
                             load_checkpoint, lr_at, main, param_groups, parse_command)

from _train_worker import small_model, synthetic_datasets, synthetic_run

WORKER = str(Path(__file__).with_name("_train_worker.py"))
ROOT = Path(__file__).resolve().parents[1]
V = tok.VOCAB_SIZE


def quick_cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 8, "epochs": 1, "log_every": 1, "progress": False,
                          "out_dir": str(tmp_path), "device": "cpu", **kw})


def quick_run(tmp_path, objective="next", model=None, samples=None, seq_length=16, stride=4, **kw) -> RunConfig:
    """A synthetic run written to ``tmp_path`` (train fields as quick_cfg's)."""
    return synthetic_run(objective, seq_length, stride, model=model, samples=samples,
                         **{"batch_size": 8, "log_every": 1, "out_dir": str(tmp_path), **kw})


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
# Schedule, optimizer groups


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


class EchoModel(nn.Module):
    """Logits that put 5.0 on one cell of each input window, so the loss is known exactly:
    per target, log(e^5 + V - 1) - 5 * [cell == target]. It owns its loss like PixelByteModel."""

    select = PixelByteModel.select                                  # the objective's positions

    def __init__(self, objective: str, row: int, col: int):
        super().__init__()
        self.config = ModelConfig(dim=18, hidden=16, objective=objective)
        self.row, self.col = row, col
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x, targets=None, positions=None):             # x : (B, L, 3, 3)
        logits = 5.0 * F.one_hot(x[:, :, self.row, self.col], V).float() + 0.0 * self.unused  # (B, L, V)
        return logits, None if targets is None else F.cross_entropy(*self.select(logits, targets))


def modality_masks(target: np.ndarray) -> dict:
    """By the id ranges of the vocabulary, independently of tokenizer.modality."""
    return {"pixel": target >= 58, "structure": target <= 2, "text": (target >= 3) & (target < 58)}


def expected_echo_metrics(ds, objective):
    """From the raw token array, independent of the trainer: the echoed cell vs the target."""
    L, t = ds.seq_length, ds.tokens
    if objective == "next":   # last window's centre (token s+L-1) vs token s+L
        echoed = np.array([t[s + L - 1, 1, 1] for s in ds.starts])
        target = np.array([t[s + L, 1, 1] for s in ds.starts])
    else:                     # each window's left cell vs its own centre
        echoed = np.concatenate([t[s:s + L, 1, 0] for s in ds.starts])
        target = np.concatenate([t[s:s + L, 1, 1] for s in ds.starts])
    hit = echoed == target
    out = {"loss": math.log(math.exp(5) + V - 1) - 5 * hit.mean(), "accuracy": hit.mean()}
    for name, mask in modality_masks(target).items():
        out[f"acc_{name}"] = hit[mask].mean() if mask.any() else math.nan
    return out


@pytest.mark.parametrize("objective, cell", [("next", (1, 1)), ("causal", (1, 0))])
def test_objective_alignment_gives_the_exact_loss(tmp_path, objective, cell):
    train_ds, val_ds = synthetic_datasets(objective)
    n = len(train_ds)
    batch = next(b for b in range(16, 0, -1) if n % b == 0)       # one epoch covers every sample
    cfg = quick_cfg(tmp_path, batch_size=batch, log_every=n // batch)
    trainer = Trainer(EchoModel(objective, *cell), train_ds, val_ds, cfg)
    for ds in (train_ds, val_ds):
        expected, got = expected_echo_metrics(ds, objective), trainer.evaluate(ds)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
        assert got["bits_per_token"] == pytest.approx(expected["loss"] / math.log(2), abs=1e-5)
    trainer.fit()
    train_row = [r for r in trainer.history if r["split"] == "train"]
    assert len(train_row) == 1                                     # one row for the whole epoch
    assert train_row[0]["loss"] == pytest.approx(expected_echo_metrics(train_ds, objective)["loss"], abs=1e-6)


def test_objective_or_model_mismatch_is_a_clear_error(tmp_path):
    train_ds, val_ds = synthetic_datasets("next")
    with pytest.raises(ValueError, match=r"objective mismatch.*model.config.objective='causal'.*"
                                         r"train_ds.objective='next'"):
        Trainer(small_model("causal"), train_ds, val_ds, quick_cfg(tmp_path))
    run = quick_run(tmp_path, "causal")
    with pytest.raises(ValueError, match=r"the run describes another model than the one given: "
                                         r"model.objective: run 'causal', model 'next'"):
        Trainer(small_model("next"), train_ds, val_ds, run)
    # runtime fields may differ (a run recorded with backend 'auto', a model built with 'torch')
    Trainer(small_model("causal", backend="torch"), *synthetic_datasets("causal"), run)


def test_empty_or_too_small_datasets_are_clear_errors(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    with pytest.raises(ValueError, match=r"train_ds has \d+ samples, fewer than one optimizer step"):
        Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, batch_size=64, grad_accum=4))
    empty = torch.utils.data.Subset(val_ds, [])
    with pytest.raises(ValueError, match="val_ds is empty"):
        Trainer(small_model(), train_ds, empty, quick_cfg(tmp_path))
    with pytest.raises(SystemExit, match=r"seq_length=100000 .* longer than every item"):
        main(["--data.limit", "3", "--samples.seq-length", "100000", "--train.out-dir", str(tmp_path),
              "--train.device", "cpu"])


# ---------------------------------------------------------------------------------------------
# The issue: training metrics and evaluation give the same numbers on the same model and data


@pytest.mark.parametrize("objective, unit", [("next", "window"), ("causal", "window"), ("causal", "item")])
def test_training_metrics_equal_evaluation(tmp_path, objective, unit):
    run = quick_run(tmp_path, objective, samples={"unit": unit}, max_steps=6, lr=1e-2, batch_size=4)
    train_ds, val_ds = synthetic_datasets(run=run)
    model = PixelByteModel.from_run(run)
    trainer = Trainer(model, train_ds, val_ds, run)
    final = trainer.fit()
    logged = [r for r in trainer.history if r["split"] == "val"][-1]      # what training reported
    for ds, reported in ((val_ds, logged), (train_ds, trainer.evaluate(train_ds))):
        table = E.token_metrics(model, ds, batch_size=4).set_index("modality")
        assert table.loc["all", "accuracy"] == pytest.approx(reported["accuracy"], abs=1e-12)
        assert table.loc["all", "bits_per_token"] == pytest.approx(reported["bits_per_token"], rel=1e-6)
        for name in tok.MODALITIES:
            assert table.loc[name, "accuracy"] == pytest.approx(reported[f"acc_{name}"], abs=1e-12, nan_ok=True)
            if f"bpt_{name}" in reported:                  # metrics.csv has no bpt_structure column
                assert table.loc[name, "bits_per_token"] == pytest.approx(reported[f"bpt_{name}"], rel=1e-6,
                                                                           nan_ok=True)
        # the token counts are the real (non-padding) targets of the dataset
        targets = torch.cat([ds[i][1].reshape(-1) for i in range(len(ds))]).numpy()
        assert table.loc["all", "tokens"] == (targets != tok.PAD_ID).sum()
        for name, mask in modality_masks(targets).items():
            assert table.loc[name, "tokens"] == (mask & (targets != tok.PAD_ID)).sum()
    assert final["val_acc_pixel"] == logged["acc_pixel"] and final["val_acc_text"] == logged["acc_text"]
    assert final["val_acc_structure"] == logged["acc_structure"]


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

RESUME_CASES = {
    "windows": ({"batch_size": 8, "epochs": 2}, {"dropout": 0.2, "depth": 3}, {}),
    # whole items of different lengths (padded, length-bucketed batches), with positions
    "items": ({"batch_size": 3, "epochs": 2}, {"dropout": 0.2, "objective": "causal", "positions": True},
              {"unit": "item", "orders": "both", "bucket": 2}),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_after_sigkill_is_bit_identical(tmp_path, case):
    # dropout on, so RNG state restore matters; a checkpoint every 5 steps, killed at step 8 of >= 12
    train_config, model_config, samples_config = RESUME_CASES[case]
    train_config = {**train_config, "eval_every": 5, "log_every": 1}
    extra = ["--model-config", json.dumps(model_config), "--samples-config", json.dumps(samples_config)]
    run_worker(tmp_path / "full", train_config, *extra)
    assert json.loads((tmp_path / "full" / "run.json").read_text())["total_steps"] >= 12
    killed = run_worker(tmp_path / "cut", train_config, *extra, "--kill-after-step", "8", check=False)
    assert killed.returncode == -9                                       # SIGKILL
    cut_rows = pd.read_csv(tmp_path / "cut" / "metrics.csv")
    assert cut_rows["step"].max() == 8 and load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 5
    resumed = run_worker(tmp_path / "cut", train_config, *extra, "--resume")
    assert "resumed from" in resumed.stdout + resumed.stderr
    full, cut = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("full", "cut"))
    columns = ["step", "epoch", "split", "loss", "accuracy", "acc_text", "acc_pixel", "acc_structure", "lr"]
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
                logits, loss = output
                return logits * float("nan"), loss * float("nan")
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
        cfg = quick_cfg(out_dir, **{"max_steps": 4, "eval_every": 2, **kw})
        return Trainer(model or small_model(), train_ds, val_ds, cfg).fit(resume=True)

    last.write_bytes(good[: len(good) // 2])                          # truncated
    with pytest.raises(CheckpointError, match=rf"{last}: cannot be read, the file is truncated or corrupt"):
        resume()
    assert len(last.read_bytes()) == len(good) // 2                    # left as it was
    last.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resume()
    torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match="not a pixelbyte training checkpoint of this version"):
        resume()
    torch.save({k: v for k, v in torch.load(out_dir / "best.pt", weights_only=True).items() if k != "optimizer"}, last)
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint, missing \['optimizer'\]"):
        resume()
    last.write_bytes(good)
    with pytest.raises(CheckpointError, match=r"cannot resume exactly.*model.dim: checkpoint 18, now 20"):
        resume(small_model(dim=20))
    with pytest.raises(CheckpointError, match=r"train.batch_size: checkpoint 8, now 4"):
        resume(batch_size=4)
    with pytest.raises(CheckpointError, match=r"train.max_steps: checkpoint 4, now 8"):
        resume(max_steps=8)                                             # the schedule's length
    with pytest.raises(CheckpointError, match=r"train.epochs: checkpoint 1, now 3; train.max_steps: checkpoint 4, "
                                              r"now None"):
        resume(max_steps=None, epochs=3)
    assert last.read_bytes() == good
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        Trainer(small_model(), train_ds, val_ds, quick_cfg(out_dir / "new")).fit(resume=True)
    resume(log_every=3, num_workers=0, progress=True)                  # runtime fields may change


def test_truncated_last_checkpoint_says_how_to_continue_from_best(finished_run):
    out_dir, train_ds, val_ds = finished_run
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    last.write_bytes(last.read_bytes()[:5000])
    cfg = quick_cfg(out_dir, max_steps=4, eval_every=2)
    with pytest.raises(CheckpointError) as err:
        Trainer(small_model(), train_ds, val_ds, cfg).fit(resume=True)
    assert f"{best} is intact: copy it to {last} to resume from its step" in str(err.value)
    shutil.copy(best, last)                                              # doing what it says works
    trainer = Trainer(small_model(), train_ds, val_ds, cfg)
    trainer.fit(resume=True)
    assert trainer.step == 4
    best.write_bytes(b"broken too")                                       # no hint without a good best.pt
    last.write_bytes(b"broken")
    with pytest.raises(CheckpointError) as err:
        Trainer(small_model(), train_ds, val_ds, cfg).fit(resume=True)
    assert "is intact" not in str(err.value)


@pytest.mark.parametrize("stride, same_sample_count", [(1000, True), (4, False)])
def test_resume_with_other_samples_is_refused(tmp_path, stride, same_sample_count):
    run = quick_run(tmp_path, seq_length=16, stride=stride, max_steps=2)
    train_ds, val_ds = synthetic_datasets(run=run)
    Trainer(PixelByteModel.from_run(run), train_ds, val_ds, run).fit()
    other = replace(run, samples=replace(run.samples, seq_length=17))
    other_train, other_val = synthetic_datasets(run=other)
    assert (len(other_train) == len(train_ds)) is same_sample_count
    with pytest.raises(CheckpointError) as err:
        Trainer(PixelByteModel.from_run(other), other_train, other_val, other).fit(resume=True)
    message = str(err.value)
    assert "samples.seq_length: checkpoint 16, now 17" in message
    assert (f"train samples: checkpoint {len(train_ds)}, now {len(other_train)}" in message) is not same_sample_count
    other = replace(run, data=replace(run.data, split_seed=1))            # another held-out split
    with pytest.raises(CheckpointError, match="data.split_seed: checkpoint 0, now 1"):
        Trainer(PixelByteModel.from_run(other), *synthetic_datasets(run=other), other).fit(resume=True)


def test_resume_on_other_data_of_the_same_size_is_refused(tmp_path):
    run = quick_run(tmp_path, max_steps=2)
    train_ds, val_ds = synthetic_datasets(run=run)
    Trainer(PixelByteModel.from_run(run), train_ds, val_ds, run).fit()
    other_train, other_val = synthetic_datasets(run=run)
    other_train.tokens = other_train.tokens.copy()                       # one token changed, same sizes
    other_train.tokens[5, 1, 1] = (int(other_train.tokens[5, 1, 1]) + 1) % V
    with pytest.raises(CheckpointError, match=r"train tokens crc32: checkpoint \d+, now \d+"):
        Trainer(PixelByteModel.from_run(run), other_train, other_val, run).fit(resume=True)
    Trainer(PixelByteModel.from_run(run), *synthetic_datasets(run=run), run).fit(resume=True)   # same data: fine


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
# The output folder: one training at a time, no silent mixing of runs


def test_a_second_training_into_a_folder_in_use_is_refused(tmp_path):
    train_ds, val_ds = synthetic_datasets()
    first = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, max_steps=2))
    second = Trainer(small_model(), train_ds, val_ds, quick_cfg(tmp_path, max_steps=2))
    refused = []
    real_fit = first._fit

    def fit_while_another_tries(resume):                         # runs while `first` holds the lock
        for kw in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunFolderBusy) as err:
                second.fit(**kw)
            refused.append(str(err.value))
        return real_fit(resume)
    first._fit = fit_while_another_tries
    first.fit()
    assert len(refused) == 3
    for message in refused:
        assert f"{tmp_path} is in use by another training" in message and str(tmp_path / ".lock") in message
        assert "another out_dir" in message
    assert second.step == 0
    second.fit(resume=True)                                        # released when the first ended
    assert second.step == 2


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(finished_run):
    out_dir, train_ds, val_ds = finished_run
    before = {n: (out_dir / n).read_bytes() for n in ("last.pt", "best.pt", "metrics.csv")}
    with pytest.raises(RunFolderBusy) as err:
        Trainer(small_model(seed=1), train_ds, val_ds, quick_cfg(out_dir, max_steps=3)).fit()
    message = str(err.value)
    assert f"{out_dir} already holds a run (last.pt, best.pt, metrics.csv)" in message
    assert "fit(resume=True)" in message and "fit(overwrite=True)" in message
    assert before == {n: (out_dir / n).read_bytes() for n in before}          # untouched
    trainer = Trainer(small_model(seed=1), train_ds, val_ds, quick_cfg(out_dir, max_steps=3))
    final = trainer.fit(overwrite=True)                                         # a fresh run replaces it
    rows = pd.read_csv(out_dir / "metrics.csv")
    assert final["step"] == 3 and list(rows[rows["split"] == "train"]["step"]) == [1, 2, 3]
    assert load_checkpoint(out_dir / "last.pt")["step"] == 3
    assert load_checkpoint(out_dir / "best.pt")["step"] == 3
    (out_dir / "a_file").write_text("")
    with pytest.raises(RunFolderBusy, match="cannot create the output folder"):
        Trainer(small_model(), train_ds, val_ds, quick_cfg(out_dir / "a_file" / "run")).fit()


def test_stale_partial_writes_of_a_killed_run_are_cleaned_up(finished_run):
    out_dir, train_ds, val_ds = finished_run
    (out_dir / ".last.pt.tmp123").write_bytes(b"partial")                 # killed inside atomic_write
    (out_dir / ".metrics.json.tmp77").write_text("[")
    for name in (".best_model.tmp", ".best_model.old"):                   # killed inside save_pretrained's swap
        (out_dir / name).mkdir()
        (out_dir / name / "model.safetensors").write_bytes(b"partial")
    trainer = Trainer(small_model(), train_ds, val_ds, quick_cfg(out_dir, max_steps=2))
    trainer.fit(overwrite=True)                                            # writes best_model/ again
    left = sorted(p.name for p in out_dir.iterdir() if ".tmp" in p.name or p.name.endswith(".old"))
    assert left == []
    assert PixelByteModel.from_pretrained(out_dir / "best_model").run == trainer.run


# ---------------------------------------------------------------------------------------------
# Wall-clock budget


class FakeClock:
    """time.perf_counter for pixelbyte.train: ticks 1 us per read; a training step costs `pace` s."""

    def __init__(self):
        self.now = 0.0
        self.pace = 1.0

    def perf_counter(self):
        self.now += 1e-6
        return self.now


class Crash(Exception):
    pass


def budget_trainer(run, clock, crash_at=None):
    trainer = Trainer(PixelByteModel.from_run(run), *synthetic_datasets(run=run), run)
    real_step = trainer._train_step

    def timed_step(batches):
        if trainer.step + 1 == crash_at:
            raise Crash(f"killed before step {crash_at}")
        out = real_step(batches)
        clock.now += clock.pace
        return out
    trainer._train_step = timed_step
    return trainer


def test_budget_fixes_the_step_count_after_the_probe_and_resume_keeps_it(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    run = quick_run(tmp_path / "full", max_steps=40, budget_s=10.5, eval_every=7)
    full = budget_trainer(run, clock)
    full.fit()
    assert full.step == full.total_steps == 10                  # 10.5 s at 1 s per step, not 40
    assert load_checkpoint(tmp_path / "full" / "last.pt")["total_steps"] == 10
    assert json.loads((tmp_path / "full" / "run.json").read_text())["total_steps"] == 10
    lrs = [r["lr"] for r in full.history if r["split"] == "train"]
    assert lrs[-1] == pytest.approx(lr_at(9, run.train, 10))   # the schedule ends where training ends
    # killed after the checkpoint at step 7 (the step count was fixed at step 6), resumed on a
    # machine 100x faster: the run keeps its 10 steps and its trajectory
    cut_run = replace(run, train=replace(run.train, out_dir=str(tmp_path / "cut")))
    with pytest.raises(Crash):
        budget_trainer(cut_run, clock, crash_at=8).fit()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 7
    clock.pace = 0.01
    resumed = budget_trainer(cut_run, clock)
    resumed.fit(resume=True)
    assert resumed.step == 10
    for name, w in full.model.state_dict().items():
        assert torch.equal(w, resumed.model.state_dict()[name]), name


def test_budget_probe_interrupted_by_a_resume_times_the_resumed_steps_only(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    run = quick_run(tmp_path, max_steps=40, budget_s=10.5, eval_every=3)
    with pytest.raises(Crash):
        budget_trainer(run, clock, crash_at=4).fit()
    assert load_checkpoint(tmp_path / "last.pt")["total_steps"] is None    # saved before the probe ended
    resumed = budget_trainer(run, clock)
    resumed.fit(resume=True)
    assert PROBE_STEPS < 10 and resumed.step == resumed.total_steps == 10  # still 1 s per step



def test_budget_on_whole_items_times_tokens_not_the_probes_batches(tmp_path, monkeypatch):
    """A step costs its tokens; the probe's few length-sorted batches are not the epoch's mean."""
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    items = {"unit": "item", "orders": "both"}
    run = quick_run(tmp_path, objective="causal", samples=items, model={"positions": True}, max_steps=400,
                    eval_every=100, batch_size=2)
    rng = np.random.default_rng(0)           # items of 2x2 and of 10x10 pixels: batches differ 6x in cost
    seqs = [tok.encode_item(tok.PALETTE[rng.integers(0, len(tok.PALETTE), size=(n, n))], "ab" * n)
            for n in [2, 10] * 20]
    train_ds, val_ds = data.ItemDataset(seqs[:32], orders="both"), data.ItemDataset(seqs[32:], orders="both")
    per_step = 1e-3 * float(np.mean(train_ds.lengths)) * run.train.batch_size   # the epoch's mean step
    run = replace(run, train=replace(run.train, budget_s=30.5 * per_step))
    trainer = Trainer(PixelByteModel.from_run(run), train_ds, val_ds, run)
    real_step, probe_tokens = trainer._train_step, []

    def timed_step(batches):
        sums, tokens = real_step(batches)
        clock.now += 1e-3 * tokens                                     # 1 ms per token
        probe_tokens.append(tokens)
        return sums, tokens
    trainer._train_step = timed_step
    trainer.fit()
    probe = np.mean(probe_tokens[:PROBE_STEPS]) * 1e-3                 # what the probe's steps cost
    assert abs(probe / per_step - 1) > 0.05                            # ...is not the mean step here
    assert trainer.total_steps == 30 == trainer.step

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
    assert {"format", "data", "samples", "model", "train", "versions", "git_commit", "device", "world_size",
            "datasets", "total_steps", "final"} <= set(run)
    assert run["datasets"]["train"]["samples"] == len(train_ds) and run["final"]["step"] == final["step"]
    assert run["datasets"]["val"]["items"] == val_ds.n_items == 3
    val = rows[rows["split"] == "val"]
    best = val.loc[val["loss"].idxmin()]
    best_ckpt = load_checkpoint(tmp_path / "best.pt")
    assert best_ckpt["step"] == best["step"] == final["best_step"]
    assert best_ckpt["best_val_loss"] == pytest.approx(best["loss"]) == pytest.approx(final["best_val_loss"])
    assert RunConfig.from_dict(best_ckpt["run"]) == trainer.run
    reloaded = PixelByteModel.from_pretrained(tmp_path / "best_model")
    for name, w in reloaded.state_dict().items():
        assert torch.equal(w, best_ckpt["model"][name])
    assert reloaded.run == trainer.run
    for key in ("acc_text", "acc_pixel", "acc_structure"):
        assert 0.0 <= final[f"val_{key}"] <= 1.0
    assert final["val_bpt_pixel"] > 0 and final["val_bpt_text"] > 0


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


# ---------------------------------------------------------------------------------------------
# Command line (tyro): every RunConfig field is a flag; --config sets the defaults


def test_cli_help_is_generated_from_the_configs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        parse_command(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--resume", "--overwrite", "--train.grad-accum", "--train.budget-s",
                 "--model.hidden", "--model.positions", "--samples.seq-length", "--samples.unit", "--data.limit",
                 "--data.test-size"):
        assert flag in text, flag
    assert "micro-batches per optimizer step" in text           # the fields' comments are the help


def as_flags(run: RunConfig) -> list[str]:
    """Every field of a run as command-line flags."""
    argv = []
    for section in SECTIONS:
        for f in fields(SECTIONS[section]):
            flag, value = f"--{section}.{f.name.replace('_', '-')}", getattr(getattr(run, section), f.name)
            if isinstance(value, bool):
                argv.append(flag if value else f"--{section}.no-{f.name.replace('_', '-')}")
            elif isinstance(value, tuple):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
    return argv


def test_every_run_field_is_a_flag_and_parses_back(tmp_path):
    """What a notebook or a script writes as flags (or as a run.json) is the run that trains."""
    run = RunConfig(
        data=DataConfig(source="embedded", limit=7, test_size=0.3, split_seed=2),
        samples=SampleConfig(unit="item", seq_length=48, stride=5, orders="caption_first", bucket=3),
        model=ModelConfig(model="attention", conv=False, dim=36, hidden=32, depth=1, d_conv=3, expand=1,
                          n_heads="auto", dropout=0.1, backend="torch", scan_impl="reference",
                          objective="causal", positions=True),
        train=TrainConfig(epochs=2, max_steps=None, budget_s=30.0, batch_size=6, grad_accum=2, lr=3e-3,
                          min_lr=1e-5, warmup_steps=2, weight_decay=0.0, betas=(0.8, 0.95), grad_clip=0.5,
                          eval_every=4, eval_batches=None, log_every=3, seed=5, device="cpu", amp=True,
                          compile=True, num_workers=1, out_dir=str(tmp_path / "out"), progress=False))
    command = parse_command(as_flags(run))
    assert command.run == run and not command.resume and not command.overwrite
    assert parse_command(as_flags(replace(run, model=replace(run.model, n_heads=3)))).run.model.n_heads == 3
    # a run.json sets the defaults, flags override them
    path = run.save(tmp_path / "run.json")
    assert parse_command(["--config", str(path)]).run == run
    command = parse_command(["--config", str(path), "--train.lr", "0.01", "--model.no-positions",
                             "--model.objective", "causal", "--resume"])
    assert command.run == replace(run, model=replace(run.model, positions=False), train=replace(run.train, lr=0.01))
    assert command.resume
    hand_made = RunConfig(data=None, samples=None, model=ModelConfig(), train=TrainConfig())
    with pytest.raises(ValueError, match="records no data or sample settings"):
        parse_command(["--config", str(hand_made.save(tmp_path / "hand.json"))])


def test_cli_refuses_bad_values_and_files_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:                          # tyro reports a field's error
        main(["--train.batch-size", "0", "--train.out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "TrainConfig.batch_size=0 is invalid: expected an integer >= 1" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit, match=r"no such run config file"):
        main(["--config", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match=r"samples.unit='item' needs model.objective='causal'"):
        main(["--samples.unit", "item", "--train.out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):                                      # tyro: unknown flag
        parse_command(["--train.learning-rate", "0.1"])


def test_cli_trains_from_a_config_file_with_overrides(tmp_path, capsys):
    run = RunConfig(data=DataConfig(limit=4, test_size=0.25), samples=SampleConfig(seq_length=32, stride=64),
                    model=ModelConfig(model="attention", dim=16, hidden=16, depth=1, n_heads=2),
                    train=TrainConfig(batch_size=4, max_steps=50, device="cpu", progress=False,
                                      out_dir=str(tmp_path / "unused")))
    path = run.save(tmp_path / "run.json")
    out_dir = tmp_path / "out"
    final = main(["--config", str(path), "--train.max-steps", "2", "--model.hidden", "8",
                  "--train.out-dir", str(out_dir)])
    assert final["step"] == 2 and json.loads(capsys.readouterr().out)["step"] == 2
    expected = replace(run, model=replace(run.model, hidden=8),
                       train=replace(run.train, max_steps=2, out_dir=str(out_dir)))
    assert RunConfig.load(out_dir / "run.json") == expected                 # the merged config
    info = json.loads((out_dir / "run.json").read_text())
    assert info["datasets"]["train"]["seq_length"] == 32 and info["datasets"]["val"]["items"] == 1
    assert PixelByteModel.from_pretrained(out_dir / "best_model").run == expected
    with pytest.raises(SystemExit, match="already holds a run"):            # a second time: refused ...
        main(["--config", str(out_dir / "run.json")])
    assert main(["--config", str(out_dir / "run.json"), "--resume"])["step"] == 2   # ... unless resumed


TINY_CLI = ["--data.limit", "4", "--data.test-size", "0.25", "--samples.seq-length", "16", "--samples.stride", "64",
            "--model.dim", "9", "--model.hidden", "8", "--model.depth", "1", "--train.batch-size", "2",
            "--train.max-steps", "1", "--train.device", "cpu", "--train.no-progress"]


def run_cli(out_dir, *extra, prefix=()):
    """``python -m pixelbyte.train`` on 4 embedded items into ``out_dir``, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "pixelbyte.train", *TINY_CLI, "--train.out-dir",
                           str(out_dir), *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)


def one_line_error(proc) -> str:
    """The CLI's error: exit status 1 and a single line on stderr, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_cli_refuses_a_folder_locked_by_another_process_and_a_killed_holder_leaves_no_lock(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    hold = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"            # another process holds the folder
        assert one_line_error(run_cli(out_dir)) == (
            f"pixelbyte.train: {out_dir} is in use by another training (its lock {out_dir / '.lock'} is held); "
            f"wait for it to finish or choose another out_dir")
        assert sorted(p.name for p in out_dir.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()                                                    # SIGKILL: no chance to clean up
        holder.wait()
    done = run_cli(out_dir)                                              # the OS released the dead holder's lock
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(out_dir / "last.pt")["step"] == 1


def test_cli_out_dir_that_is_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert one_line_error(run_cli(a_file)) == f"pixelbyte.train: cannot create the output folder {a_file}: File exists"
    assert one_line_error(run_cli(a_file / "run")) == \
        f"pixelbyte.train: cannot create the output folder {a_file / 'run'}: Not a directory"


def test_cli_nan_loss_full_disk_missing_gpu_and_ctrl_c_are_one_line_and_ctrl_c_checkpoints(tmp_path, monkeypatch):
    import errno

    k = TINY_CLI.index("--train.max-steps")
    cli = TINY_CLI[:k] + TINY_CLI[k + 2:] + ["--train.max-steps", "3"]
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_step", lambda self, batches: self._stop_non_finite("loss nan"))
        with pytest.raises(SystemExit, match="pixelbyte.train: non-finite loss nan at step 1"):
            main([*cli, "--train.out-dir", str(tmp_path / "nan")])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="device='cuda' but .* no usable CUDA GPU here"):
            main([*cli, "--train.device", "cuda", "--train.out-dir", str(tmp_path / "gpu")])

    def disk_full(path, text, *args, **kwargs):                          # a part written, then ENOSPC
        with open(path, "w") as f:
            f.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", disk_full)
        with pytest.raises(SystemExit, match="pixelbyte.train: .*No space left on device"):
            main([*cli, "--train.out-dir", str(tmp_path / "full")])
    assert not list((tmp_path / "full").glob(".*.tmp*"))                  # no partial file left behind
    with monkeypatch.context() as m:                                     # the disk fills at a checkpoint's fsync
        m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        with pytest.raises(SystemExit, match="pixelbyte.train: .*No space left on device"):
            main([*cli, "--train.out-dir", str(tmp_path / "full_fsync")])
    assert not list((tmp_path / "full_fsync").glob(".*.tmp*"))

    real_step, calls, out = Trainer._train_step, [0], tmp_path / "ctrl_c"

    def ctrl_c_at_step_3(self, batches):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real_step(self, batches)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_step", ctrl_c_at_step_3)
        with pytest.raises(SystemExit) as err:
            main([*cli, "--train.out-dir", str(out)])
    assert str(err.value.code) == (f"pixelbyte.train: interrupted at step 2 of 3; checkpoint {out / 'last.pt'} "
                                   f"written: resume with --resume (fit(resume=True))")
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert main([*cli, "--train.out-dir", str(out), "--resume"])["step"] == 3


def _without_write_access():
    """A command prefix under which permission bits apply (root bypasses them: drop the capability)."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_cli_read_only_out_dir_is_one_line(tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        proc = run_cli(read_only, prefix=_without_write_access())
    finally:
        read_only.chmod(0o755)
    assert one_line_error(proc) == f"pixelbyte.train: cannot write to the output folder {read_only}: Permission denied"


# ---------------------------------------------------------------------------------------------
# The main test: a saved model gives back its run's held-out items


def notebook_03_split(run: RunConfig):
    """Notebook 03's code path: the items and the (train, held-out) split of the run a model
    was trained in, from the model's run alone."""
    seqs = data.load(run.data)
    return seqs, data.split(seqs, run.data)


def test_a_saved_model_gives_back_its_runs_held_out_items(tmp_path, monkeypatch):
    built = []

    class RecordingTrainer(Trainer):                        # train() builds its own datasets: keep them
        def __init__(self, model, train_ds, val_ds, run):
            super().__init__(model, train_ds, val_ds, run)
            built.append(self)
    monkeypatch.setattr(train_module, "Trainer", RecordingTrainer)
    run = RunConfig(data=DataConfig(source="embedded", limit=12, test_size=0.25, split_seed=3),
                    samples=SampleConfig(unit="item"),
                    model=ModelConfig(model="lstm", dim=9, hidden=8, depth=1, objective="causal"),
                    train=TrainConfig(max_steps=2, batch_size=2, device="cpu", progress=False,
                                      out_dir=str(tmp_path / "run")))
    _, final = train_module.train(run)
    (trainer,) = built

    model = PixelByteModel.from_pretrained(tmp_path / "run" / "best_model")
    assert model.run == run                                   # the model knows its run ...
    seqs, (train_idx, held_out) = notebook_03_split(model.run)    # ... and so its held-out items
    assert len(seqs) == 12
    expected_train, expected_held_out = data.split_items(12, 0.25, 3)
    np.testing.assert_array_equal(held_out, expected_held_out)
    np.testing.assert_array_equal(train_idx, expected_train)
    assert len(held_out) == 3 and not set(held_out) & set(train_idx)
    # exactly the items the Trainer evaluated on (ItemDataset stores them sorted by length)
    val_ds = trainer.val_ds
    assert val_ds.n_items == len(val_ds) == len(held_out)
    for i, item in enumerate(val_ds.items):
        np.testing.assert_array_equal(item, seqs[held_out[val_ds.source_index[i]]])
    assert sorted(map(len, trainer.train_ds.items)) == sorted(len(seqs[i]) for i in train_idx)
    # and the model evaluated on them scores what training reported for its val split
    table = E.token_metrics(model, data.ItemDataset([seqs[i] for i in held_out])).set_index("modality")
    assert table.loc["all", "accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-12)
    assert table.loc["all", "bits_per_token"] == pytest.approx(final["val_bits_per_token"], rel=1e-6)
    assert table.loc["pixel", "accuracy"] == pytest.approx(final["val_acc_pixel"], abs=1e-12)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["val"]["items"] == 3


def test_in_processes_gives_every_result_once_one_thread_each():
    jobs = [3, 5, 7]
    here = dict(train_module.in_processes(_factorial_and_threads, jobs, workers=1))
    assert {k: f for k, (f, _) in here.items()} == {0: 6, 1: 120, 2: 5040}
    there = dict(train_module.in_processes(_factorial_and_threads, jobs, workers=2))
    assert {k: f for k, (f, _) in there.items()} == {0: 6, 1: 120, 2: 5040}
    assert {threads for _, threads in there.values()} == {1}            # one thread per worker
    with pytest.raises(ValueError, match="workers=0: expected an integer >= 1"):
        list(train_module.in_processes(math.factorial, jobs, workers=0))


def _factorial_and_threads(n):
    return math.factorial(n), torch.get_num_threads()
