"""Copy tasks as whole PixelBytes items: an unlimited seeded stream to train on, greedy scoring
beside trivial baselines, and a training run that records its accuracy curve.

    task = CopyTask("selective", size=16, n_recall=4)
    stream = CopyStream(task, n=64_000, seed=0)       # item i is made from np.random.default_rng([seed, i])
    x, y = stream[i]                                  # x (L, 3, 3) causal windows, y (L,): 0 outside the copy
    model, curve = train_copy(ModelConfig(model="bysmamba", objective="causal"), task, max_steps=600)
    scores = copy_scores(model, held_out_items(task, 64))   # model and baselines: token / exact / pixel accuracy
    rows = copy_rows(model, task, n_items=64)               # the skills report's columns (skills.measure(copy=rows))
    runs = run_jobs([dict(model_config=cfg, task=task, max_steps=600), ...], workers=2)  # [(model, curve, sweep)]

The tasks (``KINDS``). Every item is a real PixelBytes stream whose last part repeats earlier
content; ``CopyItem.copy_start:copy_end`` marks that part, the prompt is everything before it.
- ``image``: a declared ``(size, width)`` image whose bottom half of rows repeats its top half
  (shape segment + image segment). The copy: the bottom rows with their ``\\t`` / ``\\n``.
- ``text``: a phrase of ``size`` random words, ``"; "``, the phrase again (one text segment).
  The copy: the second phrase and its ``\\n``.
- ``selective``: selective copying (Mamba paper style) as one text segment: ``n_recall``
  letters scattered among ``size`` spaces, ``:``, then the letters in order,
  e.g. ``"  k   b  x    q  :kbxq"``. The copy: the letters after ``:`` and the ``\\n``.
- ``sprite``: a real sprite of the dataset (its shape segment and image segment, resized so its
  longer side is ``size`` pixels), then its shape segment again, then the sprite again. The copy:
  the second image. Train on the training split's sprites, score on held-out ones.

The stream (``CopyStream``) is a map-style dataset of virtual length ``n``: item i depends only on
(seed, i), so it is deterministic, resumable with the ``Trainer`` and never a small fixed set.
Its targets are the copy part only (every other position is 0, which the loss ignores): the model
is trained on exactly what it is scored on.

Scoring (``copy_scores``) generates each copy greedily from its prompt and compares it position by
position with the reference: token accuracy (share of copy tokens right), exact-sequence accuracy
(share of items copied without one error) and, where the copy holds pixels, pixel accuracy (share
of the reference's colour tokens reproduced). Beside the model, trivial baselines on the same
items: repeat the prompt's last token, repeat the prompt's most frequent token, and for sprites an
all-background image (every pixel the background colour, row ends in place). ``copy_rows`` gives
the same scores as rows of the skills report; ``size_sweep`` scores a model at other sizes of
its task (length generalisation) and ``size_below`` finds where it falls below a threshold.

Training (``train_copy``): a fresh model of a family, the ``Trainer`` on the task's stream, and a
curve of greedy accuracy on held-out items at a few points. ``run_jobs`` runs several such
trainings (each followed by its size sweep) in parallel processes, one CPU core each.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from . import tokenizer as tok
from .config import ModelConfig, TrainConfig
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


# ---------------------------------------------------------------------------------------------
# One item


@dataclass
class CopyItem:
    """A pixelbyte sequence whose tokens ``[copy_start, copy_end)`` repeat earlier content:
    generate them greedily from ``ids[:copy_start]`` and compare."""
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


def _text_windows(text: str) -> np.ndarray:
    return tok.segment_windows(tok.text_to_ids(text)[None])


def _image_windows(indices: np.ndarray) -> np.ndarray:
    """(h, w) palette indices -> the shape segment "(h, w)" and the image segment, as
    ``tokenizer.encode_item`` writes them (without going through RGB)."""
    h, w = indices.shape
    return np.concatenate([_text_windows(str((h, w))),
                           tok.segment_windows((indices + tok.FIRST_COLOUR_ID).astype(np.uint8))])


def image_copy_item(rng: np.random.Generator, height: int = 6, width: int = 6, n_colours: int = 4) -> CopyItem:
    """A (height, width) image of ``n_colours`` random colours whose bottom half of rows repeats
    its top half, as a real item (shape text + image, no caption). The copy is the bottom half's
    rows with their separators."""
    if height < 2 or height % 2:
        raise ValueError(f"height must be an even number >= 2, got {height}")
    colours = rng.choice(len(tok.PALETTE), size=min(n_colours, len(tok.PALETTE)), replace=False)
    top = rng.choice(colours, size=(height // 2, width))                 # (h/2, w) palette indices
    windows = _image_windows(np.concatenate([top, top]))
    shape_len = len(str((height, width))) + 1
    return CopyItem("image", windows, shape_len + (height // 2) * (width + 1), len(windows))


def text_copy_item(rng: np.random.Generator, n_words: int = 2, min_len: int = 2, max_len: int = 5) -> CopyItem:
    """A phrase of ``n_words`` random words repeated after a separator, e.g. ``"abc def; abc def"``;
    the copy is the second phrase and its segment end."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"word lengths must satisfy 1 <= min_len <= max_len, got {min_len}, {max_len}")
    words = ["".join(map(chr, rng.choice(LETTERS, size=rng.integers(min_len, max_len + 1))))
             for _ in range(n_words)]
    phrase = " ".join(words)
    windows = _text_windows(f"{phrase}; {phrase}")
    return CopyItem("text", windows, len(phrase) + 2, len(windows))


def selective_copy_item(rng: np.random.Generator, length: int = 16, n_recall: int = 4,
                        marker: str = ":") -> CopyItem:
    """Selective copying (Mamba paper style) as one text segment: ``n_recall`` letters scattered
    among ``length`` spaces, the marker, then the letters in order, e.g. ``"  k   b  x    q  :kbxq"``.
    The copy is the letters after the marker and the segment end."""
    if not 1 <= n_recall <= length:
        raise ValueError(f"n_recall must be in 1..length ({length}), got {n_recall}")
    letters = rng.choice(LETTERS, size=n_recall)
    filler = np.full(length, ord(" "))
    filler[np.sort(rng.choice(length, size=n_recall, replace=False))] = letters
    text = bytes(filler.astype(np.uint8)).decode() + marker + bytes(letters.astype(np.uint8)).decode()
    windows = _text_windows(text)
    return CopyItem("selective", windows, length + len(marker), len(windows))


def sprite_copy_item(rng: np.random.Generator, sprites: list[np.ndarray], side: int = 0) -> CopyItem:
    """A real sprite (shape segment + image segment), its shape segment again, then the sprite
    again: the copy is the second image. ``sprites``: (h, w) palette-index images
    (``sprite_images``), one is drawn; ``side``: resize it so its longer side is that many pixels
    (``resize_sprite``; 0 keeps it as it is)."""
    if not sprites:
        raise ValueError("sprite copy needs sprites: pass sprite_images(seqs) of the items to copy")
    sprite = resize_sprite(sprites[int(rng.integers(len(sprites)))], side)
    original = _image_windows(sprite)
    shape = original[:len(str(sprite.shape)) + 1]
    windows = np.concatenate([original, shape, original[len(shape):]])
    return CopyItem("sprite", windows, len(original) + len(shape), len(windows))


def sprite_images(seqs: list[np.ndarray]) -> list[np.ndarray]:
    """The sprites of data-order items (shape, image, caption) as (h, w) palette-index arrays;
    items without a well-formed shape + image are skipped (``tokenizer.item_sprite``)."""
    return [sprite[1] for sprite in map(tok.item_sprite, seqs) if sprite is not None]


def resize_sprite(indices: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) palette-index image so that its longer side is
    ``side`` pixels (aspect kept; 0 = unchanged). Pixel art stays pixel art: every output pixel is
    one of the input's."""
    if side == 0 or max(indices.shape) == side:
        return indices
    h, w = indices.shape
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = ((np.arange(nh) + 0.5) * h / nh).astype(np.int64)
    cols = ((np.arange(nw) + 0.5) * w / nw).astype(np.int64)
    return indices[rows][:, cols]


# ---------------------------------------------------------------------------------------------
# A task and its stream


@dataclass(frozen=True)
class CopyTask:
    """One copy task at one size. ``size`` is what the length-generalisation tests scale
    (``SIZE_NAMES``): image rows (even), words of the text phrase, spaces of the selective copy,
    the sprite's longer side in pixels."""
    kind: str                  # image | text | selective | sprite
    size: int                  # see above
    width: int = 6             # image: columns
    n_colours: int = 4         # image: colours drawn per item
    min_letters: int = 2       # text: letters per word, at least ...
    max_letters: int = 5       # ... and at most
    n_recall: int = 4          # selective: letters to recall

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"CopyTask.kind={self.kind!r}: allowed values are {list(KINDS)}")
        for name in ("size", "width", "n_colours", "min_letters", "max_letters", "n_recall"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"CopyTask.{name}={value!r}: expected an integer >= 1")
        if self.kind == "image" and self.size % 2:
            raise ValueError(f"CopyTask.size={self.size}: an image copy needs an even number of rows")
        if self.kind == "text" and self.min_letters > self.max_letters:
            raise ValueError(f"CopyTask.min_letters={self.min_letters} > max_letters={self.max_letters}")
        if self.kind == "selective" and self.n_recall > self.size:
            raise ValueError(f"CopyTask.n_recall={self.n_recall}: at most size={self.size} letters fit")
        if self.kind == "sprite" and self.size > tok.MAX_IMAGE_SIDE:
            raise ValueError(f"CopyTask.size={self.size}: sprites larger than {tok.MAX_IMAGE_SIDE} px are refused")

    def make(self, rng: np.random.Generator, sprites: list[np.ndarray] | None = None) -> CopyItem:
        """One item drawn with ``rng`` (sprite: from ``sprites``)."""
        if self.kind == "image":
            return image_copy_item(rng, self.size, self.width, self.n_colours)
        if self.kind == "text":
            return text_copy_item(rng, self.size, self.min_letters, self.max_letters)
        if self.kind == "selective":
            return selective_copy_item(rng, self.size, self.n_recall)
        return sprite_copy_item(rng, sprites or [], self.size)

    def scaled(self, factor: int) -> "CopyTask":
        """The same task with ``size`` times ``factor`` (train at L, test at 2L, 4L)."""
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
    """An unlimited stream of copy items of one task, as whole causal samples.

    Item i is ``task.make(np.random.default_rng([seed, i]))`` (held-out streams:
    ``[seed, i, 1]``, other draws than any training stream's): any index gives the same item on
    any machine, in any order, so a resumed ``Trainer`` sees what it would have seen. ``n`` is the
    virtual length (one epoch); take it as large as the training needs. Held-out draws are
    independent, not disjoint: where a task has few distinct items (selective copy of 2 letters
    among 8 spaces has 28 x 26^2 = 18,928) a long training sees many of them; items of another
    size never are, and held-out sprites are other sprites.
    ``x`` = the item's windows with centres zeroed (L, 3, 3), ``y`` = its tokens on the copy part
    and 0 elsewhere (L,): the loss and the metrics see the copy only. Batches are padded by
    ``collate`` (``ItemDataset.collate``: padding id 0, ignored by the loss).
    """

    objective = "causal"
    collate = staticmethod(ItemDataset.collate)

    def __init__(self, task: CopyTask, n: int, seed: int = 0, sprites: list[np.ndarray] | None = None,
                 held_out: bool = False):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer (the stream's virtual length), got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
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
        """The first ``n`` items (all of them by default)."""
        return [self.item(i) for i in range(self.n if n is None else min(n, self.n))]

    def __getitem__(self, i: int):
        item = self.item(i)
        x = torch.from_numpy(item.windows).long()                         # (L, 3, 3)
        y = torch.zeros(len(x), dtype=torch.long)                          # (L,)
        y[item.copy_start:item.copy_end] = x[item.copy_start:item.copy_end, 1, 1]
        x[:, 1, 1] = 0
        return x, y

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """One epoch's order: a plain shuffle (items are independent draws anyway)."""
        return torch.randperm(self.n, generator=generator)

    def mean_length(self, n: int = 256) -> float:
        """Mean tokens per item over the first ``n`` items."""
        return float(np.mean([len(item.windows) for item in self.items(n)]))

    def describe(self, batch_size: int | None = None) -> dict:
        return {"unit": "copy item", "task": self.task.label, "samples": self.n, "seed": self.seed,
                "held_out": self.held_out, **({"sprites": len(self.sprites)} if self.sprites else {})}


def held_out_items(task: CopyTask, n: int, seed: int = 0, sprites: list[np.ndarray] | None = None) -> list[CopyItem]:
    """``n`` items of the held-out stream (``CopyStream(..., held_out=True)``: other draws than
    the training streams'); for sprites pass the held-out split's ``sprite_images``."""
    return CopyStream(task, n, seed, sprites, held_out=True).items()


def copy_task_items(kind: str, n: int, seed: int = 0, **params) -> list[CopyItem]:
    """``n`` items of ``kind`` (image | text | selective); ``params`` go to the maker
    (``image_copy_item``, ``text_copy_item``, ``selective_copy_item``). Item i is drawn from
    ``np.random.default_rng([seed, i])``, as in ``CopyStream``."""
    makers = {"image": image_copy_item, "text": text_copy_item, "selective": selective_copy_item}
    if kind not in makers:
        raise ValueError(f"copy task kind must be one of {list(makers)}, got {kind!r} "
                         f"(sprite copies need sprites: use CopyStream)")
    return [makers[kind](np.random.default_rng([seed, i]), **params) for i in range(n)]


def copy_task_dataset(kind: str, n: int, seed: int = 0, **params) -> list[np.ndarray]:
    """The items of ``copy_task_items`` as plain (L, 3, 3) uint8 sequences, ready for
    ``data.WindowDataset`` / ``data.ItemDataset`` (every token a target, not only the copy)."""
    return [item.windows for item in copy_task_items(kind, n, seed, **params)]


# ---------------------------------------------------------------------------------------------
# Scoring


def score_copy_predictions(items: list[CopyItem], generated: list[list[int]]) -> dict:
    """Generated copies against the items' targets, position by position: token accuracy (share
    of target tokens right, over all items), exact-sequence accuracy (share of items with every
    target token right) and pixel accuracy (share of the targets' colour tokens right; nan when
    no target holds a pixel). A short generation counts its missing tokens as wrong."""
    if len(items) != len(generated):
        raise ValueError(f"{len(items)} items but {len(generated)} generations")
    right = exact = total = pixels = pixels_right = 0
    per_item = []
    for item, gen in zip(items, generated):
        target = np.asarray(item.target_ids)
        got = np.full(len(target), -1)
        got[:min(len(gen), len(target))] = np.asarray(gen[:len(target)], dtype=np.int64)
        hits = got == target
        colour = tok.is_colour(target)
        right, total, exact = right + int(hits.sum()), total + len(target), exact + int(hits.all())
        pixels, pixels_right = pixels + int(colour.sum()), pixels_right + int(hits[colour].sum())
        per_item.append(float(hits.mean()))
    nan = float("nan")
    return {"kinds": ",".join(sorted({i.kind for i in items})), "items": len(items), "tokens": total,
            "token_accuracy": right / total if total else nan,
            "sequence_accuracy": exact / len(items) if items else nan,
            "pixel_accuracy": pixels_right / pixels if pixels else nan,
            "per_item_token_accuracy": per_item}


def generate_copies(model, items: list[CopyItem], batch_size: int = 64, window: int | None = None,
                    use_state: bool | None = None) -> list[list[int]]:
    """Each item's copy generated greedily from its prompt (as many tokens as the reference)."""
    generator = Generator(model, window=window, use_state=use_state)
    generated = []
    for b0 in range(0, len(items), batch_size):
        batch = items[b0:b0 + batch_size]
        gens = generator.generate([i.prompt_ids for i in batch], [i.copy_end - i.copy_start for i in batch],
                                  temperature=0.0)
        generated.extend(g.new for g in gens)
    return generated


def score_copy(model, items: list[CopyItem], batch_size: int = 64, window: int | None = None,
               use_state: bool | None = None) -> dict:
    """Generate each item's copy greedily from its prompt and score it (``score_copy_predictions``)."""
    return score_copy_predictions(items, generate_copies(model, items, batch_size, window, use_state))


BASELINES = {
    "repeat_last": "repeat the prompt's last token",
    "most_frequent_prompt": "repeat the prompt's most frequent token",
    "background": "an all-background image (every pixel white, row ends in place)",
}


def baseline_copies(items: list[CopyItem], name: str) -> list[list[int]]:
    """What a trivial baseline (``BASELINES``) writes for each item's copy. ``background`` is
    defined for sprite copies only: the reference's layout with every pixel ``BACKGROUND_ID``."""
    if name == "repeat_last":
        return [[i.prompt_ids[-1]] * len(i.target_ids) for i in items]
    if name == "most_frequent_prompt":
        return [[int(np.bincount(i.prompt_ids).argmax())] * len(i.target_ids) for i in items]
    if name == "background":
        return [[BACKGROUND_ID if t >= tok.FIRST_COLOUR_ID else t for t in i.target_ids] for i in items]
    raise ValueError(f"baseline {name!r}: allowed values are {list(BASELINES)}")


def baselines_for(kind: str) -> tuple[str, ...]:
    return tuple(BASELINES) if kind == "sprite" else ("repeat_last", "most_frequent_prompt")


METRICS = ("token_accuracy", "sequence_accuracy", "pixel_accuracy")


def copy_scores(model, items: list[CopyItem], batch_size: int = 64) -> pd.DataFrame:
    """One row per method -- "model" (greedy generation; skipped when ``model`` is None) and the
    baselines of the items' kind -- with ``METRICS``, items and copy tokens."""
    kind = items[0].kind
    candidates = {} if model is None else {"model": generate_copies(model, items, batch_size)}
    candidates.update({name: baseline_copies(items, name) for name in baselines_for(kind)})
    rows = []
    for method, generated in candidates.items():
        scored = score_copy_predictions(items, generated)
        rows.append({"method": method, **{m: scored[m] for m in METRICS}, "items": scored["items"],
                     "tokens": scored["tokens"]})
    return pd.DataFrame(rows)


SKILL_METRICS = {"token_accuracy": "token accuracy", "sequence_accuracy": "exact-sequence accuracy",
                 "pixel_accuracy": "pixel accuracy"}


def skill_rows(scores: pd.DataFrame, task: CopyTask) -> pd.DataFrame:
    """``copy_scores`` -> rows of the skills report (skill, metric, value, baseline, baseline_is,
    items): skill "copy: <kind>", one row per metric (pixel accuracy for sprites only), the
    baseline being the best trivial one on those items (``baseline_is`` names it and gives the
    others)."""
    from .skills import COLUMNS

    by = scores.set_index("method")
    others = [m for m in by.index if m != "model"]
    metrics = list(SKILL_METRICS) if task.kind == "sprite" else ["token_accuracy", "sequence_accuracy"]
    rows = []
    for metric in metrics:
        values = by.loc[others, metric].astype(float)
        best = values.idxmax()
        rest = ", ".join(f"{BASELINES[m]} {values[m]:.3f}" for m in others if m != best)
        rows.append({"skill": f"copy: {task.kind}", "metric": SKILL_METRICS[metric],
                     "value": float(by.loc["model", metric]) if "model" in by.index else math.nan,
                     "baseline": float(values[best]), "baseline_is": f"{BASELINES[best]} (best; {rest})",
                     "items": int(by["items"].iloc[0])})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def copy_rows(model, task: CopyTask, n_items: int = 64, seed: int = 0, sprites: list[np.ndarray] | None = None,
              batch_size: int = 64) -> pd.DataFrame:
    """The copy skill of ``model`` on ``n_items`` held-out items of ``task``, in the skills
    report's format (``skill_rows``): ``skills.measure(..., copy=copy_rows(...))``. Sprites:
    pass the held-out split's ``sprite_images``."""
    return skill_rows(copy_scores(model, held_out_items(task, n_items, seed, sprites), batch_size), task)


def size_sweep(model, tasks: list[CopyTask], n_items: int = 64, seed: int = 0,
               sprites: list[np.ndarray] | None = None, batch_size: int = 64) -> pd.DataFrame:
    """``copy_scores`` of one model on held-out items of each task (the same task at other
    sizes: ``[task.scaled(f) for f in (1, 2, 4)]``), one frame: the scores plus the task's
    fields (size, n_recall, ...) and its label."""
    frames = []
    for task in tasks:
        scores = copy_scores(model, held_out_items(task, n_items, seed, sprites), batch_size)
        frames.append(scores.assign(**asdict(task), label=task.label))
    return pd.concat(frames, ignore_index=True)


def size_below(sweep: pd.DataFrame, metric: str = "token_accuracy", threshold: float = 0.9,
               by: str = "size") -> float:
    """The smallest ``by`` value (of the model's rows of a ``size_sweep``) where ``metric``
    falls below ``threshold``; inf when it never does at the sizes tested."""
    model = sweep[sweep["method"] == "model"].sort_values(by)
    below = model[model[metric] < threshold]
    return float(below[by].iloc[0]) if len(below) else math.inf


# ---------------------------------------------------------------------------------------------
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
               batch_size: int = 32, lr: float = 3e-3, min_lr: float | None = None, warmup_steps: int | None = None,
               weight_decay: float = 0.01, eval_every: int | None = None, eval_points: int = 10, eval_items: int = 64,
               seed: int = 0,
               device: str = "cpu", sprites: list[np.ndarray] | None = None,
               held_out_sprites: list[np.ndarray] | None = None,
               out_dir: str | None = None) -> tuple[PixelByteModel, pd.DataFrame]:
    """Train a fresh model of ``model_config`` (objective "causal"; weights from ``seed``) on
    the stream of ``task`` for ``max_steps`` steps of ``batch_size`` items, or fewer: with
    ``budget_s`` > 0, as many as ``budget_s`` seconds of training allow at the pace of the first
    steps (the Trainer's probe: the step count is then fixed and the learning-rate schedule ends
    where training ends; the curve keeps its points up to there). AdamW, linear warmup (default: a tenth
    of the steps, at most 100), cosine decay to ``min_lr`` (default lr / 10).

    Every ``eval_every`` steps (default: the steps / ``eval_points``) and at the end, ``eval_items``
    held-out items are scored: teacher-forced loss and accuracy on the copy part (the Trainer's
    validation) and greedy token / exact-sequence / pixel accuracy (``score_copy``). Sprites:
    train on ``sprites`` (the training split's), score on ``held_out_sprites``.

    Returns (model, curve): one curve row per evaluation (step, val_loss,
    teacher_forced_accuracy, token_accuracy, sequence_accuracy, pixel_accuracy, wall_s: since
    the start, evaluations included); ``curve.attrs["final"]`` holds steps, train_seconds,
    tokens_per_s (stream positions per second of training, padding excluded), the parameter
    count and what ended the run (``stopped_by``: "max_steps" or "budget"). ``out_dir``: keep
    the Trainer's files (metrics.csv, run.json, checkpoints) there; default a temporary folder.
    """
    if model_config.objective != "causal":
        raise ValueError(f"train_copy: model_config.objective={model_config.objective!r}; copy items are whole "
                         f"causal samples, use objective='causal'")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"train_copy: max_steps={max_steps!r}: expected an integer >= 1")
    steps = max_steps                       # the Trainer's budget probe may shorten the run
    train_ds = CopyStream(task, steps * batch_size, seed, sprites)
    val_ds = CopyStream(task, eval_items, seed, held_out_sprites or sprites, held_out=True)
    eval_every = eval_every or max(1, steps // eval_points)
    with tempfile.TemporaryDirectory(prefix="copy_run_") as tmp:
        train_cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr,
                                min_lr=lr / 10 if min_lr is None else min_lr,
                                warmup_steps=min(100, steps // 10) if warmup_steps is None else warmup_steps,
                                weight_decay=weight_decay, eval_every=eval_every, log_every=eval_every,
                                budget_s=budget_s,
                                seed=seed, device=device, progress=False, out_dir=out_dir or tmp)
        torch.manual_seed(seed)
        model = PixelByteModel(model_config)
        trainer = _CurveTrainer(model, train_ds, val_ds, train_cfg, probe_items=val_ds.items())
        final = trainer.fit(overwrite=True)
    curve = pd.DataFrame(trainer.curve)
    seconds = final["train_seconds"]
    positions = final["step"] * batch_size * train_ds.mean_length()
    curve.attrs["final"] = {"steps": final["step"], "train_seconds": seconds,
                            "tokens_per_s": positions / seconds if seconds else math.nan,
                            "parameters": model.num_parameters(),
                            "stopped_by": "budget" if final["step"] < max_steps else "max_steps"}
    return model.eval(), curve


def train_and_sweep(model_config: ModelConfig, task: CopyTask, factors=(1, 2, 4), sweep_items: int = 64,
                    **train_kwargs) -> tuple[PixelByteModel, pd.DataFrame, pd.DataFrame]:
    """``train_copy`` then ``size_sweep`` of the trained model at ``task.scaled(f)`` for every
    factor (held-out sprites for sprite copy): (model, curve, sweep), the sweep with a ``factor``
    column."""
    model, curve = train_copy(model_config, task, **train_kwargs)
    sprites = train_kwargs.get("held_out_sprites") or train_kwargs.get("sprites")
    sweep = size_sweep(model, [task.scaled(f) for f in factors], sweep_items, train_kwargs.get("seed", 0), sprites)
    return model, curve, sweep.assign(factor=sweep["size"] // task.size)


def _job(job: dict):
    model, curve, sweep = train_and_sweep(**job)
    return model.state_dict(), curve, curve.attrs, sweep


def run_jobs(jobs: list[dict], workers: int = 1, report=None) -> list[tuple]:
    """``train_and_sweep(**job)`` for every job, ``workers`` at once (``train.in_processes``).
    ``report(k, result)`` is called as each job ``k`` finishes. Returns the (model, curve,
    sweep) of every job, in the jobs' order."""
    results = [None] * len(jobs)
    for k, (state, curve, attrs, sweep) in in_processes(_job, jobs, workers):
        model = PixelByteModel(jobs[k]["model_config"])
        model.load_state_dict(state)
        curve.attrs.update(attrs)
        results[k] = (model.eval(), curve, sweep)
        if report:
            report(k, results[k])
    return results


def curve_trend(curve: pd.DataFrame, metric: str = "sequence_accuracy", goal: float = 0.99,
                tolerance: float = 0.02) -> str:
    """What a curve says about more training: "reached" (its last point meets ``goal``), "still
    rising" (the mean of its last third of points is more than ``tolerance`` above the mean of
    the third before) or "plateaued"."""
    values = curve[metric].astype(float).to_numpy()
    if len(values) and values[-1] >= goal:
        return "reached"
    if len(values) < 2:
        return "too few points"
    third = max(1, len(values) // 3)
    last, before = values[-third:], values[-2 * third:-third]
    return "still rising" if last.mean() - before.mean() > tolerance else "plateaued"
