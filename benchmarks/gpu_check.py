"""What the project's CUDA paths measure on one GPU, in one command: a JSON report and a table.

    python benchmarks/gpu_check.py                        # a CUDA machine: benchmarks/results/gpu_check.json + .md
    python benchmarks/gpu_check.py --tiny --device cpu    # anywhere, tiny sizes: every code path, no GPU numbers
    python benchmarks/gpu_check.py --only train,kernels   # some checks (a rerun)

Correctness on CUDA is pytest's job: ``pytest tests/`` on the CUDA machine runs the suite's
CUDA-conditional tests (fp16 AMP, the mamba-ssm kernels against the torch backend, ...), which
skip elsewhere. This script measures, through the package's own Trainer and generator:
1. ``train``: training tokens/s of each family (LSTM, attention, BysMamba with the torch scan,
   bidirectional BysMamba) at the paper's size (windows of 256) and at the size of the model
   shipped in the package (whole items, positions), in fp32 and fp16 AMP; the loss after the
   same steps in fp32 and in AMP.
2. ``compile``: eager against ``TrainConfig(compile=True)``: tokens/s and the loss after the
   same steps.
3. ``kernels``: the torch scan against mamba-ssm's CUDA kernels (same weights): max abs
   difference of outputs and gradients, Mamba and Mamba-2; or why mamba-ssm does not import.
4. ``checkpoint``: a model trained on the GPU, saved, loaded on the CPU: greedy generation gives
   the same tokens on both.
5. ``kaggle_estimate``: the wall time of a Kaggle run of kaggle/params_paper.json, from the
   measured speed of its training notebook (the others are bounded by their budgets).
A check that raises is recorded with its error and the next one runs; the report is rewritten
after every check, so a run that is stopped keeps what it measured.

On a CUDA machine without network
---------------------------------
The data is shipped in the package, so only Python packages have to travel. On a machine with
network, download wheels for the target's Python version and platform (torch is the target's
own: leave it out), e.g.

    pip download -d wheels --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \\
        <the dependencies of pyproject.toml, its dev extra> [mamba-ssm causal-conv1d: wheels built
        for the target's torch and CUDA, if there are any]

copy the checkout and ``wheels/`` over, then there:

    pip install --no-index --find-links wheels -e ".[dev]"
    export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
    python benchmarks/gpu_check.py && pytest tests/

mamba-ssm builds from source only with network and a CUDA toolkit; without it check 3 reports
the import error and the rest runs on the torch backend. Then copy the report to the README.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- defaults
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"   # the report of a CUDA run (.md beside it)
KAGGLE_PARAMS = ROOT / "kaggle" / "params_paper.json"
FAMILIES = {"lstm": "rnn_uni_pxby_conv_81_64_2", "attention": "att_uni_pxby_conv_81_64_2",
            "bysmamba": "ssm_uni_pxby_conv_81_64_2", "bysmamba_bi": "ssm_bi_pxby_conv_81_64_2"}
SIZES = {  # steps per training run, its batch; tiny: few items, small models
    "gpu": dict(items=None, model={}, steps=150, batch=32, seq_length=256, stride=32,
                compile_families=list(FAMILIES), prompt=64, new_tokens=64),
    "tiny": dict(items=40, model=dict(dim=18, hidden=8), steps=12, batch=4, seq_length=32, stride=16,
                 compile_families=["attention"], prompt=8, new_tokens=8),
}
TOLERANCES = {
    "amp_loss_rel": 0.05,        # |loss AMP - loss fp32| / loss fp32, after the same steps
    "compile_loss_rel": 1e-3,    # |loss compiled - loss eager| / loss eager, after the same steps
    "kernels_abs": 1e-3,         # max |mamba-ssm kernels - torch scan|, outputs and gradients (fp32)
}
# --------------------------------------------------------------------------------------


def log(message: str):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Context:
    """What the checks share: the device, the sizes, the data, the models trained so far."""

    def __init__(self, device: str, tiny: bool, work_dir: Path):
        from pixelbyte import data
        from pixelbyte.config import DataConfig

        self.device, self.tiny, self.work_dir = torch.device(device), tiny, work_dir
        self.sizes = SIZES["tiny" if tiny else "gpu"]
        self.seqs = data.load(DataConfig(limit=self.sizes["items"]))
        self.runs = {}            # (size, family, precision) -> train_run's result
        self.models = {}          # (size, family) -> (fp32 model on the device, its RunConfig)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=1)
def shipped_config():
    from pixelbyte.models import PixelByteModel

    return PixelByteModel.from_pretrained("pretrained", map_location="cpu").config


def run_config(ctx: Context, size: str, family: str, **train):
    """The RunConfig of one family: the paper's (next-token windows) or the shipped model's
    (whole items in both orders, positions) with the shipped model's widths."""
    from pixelbyte.config import DataConfig, RunConfig, SampleConfig, TrainConfig
    from pixelbyte.models import paper_config

    s = ctx.sizes
    if size == "paper":
        model = paper_config(FAMILIES[family], **s["model"])
        samples = SampleConfig(seq_length=s["seq_length"], stride=s["stride"])
    else:
        model = replace(shipped_config(), model=family, n_heads="auto", dropout=0.0, **s["model"])
        samples = SampleConfig(unit="item", orders="both")
    if model.model == "bysmamba":
        model = replace(model, backend="torch")
    train_cfg = TrainConfig(max_steps=s["steps"], batch_size=s["batch"], log_every=1, eval_every=10 ** 9,
                            eval_batches=1, progress=False, seed=0, device=ctx.device.type, **train)
    return RunConfig(data=DataConfig(limit=s["items"]), samples=samples, model=model, train=train_cfg)


def train_run(ctx: Context, run) -> dict:
    """Trains ``run`` with the project's Trainer: steady tokens/s (median after the first fifth
    of the steps: warm-up, compilation), loss at the start and at the end, peak memory."""
    from pixelbyte import data
    from pixelbyte.models import PixelByteModel
    from pixelbyte.train import Trainer

    train_ds, val_ds = data.make_datasets(ctx.seqs, run)
    model = PixelByteModel.from_run(run)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model, train_ds, val_ds, run)
    trainer.fit(overwrite=True)
    rows = [r for r in trainer.history if r["split"] == "train"]
    losses = [float(r["loss"]) for r in rows]
    steady = rows[len(rows) // 5:] if len(rows) > 5 else rows
    step_s = [b["wall_time"] - a["wall_time"] for a, b in zip(steady, steady[1:])] or [math.nan]
    return {"model": trainer.model, "steps": len(rows), "loss_first": losses[0], "loss_last": losses[-1],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "step_s": statistics.median(step_s), "parameters": model.num_parameters(),
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if ctx.cuda else None}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


# ============================================================================ the checks


def check_train(ctx: Context):
    for size in ("paper", "shipped"):
        for family in FAMILIES:
            if size == "shipped" and family == "bysmamba_bi":
                continue                     # a bidirectional model cannot learn the causal objective
            for precision in ("fp32", "amp"):
                run = run_config(ctx, size, family, out_dir=str(ctx.work_dir / f"{size}_{family}_{precision}"),
                                 amp=precision == "amp")
                result = train_run(ctx, run)
                model = result.pop("model")
                ctx.runs[size, family, precision] = result
                if precision == "fp32":
                    ctx.models[size, family] = (model, run)
                yield {"name": f"{size} {family} {precision}", "status": "passed", **result,
                       "summary": f"{result['tokens_per_s']:,.0f} tok/s, {result['steps']} steps, loss "
                                  f"{result['loss_first']:.3f} -> {result['loss_last']:.3f}"}
            fp32, amp = ctx.runs[size, family, "fp32"], ctx.runs[size, family, "amp"]
            diff = rel(amp["loss_last"], fp32["loss_last"])
            ok = diff <= TOLERANCES["amp_loss_rel"] and math.isfinite(amp["loss_last"])
            yield {"name": f"{size} {family} loss fp32 vs amp", "status": "passed" if ok else "failed",
                   "loss_rel": diff, "tolerance": TOLERANCES["amp_loss_rel"],
                   "summary": f"after {fp32['steps']} steps: {fp32['loss_last']:.4f} vs {amp['loss_last']:.4f} "
                              f"(rel {diff:.1e}); AMP {amp['tokens_per_s'] / fp32['tokens_per_s']:.2f}x fp32 speed"}


def check_compile(ctx: Context):
    for family in ctx.sizes["compile_families"]:
        eager = ctx.runs.get(("paper", family, "fp32"))
        if eager is None:
            run = run_config(ctx, "paper", family, out_dir=str(ctx.work_dir / f"eager_{family}"))
            eager = {k: v for k, v in train_run(ctx, run).items() if k != "model"}
        run = run_config(ctx, "paper", family, out_dir=str(ctx.work_dir / f"compiled_{family}"), compile=True)
        t0 = time.perf_counter()
        compiled = train_run(ctx, run)
        diff = rel(compiled["loss_last"], eager["loss_last"])
        speedup = compiled["tokens_per_s"] / eager["tokens_per_s"]
        yield {"name": f"paper {family} eager vs compiled", "status":
               "passed" if diff <= TOLERANCES["compile_loss_rel"] else "failed",
               "eager_tokens_per_s": eager["tokens_per_s"], "compiled_tokens_per_s": compiled["tokens_per_s"],
               "speedup": speedup, "loss_rel": diff, "tolerance": TOLERANCES["compile_loss_rel"],
               "run_s": time.perf_counter() - t0,
               "summary": f"{eager['tokens_per_s']:,.0f} -> {compiled['tokens_per_s']:,.0f} tok/s ({speedup:.2f}x), "
                          f"loss rel {diff:.1e} after {compiled['steps']} steps"}


def kernels_vs_torch(mixer_cls, **kwargs) -> dict:
    """One layer through mamba-ssm's kernels and through the torch backend, same weights, fp32
    without TF32: max abs difference of the output and of every gradient."""
    torch.manual_seed(0)
    layers = {b: mixer_cls(81, backend=b, **kwargs).cuda() for b in ("cuda", "torch")}
    layers["torch"].load_state_dict(layers["cuda"].state_dict())
    x, grad_out = torch.randn(8, 256, 81, device="cuda"), torch.randn(8, 256, 81, device="cuda")
    results, tf32 = {}, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for backend, layer in layers.items():
            xi = x.clone().requires_grad_()
            out = layer(xi)
            out.backward(grad_out)
            results[backend] = {"output": out.detach(), "grad x": xi.grad,
                                **{f"grad {k}": p.grad for k, p in layer.named_parameters()}}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    diffs = {k: float((v - results["torch"][k]).abs().max()) for k, v in results["cuda"].items()}
    worst = max(diffs, key=diffs.get)
    tol = TOLERANCES["kernels_abs"]
    return {"status": "passed" if diffs[worst] <= tol else "failed", "max_abs_diff": diffs, "tolerance": tol,
            "summary": f"forward {diffs['output']:.1e}, backward worst {max(v for k, v in diffs.items() if k != 'output'):.1e} "
                       f"({worst if worst != 'output' else 'grad'}); tol {tol:.0e}"}


def check_kernels(ctx: Context):
    from pixelbyte.mamba import Mamba, _mamba_ssm_ops
    from pixelbyte.mamba2 import Mamba2, _mamba2_ops

    for name, cls, ops, kwargs in (("Mamba", Mamba, _mamba_ssm_ops, dict(d_state=64)),
                                   ("Mamba2", Mamba2, _mamba2_ops, dict(d_state=64, headdim=81))):
        reason = None if ctx.cuda else "needs a CUDA device"
        reason = reason or (f"mamba_ssm does not import: {ops()[1]}" if ops()[0] is None else None)
        if reason:
            yield {"name": f"{name} kernels vs torch", "status": "skipped", "summary": reason}
        else:
            yield {"name": f"{name} kernels vs torch", **kernels_vs_torch(cls, **kwargs)}


def check_checkpoint(ctx: Context):
    from pixelbyte import tokenizer as tok
    from pixelbyte.generate import generate
    from pixelbyte.models import PixelByteModel

    s = ctx.sizes
    prompt = tok.centre_ids(max(ctx.seqs, key=len)[:s["prompt"]]).astype(int).tolist()
    for (size, family), (model, _) in ctx.models.items():
        if size != "shipped":
            continue
        folder = ctx.work_dir / f"saved_{family}"
        model.eval().save_pretrained(folder)
        loaded = PixelByteModel.from_pretrained(folder, map_location="cpu").eval()
        on_device = generate(model, [prompt], s["new_tokens"])[0].new
        on_cpu = generate(loaded, [prompt], s["new_tokens"])[0].new
        same = [a == b for a, b in zip(on_device, on_cpu)]
        first = same.index(False) if not all(same) else None
        yield {"name": f"shipped {family}: trained on {ctx.device.type}, greedy on cpu",
               "status": "passed" if first is None else "failed", "tokens": len(on_cpu), "first_difference": first,
               "summary": f"{len(on_cpu)} greedy tokens " + ("identical" if first is None else f"differ from token {first}")}


def check_kaggle_estimate(ctx: Context):
    """02 trains for ``epochs`` or ``budget_s``, whichever ends first: its step time is measured
    here with its own model and batch (epochs counted on the embedded items); 01, 03, 04 and 05
    are bounded by their runner budgets."""
    from pixelbyte import data

    params = json.loads(KAGGLE_PARAMS.read_text())
    p, runner = params["02_training"], params["runner"]
    run = run_config(ctx, "shipped", p["model"], out_dir=str(ctx.work_dir / "kaggle_02"), amp=p["amp"])
    if not ctx.tiny:
        model = {k: p[k] for k in ("dim", "hidden", "depth", "objective", "positions", "dropout")}
        run = replace(run, samples=replace(run.samples, unit=p["unit"], orders=p["orders"]),
                      model=replace(run.model, **model), train=replace(run.train, batch_size=p["batch_size"]))
    step_s = train_run(ctx, run)["step_s"]
    steps_per_epoch = max(1, len(data.make_datasets(ctx.seqs, run)[0]) // run.train.batch_size)
    epochs_s = p["epochs"] * steps_per_epoch * step_s
    per_notebook = {name: float(budget) for name, budget in runner["budget_s"].items()}
    per_notebook["02_training"] = min(per_notebook["02_training"], 1.1 * min(p["budget_s"], epochs_s) + 60)
    total = min(runner["deadline_s"], runner["kernel_install_s"] + sum(per_notebook.values()))
    yield {"name": "kaggle/params_paper.json on this device", "status": "passed", "total_s": total,
           "per_notebook_s": per_notebook, "step_s_02": step_s, "steps_per_epoch_02": steps_per_epoch,
           "epochs_s_02": epochs_s,
           "summary": f"~{total / 3600:.1f} h in all, set-up included (02: {step_s * 1e3:.0f} ms/step, "
                      f"{p['epochs']} epochs in {epochs_s / 60:.0f} min, budget {p['budget_s'] / 60:.0f} min; "
                      "the others at their budgets)"}


CHECKS = {"train": check_train, "compile": check_compile, "kernels": check_kernels,
          "checkpoint": check_checkpoint, "kaggle_estimate": check_kaggle_estimate}


# ============================================================================ the report


def run_checks(checks: dict, ctx, on_update=None) -> list[dict]:
    """Runs each check (a generator of item dicts) in turn; an exception ends that check, is
    recorded with the items it gave so far, and the next check runs."""
    records = []
    for name, check in checks.items():
        record = {"name": name, "items": [], "status": "passed"}
        records.append(record)
        log(f"{name}: started")
        t0 = time.perf_counter()
        try:
            for item in check(ctx):
                record["items"].append(item)
                log(f"  {item['name']}: {item['status']} - {item['summary']}")
        except Exception as err:
            record.update(status="error", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=-6)[-3000:])
            log(f"{name}: error {record['error']}")
        statuses = {item["status"] for item in record["items"]}
        if record["status"] != "error":
            record["status"] = "failed" if "failed" in statuses else "passed" if "passed" in statuses else "skipped"
        record["seconds"] = round(time.perf_counter() - t0, 1)
        if on_update is not None:
            on_update(records)
    return records


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"GPU check on {m.get('gpu') or m['device']}, torch {m['torch']} (CUDA {m['torch_cuda']}), "
             f"{report['mode']} sizes, {report['elapsed_s']:.0f} s", "",
             "| check | item | status | result |", "|---|---|---|---|"]
    for record in report["checks"]:
        items = record["items"] + ([{"name": "(error)", "status": "error", "summary": record["error"]}]
                                   if record["status"] == "error" else [])
        for item in items:
            text = str(item.get("summary", "")).replace("|", "/").replace("\n", " ")
            lines.append(f"| {record['name']} | {item['name']} | {item['status']} | {text} |")
    return "\n".join(lines) + "\n"


def plain(value):
    """Tensors, paths and non-finite floats -> JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the code paths, not the numbers")
    parser.add_argument("--only", default=None, help=f"comma-separated checks among {list(CHECKS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON report (.md beside it); default {OUT} on CUDA, else a temporary file")
    args = parser.parse_args(argv)
    wanted = list(CHECKS) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown:
        parser.error(f"--only: unknown check(s) {unknown}; choose among {list(CHECKS)}")
    device = torch.device(args.device)
    out = args.out or (OUT if device.type == "cuda" and not args.tiny
                       else Path(tempfile.gettempdir()) / "pixelbyte_gpu_check.json")
    if device.type == "cpu":
        torch.set_num_threads(1)
    report = {"format": "pixelbyte-gpu-check-v2", "mode": "tiny" if args.tiny else "full",
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(device),
              "tolerances": TOLERANCES, "sizes": SIZES["tiny" if args.tiny else "gpu"], "checks": []}
    t0 = time.perf_counter()

    def update(records):
        report.update(checks=records, elapsed_s=time.perf_counter() - t0)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plain(report), indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Context(args.device, args.tiny, Path(work))
        records = run_checks({name: CHECKS[name] for name in wanted}, ctx, on_update=update)
    update(records)
    print(markdown(report))
    print(f"report: {out} and {out.with_suffix('.md')}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
