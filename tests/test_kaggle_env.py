"""pixelbyte.kaggle_env: the NCCL environment for torchrun on the T4 pair, AMP per model family,
and the check that mamba-ssm's CUDA kernels really run (its verdict with fake tensors here; the
real forward + backward on a CUDA machine)."""
import importlib.util

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


def test_kernel_check_verdict():
    ref, grad = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    assert kaggle_env.kernel_check_verdict(ref + 1e-6, ref, grad, grad)[0] is True
    nan = ref.clone()
    nan[0, 0, 0] = float("nan")
    assert kaggle_env.kernel_check_verdict(nan, ref, grad, grad) == (False, "the CUDA kernels' output has NaN or inf")
    ok, detail = kaggle_env.kernel_check_verdict(ref, ref, grad * 1.5, grad)
    assert not ok and "input gradient differs" in detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_kernel_check_without_cuda():
    assert kaggle_env.check_mamba_kernels() == (False, "no CUDA device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernel_check_runs_a_cuda_forward_and_backward():
    ok, detail = kaggle_env.check_mamba_kernels()
    if importlib.util.find_spec("mamba_ssm") is None:       # then the check must say so, not crash
        assert not ok and "mamba_ssm" in detail, detail
    else:
        assert ok, detail


def test_kernel_pins_are_the_gpu_extra_of_pyproject():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    extra = sorted(pyproject["project"]["optional-dependencies"]["gpu"])
    assert extra == sorted(f"{p.name}=={p.version}" for p in kaggle_env.KERNEL_PACKAGES)
