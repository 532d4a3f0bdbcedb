"""pixelbyte.kaggle_env: the NCCL environment for torchrun on the T4 pair, AMP per model family.
(The check that mamba-ssm's CUDA kernels really run is kaggle/runner.py's: tests/test_kaggle.py.)"""
import pytest
import torch

from pixelbyte import kaggle_env


def test_torchrun_env_sets_nccl_for_the_t4_pair():
    assert kaggle_env.torchrun_env({"PATH": "/bin"}) == {"PATH": "/bin", "NCCL_CUMEM_HOST_ENABLE": "0"}
    assert kaggle_env.torchrun_env({"NCCL_CUMEM_HOST_ENABLE": "1"})["NCCL_CUMEM_HOST_ENABLE"] == "1"


def test_amp_is_refused_for_bysmamba_only():
    assert kaggle_env.amp_decision("bysmamba", True)[0] is False
    assert "NaN" in kaggle_env.amp_decision("bysmamba", True)[1]
    assert kaggle_env.amp_decision("lstm", True) == (True, "amp on as asked")
    assert kaggle_env.amp_decision("bysmamba", False)[0] is False


# --------------------------------------------------------------------------------------------
# Applied where training starts, whoever starts it (a notebook's own torchrun, the CLI, Python)


def test_the_process_group_is_started_with_the_nccl_setting(monkeypatch):
    """setup_distributed sets NCCL_CUMEM_HOST_ENABLE=0 before init_process_group (a user's value
    is kept), so a torchrun that was not given kaggle_env.torchrun_env() still gets it."""
    import os

    from pixelbyte import train

    seen = []
    monkeypatch.setattr(train.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(train.dist, "init_process_group",
                        lambda backend: seen.append((backend, os.environ.get("NCCL_CUMEM_HOST_ENABLE"))))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("NCCL_CUMEM_HOST_ENABLE", "")          # restored after the test
    monkeypatch.delenv("NCCL_CUMEM_HOST_ENABLE")
    train.setup_distributed("cpu")
    monkeypatch.setenv("NCCL_CUMEM_HOST_ENABLE", "1")
    train.setup_distributed("cpu")
    assert seen == [("gloo", "0"), ("gloo", "1")]


@pytest.mark.parametrize("family, amp", [("bysmamba", False), ("lstm", True)])
def test_the_trainer_refuses_fp16_amp_for_bysmamba_on_cuda(tmp_path, monkeypatch, family, amp):
    """A Trainer on a CUDA device (faked: no GPU here) asked for amp with BysMamba trains in fp32
    and says why; LSTM keeps AMP."""
    import warnings

    from _train_worker import small_model, synthetic_datasets
    from pixelbyte import train
    from pixelbyte.config import TrainConfig

    monkeypatch.setattr(train, "setup_distributed", lambda device: (0, 1, torch.device("cuda")))
    model = small_model(model=family)
    model.to = lambda *args, **kwargs: model                  # stays on the CPU
    train_ds, val_ds = synthetic_datasets()
    config = TrainConfig(batch_size=8, max_steps=2, out_dir=str(tmp_path), device="cuda", amp=True, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train.Trainer(model, train_ds, val_ds, config)
    assert trainer.use_amp is amp
    messages = [str(w.message) for w in caught]
    assert any("amp=True ignored: amp off for bysmamba" in m and "NaN" in m for m in messages) is not amp
