"""Copy tasks as whole PixelBytes items: a seeded stream to train on, greedy scoring beside trivial
baselines, trainings with their accuracy curves, and notebook 05's study.

    task = CopyTask("selective", size=16, n_recall=4)
    model, curve = train_copy(ModelConfig(model="bysmamba", objective="causal"), task, max_steps=600)
    scores = copy_scores(model, held_out_items(task, 64))   # model and baselines: token / exact / pixel accuracy
    study = run_study(CopyConfig(families="lstm", tasks="selective"), "runs/copy")   # notebook 05

An item's last part, ``copy_start:copy_end``, repeats earlier content (``KINDS``): the top rows of an
image, a phrase, letters scattered among spaces (selective copy, as in the Mamba paper) or a real
sprite. Only that part is a target, so a model is trained on exactly what it is scored on.
"""
from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from . import tokenizer as tok
from .config import (DEVICES, MODELS, SSMS, ModelConfig, TrainConfig, _check_bools, _check_choice, _check_ints,
                     _check_numbers, _fail, _is_int, _is_number, comma_list)
from .data import ItemDataset
from .generate import Generator
from .models import PixelByteModel
from .train import Trainer, in_processes

KINDS = ("image", "text", "selective", "sprite")
SIZE_NAMES = {"image": "image rows", "text": "words in the phrase", "selective": "spaces (sequence length)",
              "sprite": "sprite side (px)"}
# The colour of a sprite's background: transparent pixels are composited on white
# (tokenizer.load_rgb), and white's nearest palette colour is this token.
BACKGROUND_ID = int(tok.quantize(np.full((1, 1, 3), 255, np.uint8))[0, 0]) + tok.FIRST_COLOUR_ID
LETTERS = np.array([ord(c) for c in "abcdefghijklmnopqrstuvwxyz"])
_HELD_OUT = 1          # third entropy word of held-out items: (seed, i, 1) never equals a training (seed, i)


# One item
@dataclass
class CopyItem:
    """A pixelbyte sequence whose tokens ``[copy_start, copy_end)`` repeat earlier content."""
    kind: str
    windows: np.ndarray     # (L, 3, 3) uint8
    copy_start: int
    copy_end: int

    @property
    def ids(self) -> list[int]:
        return tok.centre_ids(self.windows).astype(int).tolist()

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[:self.copy_start]

    @property
    def target_ids(self) -> list[int]:
        return self.ids[self.copy_start:self.copy_end]


def _image_windows(indices: np.ndarray) -> np.ndarray:
    """(h, w) palette indices -> the shape segment and the image segment, as ``tokenizer.encode_item``
    writes them (without going through RGB)."""
    h, w = indices.shape
    return np.concatenate([tok.encode_text(str((h, w))),
                           tok.segment_windows((indices + tok.FIRST_COLOUR_ID).astype(np.uint8))])


def sprite_images(seqs: list[np.ndarray]) -> list[np.ndarray]:
    """The sprites of data-order items as (h, w) palette-index arrays (``tokenizer.item_sprite``)."""
    return [sprite[1] for sprite in map(tok.item_sprite, seqs) if sprite is not None]


def resize_sprite(indices: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour resize to a longer side of ``side`` px (0: unchanged), so that every output
    pixel is one of the input's: pixel art stays pixel art."""
    if side == 0 or max(indices.shape) == side:
        return indices
    h, w = indices.shape
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = ((np.arange(nh) + 0.5) * h / nh).astype(np.int64)
    cols = ((np.arange(nw) + 0.5) * w / nw).astype(np.int64)
    return indices[rows][:, cols]


# A task and its stream
@dataclass(frozen=True)
class CopyTask:
    """One copy task at one size; ``size`` is what length generalisation scales (``SIZE_NAMES``)."""
    kind: str                  # image | text | selective | sprite
    size: int                  # image rows (even) | words | spaces | sprite side (px)
    width: int = 6             # image: columns
    n_colours: int = 4         # image: colours drawn per item
    min_letters: int = 2       # text: letters per word, at least ...
    max_letters: int = 5       # ... and at most
    n_recall: int = 4          # selective: letters to recall

    def __post_init__(self):
        _check_choice(self, "kind", KINDS)
        _check_ints(self, ("size", "width", "n_colours", "min_letters", "max_letters", "n_recall"), 1)
        if self.kind == "image" and self.size % 2:
            _fail(self, "size", "an image copy needs an even number of rows")
        if self.kind == "text" and self.min_letters > self.max_letters:
            _fail(self, "min_letters", f"must be <= max_letters={self.max_letters}")
        if self.kind == "selective" and self.n_recall > self.size:
            _fail(self, "n_recall", f"at most size={self.size} letters fit")
        if self.kind == "sprite" and self.size > tok.MAX_IMAGE_SIDE:
            _fail(self, "size", f"sprites larger than {tok.MAX_IMAGE_SIDE} px are refused")

    def make(self, rng: np.random.Generator, sprites: list[np.ndarray] | None = None) -> CopyItem:
        """One item drawn with ``rng`` (sprite copy: from ``sprites``, see ``sprite_images``). The copy
        part is the last repeat with its separators."""
        if self.kind == "image":       # n_colours random colours; the bottom half of rows repeats the top
            colours = rng.choice(len(tok.PALETTE), size=min(self.n_colours, len(tok.PALETTE)), replace=False)
            top = rng.choice(colours, size=(self.size // 2, self.width))             # (h/2, w) palette indices
            windows = _image_windows(np.concatenate([top, top]))
            shape_len = len(str((self.size, self.width))) + 1
            return CopyItem("image", windows, shape_len + (self.size // 2) * (self.width + 1), len(windows))
        if self.kind == "text":        # "abc def; abc def"
            words = ["".join(map(chr, rng.choice(LETTERS, size=rng.integers(self.min_letters, self.max_letters + 1))))
                     for _ in range(self.size)]
            phrase = " ".join(words)
            windows = tok.encode_text(f"{phrase}; {phrase}")
            return CopyItem("text", windows, len(phrase) + 2, len(windows))
        if self.kind == "selective":   # letters among spaces, ":", the letters: "  k   b  x    q  :kbxq"
            letters = rng.choice(LETTERS, size=self.n_recall)
            filler = np.full(self.size, ord(" "))
            filler[np.sort(rng.choice(self.size, size=self.n_recall, replace=False))] = letters
            text = bytes(filler.astype(np.uint8)).decode() + ":" + bytes(letters.astype(np.uint8)).decode()
            windows = tok.encode_text(text)
            return CopyItem("selective", windows, self.size + 1, len(windows))
        # a real sprite resized to ``size`` px (shape + image), its shape again, the image again
        sprite = resize_sprite(sprites[int(rng.integers(len(sprites)))], self.size)
        original = _image_windows(sprite)
        shape = original[:len(str(sprite.shape)) + 1]
        windows = np.concatenate([original, shape, original[len(shape):]])
        return CopyItem("sprite", windows, len(original) + len(shape), len(windows))

    def scaled(self, factor: int) -> "CopyTask":
        return replace(self, size=self.size * factor)

    @property
    def label(self) -> str:
        """e.g. 'selective (16 spaces, 4 letters)'."""
        detail = {"image": f"{self.size}x{self.width} image, {self.n_colours} colours",
                  "text": f"{self.size} words of {self.min_letters}-{self.max_letters} letters",
                  "selective": f"{self.size} spaces, {self.n_recall} letters",
                  "sprite": f"sprites resized to {self.size} px"}[self.kind]
        return f"{self.kind} ({detail})"


class CopyStream(Dataset):
    """``n`` copy items of one task as causal samples. Item i is drawn from ``default_rng([seed, i])``
    (held-out: ``[seed, i, 1]``): the same item on any machine, in any order. ``x``: the windows with
    centres zeroed; ``y``: the tokens of the copy part, 0 (ignored by the loss) elsewhere."""

    objective = "causal"
    collate = staticmethod(ItemDataset.collate)

    def __init__(self, task: CopyTask, n: int, seed: int = 0, sprites: list[np.ndarray] | None = None,
                 held_out: bool = False):
        if task.kind == "sprite" and not sprites:
            raise ValueError("a sprite copy stream needs sprites (sprite_images of the items to copy)")
        self.task, self.n, self.seed, self.sprites, self.held_out = task, int(n), int(seed), sprites, held_out

    def __len__(self) -> int:
        return self.n

    def item(self, i: int) -> CopyItem:
        if not 0 <= i < self.n:
            raise IndexError(f"item {i} outside the stream's 0..{self.n - 1}")
        entropy = [self.seed, int(i)] + ([_HELD_OUT] if self.held_out else [])
        return self.task.make(np.random.default_rng(entropy), self.sprites)

    def items(self, n: int | None = None) -> list[CopyItem]:
        return [self.item(i) for i in range(self.n if n is None else min(n, self.n))]

    def __getitem__(self, i: int):
        item = self.item(i)
        x = torch.from_numpy(item.windows).long()                         # (L, 3, 3)
        y = torch.zeros(len(x), dtype=torch.long)                          # (L,)
        y[item.copy_start:item.copy_end] = x[item.copy_start:item.copy_end, 1, 1]
        x[:, 1, 1] = 0
        return x, y

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator)      # a plain shuffle: items are independent draws

    def describe(self, batch_size: int | None = None) -> dict:
        return {"unit": "copy item", "task": self.task.label, "samples": self.n, "seed": self.seed,
                "held_out": self.held_out, **({"sprites": len(self.sprites)} if self.sprites else {})}


def held_out_items(task: CopyTask, n: int, seed: int = 0, sprites: list[np.ndarray] | None = None) -> list[CopyItem]:
    """``n`` items drawn apart from every training stream; sprites: the held-out split's ``sprite_images``."""
    return CopyStream(task, n, seed, sprites, held_out=True).items()


# Scoring
def score_copy_predictions(items: list[CopyItem], generated: list[list[int]]) -> dict:
    """Token, exact-sequence and pixel accuracy (nan without pixels) of generated copies, position by
    position; a short generation counts its missing tokens as wrong."""
    if len(items) != len(generated):
        raise ValueError(f"{len(items)} items but {len(generated)} generations")
    right = exact = total = pixels = pixels_right = 0
    for item, gen in zip(items, generated):
        target = np.asarray(item.target_ids)
        got = np.full(len(target), -1)
        got[:min(len(gen), len(target))] = np.asarray(gen[:len(target)], dtype=np.int64)
        hits = got == target
        colour = tok.is_colour(target)
        right, total, exact = right + int(hits.sum()), total + len(target), exact + int(hits.all())
        pixels, pixels_right = pixels + int(colour.sum()), pixels_right + int(hits[colour].sum())
    return {"token_accuracy": right / total if total else math.nan,
            "sequence_accuracy": exact / len(items) if items else math.nan,
            "pixel_accuracy": pixels_right / pixels if pixels else math.nan, "items": len(items), "tokens": total}


def generate_copies(model, items: list[CopyItem], batch_size: int = 64) -> list[list[int]]:
    """Each item's copy generated greedily from its prompt (as many tokens as the reference)."""
    generator, generated = Generator(model), []
    for b0 in range(0, len(items), batch_size):
        batch = items[b0:b0 + batch_size]
        gens = generator.generate([i.prompt_ids for i in batch], [i.copy_end - i.copy_start for i in batch],
                                  temperature=0.0)
        generated.extend(g.new for g in gens)
    return generated


def score_copy(model, items: list[CopyItem]) -> dict:
    return score_copy_predictions(items, generate_copies(model, items))


BASELINES = {
    "repeat_last": "repeat the prompt's last token",
    "most_frequent_prompt": "repeat the prompt's most frequent token",
    "background": "an all-background image (every pixel white, row ends in place)",
}
METRICS = ("token_accuracy", "sequence_accuracy", "pixel_accuracy")
SKILL_METRICS = dict(zip(METRICS, ("token accuracy", "exact-sequence accuracy", "pixel accuracy")))


def baseline_copies(items: list[CopyItem], name: str) -> list[list[int]]:
    """What a trivial baseline (``BASELINES``) writes for each item's copy; ``background`` (sprites
    only) keeps the reference's layout with every pixel ``BACKGROUND_ID``."""
    if name == "repeat_last":
        return [[i.prompt_ids[-1]] * len(i.target_ids) for i in items]
    if name == "most_frequent_prompt":
        return [[int(np.bincount(i.prompt_ids).argmax())] * len(i.target_ids) for i in items]
    if name == "background":
        return [[BACKGROUND_ID if t >= tok.FIRST_COLOUR_ID else t for t in i.target_ids] for i in items]
    raise ValueError(f"baseline {name!r}: allowed values are {list(BASELINES)}")


def copy_scores(model, items: list[CopyItem]) -> pd.DataFrame:
    """One row per method, "model" (greedy; skipped when ``model`` is None) and the baselines of the
    items' kind, with ``METRICS``, items and copy tokens."""
    candidates = {} if model is None else {"model": generate_copies(model, items)}
    baselines = BASELINES if items[0].kind == "sprite" else ("repeat_last", "most_frequent_prompt")
    candidates.update({name: baseline_copies(items, name) for name in baselines})
    return pd.DataFrame([{"method": method, **score_copy_predictions(items, generated)}
                         for method, generated in candidates.items()])


def skill_rows(scores: pd.DataFrame, task: CopyTask) -> pd.DataFrame:
    """``copy_scores`` as skills report rows: skill "copy: <kind>", one row per metric (pixels for
    sprites only) beside the best trivial baseline."""
    from .skills import COLUMNS

    by = scores.set_index("method")
    others = [m for m in by.index if m != "model"]
    rows = []
    for metric in METRICS if task.kind == "sprite" else METRICS[:2]:
        values = by.loc[others, metric].astype(float)
        best = values.idxmax()
        rest = ", ".join(f"{BASELINES[m]} {values[m]:.3f}" for m in others if m != best)
        rows.append({"skill": f"copy: {task.kind}", "metric": SKILL_METRICS[metric],
                     "value": float(by.loc["model", metric]) if "model" in by.index else math.nan,
                     "baseline": float(values[best]), "baseline_is": f"{BASELINES[best]} (best; {rest})",
                     "items": int(by["items"].iloc[0])})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def copy_rows(model, task: CopyTask, n_items: int = 64, seed: int = 0, sprites: list[np.ndarray] | None = None):
    """The copy skill of ``model`` on held-out items, for ``skills.measure(..., copy=copy_rows(...))``."""
    return skill_rows(copy_scores(model, held_out_items(task, n_items, seed, sprites)), task)


def size_sweep(model, tasks: list[CopyTask], n_items: int = 64, seed: int = 0, sprites=None) -> pd.DataFrame:
    """``copy_scores`` of one model on held-out items of each task (e.g. ``task.scaled(f)``), with the
    task's fields and label as columns."""
    return pd.concat([copy_scores(model, held_out_items(task, n_items, seed, sprites))
                      .assign(**asdict(task), label=task.label) for task in tasks], ignore_index=True)


def size_below(sweep: pd.DataFrame, metric: str = "token_accuracy", threshold: float = 0.9) -> float:
    """The smallest size where the model's ``metric`` falls below ``threshold`` (inf: never, at the sizes tested)."""
    model = sweep[sweep["method"] == "model"].sort_values("size")
    below = model[model[metric] < threshold]
    return float(below["size"].iloc[0]) if len(below) else math.inf


# Training a fresh model on a task, with its curve
class _CurveTrainer(Trainer):
    """The Trainer, plus greedy copy scores of held-out items at every validation: the curve."""

    def __init__(self, *args, probe_items: list[CopyItem], **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_items, self.curve = probe_items, []

    def evaluate(self, ds=None, max_batches=None) -> dict:
        metrics = super().evaluate(ds, max_batches)
        if ds is None or ds is self.val_ds:
            scored = score_copy(self.model, self.probe_items)
            self.curve.append({"step": self.step, "val_loss": metrics["loss"],
                               "teacher_forced_accuracy": metrics["accuracy"],
                               **{m: scored[m] for m in METRICS},
                               "wall_s": self.wall_offset + time.perf_counter() - self.t0})
        return metrics


def train_copy(model_config: ModelConfig, task: CopyTask, *, max_steps: int = 500, budget_s: float = 0.0,
               batch_size: int = 32, lr: float = 3e-3, eval_every: int | None = None, eval_points: int = 10,
               eval_items: int = 64, seed: int = 0, device: str = "cpu", sprites: list[np.ndarray] | None = None,
               held_out_sprites: list[np.ndarray] | None = None,
               out_dir: str | None = None) -> tuple[PixelByteModel, pd.DataFrame]:
    """Train a fresh causal model on ``task``'s stream; ``eval_points`` times, score ``eval_items`` held-out
    items greedily: the curve, with ``curve.attrs["final"]`` (steps, seconds, tokens/s, parameters, stopped_by).
    Sprites: train on ``sprites``, score on ``held_out_sprites``. ``out_dir``: keep the Trainer's files."""
    eval_every = eval_every or max(1, max_steps // eval_points)
    with tempfile.TemporaryDirectory(prefix="copy_run_") as tmp:
        train_cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                                warmup_steps=min(100, max_steps // 10), eval_every=eval_every, log_every=eval_every,
                                budget_s=budget_s, seed=seed, device=device, progress=False, out_dir=out_dir or tmp)
        train_ds = CopyStream(task, max_steps * batch_size, seed, sprites)
        val_ds = CopyStream(task, eval_items, seed, held_out_sprites or sprites, held_out=True)
        torch.manual_seed(seed)
        model = PixelByteModel(model_config)
        trainer = _CurveTrainer(model, train_ds, val_ds, train_cfg, probe_items=val_ds.items())
        final = trainer.fit(overwrite=True)
    curve = pd.DataFrame(trainer.curve)
    seconds = final["train_seconds"]
    # padding excluded: the stream's mean item length (first 256 items) times the items trained on
    positions = final["step"] * batch_size * float(np.mean([len(i.windows) for i in train_ds.items(256)]))
    curve.attrs["final"] = {"steps": final["step"], "train_seconds": seconds,
                            "tokens_per_s": positions / seconds if seconds else math.nan,
                            "parameters": model.num_parameters(),
                            "stopped_by": "budget" if final["step"] < max_steps else "max_steps"}
    return model.eval(), curve


def train_and_sweep(model_config: ModelConfig, task: CopyTask, factors=(1, 2, 4), sweep_items: int = 64,
                    **train_kwargs) -> tuple[PixelByteModel, pd.DataFrame, pd.DataFrame]:
    """``train_copy``, then ``size_sweep`` at ``task.scaled(f)`` for every factor: (model, curve, sweep)."""
    model, curve = train_copy(model_config, task, **train_kwargs)
    sprites = train_kwargs.get("held_out_sprites") or train_kwargs.get("sprites")
    sweep = size_sweep(model, [task.scaled(f) for f in factors], sweep_items, train_kwargs.get("seed", 0), sprites)
    return model, curve, sweep.assign(factor=sweep["size"] // task.size)


def _job(job: dict):
    model, curve, sweep = train_and_sweep(**job)
    return model.state_dict(), curve, sweep


def run_jobs(jobs: list[dict], workers: int = 1, report=None) -> list[tuple]:
    """``train_and_sweep(**job)`` for every job, ``workers`` at once; ``report(k, result)`` as job ``k``
    finishes. Returns (model, curve, sweep) in the jobs' order."""
    results = [None] * len(jobs)
    for k, (state, curve, sweep) in in_processes(_job, jobs, workers):
        model = PixelByteModel(jobs[k]["model_config"])
        model.load_state_dict(state)
        results[k] = (model.eval(), curve, sweep)
        if report:
            report(k, results[k])
    return results


def curve_trend(curve: pd.DataFrame, metric: str = "sequence_accuracy", goal: float = 0.99,
                tolerance: float = 0.02) -> str:
    """"reached" (the last point meets ``goal``), "still rising" (the last third's mean is more than
    ``tolerance`` above the third's before) or "plateaued": what more training would do."""
    values = curve[metric].astype(float).to_numpy()
    if len(values) and values[-1] >= goal:
        return "reached"
    if len(values) < 2:
        return "too few points"
    third = max(1, len(values) // 3)
    last, before = values[-third:], values[-2 * third:-third]
    return "still rising" if last.mean() - before.mean() > tolerance else "plateaued"


# Notebook 05's study: every family trained on every task, curves, length generalisation
# The tasks at their CPU sizes: notebook 05's defaults and compare.py's copy columns
TASKS = {"image": CopyTask("image", 6, width=6, n_colours=4), "text": CopyTask("text", 2),
         "selective": CopyTask("selective", 8, n_recall=2), "sprite": CopyTask("sprite", 8)}
HEADLINE = {"image": "token_accuracy", "text": "token_accuracy", "selective": "sequence_accuracy",
            "sprite": "pixel_accuracy"}            # the score each task's goal is about
STUDY_FILES = {"curves": ("curves.csv", "%.6g"), "sweeps": ("sizes.csv", "%.6g"), "table": ("copy_table.csv", "%.4g"),
               "skills": ("copy_skills.csv", None)}        # Study field: (file, float format)
PER_TASK = ("batch_size", "max_steps", "budget_s", "sweep_items")


@dataclass
class CopyConfig:
    """Notebook 05's parameters. ``hidden`` is one value or a dict by family, each of ``PER_TASK``
    one value or a dict by task. Model fields are ``ModelConfig``'s."""
    families: str = ",".join(MODELS)              # model families, comma-separated
    tasks: str = ",".join(KINDS)                  # copy tasks, comma-separated
    dim: int = 64                                 # model width of every family
    depth: int = 2                                # layers of every family
    hidden: int | dict = field(default_factory=lambda: {"lstm": 128, "attention": 128, "bysmamba": 16})
    n_heads: int = 4                              # attention heads
    expand: int = 2                               # bysmamba: inner width expand x dim
    ssm: str = "mamba"                            # bysmamba mixer: mamba (Mamba-1) | mamba2 (SSD, one head)
    positions: bool = False                       # position inputs (segment, row, column, declared size)
    image_rows: int = TASKS["image"].size         # image repeat: rows (even)
    image_width: int = TASKS["image"].width       # image repeat: columns
    image_colours: int = TASKS["image"].n_colours  # image repeat: colours per image
    text_words: int = TASKS["text"].size          # text repeat: words in the phrase
    selective_length: int = TASKS["selective"].size    # selective copy: spaces
    selective_recall: int = TASKS["selective"].n_recall  # selective copy: letters to recall
    sprite_side: int = TASKS["sprite"].size       # sprite copy: longer side in px
    size_factors: str = "1,2,4"                   # length generalisation: multiples of the trained size
    batch_size: int | dict = field(default_factory=lambda: {"image": 16, "text": 32, "selective": 32, "sprite": 16})
    lr: float = 3e-3                              # AdamW peak learning rate
    max_steps: int | dict = field(default_factory=lambda: {"image": 200, "text": 500, "selective": 800,
                                                            "sprite": 200})
    budget_s: float | dict = 150                  # seconds of training per run, 0: no cap
    eval_points: int = 8                          # points of each accuracy-vs-steps curve
    eval_items: int = 64                          # held-out items scored at each point
    sweep_items: int | dict = field(default_factory=lambda: {"image": 128, "text": 128, "selective": 256,
                                                              "sprite": 32})
    seed: int = 0
    device: str = "cpu"                           # cpu | cuda | auto
    threads: int = 1                              # torch CPU threads, 0 keeps torch's default
    workers: int = 2                              # trainings run at once, one process each

    def __post_init__(self):
        _check_choice(self, "ssm", SSMS)
        _check_choice(self, "device", DEVICES)
        _check_bools(self, ["positions"])
        _check_ints(self, ("dim", "depth", "n_heads", "expand", "image_width", "image_colours", "text_words",
                           "selective_length", "selective_recall", "sprite_side", "eval_points", "eval_items",
                           "workers"), 1)
        _check_ints(self, ["image_rows"], 2)
        _check_ints(self, ("seed", "threads"), 0)
        _check_numbers(self, ["lr"], above=True)
        for name, allowed in (("families", MODELS), ("tasks", KINDS)):
            values = comma_list(getattr(self, name))
            if not values or any(v not in allowed for v in values):
                _fail(self, name, f"expected comma-separated values among {list(allowed)}")
        if self.factors is None:
            _fail(self, "size_factors", "expected increasing integers starting at 1, e.g. '1,2,4'")
        for name in ("hidden", "batch_size", "max_steps", "sweep_items", "budget_s"):
            self._check_each(name)
        self.copy_tasks()                     # CopyTask and ModelConfig check sizes and heads themselves
        for family in self.family_list:
            self.model_config(family)

    def _check_each(self, name: str):
        """``hidden`` or a ``PER_TASK`` field: one valid value, or a dict with one for each family / task used."""
        keys, used = (MODELS, self.family_list) if name == "hidden" else (KINDS, self.task_list)
        what, ok = (("a number >= 0", lambda v: _is_number(v) and v >= 0) if name == "budget_s"
                    else ("an integer >= 1", lambda v: _is_int(v, 1)))
        value = getattr(self, name)
        if not isinstance(value, dict):
            if not ok(value):
                _fail(self, name, f"expected {what}, or a dict with one for each of {list(keys)}")
        elif any(k not in keys for k in value) or any(k not in value for k in used):
            _fail(self, name, f"expected one value for each of {list(used)} (keys among {list(keys)})")
        else:
            for k in used:
                if not ok(value[k]):
                    _fail(self, name, f"expected {what} for each, got {value[k]!r} for {k!r}")

    @property
    def family_list(self) -> list[str]:
        return comma_list(self.families)

    @property
    def task_list(self) -> list[str]:
        return comma_list(self.tasks)

    @property
    def factors(self) -> list[int] | None:
        """``size_factors`` as integers; None when they are not increasing integers from 1."""
        try:
            factors = [int(f) for f in self.size_factors.split(",")]
        except (AttributeError, ValueError):
            return None
        return factors if factors and factors[0] == 1 and factors == sorted(set(factors)) else None

    def per_task(self, name: str) -> dict:
        value = getattr(self, name)
        return {t: value[t] if isinstance(value, dict) else value for t in self.task_list}

    def copy_tasks(self) -> dict[str, CopyTask]:
        tasks = {"image": CopyTask("image", self.image_rows, width=self.image_width, n_colours=self.image_colours),
                 "text": CopyTask("text", self.text_words),
                 "selective": CopyTask("selective", self.selective_length, n_recall=self.selective_recall),
                 "sprite": CopyTask("sprite", self.sprite_side)}
        return {t: tasks[t] for t in self.task_list}

    def model_config(self, family: str) -> ModelConfig:
        own = {"lstm": {}, "attention": {"n_heads": self.n_heads},
               "bysmamba": {"expand": self.expand, "ssm": self.ssm}}[family]
        hidden = self.hidden[family] if isinstance(self.hidden, dict) else self.hidden
        return ModelConfig(model=family, dim=self.dim, depth=self.depth, hidden=hidden, objective="causal",
                           positions=self.positions, **own)


def show_ids(ids) -> str:
    """Token ids as text: bytes as latin-1, ``/`` a row end, ``|`` a segment end, ``#`` a pixel."""
    return "".join({tok.ROW_END_ID: "/", tok.SEG_END_ID: "|"}.get(i, "#" if i >= tok.FIRST_COLOUR_ID
                                                                else tok.BYTE_TOKENS[i].decode("latin-1"))
                   for i in ids)


def plan(cfg: CopyConfig, held_out_sprites: list[np.ndarray] | None = None) -> list[tuple[str, str]]:
    """The (family, task) runs, costliest first (tokens trained on, BysMamba 3x) so that workers end together."""
    steps, batches = cfg.per_task("max_steps"), cfg.per_task("batch_size")
    cost = {t: steps[t] * batches[t] * np.mean([len(i.ids) for i in held_out_items(task, 16, cfg.seed,
                                                                                    held_out_sprites)])
            for t, task in cfg.copy_tasks().items()}
    return sorted(((family, t) for t in cfg.task_list for family in cfg.family_list),
                  key=lambda run: -cost[run[1]] * (3 if run[0] == "bysmamba" else 1))


@dataclass
class Study:
    """``run_study``'s results: models by (family, task); curves, sweeps and skills with family and task columns."""
    cfg: CopyConfig
    models: dict
    curves: pd.DataFrame
    sweeps: pd.DataFrame
    table: pd.DataFrame
    skills: pd.DataFrame


def table_row(family: str, task: CopyTask, curve: pd.DataFrame, sweep: pd.DataFrame, factors) -> dict:
    """One run's row: scores at the trained size beside the best baseline, at the larger sizes, where
    token accuracy falls below 90%, what the headline curve did."""
    final = curve.attrs["final"]
    model_rows = sweep[sweep["method"] == "model"].set_index("factor")
    base = sweep[(sweep["method"] != "model") & (sweep["factor"] == 1)]
    row = {"family": family, "task": task.kind, "trained_size": task.size, "parameters": final["parameters"],
           "steps": final["steps"], "stopped_by": final["stopped_by"], "train_s": round(final["train_seconds"], 1),
           "tokens_per_s": round(final["tokens_per_s"]), "token_acc": model_rows.loc[1, "token_accuracy"],
           "baseline_token_acc": base["token_accuracy"].max(), "exact_acc": model_rows.loc[1, "sequence_accuracy"],
           "baseline_exact_acc": base["sequence_accuracy"].max(),
           "pixel_acc": model_rows.loc[1, "pixel_accuracy"], "baseline_pixel_acc": base["pixel_accuracy"].max()}
    for f in factors[1:]:
        row[f"token_acc_{f}x"] = model_rows.loc[f, "token_accuracy"]
        row[f"exact_acc_{f}x"] = model_rows.loc[f, "sequence_accuracy"]
    row["size_below_90"] = size_below(sweep, "token_accuracy", 0.9)
    headline = HEADLINE[task.kind]
    row["curve_end"] = f"{curve_trend(curve, headline)} ({headline.split('_')[0]})"
    return row


def append_csv(path, frame: pd.DataFrame, float_format: str | None = None):
    """Add ``frame``'s rows to a CSV (header first when it is new): a study or a comparison stopped
    early keeps the rows of what finished."""
    path = Path(path)
    frame.to_csv(path, mode="a", header=not path.exists(), index=False, float_format=float_format)


def run_study(cfg: CopyConfig, out_dir, sprites: list[np.ndarray] | None = None,
              held_out_sprites: list[np.ndarray] | None = None, log=None) -> Study:
    """Train every family on every task (``plan``, ``cfg.workers`` at once) and score each model at every
    size factor; ``STUDY_FILES`` get each run's rows as it ends, then all in the plan's order. Sprite copy
    trains on ``sprites``, is scored on ``held_out_sprites``."""
    log = log or functools.partial(print, flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for file, _ in STUDY_FILES.values():
        (out / file).unlink(missing_ok=True)
    tasks, factors, runs = cfg.copy_tasks(), cfg.factors, plan(cfg, held_out_sprites)
    per_task = {name: cfg.per_task(name) for name in PER_TASK}      # train_and_sweep's arguments of that name
    jobs = [dict(model_config=cfg.model_config(family), task=tasks[t], factors=factors, lr=cfg.lr,
                 eval_points=cfg.eval_points, eval_items=cfg.eval_items, seed=cfg.seed, device=cfg.device,
                 sprites=sprites, held_out_sprites=held_out_sprites, **{n: v[t] for n, v in per_task.items()})
            for family, t in runs]
    parts = {}

    def finished(k, result):
        (family, t), (_, curve, sweep) = runs[k], result
        parts[family, t] = {"curves": curve.assign(family=family, task=t),
                            "sweeps": sweep.assign(family=family, task=t),
                            "table": pd.DataFrame([table_row(family, tasks[t], curve, sweep, factors)]),
                            "skills": skill_rows(sweep[sweep["factor"] == 1], tasks[t]).assign(family=family)}
        for name, part in parts[family, t].items():
            append_csv(out / STUDY_FILES[name][0], part, STUDY_FILES[name][1])
        final, last = curve.attrs["final"], curve.iloc[-1]
        log(f"{family:>9} {t:>9}: {final['steps']:>5} steps in {final['train_seconds']:5.1f} s "
            f"({final['tokens_per_s']:,.0f} tokens/s), token acc {last['token_accuracy']:.3f}, "
            f"exact {last['sequence_accuracy']:.3f}")

    models = {run: model for run, (model, _, _) in zip(runs, run_jobs(jobs, cfg.workers, finished))}
    by_family = [(f, t) for f in cfg.family_list for t in cfg.task_list]      # the skills rows' order
    study = Study(cfg, models, **{name: pd.concat([parts[r][name] for r in (by_family if name == "skills" else runs)],
                                                  ignore_index=True) for name in STUDY_FILES})
    for name, (file, float_format) in STUDY_FILES.items():
        getattr(study, name).to_csv(out / file, index=False, float_format=float_format)
    (out / "copy_table.json").write_text(json.dumps(
        {"tasks": {t: task.label for t, task in tasks.items()}, "size_factors": factors,
         "rows": json.loads(study.table.to_json(orient="records"))}, indent=1))
    return study


def goals(table: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's goals, met or not, each with what its curve did (``curve_trend`` of the headline score)."""
    def trend(family, task):
        return curve_trend(curves[(curves["family"] == family) & (curves["task"] == task)], HEADLINE[task])

    rows, by = [], table.set_index(["family", "task"])
    if ("bysmamba", "selective") in by.index:
        r = by.loc[("bysmamba", "selective")]
        rows.append({"goal": "bysmamba selective exact >= 0.99", "value": r["exact_acc"],
                     "met": r["exact_acc"] >= 0.99, "curve": r["curve_end"]})
    for t in ("image", "text"):
        if (table["task"] == t).any():
            best = table[table["task"] == t].sort_values("token_acc").iloc[-1]
            rows.append({"goal": f"best family {t} token >= 0.99", "value": best["token_acc"],
                         "met": best["token_acc"] >= 0.99, "curve": f"{best['family']}: {trend(best['family'], t)}"})
    for _, r in table[table["task"] == "sprite"].iterrows():
        rows.append({"goal": f"{r['family']} sprite pixel accuracy above the best baseline's "
                             f"{r['baseline_pixel_acc']:.3f}",
                     "value": r["pixel_acc"], "met": r["pixel_acc"] > r["baseline_pixel_acc"],
                     "curve": trend(r["family"], "sprite")})
    return pd.DataFrame(rows)
