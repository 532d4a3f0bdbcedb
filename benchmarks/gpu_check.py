"""One prepared GPU check (issue 17): every CUDA path of the project, measured in one command.

    python benchmarks/gpu_check.py                     # CUDA machine: ~6.5 min, writes the report
    python benchmarks/gpu_check.py --tiny              # any machine: the CPU parts, tiny sizes, < 1 min
    python benchmarks/gpu_check.py --only train,scan   # some checks (a rerun after a failure)

Checks (each isolated: one that raises or overruns is recorded, with its error, and the next runs):
1. ``cuda_tests``: every CUDA-conditional test of the suite (a ``skipif`` that names CUDA, or a
   body that asks ``torch.cuda.is_available()``; found statically, listed in the report), run by
   pytest in a subprocess; pass / fail / skip counts and names.
2. ``train``: LSTM, attention, causal and bidirectional BysMamba (backend "torch"), the paper's
   configs on the embedded emoji set, through the project's ``Trainer``: fp32, fp16 AMP (its
   GradScaler) and bf16 autocast where the GPU has it. Loss finite and falling (mean of the first
   vs the last 20 steps), tokens/s, peak GPU memory; and one optimizer step on CUDA against the
   same step on the CPU (same init, same batch): loss, gradients and post-step weights.
3. ``scan``: the torch backend's selective scan on CUDA (chunked and compiled) against the fp64
   sequential reference, forward and backward; fwd+bwd tokens/s at the paper's size
   (d_model 81, d_state 64, d_inner 81, B 32, L 256) and at L = 1k, 2k, 4k, 8k while time lasts.
4. ``generate``: ``model.step`` == ``model.forward`` on CUDA; ms per generated token (one
   generator step) at batch 1 and 64, for the causal families (and the window re-run of the
   bidirectional one).
5. ``save_load``: a model trained on CUDA, ``save_pretrained``, ``from_pretrained(map_location=
   "cpu")``: weights bit-identical, logits within tolerance; and back on CUDA.
6. ``mamba_kernels``: where mamba-ssm imports and works (``kaggle_env.check_mamba_kernels``), its
   kernels against the torch backend (outputs, gradients, speed); else the reason.
Every tolerance is in ``TOLERANCES`` below and in the report. A total time budget (``--budget-s``)
is shared by the checks; each has its own limit (``LIMITS``), enforced twice: the checks skip
what would not fit (the ``Trainer``'s ``budget_s`` caps the training steps), and an alarm stops a
check at its limit. The JSON and the markdown table are rewritten after every check, so a run
that is killed still leaves what it measured.

Without CUDA (or with ``--tiny``) the CPU parts run at tiny sizes: the one-step comparison
against an fp64 CPU step, a short CPU training, the scan against the fp64 reference, step ==
forward, save / load; every GPU part is reported "skipped" with the reason. A CI test runs this,
and another runs the GPU mode's code paths with the CPU standing in for the GPU (``GPU = "cpu"``).

Running it on the device tool's machine (one H200, torch 2.11 + CUDA 13, Python 3.12, no network)
-------------------------------------------------------------------------------------------------
Its image (/work/.library/device/KINDS.md, package list of 2026-11-17; without that list, one
cheap ``run`` of ``python3 -m pip list`` says the same) has torch, numpy, pandas, pyarrow,
huggingface-hub (1.33), safetensors, filelock, tqdm, pillow, scipy, scikit-learn, matplotlib,
pytest and hypothesis. Of what this check and the CUDA tests import, it lacks datasets (+ dill,
multiprocess), tyro (+ docstring-parser, typeguard; tyro is imported lazily by the CLI) and
mambapy (tests/test_mamba.py skips its whole module without it); pixelbyte itself runs from the
working tree. It also lacks nbformat: tests/test_kaggle.py does not import there, and its one
CUDA-branching test is reported "not runnable here" instead of breaking pytest's collection.
The seven wheels are pure Python, 1.2 MB in all; once, here, in the repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tyro==1.0.17 \
        docstring_parser==0.18.0 typeguard==4.6.1 mambapy==1.2.0

(datasets 5.2.0 asks huggingface-hub >= 1.31, pyarrow >= 24, fsspec <= 2026.9.0: the image's hub
1.33 fits, its pyarrow / fsspec versions are recorded in the report; should datasets not import
there, the items are read with pyarrow instead and the report says so.) Then ONE ``run`` call:
carry [".whl"], timeout_s 450 (the check's budget is 390 s, data loading included; a fresh
machine's start comes on top, and 15 device minutes then leave ~5 for one rerun), command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1; set -o pipefail; python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

$OUT/gpu_check.json, .md and .log come back (the JSON and the table are rewritten after every
check, so a run stopped at the timeout still returns what it measured). A rerun of what failed,
same carry, timeout_s 200: the same command with ``--only <checks> --budget-s 150``. Then copy
the JSON and the table to benchmarks/results/ and the README.
mamba-ssm cannot be had there: nothing can be fetched, its prebuilt wheels stop at torch 2.10 and
are larger than the 64 MiB that may travel, and a source build needs the network: check 6 then
reports the reason. The first run of a machine spends a cold torch.compile in check 3.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # pixelbyte runs from the working tree (not installed there)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# ----------------------------------------------------------------------------- defaults
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"           # GPU mode's default report
TINY_OUT = Path(tempfile.gettempdir()) / "pixelbyte_gpu_check_tiny.json"  # tiny mode: not a result
BUDGET_S = 390          # total seconds of the GPU run (the device command's timeout is 450)
TINY_BUDGET_S = 90      # total seconds of --tiny (it takes ~25 s on one busy core)
# per-check limits in seconds (GPU mode, tiny mode); a check is not started with < MIN_S left
LIMITS = {"cuda_tests": (75, 5), "train": (160, 30), "scan": (65, 8), "generate": (40, 12),
          "save_load": (20, 8), "mamba_kernels": (15, 3)}
MIN_S = 3
GRACE_S = 5             # the alarm fires this long after a check's limit (its own skips come first)
# The paper's configs per family (PAPER_CONFIGS: objective "next", windows of 256 tokens)
FAMILIES = {"lstm": "rnn_uni_pxby_conv_81_64_2", "attention": "att_uni_pxby_conv_81_64_2",
            "bysmamba": "ssm_uni_pxby_conv_81_64_2", "bysmamba_bi": "ssm_bi_pxby_conv_81_64_2"}
CAUSAL_FAMILIES = ("lstm", "attention", "bysmamba")        # those that can step token by token
PRECISIONS = ("fp32", "fp16", "bf16")
GPU = "cuda"            # the accelerator's device type (a dry run of the GPU code paths may set "cpu")
SIZES = {
    "gpu": dict(items=None, model={}, seq_length=256, stride=32, batch=32, train_steps=300,
                loss_window=20, min_steps=40, eval_batches=2, step_batch=32,
                scan=dict(batch=32, d_inner=81, d_state=64, accuracy_length=256,
                          lengths=[256, 1024, 2048, 4096, 8192]),
                gen=dict(prompt=64, new_tokens=64, batches=[1, 64], check_batch=4, check_length=128,
                         bi_new_tokens=8)),
    "tiny": dict(items=48, model=dict(dim=18, hidden=8), seq_length=32, stride=16, batch=8,
                 train_steps=40, loss_window=10, min_steps=20, eval_batches=1, step_batch=4,
                 scan=dict(batch=2, d_inner=8, d_state=4, accuracy_length=45, lengths=[64]),
                 gen=dict(prompt=8, new_tokens=8, batches=[1, 4], check_batch=2, check_length=24,
                          bi_new_tokens=4)),
}
# Tolerances. Relative errors are max|a - b| / max|b| (per tensor, worst tensor reported) unless
# named *_l2 (global L2 norm of the difference over the norm of the reference).
TOLERANCES = {
    # one optimizer step on CUDA (or fp32 CPU in --tiny) against the same step on the CPU in fp32
    # (fp64 in --tiny), same init and batch; fp32 matmuls, convs and RNNs in IEEE fp32 (no TF32).
    # update_l2 = |w - w_ref| / |w_ref - w0|: AdamW's first step is ~lr * sign(grad), so an element
    # whose gradient sits at rounding level may flip sign (each flip adds 2 lr); mixed precision
    # shifts many small gradients, hence the wider update bounds.
    # Measured on a CPU (fp32 vs fp64: loss 1e-7, grad 1e-6, update 2e-5..1e-3; CPU autocast vs
    # fp32: fp16 grad 6e-4..2.5e-2, update ~3e-2; bf16 grad 5e-3..6e-2, update ~0.1).
    "step": {"fp32": {"loss_rel": 1e-5, "grad_l2": 1e-4, "update_l2": 2e-2},
             "fp16": {"loss_rel": 5e-3, "grad_l2": 1e-1, "update_l2": 0.3},
             "bf16": {"loss_rel": 2e-2, "grad_l2": 2e-1, "update_l2": 0.5}},
    # training: losses finite, the mean of the last `loss_window` steps below the first's (the
    # window shrinks to a quarter of the steps done), at least `min_steps` steps (see SIZES)
    "train": {mode: {"loss_window": SIZES[mode]["loss_window"], "min_steps": SIZES[mode]["min_steps"]}
              for mode in SIZES},
    # fp32 scan (chunked / compiled) against the fp64 sequential reference
    "scan": {"forward_rel": 1e-5, "backward_rel": 1e-4},
    # step == forward, fp32 (IEEE): max |logits_step - logits_forward| / max(1, max |logits|)
    "step_vs_forward": 1e-5,
    # save on CUDA, load on CPU: weights bit-identical; logits CPU vs CUDA relative to max |logits|;
    # loaded back on CUDA: the same logits as before saving, up to this
    "save_load": {"weights": "bit-identical", "logits_cpu_vs_cuda_rel": 1e-4, "logits_back_on_cuda_rel": 1e-6},
    # mamba-ssm kernels against the torch backend, fp32 (test_mamba.py's bound)
    "mamba_kernels_rel": 1e-3,
}
# --------------------------------------------------------------------------------------


# ============================================================================ the harness


class CheckTimeout(BaseException):
    """Raised by the alarm at a check's time limit. A BaseException, so that code catching
    Exception inside a check (the Trainer, the kernels check) cannot swallow it."""


class Budget:
    """The total time of a run; ``left()`` is what remains (``clock`` injectable for tests)."""

    def __init__(self, total_s: float, clock=time.monotonic):
        self.total_s, self.clock = float(total_s), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return max(0.0, self.total_s - self.elapsed())


@contextlib.contextmanager
def hard_time_limit(seconds: float):
    """Raise CheckTimeout in the main thread after ``seconds`` (SIGALRM; a no-op elsewhere)."""
    usable = hasattr(signal, "setitimer") and threading_is_main()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise CheckTimeout(f"time limit of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclass
class Check:
    name: str
    title: str
    fn: object                    # fn(ctx, rec)
    limit_s: float
    min_s: float = MIN_S
    grace_s: float = GRACE_S


class Recorder:
    """The items of one check. ``item`` runs one part in isolation: an exception becomes that
    item's error and the check goes on with its next item."""

    def __init__(self, items: list):
        self.items = items

    def add(self, name: str, part: str, status: str, reason: str | None = None, summary: str = "",
            **fields) -> dict:
        entry = {"name": name, "part": part, "status": status, "summary": summary}
        if reason is not None:
            entry["reason"] = reason
        entry.update(fields)
        self.items.append(entry)
        log(f"  {name} [{part}]: {status}" + (f" - {summary}" if summary and status != "skipped" else ""))
        return entry

    def skip(self, name: str, part: str, reason: str, **fields) -> dict:
        return self.add(name, part, "skipped", reason=reason, summary=f"skipped: {reason}", **fields)

    def item(self, name: str, part: str, fn, *args, **kwargs) -> dict:
        """fn(*args, **kwargs) -> dict with at least "status" (and "summary", metrics...)."""
        t0 = time.perf_counter()
        try:
            fields = dict(fn(*args, **kwargs))
        except Exception as err:                         # CheckTimeout passes through
            fields = {"status": "error", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=-4)[-2000:],
                      "summary": f"error: {type(err).__name__}: {str(err)[:160]}"}
        fields.setdefault("seconds", round(time.perf_counter() - t0, 3))
        status = fields.pop("status")
        return self.add(name, part, status, **fields)

    def status(self) -> str:
        statuses = [i["status"] for i in self.items]
        if any(s in ("failed", "error") for s in statuses):
            return "failed"
        return "passed" if "passed" in statuses else "skipped"


def run_checks(checks: list[Check], ctx, budget: Budget, on_update=None) -> list[dict]:
    """Run ``checks`` in order within ``budget``; one record per check, whatever happens in it.

    Each check gets its ``limit_s`` plus what the checks before it left of theirs, within what
    is left of the budget (``ctx.deadline`` for its own skips, an alarm ``grace_s`` later); with
    fewer than ``min_s`` left it is skipped. ``on_update(records)`` is called after every check
    (the report is rewritten there)."""
    records, saved = [], 0.0                   # saved: seconds earlier checks left of their limits
    for check in checks:
        limit = min(check.limit_s + saved, budget.left())
        record = {"name": check.name, "title": check.title, "limit_s": round(limit, 1), "items": []}
        records.append(record)
        if limit < check.min_s:
            record.update(status="skipped", seconds=0.0,
                          reason=f"total time budget spent: {budget.left():.0f} s left of {budget.total_s:.0f} s "
                                 f"(this check needs at least {check.min_s:.0f} s)")
        else:
            log(f"{check.name}: started, limit {limit:.0f} s ({budget.left():.0f} s left in all)")
            rec = Recorder(record["items"])
            t0 = budget.clock()
            ctx.deadline = t0 + limit
            ctx.clock = budget.clock
            try:
                with hard_time_limit(limit + check.grace_s):
                    check.fn(ctx, rec)
                record["status"] = rec.status()
            except CheckTimeout as err:
                record.update(status="timeout", reason=f"stopped: {err}; the items measured so far are kept")
            except Exception as err:
                record.update(status="error", error=f"{type(err).__name__}: {err}",
                              traceback=traceback.format_exc(limit=-6)[-3000:])
            record["seconds"] = round(budget.clock() - t0, 2)
            if record["status"] in ("timeout", "error") and ctx.cuda:
                with contextlib.suppress(Exception):       # a broken CUDA context fails here too
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            log(f"{check.name}: {record['status']} in {record['seconds']:.1f} s")
            saved = max(0.0, saved + check.limit_s - record["seconds"])
        if on_update is not None:
            on_update(records)
    return records


def log(message: str):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ the context


@dataclass
class Context:
    mode: str                                  # "gpu" (full sizes, CUDA) | "tiny" (CPU parts)
    cuda: bool
    no_gpu_reason: str | None                  # why the GPU parts are skipped
    sizes: dict
    work_dir: Path
    deadline: float = math.inf
    clock: object = time.monotonic
    trained: dict = field(default_factory=dict)        # family -> (model on CUDA, out_dir), from `train`
    _seqs: list | None = None
    _data_note: str | None = None

    @property
    def tiny(self) -> bool:
        return self.mode == "tiny"

    @property
    def device(self) -> torch.device:
        return torch.device(GPU if self.cuda else "cpu")

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def seqs(self) -> list:
        """The embedded emoji items as pixelbyte sequences (the first ``items`` in tiny mode)."""
        if self._seqs is None:
            self._seqs, self._data_note = load_sequences(self.sizes["items"])
        return self._seqs

    def skip_gpu(self, rec: Recorder, names):
        for name in names:
            rec.skip(name, "gpu", self.no_gpu_reason)


def load_sequences(limit):
    """load_pixelbytes("embedded") -> sequences; if `datasets` does not import (a device machine
    without it), the same items read with pyarrow and encoded with the project's tokenizer."""
    from pixelbyte import data, tokenizer as tok

    try:
        import datasets  # noqa: F401
    except Exception as err:
        import io

        import pyarrow.parquet as pq
        from PIL import Image

        table = pq.read_table(data.EMBEDDED_PATH, columns=["image", "caption"]).to_pylist()
        table = table[:limit] if limit else table
        seqs = [tok.encode_item(Image.open(io.BytesIO(row["image"]["bytes"])), row["caption"] or "")
                for row in table]
        return seqs, f"datasets does not import ({type(err).__name__}: {err}); read with pyarrow"
    return data.sequences(data.load_pixelbytes(data.EMBEDDED, limit=limit)), None


# ============================================================================ helpers


@contextlib.contextmanager
def ieee_fp32():
    """fp32 matmuls, convolutions and cuDNN RNNs in IEEE fp32 (no TF32) on CUDA, then restored.
    Through the allow_tf32 flags: torch >= 2.9's fp32_precision = "ieee" makes any later read of
    torch.backends.cudnn.allow_tf32 raise (mixed legacy and new API); the legacy setters keep both
    views consistent."""
    knobs = [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in knobs]
    for obj, name, value in knobs:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(knobs, saved):
            setattr(obj, name, value)


def precision_flags() -> dict:
    """How fp32 matmuls / convs / RNNs run now (TF32 or not)."""
    out = {}
    with contextlib.suppress(Exception):
        out.update(matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    for label, obj in (("matmul", torch.backends.cuda.matmul),
                       ("cudnn_conv", getattr(torch.backends.cudnn, "conv", None)),
                       ("cudnn_rnn", getattr(torch.backends.cudnn, "rnn", None))):
        with contextlib.suppress(Exception):
            out[label] = getattr(obj, "fp32_precision")
    return out


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference), in fp64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def l2_rel(a: list, b: list, base: list | None = None) -> float:
    """|a - b| / |b - base| over lists of tensors (global L2 norms, fp64)."""
    diff = math.sqrt(sum(float((x.double().cpu() - y.double().cpu()).square().sum()) for x, y in zip(a, b)))
    ref = b if base is None else [y.double().cpu() - z.double().cpu() for y, z in zip(b, base)]
    norm = math.sqrt(sum(float(r.double().cpu().square().sum()) for r in ref))
    return diff / max(norm, 1e-30)


def finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def family_config(family: str, sizes: dict):
    from pixelbyte.models import paper_config

    cfg = paper_config(FAMILIES[family], **sizes["model"])
    return replace(cfg, backend="torch") if cfg.model == "bysmamba" else cfg


def family_run(family: str, ctx: Context, **train):
    """RunConfig of a family on the embedded set (windows), and its (train, val) datasets."""
    from pixelbyte import data
    from pixelbyte.config import DataConfig, RunConfig, SampleConfig, TrainConfig

    s = ctx.sizes
    run = RunConfig(data=DataConfig(source="embedded", limit=s["items"]),
                    samples=SampleConfig(seq_length=s["seq_length"], stride=s["stride"]),
                    model=family_config(family, s),
                    train=TrainConfig(batch_size=s["batch"], eval_batches=s["eval_batches"], log_every=1,
                                      progress=False, seed=0, **train))
    train_ds, val_ds = data.make_datasets(ctx.seqs(), run)
    return run, train_ds, val_ds


def fixed_batch(ds, n: int):
    """n samples spread over the dataset, stacked: x (n, L, 3, 3), y (n,) or (n, L)."""
    from pixelbyte.data import evenly_spaced

    pairs = [ds[int(i)] for i in evenly_spaced(len(ds), n)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def fresh_model(run):
    from pixelbyte.models import PixelByteModel

    return PixelByteModel.from_run(run)                      # seeded by run.train.seed


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"


# ============================================================================ check 1: CUDA tests


def cuda_test_ids(tests_dir: Path = ROOT / "tests") -> list[dict]:
    """The suite's CUDA-conditional tests, read from the source (no import, no collection): a
    ``skipif`` decorator (or a module-level mark used as one) whose text names CUDA, or a body
    that branches on ``torch.cuda.is_available()``. This file's own test is left out."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name == "test_gpu_check.py":
            continue
        lines = path.read_text().splitlines(keepends=True)
        tree = ast.parse("".join(lines))
        source = lambda node: "".join(lines[node.lineno - 1:node.end_lineno])  # noqa: E731 (whole lines)
        marks = {target.id for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name) and _names_cuda_skip(source(node.value))}
        functions = [(None, n) for n in tree.body]
        functions += [(c.name, n) for c in tree.body if isinstance(c, ast.ClassDef) and c.name.startswith("Test")
                      for n in c.body]
        for cls, node in functions:
            if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")):
                continue
            decorators = [d for d in node.decorator_list]
            why = None
            if any(_names_cuda_skip(source(d)) or (isinstance(d, ast.Name) and d.id in marks) for d in decorators):
                why = "skipif on CUDA"
            elif "torch.cuda.is_available()" in source(node):
                why = "branches on torch.cuda.is_available()"
            if why:
                node_id = f"tests/{path.name}::" + (f"{cls}::" if cls else "") + node.name
                found.append({"id": node_id, "why": why})
    return found


def _names_cuda_skip(source: str) -> bool:
    return "skipif" in source and "cuda" in source.lower()


def missing_imports(path: Path) -> list[str]:
    """Top-level modules that a test file imports at module level and this Python lacks (the
    device machine has no nbformat, say): such a file would stop pytest's collection."""
    import importlib.util

    tree = ast.parse(path.read_text())
    names = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in tree.body
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    local = {p.stem for p in path.parent.glob("*.py")}
    return sorted(n for n in names - local - {"__future__"} if importlib.util.find_spec(n) is None)


def parse_junit(path: Path) -> list[dict]:
    """pytest's --junitxml -> [{"id", "outcome" (passed|failed|error|skipped), "message", "seconds"}]."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or (child.text or "")).strip()[:400]
                break
        tests.append({"id": f"{module}.py::{case.get('name')}", "outcome": outcome, "message": message,
                      "seconds": float(case.get("time") or 0)})
    return tests


def check_cuda_tests(ctx: Context, rec: Recorder):
    selected = cuda_test_ids()
    for test in selected:
        missing = missing_imports(ROOT / test["id"].split("::")[0])
        if missing:
            test["not_run"] = f"its module imports {missing}, not installed here"
    runnable = [t["id"] for t in selected if "not_run" not in t]
    not_run = [f"{t['id'].split('::')[-1]} ({t['not_run']})" for t in selected if "not_run" in t]
    rec.add("select the CUDA tests", "cpu", "passed" if runnable else "failed",
            summary=f"{len(selected)} tests: " + ", ".join(t["id"].split("::")[-1] for t in selected)
            + (f"; not runnable here: {', '.join(not_run)}" if not_run else ""), tests=selected)
    if not ctx.cuda:
        rec.skip("run the CUDA tests (pytest)", "gpu", ctx.no_gpu_reason, tests=runnable)
        return
    rec.item("run the CUDA tests (pytest)", "gpu", run_pytest, runnable, ctx)


def run_pytest(node_ids: list[str], ctx: Context) -> dict:
    junit = ctx.work_dir / "cuda_tests.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *node_ids]
    timeout = max(1.0, ctx.left() - 2)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "summary": f"pytest ran past {timeout:.0f} s and was stopped",
                "command": " ".join(cmd)}
    tests = parse_junit(junit) if junit.exists() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    ok = proc.returncode == 0 and tests and not counts["failed"] and not counts["error"]
    return {"status": "passed" if ok else "failed", "counts": counts, "tests": tests,
            "returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-3000:],
            "summary": ", ".join(f"{v} {k}" for k, v in counts.items() if v) + (
                "; failed: " + ", ".join(t["id"].split("::")[-1] for t in tests if t["outcome"] in ("failed", "error"))
                if counts["failed"] or counts["error"] else "")
            + ("; skipped: " + ", ".join(t["id"].split("::")[-1] for t in tests if t["outcome"] == "skipped")
               if counts["skipped"] else "")}


# ============================================================================ check 2: training


def one_step(model0, x, y, device, precision: str, train_cfg) -> dict:
    """One optimizer step as the Trainer takes it (its AdamW groups, fused on CUDA, grad clip,
    GradScaler for fp16) from a copy of ``model0``; "fp64" runs the model in float64.
    Returns loss, unscaled gradients (before clipping), weights before and after."""
    from pixelbyte.train import param_groups

    device = torch.device(device)
    scale, skipped = 2.0 ** 16, 0
    while True:                                   # fp16: GradScaler skips steps with inf gradients
        model = copy.deepcopy(model0).to(device)
        if precision == "fp64":
            model = model.double()
        model.train()
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr,
                                betas=train_cfg.betas, fused=device.type == "cuda" or None)
        scaler = torch.amp.GradScaler(device.type, init_scale=scale, enabled=precision == "fp16")
        autocast = (torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
                    if precision in ("fp16", "bf16") else contextlib.nullcontext())
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for p in model.parameters()]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if precision == "fp16" and not finite and skipped < 30:
            skipped, scale = skipped + 1, scale / 2
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or float("inf"))
        scaler.step(opt)
        scaler.update()
        sync(device)
        return {"loss": float(loss.detach()), "grads": grads, "before": before,
                "after": [p.detach().clone() for p in model.parameters()], "finite": finite,
                "scaler_skipped": skipped, "scale": scale if precision == "fp16" else None}


def compare_step(model0, batch, train_cfg, reference: tuple, candidate: tuple, cache: dict | None = None) -> dict:
    """The same step on ``candidate`` (device, precision) and ``reference``; against the step
    tolerances of the candidate's precision. ``cache`` keeps the reference step for the next call."""
    x, y = batch
    cache = {} if cache is None else cache
    if reference not in cache:
        cache[reference] = one_step(model0, x, y, *reference, train_cfg)
    ref = cache[reference]
    t0 = time.perf_counter()
    with ieee_fp32():
        got = one_step(model0, x, y, *candidate, train_cfg)
    candidate_s = time.perf_counter() - t0
    precision = candidate[1]
    tol = TOLERANCES["step"][precision]
    metrics = {"loss": got["loss"], "loss_ref": ref["loss"],
               "loss_rel": abs(got["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30),
               "grad_l2": l2_rel(got["grads"], ref["grads"]),
               "update_l2": l2_rel(got["after"], ref["after"], ref["before"]),
               "weight_max_abs": max(float((a.double().cpu() - b.double().cpu()).abs().max())
                                     for a, b in zip(got["after"], ref["after"])),
               "scaler_skipped_steps": got["scaler_skipped"], "candidate_s": candidate_s}
    failed = [k for k in tol if not metrics[k] <= tol[k]]
    if not got["finite"]:
        failed.append("non-finite gradients")
    return {"status": "failed" if failed else "passed", "tolerance": tol,
            "reference": f"{reference[1]} on {reference[0]}", "failed": failed, **metrics,
            "summary": (f"loss rel {metrics['loss_rel']:.1e}, grad {metrics['grad_l2']:.1e}, "
                        f"update {metrics['update_l2']:.1e} (tol {tol['loss_rel']:.0e}/{tol['grad_l2']:.0e}/"
                        f"{tol['update_l2']:.0e})"
                        + (f"; {got['scaler_skipped']} scaler skips" if got["scaler_skipped"] else "")
                        + (f"; FAILED {failed}" if failed else ""))}


def bf16_trainer_class():
    from pixelbyte.train import Trainer

    class BF16Trainer(Trainer):
        """The project's Trainer with bf16 autocast; no GradScaler (bf16 has fp32's range)."""

        def _autocast(self):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)

    return BF16Trainer


def train_run(ctx: Context, family: str, precision: str, budget_s: float) -> dict:
    """A Trainer run of up to ``train_steps`` steps (fewer when ``budget_s`` runs out)."""
    from pixelbyte.train import Trainer

    s = ctx.sizes
    out_dir = ctx.work_dir / f"train_{family}_{precision}"
    run, train_ds, val_ds = family_run(family, ctx, max_steps=s["train_steps"], budget_s=round(budget_s, 1),
                                       device=ctx.device.type, amp=precision == "fp16", out_dir=str(out_dir))
    model = fresh_model(run)
    trainer_cls = bf16_trainer_class() if precision == "bf16" else Trainer
    trainer = trainer_cls(model, train_ds, val_ds, run)
    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    final = trainer.fit(overwrite=True)
    rows = [r for r in trainer.history if r["split"] == "train"]
    losses = [float(r["loss"]) for r in rows]
    w = max(1, min(s["loss_window"], len(losses) // 4))
    first, last = statistics.fmean(losses[:w]), statistics.fmean(losses[-w:])
    finite = all(math.isfinite(v) for v in losses)
    steady = [r["tokens_per_s"] for r in rows[6:]] or [r["tokens_per_s"] for r in rows]
    tokens_per_s = statistics.median(steady)
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if ctx.cuda else None
    problems = []
    if not finite:
        problems.append("non-finite loss")
    if not last < first:
        problems.append(f"loss not falling ({first:.3f} -> {last:.3f})")
    if len(losses) < s["min_steps"]:
        problems.append(f"only {len(losses)} steps in {budget_s:.0f} s (needs {s['min_steps']})")
    if precision == "fp32" and ctx.cuda:
        ctx.trained[family] = (trainer.model, out_dir)
    return {"status": "failed" if problems else "passed", "problems": problems, "steps": len(losses),
            "budget_s": round(budget_s, 1), "loss_first": first, "loss_last": last, "loss_window": w,
            "val_loss": finite_or_none(final.get("best_val_loss")), "tokens_per_s": tokens_per_s,
            "tokens_per_s_run": finite_or_none(final.get("tokens_per_s")), "train_seconds": final.get("train_seconds"),
            "peak_memory_mb": peak_mb, "parameters": model.num_parameters(),
            "losses_every_10": losses[::10], "tf32": precision_flags() if ctx.cuda else None,
            "summary": (f"{len(losses)} steps, loss {first:.3f} -> {last:.3f}, {tokens_per_s:,.0f} tok/s"
                        + (f", peak {peak_mb:,.0f} MB" if peak_mb is not None else "")
                        + (f"; FAILED: {'; '.join(problems)}" if problems else ""))}


def check_train(ctx: Context, rec: Recorder):
    s = ctx.sizes
    step_s = {}                                           # (family, precision) -> one step's seconds
    for family in FAMILIES:                               # the one-step comparisons (cheap; they warm up)
        run, train_ds, _ = family_run(family, ctx)
        model0, batch = fresh_model(run), fixed_batch(train_ds, s["step_batch"])
        cache = {}                                        # the CPU reference step, once per family
        if ctx.tiny:
            entry = rec.item(f"{family} step fp32 cpu vs fp64 cpu", "cpu", compare_step, model0, batch, run.train,
                             ("cpu", "fp64"), ("cpu", "fp32"))
            step_s[family, "fp32"] = entry.get("candidate_s")
        for precision in PRECISIONS:
            name = f"{family} step {precision} cuda vs fp32 cpu"
            if not ctx.cuda:
                rec.skip(name, "gpu", ctx.no_gpu_reason)
            elif precision == "bf16" and not torch.cuda.is_bf16_supported():
                rec.skip(name, "gpu", f"{gpu_name()} has no bf16")
            else:
                entry = rec.item(name, "gpu", compare_step, model0, batch, run.train, ("cpu", "fp32"),
                                 (GPU, precision), cache)
                step_s[family, precision] = entry.get("candidate_s")
    # The training runs share what is left in proportion to their expected length (overhead +
    # steps x the step time measured above), so that all get about the same number of steps; a
    # run that ends early (max steps) leaves its time to the next ones; the Trainer's budget_s
    # holds each to its share. fp32 first (generate and save_load reuse those models); when time
    # runs short the last runs are skipped, not the first ones.
    runs = [(f, "fp32") for f in FAMILIES] if ctx.tiny else [(f, p) for p in PRECISIONS for f in FAMILIES]
    runs = [r for r in runs if r[1] != "bf16" or torch.cuda.is_bf16_supported()]
    known = [v for v in step_s.values() if v] or [1.0]
    overhead, floor = (1.0, 2.0) if ctx.tiny else (3.0, 5.0)   # data, eval, checkpoints; smallest budget_s
    expected = {r: overhead + s["train_steps"] * (step_s.get(r) or statistics.median(known)) for r in runs}
    part, where = ("cpu", "cpu") if ctx.tiny else ("gpu", "cuda")
    for i, run in enumerate(runs):
        family, precision = run
        name = f"{family} train {precision} {where}"
        available = ctx.left() - 2.0
        share = available * expected[run] / sum(expected[r] for r in runs[i:])
        budget_s = min(available, max(floor + overhead, share)) - overhead
        if budget_s < floor:
            rec.skip(name, part, f"time limit: {ctx.left():.0f} s left for {len(runs) - i} runs")
            continue
        rec.item(name, part, train_run, ctx, family, precision, budget_s)
    if not ctx.tiny and not torch.cuda.is_bf16_supported():
        for family in FAMILIES:
            rec.skip(f"{family} train bf16 cuda", "gpu", f"{gpu_name()} has no bf16")
    if ctx.tiny:
        ctx.skip_gpu(rec, [f"{f} train {p} cuda" for f in FAMILIES for p in PRECISIONS])


# ============================================================================ check 3: the scan


def scan_inputs(batch, d_inner, d_state, length, seed=0):
    """Inputs of selective_scan as the mixer makes them (fp64, CPU): u, delta (B, Dn, L),
    A (Dn, N) = -(1..N) (the S4D-real init), B, C (B, N, L), D (Dn), z (B, Dn, L), delta_bias (Dn)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    A = -torch.arange(1, d_state + 1, dtype=torch.float64).repeat(d_inner, 1)
    return {"u": r(batch, d_inner, length), "delta": 0.5 * r(batch, d_inner, length), "A": A,
            "B": r(batch, d_state, length), "C": r(batch, d_state, length), "D": r(d_inner),
            "z": r(batch, d_inner, length), "delta_bias": 0.5 * r(d_inner) - 2.0}


def run_scan(impl: str, inputs: dict, grad_out: torch.Tensor | None):
    """Output (and input gradients with ``grad_out``) of one scan implementation."""
    from pixelbyte.mamba import COMPILED_CHUNK_SIZE, CHUNK_SIZE, selective_scan, selective_scan_ref

    leaves = {k: v.detach().clone().requires_grad_(grad_out is not None) for k, v in inputs.items()}
    kwargs = dict(delta_softplus=True)
    if impl == "reference":
        out = selective_scan_ref(**leaves, **kwargs)
    else:
        out = selective_scan(**leaves, **kwargs, chunk_size=COMPILED_CHUNK_SIZE if impl == "compiled" else CHUNK_SIZE,
                             compile_chunk=impl == "compiled")
    if grad_out is None:
        return out.detach(), None
    out.backward(grad_out)
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def scan_accuracy(impl: str, device, sc: dict) -> dict:
    inputs64 = {k: v.to(device) for k, v in scan_inputs(sc["batch"], sc["d_inner"], sc["d_state"],
                                                        sc["accuracy_length"]).items()}
    grad64 = torch.randn(sc["batch"], sc["d_inner"], sc["accuracy_length"], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1)).to(device)
    ref_out, ref_grads = run_scan("reference", inputs64, grad64)
    t0 = time.perf_counter()
    out, grads = run_scan(impl, {k: v.float() for k, v in inputs64.items()}, grad64.float())
    sync(device)
    forward = max_rel(out, ref_out)
    backward = {k: max_rel(grads[k], ref_grads[k]) for k in ref_grads}
    worst = max(backward, key=backward.get)
    tol = TOLERANCES["scan"]
    ok = forward <= tol["forward_rel"] and backward[worst] <= tol["backward_rel"]
    return {"status": "passed" if ok else "failed", "tolerance": tol, "forward_rel": forward,
            "backward_rel": backward, "first_call_s": time.perf_counter() - t0,
            "shape": {k: sc[k] for k in ("batch", "d_inner", "d_state")} | {"length": sc["accuracy_length"]},
            "summary": f"fwd {forward:.1e}, bwd {backward[worst]:.1e} ({worst}) (tol {tol['forward_rel']:.0e}/"
                       f"{tol['backward_rel']:.0e}), fp32 vs fp64, B{sc['batch']} L{sc['accuracy_length']}"}


def scan_speed(impl: str, device, sc: dict, length: int, repeats: int) -> dict:
    """Forward and forward+backward of the scan, fp32: median ms and tokens/s; the first call
    (torch.compile's compile, when cold) is timed apart."""
    inputs = {k: v.float().to(device)
              for k, v in scan_inputs(sc["batch"], sc["d_inner"], sc["d_state"], length).items()}
    grad_out = torch.ones(sc["batch"], sc["d_inner"], length, device=device)

    def timed(backward: bool) -> float:
        sync(device)
        t0 = time.perf_counter()
        if backward:
            run_scan(impl, inputs, grad_out)
        else:
            with torch.no_grad():
                run_scan(impl, inputs, None)
        sync(device)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = timed(True)
    fwd_bwd = statistics.median(timed(True) for _ in range(repeats))
    fwd = statistics.median(timed(False) for _ in range(repeats))
    tokens = sc["batch"] * length
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return {"status": "passed", "length": length, "batch": sc["batch"], "repeats": repeats,
            "first_call_s": first, "fwd_bwd_ms": 1e3 * fwd_bwd, "fwd_ms": 1e3 * fwd,
            "fwd_bwd_tokens_per_s": tokens / fwd_bwd, "fwd_tokens_per_s": tokens / fwd, "peak_memory_mb": peak,
            "summary": f"fwd+bwd {1e3 * fwd_bwd:.1f} ms = {tokens / fwd_bwd:,.0f} tok/s, fwd {1e3 * fwd:.1f} ms"
                       f" (first call {first:.1f} s)" + (f", peak {peak:,.0f} MB" if peak is not None else "")}


def check_scan(ctx: Context, rec: Recorder):
    if ctx.tiny:
        sc = ctx.sizes["scan"]
        rec.item("chunked scan cpu vs fp64 reference", "cpu", scan_accuracy, "chunked", torch.device("cpu"), sc)
        rec.item(f"chunked scan speed cpu L={sc['lengths'][0]} (tiny)", "cpu", scan_speed, "chunked",
                 torch.device("cpu"), sc, sc["lengths"][0], 2)
    lengths = SIZES["gpu"]["scan"]["lengths"]
    names = [name for impl in ("chunked", "compiled")
             for name in [f"{impl} scan cuda vs fp64 reference"] + [f"{impl} scan speed cuda L={n}" for n in lengths]]
    if not ctx.cuda:
        ctx.skip_gpu(rec, names)
        return
    sc, device = ctx.sizes["scan"], torch.device(GPU)
    # chunked first (eager: cheap and predictable), then compiled, whose first call compiles (cold:
    # tens of seconds) and whose chunk views' strides change with L: expect a recompile per length
    for impl in ("chunked", "compiled"):
        entry = rec.item(f"{impl} scan cuda vs fp64 reference", "gpu", scan_accuracy, impl, device, sc)
        compile_s = (entry.get("first_call_s") or 0.0) if impl == "compiled" else 0.0
        last = None                                        # (length, fwd+bwd seconds) of the last run
        for n in lengths:
            name = f"{impl} scan speed cuda L={n}"
            repeats = 3 if n <= 256 else 1
            if last is not None:                           # predicted: linear in L (+ a recompile)
                need = (2 * repeats + 1) * last[1] * n / last[0] + compile_s
                if need > ctx.left() - 2:
                    rec.skip(name, "gpu", f"time limit: needs ~{need:.0f} s, {ctx.left():.0f} s left")
                    continue
            entry = rec.item(name, "gpu", scan_speed, impl, device, sc, n, repeats)
            if entry["status"] == "passed":
                last = (n, entry["fwd_bwd_ms"] / 1e3)
                if impl == "compiled":
                    compile_s = max(compile_s, entry["first_call_s"])


# ============================================================================ check 4: generation


def step_vs_forward(model, x: torch.Tensor) -> dict:
    """logits of model.step token by token against model.forward on the whole window, fp32 IEEE."""
    device = next(model.parameters()).device
    model.eval()
    x = x.to(device)
    with torch.no_grad(), ieee_fp32():
        full = model(x)[0]                                            # (B, L, V)
        state, stepped = model.init_state(x.shape[0], device), []
        for t in range(x.shape[1]):                                   # the LSTM's state is returned, not
            logits_t, state = model.step(x[:, t], state)              # updated in place
            stepped.append(logits_t)
        stepped = torch.stack(stepped, 1)                             # (B, L, V)
    scale = max(1.0, float(full.abs().max()))
    err = float((stepped - full).abs().max()) / scale
    tol = TOLERANCES["step_vs_forward"]
    return {"status": "passed" if err <= tol else "failed", "max_abs_diff": err * scale, "relative": err,
            "tolerance": tol, "shape": list(x.shape[:2]),
            "summary": f"max |step - forward| {err * scale:.1e} (rel {err:.1e}, tol {tol:.0e}), "
                       f"B{x.shape[0]} L{x.shape[1]}"}


def prompts_from(seqs, n: int, length: int) -> list[list[int]]:
    """n prompts of `length` real token ids, each from its own item (cycled)."""
    from pixelbyte import tokenizer as tok

    long_enough = [s for s in seqs if len(s) >= length] or seqs
    return [tok.centre_ids(long_enough[i % len(long_enough)][:length]).astype(int).tolist() for i in range(n)]


def generation_speed(model, prompts: list[list[int]], new_tokens: int, use_state: bool, window=None) -> dict:
    """ms per generator step (one new token for every row; the window re-run: per new token),
    measured after a short warm-up; and, stateful, the model's ``step`` alone."""
    from pixelbyte.generate import Generator

    device = next(model.parameters()).device
    generator = Generator(model, use_state=use_state, window=window)
    generator.generate(prompts, 2)                                     # warm-up (cuDNN plans, caches)
    sync(device)
    t0 = time.perf_counter()
    generator.generate(prompts, new_tokens)
    sync(device)
    wall = time.perf_counter() - t0
    steps = len(prompts[0]) + new_tokens - (1 if generator.objective == "next" else 0)
    calls = steps if use_state else new_tokens            # the window re-run calls the model per new token only
    ms = 1e3 * wall / calls
    out = {"status": "passed", "batch": len(prompts), "prompt": len(prompts[0]), "new_tokens": new_tokens,
           "mode": "stateful" if use_state else f"window re-run ({window})", "ms_per_token": ms,
           "tokens_per_s": len(prompts) * calls / wall}
    if use_state:                                          # the model alone: step calls, no generator
        with torch.inference_mode():
            state = model.init_state(len(prompts), device)
            x = torch.zeros(len(prompts), 3, 3, dtype=torch.long, device=device)
            _, state = model.step(x, state)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                _, state = model.step(x, state)
            sync(device)
        out["step_only_ms"] = 1e3 * (time.perf_counter() - t0) / new_tokens
    out["summary"] = (f"{ms:.2f} ms per token step at batch {len(prompts)} ({out['tokens_per_s']:,.0f} tok/s, "
                      f"{out['mode']})"
                      + (f"; model.step alone {out['step_only_ms']:.2f} ms" if use_state else ""))
    return out


def generation_model(ctx: Context, family: str, device, part: str):
    """The model trained on CUDA by `train` when there is one, else a fresh one (seeded)."""
    if part == "gpu" and family in ctx.trained:
        return ctx.trained[family][0].eval(), "trained by check train"
    run, _, _ = family_run(family, ctx)
    return fresh_model(run).to(device).eval(), "fresh init (seed 0)"


def check_generate(ctx: Context, rec: Recorder):
    g = ctx.sizes["gen"]
    devices = [("cpu", torch.device("cpu"))] if ctx.tiny else []
    devices += [("gpu", torch.device(GPU))] if ctx.cuda else []
    val = None
    for part, device in devices:
        where = "cuda" if part == "gpu" else "cpu"
        for family in CAUSAL_FAMILIES:
            model, source = generation_model(ctx, family, device, part)
            if val is None:
                val = family_run(family, ctx)[2]
            x, _ = fixed_batch(val, g["check_batch"])
            entry = rec.item(f"{family} step == forward {where}", part, step_vs_forward, model,
                             x[:, :g["check_length"]])
            entry["weights"] = source
            for batch in g["batches"]:
                if ctx.left() < 3:
                    rec.skip(f"{family} ms/token {where} batch {batch}", part, f"time limit: {ctx.left():.0f} s left")
                    continue
                rec.item(f"{family} ms/token {where} batch {batch}", part, generation_speed, model,
                         prompts_from(ctx.seqs(), batch, g["prompt"]), g["new_tokens"], True)
        model, source = generation_model(ctx, "bysmamba_bi", device, part)
        name = f"bysmamba_bi ms/token {where} batch 1 (window re-run)"
        if ctx.left() < 5:
            rec.skip(name, part, f"time limit: {ctx.left():.0f} s left")
        else:
            rec.item(name, part, generation_speed, model, prompts_from(ctx.seqs(), 1, ctx.sizes["seq_length"]),
                     g["bi_new_tokens"], False, ctx.sizes["seq_length"])
    if not ctx.cuda:
        ctx.skip_gpu(rec, [f"{f} {what} cuda" + (f" batch {b}" if what == "ms/token" else "")
                           for f in CAUSAL_FAMILIES for what in ("step == forward", "ms/token")
                           for b in (SIZES["gpu"]["gen"]["batches"] if what == "ms/token" else [None])]
                     + ["bysmamba_bi ms/token cuda batch 1 (window re-run)"])


# ============================================================================ check 5: save / load


def trained_model(ctx: Context, family: str, device, part: str) -> tuple:
    """(model trained on `device`, its Trainer out_dir): the `train` check's, else a short run."""
    if part == "gpu" and family in ctx.trained:
        return ctx.trained[family]
    from pixelbyte.train import Trainer

    out_dir = ctx.work_dir / f"save_load_{family}_{device.type}"
    run, train_ds, val_ds = family_run(family, ctx, max_steps=10 if ctx.tiny else 20, device=device.type,
                                       out_dir=str(out_dir))
    trainer = Trainer(fresh_model(run), train_ds, val_ds, run)
    trainer.fit(overwrite=True)
    return trainer.model, out_dir


def save_and_load(ctx: Context, family: str, device, part: str) -> dict:
    from pixelbyte.models import PixelByteModel

    model, out_dir = trained_model(ctx, family, device, part)
    model.eval()
    folder = ctx.work_dir / f"saved_{family}_{device.type}"
    model.save_pretrained(folder)
    loaded = PixelByteModel.from_pretrained(folder, map_location="cpu")
    state, loaded_state = model.state_dict(), loaded.state_dict()
    identical = state.keys() == loaded_state.keys() and all(
        torch.equal(state[k].cpu(), loaded_state[k]) and loaded_state[k].device.type == "cpu" for k in state)
    val = family_run(family, ctx)[2]
    x, _ = fixed_batch(val, 8 if not ctx.tiny else 2)
    tol = TOLERANCES["save_load"]
    with torch.no_grad(), ieee_fp32():
        logits = model(x.to(device))[0].cpu()
        logits_cpu = loaded(x)[0]
        back_rel = None
        if part == "gpu":                                       # and back on the GPU
            back = PixelByteModel.from_pretrained(folder, map_location=GPU)
            back_rel = max_rel(back(x.to(device))[0], logits)
    cpu_rel = max_rel(logits_cpu, logits)
    best_model = out_dir / "best_model"                         # the Trainer's own save_pretrained
    trainer_copy = None                                         # its weights are the final ones when the
    final = json.loads((out_dir / "run.json").read_text()).get("final") or {}   # best eval was the last
    if best_model.is_dir() and final.get("best_step") == final.get("step"):
        best = PixelByteModel.from_pretrained(best_model, map_location="cpu")
        trainer_copy = all(torch.equal(state[k].cpu(), v) for k, v in best.state_dict().items())
    limit = tol["logits_cpu_vs_cuda_rel"] if part == "gpu" else 0.0
    problems = [p for p, bad in (("weights differ after load", not identical),
                                 (f"CPU logits rel {cpu_rel:.1e} > {limit:.0e}", cpu_rel > limit),
                                 (f"back on CUDA rel {back_rel}",
                                  back_rel is not None and back_rel > tol["logits_back_on_cuda_rel"]),
                                 ("run.json not loaded", loaded.run is None),
                                 ("the Trainer's best_model/ holds other weights", trainer_copy is False))
                if bad]
    return {"status": "failed" if problems else "passed", "problems": problems, "weights_identical": identical,
            "logits_cpu_rel": cpu_rel, "logits_back_on_cuda_rel": back_rel, "trainer_best_model_loads": trainer_copy,
            "tolerance": {**tol, "logits_cpu_vs_cuda_rel": limit},
            "summary": f"weights {'bit-identical' if identical else 'DIFFER'}, logits on CPU rel {cpu_rel:.1e}"
                       + (f", back on CUDA rel {back_rel:.1e}" if back_rel is not None else "")
                       + (f"; FAILED: {'; '.join(problems)}" if problems else "")}


def check_save_load(ctx: Context, rec: Recorder):
    if ctx.tiny:
        for family in ("lstm", "bysmamba"):
            rec.item(f"{family} trained on cpu -> save -> load on cpu", "cpu", save_and_load, ctx, family,
                     torch.device("cpu"), "cpu")
    names = [f"{family} trained on cuda -> save -> load on cpu" for family in FAMILIES]
    if not ctx.cuda:
        ctx.skip_gpu(rec, names)
        return
    for family, name in zip(FAMILIES, names):
        if ctx.left() < 2:
            rec.skip(name, "gpu", f"time limit: {ctx.left():.0f} s left")
            continue
        rec.item(name, "gpu", save_and_load, ctx, family, torch.device(GPU), "gpu")


# ============================================================================ check 6: mamba-ssm


def kernels_vs_torch(ctx: Context) -> dict:
    """The paper's Mamba layer through the kernels and through the torch backend (same weights):
    outputs and every gradient (fp32, IEEE), and the fwd+bwd speed of both."""
    from pixelbyte.mamba import Mamba

    sc = ctx.sizes["scan"]
    torch.manual_seed(0)
    layers = {"cuda kernels": Mamba(81, d_state=sc["d_state"], expand=1, backend="cuda").cuda(),
              "torch chunked": Mamba(81, d_state=sc["d_state"], expand=1, backend="torch").cuda()}
    layers["torch chunked"].load_state_dict(layers["cuda kernels"].state_dict())
    x = torch.randn(sc["batch"], 256, 81, device="cuda")
    grad_out = torch.randn_like(x)
    results = {}
    for name, layer in layers.items():
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        with ieee_fp32():
            out = layer(xi)
            out.backward(grad_out)
        results[name] = (out.detach(), xi.grad, {k: p.grad.clone() for k, p in layer.named_parameters()})
    ref_out, ref_gx, ref_grads = results["torch chunked"]
    out, gx, grads = results["cuda kernels"]
    errors = {"output": max_rel(out, ref_out), "grad x": max_rel(gx, ref_gx),
              **{f"grad {k}": max_rel(g, ref_grads[k]) for k, g in grads.items()}}
    speed = {}
    for name, layer in layers.items():
        if ctx.left() < 3:
            break
        xi = x.clone().requires_grad_()
        times = []
        for _ in range(4):
            sync("cuda")
            t0 = time.perf_counter()
            layer(xi).backward(grad_out)
            sync("cuda")
            times.append(time.perf_counter() - t0)
        speed[name] = {"fwd_bwd_ms": 1e3 * statistics.median(times[1:]),
                       "tokens_per_s": x.shape[0] * x.shape[1] / statistics.median(times[1:])}
    worst = max(errors, key=errors.get)
    tol = TOLERANCES["mamba_kernels_rel"]
    return {"status": "passed" if errors[worst] <= tol else "failed", "errors": errors, "tolerance": tol,
            "speed": speed,
            "summary": f"worst rel {errors[worst]:.1e} ({worst}, tol {tol:.0e}); "
                       + ", ".join(f"{k} {v['fwd_bwd_ms']:.1f} ms" for k, v in speed.items())}


def mamba_ssm_available() -> bool:
    from pixelbyte.mamba import mamba_ssm_available as available

    return available()


def check_mamba_kernels(ctx: Context, rec: Recorder):
    from pixelbyte import kaggle_env
    from pixelbyte.mamba import _mamba_ssm_ops
    names = ["mamba-ssm kernels work (kaggle_env.check_mamba_kernels)", "mamba-ssm kernels vs torch backend"]
    if not ctx.cuda:
        ctx.skip_gpu(rec, names)
        return
    if not mamba_ssm_available():
        reason = (f"mamba_ssm does not import ({_mamba_ssm_ops()[1]}). On the device machine it cannot be "
                  f"installed: no network, its prebuilt wheels stop at torch 2.10 and exceed the 64 MiB carry")
        for name in names:
            rec.skip(name, "gpu", reason)
        return
    ok, detail = kaggle_env.check_mamba_kernels()
    rec.add(names[0], "gpu", "passed" if ok else "failed", summary=detail, detail=detail)
    if ok:
        rec.item(names[1], "gpu", kernels_vs_torch, ctx)
    else:
        rec.skip(names[1], "gpu", f"the kernels do not work: {detail}")


# ============================================================================ the report


CHECKS = [
    Check("cuda_tests", "1. CUDA tests of the suite (pytest)", check_cuda_tests, LIMITS["cuda_tests"][0]),
    Check("train", "2. Training per family: fp32 / fp16 AMP / bf16; one step vs the CPU", check_train,
          LIMITS["train"][0]),
    Check("scan", "3. Selective scan (torch backend): accuracy and speed", check_scan, LIMITS["scan"][0]),
    Check("generate", "4. Generation: step == forward, ms/token", check_generate, LIMITS["generate"][0]),
    Check("save_load", "5. Trained on CUDA, saved, loaded on CPU", check_save_load, LIMITS["save_load"][0]),
    Check("mamba_kernels", "6. mamba-ssm kernels vs the torch backend", check_mamba_kernels,
          LIMITS["mamba_kernels"][0]),
]


def machine_info() -> dict:
    import numpy as np

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": np.__version__,
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    for name in ("datasets", "huggingface_hub", "safetensors", "pyarrow", "fsspec", "triton", "mamba_ssm"):
        try:
            from importlib.metadata import version

            info[name] = version(name.replace("_", "-"))
        except Exception:
            info[name] = None
    with contextlib.suppress(Exception):
        from pixelbyte import git_commit

        info["git_commit"] = git_commit()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), multiprocessors=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version(),
                    fp32_precision=precision_flags())
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip() or None
        except Exception as err:
            info["driver"] = f"nvidia-smi failed: {type(err).__name__}"
    return info


def markdown(report: dict) -> str:
    m = report["machine"]
    where = (f"{m.get('gpu')} (sm {m.get('capability')}, driver {m.get('driver')}), " if m.get("cuda_available")
             else "no CUDA device, ") + f"torch {m['torch']} (CUDA {m['torch_cuda']}), Python {m['python']}"
    lines = [f"GPU check ({report['mode']} mode): {where}; {report['elapsed_s']:.0f} s of {report['budget_s']:.0f} s",
             "", "| check | item | part | status | result |", "|---|---|---|---|---|"]
    for check in report["checks"]:
        rows = check["items"] or [{"name": "-", "part": "-", "status": check["status"],
                                   "summary": check.get("reason") or check.get("error") or ""}]
        if check["items"] and check["status"] in ("timeout", "error"):
            rows = rows + [{"name": f"({check['status']})", "part": "-", "status": check["status"],
                            "summary": check.get("reason") or check.get("error")}]
        for item in rows:
            text = str(item.get("summary", "")).replace("|", "/").replace("\n", " ")
            lines.append(f"| {check['name']} | {item['name']} | {item['part']} | {item['status']} | {text} |")
    return "\n".join(lines + headline_tables(report)) + "\n"


def headline_tables(report: dict) -> list[str]:
    """The numbers for the README, from the GPU items that ran: training tokens/s per family and
    precision, the scan's tokens/s per length, generation ms per token step."""
    items = {i["name"]: i for c in report["checks"] for i in c["items"] if i["part"] == "gpu" and i["status"] != "skipped"}
    lines = []

    def cell(name, key, spec):
        value = items.get(name, {}).get(key)
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    if any(" train " in n for n in items):
        lines += ["", "Training (Trainer, embedded set, B 32 x L 256): tokens/s (steps, peak MB)", "",
                  "| family | " + " | ".join(PRECISIONS) + " |", "|---|" + "---|" * len(PRECISIONS)]
        for family in FAMILIES:
            lines.append(f"| {family} | " + " | ".join(
                f"{cell(f'{family} train {p} cuda', 'tokens_per_s', ',.0f')} ({cell(f'{family} train {p} cuda', 'steps', 'd')}, "
                f"{cell(f'{family} train {p} cuda', 'peak_memory_mb', ',.0f')})" for p in PRECISIONS) + " |")
    lengths = SIZES["gpu"]["scan"]["lengths"]
    if any(" scan speed " in n for n in items):
        lines += ["", "Selective scan, fp32, B 32, d_inner 81, d_state 64: fwd+bwd tokens/s", "",
                  "| scan | " + " | ".join(f"L {n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for impl in ("chunked", "compiled"):
            lines.append(f"| {impl} | " + " | ".join(cell(f"{impl} scan speed cuda L={n}", "fwd_bwd_tokens_per_s", ",.0f")
                                                    for n in lengths) + " |")
    batches = SIZES["gpu"]["gen"]["batches"]
    if any(" ms/token " in n for n in items):
        lines += ["", "Generation: ms per token step (stateful; bysmamba_bi: window re-run of 256)", "",
                  "| family | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
        for family in CAUSAL_FAMILIES:
            lines.append(f"| {family} | " + " | ".join(cell(f"{family} ms/token cuda batch {b}", "ms_per_token", ".2f")
                                                      for b in batches) + " |")
        lines.append(f"| bysmamba_bi | {cell('bysmamba_bi ms/token cuda batch 1 (window re-run)', 'ms_per_token', '.2f')}"
                     + " | -" * (len(batches) - 1) + " |")
    return lines


def sanitize(value):
    """NaN / inf -> None and tensors -> lists, so the JSON is plain JSON."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, torch.Tensor):
        return sanitize(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: dict, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(sanitize(report), indent=1) + "\n")
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(markdown(report))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON report (the markdown table beside it, .md); default {OUT} "
                             f"(--tiny: {TINY_OUT}, not a result to commit)")
    parser.add_argument("--tiny", action="store_true", help="CPU parts only, tiny sizes (the default without CUDA)")
    parser.add_argument("--only", default=None, help=f"comma-separated checks among {[c.name for c in CHECKS]}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"total seconds (default {BUDGET_S}; --tiny {TINY_BUDGET_S})")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    mode = "tiny" if args.tiny or not cuda else "gpu"
    checks = CHECKS
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {c.name for c in CHECKS})
        if unknown:
            parser.error(f"--only: unknown check(s) {unknown}; choose among {[c.name for c in CHECKS]}")
        checks = [c for c in CHECKS if c.name in wanted]
    if mode == "tiny":
        checks = [replace(c, limit_s=LIMITS[c.name][1], min_s=1, grace_s=3) for c in checks]
        torch.set_num_threads(1)
    out = args.out or (TINY_OUT if mode == "tiny" else OUT)
    budget = Budget(args.budget_s or (TINY_BUDGET_S if mode == "tiny" else BUDGET_S))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        no_gpu = None if mode == "gpu" else ("no CUDA device" if not cuda else "--tiny: CPU parts only")
        ctx = Context(mode=mode, cuda=mode == "gpu", no_gpu_reason=no_gpu, sizes=SIZES[mode], work_dir=Path(work))
        report = {"format": "pixelbyte-gpu-check-v1", "mode": mode, "command": [sys.argv[0], *(argv or sys.argv[1:])],
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget.total_s,
                  "limits_s": {c.name: c.limit_s for c in checks}, "tolerances": TOLERANCES,
                  "sizes": SIZES[mode], "families": FAMILIES, "machine": {}, "checks": [], "elapsed_s": 0.0}
        try:
            report["machine"] = machine_info()
        except Exception as err:                 # a broken driver must not stop the report
            report["machine"] = {"error": f"{type(err).__name__}: {err}", "torch": torch.__version__,
                                 "torch_cuda": torch.version.cuda, "python": platform.python_version()}
        log(f"mode {mode}, budget {budget.total_s:.0f} s, report {out}")
        t0 = time.perf_counter()
        try:                                     # the data once, before the checks (their limits exclude it)
            report["data_items"] = len(ctx.seqs())
        except Exception as err:                 # each check that needs it then fails with this error
            report["data_error"] = f"{type(err).__name__}: {err}"
        report["data_load_s"] = round(time.perf_counter() - t0, 2)
        log(f"data: {report.get('data_items')} items in {report['data_load_s']:.1f} s")

        def update(records):
            report["checks"], report["elapsed_s"] = records, budget.elapsed()
            report["data"] = ctx._data_note or "load_pixelbytes('embedded')"
            write_report(report, out)

        records = run_checks(checks, ctx, budget, on_update=update)
        update(records)
    print(markdown(report))
    print(f"report: {out} and {out.with_suffix('.md')}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
