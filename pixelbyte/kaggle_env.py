"""What a CUDA session on Kaggle (T4 x2) needs from the package, importable from the wheel:
the NCCL environment for torchrun on two GPUs without peer-to-peer access, fp16 AMP per model
family, and where an attached kernel's outputs are mounted. No torch import: the Kaggle runner
imports this before it has checked torch. (Installing and checking the Mamba kernels is the
runner's job: kaggle/runner.py.)
"""
from __future__ import annotations

import os
from pathlib import Path

# NCCL >= 2.24 shares host memory through cuMem, which needs peer-to-peer access that Kaggle's
# two T4s lack (CUDA error 217 at the first collective); 0 restores the host-buffer path.
NCCL_ENV = {"NCCL_CUMEM_HOST_ENABLE": "0"}

# Families whose fp16 autocast is refused (T4s have no bf16, so they train in fp32).
AMP_REFUSED = {"bysmamba": "fp16 autocast through the Mamba kernels gives NaN losses (T4: no bf16)"}


def torchrun_env(env: dict | None = None) -> dict[str, str]:
    """``env`` (default ``os.environ``) with NCCL_ENV added; a value already set is kept, so a
    user who knows their GPUs better can override it."""
    env = dict(os.environ if env is None else env)
    for name, value in NCCL_ENV.items():
        env.setdefault(name, value)
    return env


def amp_decision(model: str, amp: bool) -> tuple[bool, str]:
    """(AMP to use, why) for a model family that asked for ``amp``."""
    if amp and model in AMP_REFUSED:
        return False, f"amp off for {model}: {AMP_REFUSED[model]}"
    return amp, f"amp {'on' if amp else 'off'} as asked"


def find_run_output(run_dir: str, relative: str, input_root: str | None = None) -> str:
    """``run_dir/relative`` if it exists, else the one ``input_root/**/relative`` (default
    $KAGGLE_INPUT or /kaggle/input; the newest if several). Kaggle mounts an attached kernel's
    output at /kaggle/input/<slug>/ or /kaggle/input/notebooks/<user>/<slug>/ depending on its
    age, so the path a notebook was given is only a hint."""
    hint = Path(run_dir) / relative
    if hint.exists():
        return str(hint)
    root = Path(input_root or os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
    found = sorted(root.glob(f"**/{relative}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no {relative}: searched {hint.absolute()} and {root}/**/{relative}"
                                + ("" if root.is_dir() else f" ({root} does not exist)"))
    return str(found[-1])
