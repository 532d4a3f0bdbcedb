"""What a run is (its data, training samples, model and training) as dataclasses that validate their fields
when built, also from JSON or the command line, with the ``_check_*`` helpers here: an error names the field,
the value and what is allowed. Every checkpoint carries its ``RunConfig``, so whoever reads a model back takes
the held-out split, the sample settings and the context length from it.

    run = RunConfig(samples=SampleConfig(unit="item"), model=ModelConfig(objective="causal"))
    run.save("run.json"); RunConfig.load("run.json") == run
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .tokenizer import VOCAB_SIZE

EMBEDDED = "embedded"                        # the emoji sprites shipped in pixelbyte/data/
HUB_DATASET = "ffurfaro/PixelBytes-Pokemon"  # the paper's dataset on the Hugging Face hub
OBJECTIVES = ("next", "causal")              # next: the token after a window | causal: every position
UNITS = ("window", "item")                   # what one training sample is
ORDERS = ("data", "caption_first", "both")   # segment order of whole-item samples
MODELS = ("lstm", "attention", "bysmamba")
SSMS = ("mamba", "mamba2")                   # BysMamba's mixer: Mamba-1 (selective scan) | Mamba-2 (SSD)
EMBEDDINGS = ("pxby", "center")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "cuda", "torch")         # Mamba mixers: mamba_ssm's kernels | pure PyTorch
SCAN_IMPLS = ("chunked", "compiled", "reference")  # Mamba-1's torch scan (pixelbyte/mamba.py)
MAMBA2_SCAN_IMPLS = ("chunked", "reference")       # Mamba-2's torch SSD (pixelbyte/mamba2.py)
MAX_AUTO_HEADS = 4
RUN_FORMAT = "pixelbyte-run-v1"
# Fields that say how a run is executed, not what it computes: a checkpoint may be loaded or
# resumed with other values (e.g. a model trained with the CUDA kernels, used on a CPU).
RUNTIME_FIELDS = {"model": ("backend", "scan_impl"),
                  "train": ("device", "num_workers", "progress", "compile", "out_dir", "log_every")}


def _fail(obj, name: str, allowed: str):
    raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r} is invalid: {allowed}")


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_ints(obj, names, minimum: int, optional: bool = False):
    for name in names:
        value = getattr(obj, name)
        if not ((optional and value is None) or _is_int(value, minimum)):
            _fail(obj, name, f"expected {'None or ' if optional else ''}an integer >= {minimum}")


def _check_numbers(obj, names, minimum: float = 0.0, above: bool = False):
    for name in names:
        value = getattr(obj, name)
        if not (_is_number(value) and (value > minimum if above else value >= minimum)):
            _fail(obj, name, f"expected a number {'>' if above else '>='} {minimum:g}")


def _check_choice(obj, name: str, choices):
    if getattr(obj, name) not in choices:
        _fail(obj, name, f"allowed values are {list(choices)}")


def _check_bools(obj, names):
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            _fail(obj, name, "expected True or False")


def comma_list(value) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; [] for anything but a string."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else []


def is_hub_id(value: str) -> bool:
    """Shaped like a hub id 'owner/name' (not './x', '/x' or 'a/b/c')."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value))


def looks_like_path(value) -> bool:
    """An existing path, or a string shaped like one rather than like a hub id or a name
    ('embedded', 'pretrained'): './x', '~/x', 'a/b/c', 'x.parquet'."""
    return isinstance(value, str) and bool(value) and (
        os.path.exists(value) or value.startswith(("~", ".")) or value.endswith(".parquet")
        or ("/" in value and not is_hub_id(value)))


class ParameterError(ValueError):
    """A notebook's loose parameter (one outside the config dataclasses) is invalid."""


def _refuse(name: str, value, allowed: str):
    raise ParameterError(f"parameter {name}={value!r}: {allowed}")


def check(name: str, value, kind: type, minimum=None, choices=None):
    """``value`` if this notebook parameter is a ``kind`` (int, float or str) within the rules, else ParameterError."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        _refuse(name, value, f"expected {kind.__name__}, got {type(value).__name__}")
    if minimum is not None and not value >= minimum:          # (NaN is not >= anything)
        _refuse(name, value, f"must be >= {minimum}")
    if choices is not None and value not in choices:
        _refuse(name, value, f"allowed values are {list(choices)}")
    return value


def check_local_or_hub(name: str, value) -> str:
    """``value`` if it is an existing path, a model shipped in the package or a hub id, else ParameterError."""
    from .models import PRETRAINED

    check(name, value, str)
    if not (os.path.exists(value) or value in PRETRAINED or is_hub_id(value)):
        _refuse(name, value, f"no such file or directory {Path(value).absolute()}, "
                             f"and not a hub id like 'owner/name'")
    return value


@dataclass
class DataConfig:
    source: str = EMBEDDED       # "embedded", a hub id (ffurfaro/PixelBytes-Pokemon) or a parquet file/folder
    limit: int | None = None     # keep the first N items only (quick runs); None keeps all
    test_size: float = 0.1       # share of items held out (split by item, never by window)
    split_seed: int = 0          # seed of the item split
    resize: bool = False         # downscale images larger than tokenizer.MAX_IMAGE_SIDE (else they are refused)

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            _fail(self, "source", "expected a non-empty string")
        if self.source != EMBEDDED and os.path.exists(self.source):   # a moved checkpoint keeps its data
            self.source = os.path.abspath(self.source)
        _check_bools(self, ["resize"])
        _check_ints(self, ["limit"], 1, optional=True)
        _check_ints(self, ["split_seed"], 0)
        if not (_is_number(self.test_size) and 0 < self.test_size < 1):
            _fail(self, "test_size", "expected a number in (0, 1)")


@dataclass
class SampleConfig:
    unit: str = "window"         # window: seq_length tokens inside an item (the paper's) | item: whole items
    seq_length: int = 256        # window: tokens per window
    stride: int = 32             # window: tokens between window starts
    orders: str = "data"         # item: data (shape, image, caption) | caption_first | both (each item twice)
    bucket: int = 16             # item: batches are cut from groups of this many batches sorted by length (1 = unsorted)

    def __post_init__(self):
        _check_choice(self, "unit", UNITS)
        _check_choice(self, "orders", ORDERS)
        _check_ints(self, ["seq_length", "stride", "bucket"], 1)
        if self.unit == "window" and self.orders != "data":
            _fail(self, "orders", "window samples are cut from items in the data order; "
                                  "use unit='item' for caption_first or both")


@dataclass
class ModelConfig:
    model: str = "lstm"           # lstm | attention | bysmamba
    bidirectional: bool = False   # lstm: first layer; bysmamba: first and last layers; attention: no mask
    embedding: str = "pxby"       # pxby: the 3x3 window | center: the centre token only
    conv: bool = True             # pxby only: mix each cell with a 3x3 conv of the window
    dim: int = 81                 # embedding / model width
    hidden: int = 64              # lstm: cells per layer | bysmamba: Mamba d_state | attention: FFN width
    depth: int = 2                # layers (LSTM layers, Mamba blocks, transformer blocks)
    d_conv: int = 4               # bysmamba: causal conv width
    expand: int = 2               # bysmamba: d_inner = expand * dim
    n_heads: int | str = 4        # attention: heads, or "auto" = the largest count <= 4 dividing dim
    proj_size: int = 0            # lstm: project each layer's output h_t to this size (0 = off)
    vocab_size: int = VOCAB_SIZE  # 113 tokens
    dropout: float = 0.0          # after the embedding, between LSTM layers, on residual branches
    backend: str = "auto"         # bysmamba: Mamba backend, auto | cuda | torch
    scan_impl: str = "chunked"    # bysmamba, torch backend: chunked | compiled (torch.compile, mamba only) | reference
    objective: str = "next"       # next | causal (what the model is trained for; see models.py)
    positions: bool = False       # add embeddings of where the predicted token sits (segment, row, column, declared h, w)
    ssm: str = "mamba"            # bysmamba: mixer, mamba (Mamba-1, selective scan) | mamba2 (SSD, scalar decay per head: ~4x faster on a CPU)
    headdim: int | None = None    # bysmamba, ssm=mamba2: channels per head, dividing expand * dim (None: all of them, one head)
    condition: bool = False       # every position also reads a summary of the item's completed segments (the caption while drawing, the image while captioning)
    condition_dropout: float = 0.0  # training: share of samples whose condition is dropped, so one model is also unconditional (classifier-free guidance)

    def __post_init__(self):
        for name, choices in (("model", MODELS), ("embedding", EMBEDDINGS), ("objective", OBJECTIVES),
                              ("backend", BACKENDS), ("scan_impl", SCAN_IMPLS), ("ssm", SSMS)):
            _check_choice(self, name, choices)
        _check_bools(self, ("bidirectional", "conv", "positions", "condition"))
        _check_ints(self, ("dim", "hidden", "depth", "d_conv", "expand"), 1)
        _check_ints(self, ["headdim"], 1, optional=True)
        if self.headdim is None and self.model == "bysmamba" and self.ssm == "mamba2":
            self.headdim = self.expand * self.dim
        _check_ints(self, ["vocab_size"], 2)
        _check_ints(self, ["proj_size"], 0)
        for name in ("dropout", "condition_dropout"):
            if not (_is_number(getattr(self, name)) and 0.0 <= getattr(self, name) < 1.0):
                _fail(self, name, "expected a number in [0, 1)")
        if self.n_heads != "auto" and not _is_int(self.n_heads, 1):
            _fail(self, "n_heads", "expected a positive integer or 'auto'")
        # combinations
        if self.bidirectional and self.objective == "causal":
            _fail(self, "bidirectional", "its logits at t would read token t itself; bidirectional models "
                                         "are only legal with objective='next'")
        if self.embedding == "center" and self.conv:
            _fail(self, "embedding", "conv=True needs embedding='pxby' (the conv mixes the cells of the 3x3 "
                                     "window); use conv=False with embedding='center'")
        if self.embedding == "center" and self.objective == "causal":
            _fail(self, "embedding", "with objective='causal' it sees nothing (causal inputs have their centre "
                                     "zeroed); use embedding='pxby' or objective='next'")
        if self.positions and self.objective != "causal":
            _fail(self, "positions", "positions are read from the causal windows of a whole stream; "
                                     "they need objective='causal'")
        if self.condition and self.objective != "causal":
            _fail(self, "condition", "the condition summarises the segments before each position of a "
                                     "whole stream; it needs objective='causal'")
        if self.condition_dropout and not self.condition:
            _fail(self, "condition_dropout", "it drops the condition: set condition=True or use 0")
        if self.proj_size and self.model != "lstm":
            _fail(self, "proj_size", f"it is an LSTM option; use 0 with model={self.model!r}")
        if self.proj_size and self.proj_size >= self.hidden:
            _fail(self, "proj_size", f"must be 0 (off) or smaller than hidden={self.hidden}")
        if self.model == "lstm" and self.bidirectional:
            for name in ("hidden", "proj_size"):
                if getattr(self, name) % 2:
                    _fail(self, name, "a bidirectional LSTM layer splits it between its two "
                                      "directions: use an even number")
        if self.model == "bysmamba" and self.ssm == "mamba2":
            if self.scan_impl not in MAMBA2_SCAN_IMPLS:
                _fail(self, "scan_impl", f"with ssm='mamba2' allowed values are {list(MAMBA2_SCAN_IMPLS)}")
            if (self.expand * self.dim) % self.headdim:
                _fail(self, "headdim", f"must divide expand * dim = {self.expand * self.dim} (ssm='mamba2')")
        if self.model == "attention" and self.head_dim < 2:
            _fail(self, "n_heads", f"dim={self.dim} / n_heads gives head_dim={self.head_dim}; rotary "
                                   f"positions need head_dim >= 2")

    @property
    def heads(self) -> int:
        """Attention heads: n_heads, or for "auto" the largest count <= 4 that divides dim."""
        if self.n_heads == "auto":
            return max(h for h in range(1, MAX_AUTO_HEADS + 1) if self.dim % h == 0)
        return self.n_heads

    @property
    def head_dim(self) -> int:
        """ceil(dim / heads): when heads does not divide dim (dim 81, 4 heads) the attention works
        at width heads * head_dim (84) inside and projects back to dim."""
        return -(-self.dim // self.heads)

    @property
    def is_causal(self) -> bool:
        return not self.bidirectional

    @property
    def name(self) -> str:
        """Short name in the paper's axes, e.g. 'rnn_bi_pxby_conv_81_32_2' (other fields not shown)."""
        family = {"lstm": "rnn", "bysmamba": "ssm", "attention": "att"}[self.model]
        return "_".join([family, "bi" if self.bidirectional else "uni", self.embedding,
                         "conv" if self.conv else "noconv", str(self.dim), str(self.hidden), str(self.depth)])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    epochs: int = 1                  # passes over the training samples ...
    max_steps: int | None = None     # ... or a number of optimizer steps (overrides epochs)
    budget_s: float = 0.0            # wall-clock seconds of training (0 = none): caps the steps after a timing probe
    batch_size: int = 32             # global micro-batch, all ranks together
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 1e-3                 # AdamW peak learning rate
    min_lr: float = 1e-4             # end of the cosine decay (= lr for a constant schedule)
    warmup_steps: int = 0            # linear warmup steps before the cosine decay
    weight_decay: float = 0.01       # not applied to norms, biases, `_no_weight_decay` params
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 1.0           # max global grad norm; 0 = off
    eval_every: int = 0              # eval + checkpoint every N steps; 0 = at each epoch end
    eval_batches: int | None = None  # evaluate on the first N val batches only (None = all)
    log_every: int = 10              # a train row in metrics.csv every N steps
    seed: int = 0                    # initial weights, data order, dropout (seed + rank)
    device: str = "auto"             # auto | cpu | cuda
    amp: bool = False                # fp16 autocast + GradScaler (CUDA only; T4 has no bf16)
    compile: bool = False            # torch.compile the model
    num_workers: int = 0             # DataLoader worker processes
    out_dir: str = "runs/train"      # metrics, run.json, checkpoints
    progress: bool = True            # tqdm bar per epoch (also off with TQDM_DISABLE=1)

    def __post_init__(self):
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)     # JSON gives lists back
        _check_choice(self, "device", DEVICES)
        _check_ints(self, ("epochs", "batch_size", "grad_accum", "log_every"), 1)
        _check_ints(self, ("warmup_steps", "eval_every", "num_workers", "seed"), 0)
        _check_ints(self, ("max_steps", "eval_batches"), 1, optional=True)
        _check_numbers(self, ["lr"], above=True)
        if not (_is_number(self.min_lr) and 0 <= self.min_lr <= self.lr):
            _fail(self, "min_lr", f"expected a number in [0, lr={self.lr}]")
        _check_numbers(self, ("weight_decay", "grad_clip", "budget_s"))
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in self.betas)):
            _fail(self, "betas", "expected two numbers in [0, 1)")
        _check_bools(self, ("amp", "compile", "progress"))
        if not isinstance(self.out_dir, (str, os.PathLike)) or str(self.out_dir) == "":
            _fail(self, "out_dir", "expected a non-empty path")
        self.out_dir = str(self.out_dir)


SECTIONS = {"data": DataConfig, "samples": SampleConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    data: DataConfig | None = field(default_factory=DataConfig)        # None: datasets built by hand
    samples: SampleConfig | None = field(default_factory=SampleConfig)  # None: datasets built by hand
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():           # sections given as dicts (JSON) become dataclasses
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, where=f"RunConfig.{name}"))
            elif not (isinstance(value, cls) or (value is None and name in ("data", "samples"))):
                raise TypeError(f"RunConfig.{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
        unit = self.samples.unit if self.samples is not None else None
        if unit == "item" and self.model.objective != "causal":
            raise ValueError("RunConfig: samples.unit='item' needs model.objective='causal' (every "
                             "position of a whole item is a target; 'next' reads one token after a window)")
        for name in ("positions", "condition"):
            if getattr(self.model, name) and unit == "window":
                raise ValueError(f"RunConfig: model.{name}=True needs samples.unit='item': it reads the "
                                 f"stream from its start (rows, columns, completed segments), and a "
                                 f"window starts mid-item")

    @property
    def context_length(self) -> int | None:
        """Past tokens the model was trained to see: seq_length for windows, None for whole items or unknown."""
        return self.samples.seq_length if self.samples is not None and self.samples.unit == "window" else None

    def to_dict(self) -> dict:
        return {"format": RUN_FORMAT, **{name: None if getattr(self, name) is None else asdict(getattr(self, name))
                                         for name in SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise TypeError(f"RunConfig.from_dict expects a dict, got {type(data).__name__}")
        if data.get("format", RUN_FORMAT) != RUN_FORMAT:
            raise ValueError(f"run config format {data['format']!r} is not {RUN_FORMAT!r}")
        return _from_dict(cls, {k: v for k, v in data.items() if k != "format"}, "RunConfig")

    def save(self, path) -> Path:
        """Write the run as JSON (atomically)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "RunConfig":
        """A run.json -> RunConfig; errors name the file. Extra top-level keys that a training's
        out_dir/run.json adds (versions, sizes, final metrics) are ignored."""
        try:
            data = json.loads(Path(path).read_text())
            if isinstance(data, dict) and "final" in data:          # a Trainer's run.json
                data = {k: data[k] for k in ("format", *SECTIONS) if k in data}
            return cls.from_dict(data)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such run config file") from None
        except (ValueError, TypeError) as err:      # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: not a valid run config: {err}") from err

    @classmethod
    def from_flat(cls, **params) -> "RunConfig":
        """Notebook-style flat parameters (``dim=64, lr=3e-3, unit="item"``) -> RunConfig, each name to the
        section that has that field; an unknown name is refused with the closest valid names."""
        owner = {f.name: section for section, c in SECTIONS.items() for f in fields(c)}
        sections = {name: {} for name in SECTIONS}
        for key, value in params.items():
            if key not in owner:
                raise ValueError(f"unknown run parameter {key!r}{_closest(key, owner)}")
            sections[owner[key]][key] = value
        return cls(**sections)

    def diff(self, other: "RunConfig", labels=("was", "now"), skip_runtime: bool = True, skip=()) -> list[str]:
        """One line per field that differs (``samples.seq_length: checkpoint 128, now 256`` with ``labels=
        ("checkpoint", "now")``), but runtime fields (unless asked) and ``skip`` ("train.eval_batches")."""
        out = []
        for name in SECTIONS:
            a, b = getattr(self, name), getattr(other, name)
            if a is not None and b is not None:
                out += field_diff(name, a, b, labels, (*(RUNTIME_FIELDS.get(name, ()) if skip_runtime else ()), *skip))
            elif a is not b:                                      # one of them is None
                out.append(f"{name}: {labels[0]} {a}, {labels[1]} {b}")
        return out

    def with_runtime(self, **overrides) -> "RunConfig":
        """A copy with runtime-only fields replaced (``backend="torch"``, ``device="cpu"``...)."""
        sections = {}
        for key, value in overrides.items():
            section = next((s for s, names in RUNTIME_FIELDS.items() if key in names), None)
            if section is None:
                raise ValueError(f"{key!r} is not a runtime field; those are "
                                 f"{sorted(n for names in RUNTIME_FIELDS.values() for n in names)}")
            sections.setdefault(section, {})[key] = value
        return replace(self, **{s: replace(getattr(self, s), **kw) for s, kw in sections.items()})


def field_diff(section: str, a, b, labels=("was", "now"), skip=()) -> list[str]:
    """'section.field: <labels[0]> a, <labels[1]> b' for each field of two dataclasses that differs,
    but those ``skip`` names (as "field" or "section.field")."""
    da, db = asdict(a), asdict(b)
    return [f"{section}.{k}: {labels[0]} {_show(da[k])!r}, {labels[1]} {_show(db.get(k))!r}"
            for k in da if not {k, f"{section}.{k}"} & set(skip) and _show(da[k]) != _show(db.get(k))]


def _show(value):
    return list(value) if isinstance(value, tuple) else value      # tuples come back from JSON as lists


def _closest(name: str, valid, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        f"; valid names are {sorted(valid)}"


def _from_dict(cls, data, where: str | None = None):
    """A dict -> dataclass ``cls``, refusing unknown keys (a typo must not vanish silently)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a dict, got {type(data).__name__}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}" + _closest(unknown[0], valid))
    return cls(**data)


def atomic_write(path, content) -> Path:
    """``content`` (text, or a function writing to the open binary file: ``partial(torch.save, obj)``) into a
    fsynced temp file beside ``path``, then os.replace: a crash or a full disk leaves the old file or the new
    one, never a torn one (checkpoints, run.json, metrics.json)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            content(f) if callable(content) else f.write(content.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # persist the rename itself (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def resolve_device(name: str = "auto"):
    """'auto' | 'cpu' | 'cuda' -> torch.device ('auto': CUDA when available)."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"device={name!r}: allowed values are {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False: no usable CUDA GPU here; "
                         "use device 'auto' or 'cpu'")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
