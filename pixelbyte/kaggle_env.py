"""What Kaggle's GPU sessions (T4 x2) need from the code, in one place.

- `torchrun_env()`: the environment for torchrun on the T4 pair (NCCL without cuMem host memory);
- `amp_decision()`: fp16 AMP per model family (none through the Mamba kernels);
- `KERNEL_PACKAGES` / `prebuilt_wheel_urls()`: mamba-ssm and causal-conv1d pinned to releases
  that ship prebuilt wheels, and the wheel files for the running torch / CUDA / Python;
- `check_mamba_kernels()`: a tiny CUDA forward + backward through those kernels, compared with
  the pure-PyTorch scan, because "importable" does not mean "works".

kaggle/runner.py applies all of it. Notebook 02 launches torchrun with this environment:

    subprocess.run([sys.executable, "-m", "torch.distributed.run", ...],
                   env=kaggle_env.torchrun_env(), check=True)

    python -m pixelbyte.kaggle_env check-kernels   # one JSON line; exit 0 when the kernels work

No torch import at module level: the runner imports this before it has checked torch.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass

# Kaggle's two T4s have no peer-to-peer access. NCCL >= 2.24 shares host memory through cuMem
# by default, which needs it: the first collective then fails with CUDA error 217 ("peer access
# is not supported between these two devices"). 0 restores the plain host-buffer path
# (NVIDIA/nccl#1838; ray-project/ray#64109 sets it for their T4 fleet).
NCCL_ENV = {"NCCL_CUMEM_HOST_ENABLE": "0"}

# Families whose fp16 autocast is refused. The Mamba scan and conv kernels overflow in fp16 at
# this size and the loss turns NaN; the trainer's NaN guard then stops 02, and 03 has no
# checkpoint. T4s have no bf16, so these families train in fp32. LSTM and attention keep AMP.
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


# --------------------------------------------------------------------------------------------
# mamba-ssm / causal-conv1d


@dataclass(frozen=True)
class KernelPackage:
    name: str       # on PyPI (an sdist whose setup.py guesses a wheel URL, else compiles CUDA)
    version: str
    release: str    # the GitHub release folder that holds the prebuilt wheels


# Pinned to releases whose publish.yaml matrix built wheels for torch 2.6-2.10, Python 3.10-3.13,
# CUDA 11 (torch <= 2.7) / 12 / 13 (torch >= 2.9), with sm_75 (T4) in the arch list:
# - mamba-ssm 2.3.1 (tag v2.3.1, 2026-03-10): the first with torch 2.10 wheels; it imports with
#   transformers 5 (2.2.x imported GreedySearchDecoderOnlyOutput, removed there: state-spaces/
#   mamba#807); it predates Mamba-3's tilelang / quack-kernels requirements (2.3.2) and the
#   opt-in CUDA build (MAMBA_KEEP_CUDA_BUILD, state-spaces/mamba#977).
# - causal-conv1d 1.6.1: its complete wheel set is in the release v1.6.1.post4 while the files
#   keep the version 1.6.1, so `pip install causal-conv1d==1.6.1` guesses the v1.6.1 URL, gets a
#   404 and compiles (Dao-AILab/causal-conv1d#104, #121). Hence the direct wheel URLs below.
KERNEL_PACKAGES = (
    KernelPackage("causal-conv1d", "1.6.1",
                  "https://github.com/Dao-AILab/causal-conv1d/releases/download/v1.6.1.post4"),
    KernelPackage("mamba-ssm", "2.3.1", "https://github.com/state-spaces/mamba/releases/download/v2.3.1"),
)


def prebuilt_wheel_urls(torch_version: str, cuda_version: str, python_tag: str, cxx11_abi: bool,
                        platform: str = "linux_x86_64") -> list[str]:
    """The release wheels of KERNEL_PACKAGES for this torch, named as their setup.py names them:
    ``<name>-<version>+cu<CUDA major>torch<major.minor>cxx11abi<TRUE|FALSE>-<py>-<py>-<platform>``.
    ``torch_version`` e.g. "2.10.0+cu128", ``cuda_version`` torch.version.cuda ("12.8"),
    ``python_tag`` "cp312". A combination outside the build matrix gives a 404: pip fails fast."""
    torch_mm = ".".join(torch_version.split("+")[0].split(".")[:2])
    local = f"cu{cuda_version.split('.')[0]}torch{torch_mm}cxx11abi{str(bool(cxx11_abi)).upper()}"
    return [f"{p.release}/{p.name.replace('-', '_')}-{p.version}+{local}-{python_tag}-{python_tag}-{platform}.whl"
            for p in KERNEL_PACKAGES]


def pinned_requirements() -> list[str]:
    """``name==version`` of KERNEL_PACKAGES (the sdists on PyPI; the pyproject `gpu` extra)."""
    return [f"{p.name}=={p.version}" for p in KERNEL_PACKAGES]


def kernel_check_verdict(out, ref_out, grad, ref_grad, tolerance: float = 1e-3) -> tuple[bool, str]:
    """Do the kernels' output and input gradient (torch tensors) match the PyTorch scan's? The
    error is relative to the reference's largest magnitude."""
    import torch

    for name, value in (("output", out), ("input gradient", grad)):
        if not torch.isfinite(value).all():
            return False, f"the CUDA kernels' {name} has NaN or inf"
    errors = {name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
              for name, a, b in (("output", out, ref_out), ("input gradient", grad, ref_grad))}
    worst = max(errors, key=errors.get)
    if errors[worst] > tolerance:
        return False, (f"the CUDA kernels' {worst} differs from the PyTorch scan by {errors[worst]:.1e} "
                       f"(relative, allowed {tolerance:.0e})")
    return True, f"forward + backward match the PyTorch scan (relative error {errors[worst]:.1e})"


def check_mamba_kernels(batch: int = 2, length: int = 64, d_model: int = 16) -> tuple[bool, str]:
    """(works, detail): one forward + backward of a small Mamba layer through mamba_ssm's CUDA
    kernels, compared with the same weights on the pure-PyTorch scan. False without CUDA."""
    import torch

    from pixelbyte.mamba import Mamba

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    torch.manual_seed(0)
    x0 = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(1))  # (B, L, D)
    results = []
    try:
        layer = Mamba(d_model, d_state=8, backend="cuda", device="cuda")
        reference = copy.deepcopy(layer)
        reference.backend = "torch"                        # same weights, pure-PyTorch scan
        for module in (layer, reference):
            x = x0.cuda().requires_grad_()
            y = module(x)                                  # (B, L, D)
            y.square().mean().backward()
            torch.cuda.synchronize()
            results.append((y.detach().float().cpu(), x.grad.float().cpu()))
    except Exception as err:  # ImportError, "no kernel image is available", undefined symbols...
        first_line = (str(err).strip().splitlines() or [""])[0]
        return False, f"{type(err).__name__}: {first_line}"
    (out, grad), (ref_out, ref_grad) = results
    ok, detail = kernel_check_verdict(out, ref_out, grad, ref_grad)
    return ok, f"{detail} on {torch.cuda.get_device_name()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pixelbyte.kaggle_env", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["check-kernels"])
    ap.parse_args(argv)
    ok, detail = check_mamba_kernels()
    print(json.dumps({"ok": ok, "detail": detail}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
