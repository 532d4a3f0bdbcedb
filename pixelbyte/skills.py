"""The mission's skills, measured on held-out items, every figure beside its baseline.

    report = skills.measure(model, train_seqs, test_seqs, SkillsConfig(items=32))
    report.table          # skill, metric, value, baseline, baseline_is, items
    report.examples       # generated captions and sprites, for the pictures

What a trained PixelByte model must do (and how each is scored here):
- **keep the declared dimensions**: from a held-out item's shape text ``"(h, w)\\n"`` (data
  order) or its caption then its shape (caption-first order), sample the image freely; the share
  of attempts that give exactly h rows of w colours closed by ``\\n`` (an unfinished image is a
  failure). Baseline: a sampler drawing the training set's token frequencies (its chance of an
  exact image is computed, not sampled).
- **sprite -> caption**: from a held-out sprite (shape + image), write the caption (greedy by
  default, ``caption_temperature``); the share
  whose *group* (the words after the last ". " up to ",": "smileys and emotion", "flags", ...)
  is the reference's, and how close the *name* (before the last ". ") is, as difflib's ratio
  (1 = the same string). Baselines: always answering the majority group of the training items;
  the name of a random training item.
- **caption -> sprite**: from a held-out caption and its shape (caption-first order), draw the
  sprite (constrained to the declared shape, so content is judged apart from dimensions); a
  classifier fitted on the training sprites (``SpriteClassifier``) predicts each drawing's group.
  Floor: chance (1 / number of groups), or always the majority training group where that scores
  more; ceiling: the classifier on the real held-out sprites.
- **switch between text and image, model the stream**: bits per token on whole held-out items
  by modality, in both orders. Baseline: the training set's token frequencies (unigram).
Copy skills are trained and measured by ``copying`` (notebook 05); ``copying.copy_rows`` gives
rows of this table's format, appended with ``measure(copy=...)``.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import data, evaluate, generate as gen, tokenizer as tok

COLUMNS = ("skill", "metric", "value", "baseline", "baseline_is", "items")


def caption_group(caption: str, known=None) -> str:
    """'grinning face. smileys and emotion, face smiling' -> 'smileys and emotion': the words
    after the last ". " up to ",". With ``known`` groups (those of the training captions), the
    first ". <group>," that names one of them: a generated caption may run on past its group
    ("... face. smileys and emotion, face concerned face. smiley")."""
    if known:
        for part in caption.split(". ")[1:]:
            group = part.split(",")[0].strip()
            if group in known:
                return group
    return caption.rsplit(". ", 1)[-1].split(",")[0].strip()


def caption_name(caption: str) -> str:
    """'grinning face. smileys and emotion, face smiling' -> 'grinning face'."""
    return caption.rsplit(". ", 1)[0].strip() if ". " in caption else ""


def name_similarity(a: str, b: str) -> float:
    """difflib's ratio of two strings: 1 = equal, 0 = nothing in common."""
    return difflib.SequenceMatcher(None, a, b).ratio()


@dataclass
class Item:
    """A held-out item, decoded from its windows."""
    shape: tuple[int, int]
    image: np.ndarray           # (h, w) palette indices
    caption: str
    prompt: list[int]           # shape + image ids (the sprite -> caption prompt)

    @classmethod
    def of(cls, windows: np.ndarray) -> "Item | None":
        blocks = tok.split_segments(windows)
        sprite = tok.item_sprite(windows) if len(blocks) == 3 else None
        caption = tok.decode(tok.centre_ids(blocks[2]))[0] if sprite is not None else None
        if caption is None or caption.kind != "text":
            return None
        return cls(sprite[0], sprite[1], caption.text, [int(t) for t in tok.centre_ids(np.concatenate(blocks[:2]))])


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over the list (``data.evenly_spaced``): datasets are often
    sorted by category (the embedded emoji are), so the first n would come from one or two groups."""
    return [items[k] for k in data.evenly_spaced(len(items), n)]


def palette_indices(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) palette RGB (decoded sprites) -> (h, w) palette indices."""
    return tok.quantize(rgb)


# ---------------------------------------------------------------------------------------------
# The sprite classifier behind caption -> sprite


class SpriteClassifier:
    """Logistic regression (scikit-learn) from a sprite's colours to its caption group.

    Features: one-hot colour counts pooled over a 4x4 grid of blocks of a 24x24 canvas (the
    sprite top-left, white around it), plus the whole sprite's colour histogram. On the embedded
    set it gets ~0.65 of held-out real sprites right against 0.15 for the majority group."""

    CANVAS, GRID = 24, 4

    def __init__(self, C: float = 10.0):
        self.C = C

    @classmethod
    def features(cls, images: list[np.ndarray]) -> np.ndarray:
        n, block = cls.CANVAS, cls.CANVAS // cls.GRID
        white = int(tok.quantize(np.full((1, 1, 3), 255, np.uint8))[0, 0])
        out = []
        for im in images:
            canvas = np.full((n, n), white)
            h, w = min(n, im.shape[0]), min(n, im.shape[1])
            canvas[:h, :w] = im[:h, :w]
            blocks = canvas.reshape(cls.GRID, block, cls.GRID, block).transpose(0, 2, 1, 3)
            pooled = [np.bincount(b.reshape(-1), minlength=len(tok.PALETTE)) for b in blocks.reshape(-1, block * block)]
            whole = np.bincount(canvas.reshape(-1), minlength=len(tok.PALETTE))
            out.append(np.concatenate([*pooled, whole]) / (block * block))
        return np.asarray(out, dtype=np.float64)

    def fit(self, images: list[np.ndarray], groups: list[str]) -> "SpriteClassifier":
        from sklearn.linear_model import LogisticRegression

        self.groups = sorted(set(groups))
        if not self.groups:
            raise ValueError("the sprite classifier needs at least one training sprite with a caption group")
        self.majority = max(self.groups, key=list(groups).count)
        # one group only (a tiny subset): nothing to tell apart, every sprite is that group
        self.model = LogisticRegression(C=self.C, max_iter=2000).fit(self.features(images), groups) \
            if len(self.groups) > 1 else None
        return self

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        if self.model is None:
            return np.array([self.majority] * len(images))
        return self.model.predict(self.features(images))


def fit_classifier(train_seqs: list[np.ndarray]) -> SpriteClassifier:
    items = [i for i in map(Item.of, train_seqs) if i is not None]
    return SpriteClassifier().fit([i.image for i in items], [caption_group(i.caption) for i in items])


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class SkillsConfig:
    items: int = 32                 # held-out items scored (evenly spread over the split)
    temperature: float = 0.8        # sampling temperature of images (greedy images of small models degenerate)
    caption_temperature: float = 0.0  # captions: 0 = greedy, as captioning is scored (the likeliest caption)
    top_k: int | None = None        # sample among the k likeliest tokens only (None = all)
    seed: int = 0
    batch_size: int = 32            # prompts generated at once

    def __post_init__(self):
        if not isinstance(self.items, int) or self.items < 1:
            raise ValueError(f"SkillsConfig.items={self.items!r}: expected an integer >= 1")
        for name in ("temperature", "caption_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SkillsConfig.{name}={value!r}: expected a number >= 0")


@dataclass
class Skills:
    table: pd.DataFrame                             # COLUMNS
    examples: dict = field(default_factory=dict)    # references and generations, for pictures

    def value(self, skill: str, metric: str) -> float:
        row = self.table[(self.table["skill"] == skill) & (self.table["metric"] == metric)]
        return float(row["value"].iloc[0]) if len(row) else math.nan

    def markdown(self, digits: int = 3) -> str:
        """The table as markdown: skill | metric | value | baseline (what the baseline is) | items."""
        def fmt(v):
            return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else \
                (f"{v:.2e}" if 0 < abs(v) < 10 ** -digits else f"{v:.{digits}f}")
        lines = ["| skill | metric | value | baseline | baseline is | items |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.skill} | {r.metric} | {fmt(r.value)} | {fmt(r.baseline)} | {r.baseline_is} | {r.items} |"
                  for r in self.table.itertuples()]
        return "\n".join(lines)

    def wide(self, prefix: str = "") -> dict:
        """One flat dict ``{skill/metric: value}`` (a row of a comparison table)."""
        return {f"{prefix}{r.skill}/{r.metric}": r.value for r in self.table.itertuples()}


def _generate(model, prompts, budgets, cfg: SkillsConfig, constrained: bool = False, temperature=None):
    out = []
    for b in range(0, len(prompts), cfg.batch_size):
        out += gen.generate(model, prompts[b:b + cfg.batch_size], budgets[b:b + cfg.batch_size],
                            temperature=cfg.temperature if temperature is None else temperature, top_k=cfg.top_k,
                            seed=cfg.seed + b, stop_after_segments=1, constrained=constrained)
    return out


def _unigram(train_seqs) -> np.ndarray:
    counts = np.bincount(np.concatenate([tok.centre_ids(s) for s in train_seqs]).astype(np.int64),
                         minlength=tok.VOCAB_SIZE).astype(np.float64)
    return (counts + 1) / (counts + 1).sum()          # add-one: every token has some probability


def _exact_image_probability(p: np.ndarray, shape: tuple[int, int]) -> float:
    """P(a unigram sampler writes exactly h rows of w colours, then \\n), in log space."""
    h, w = shape
    colour = p[tok.FIRST_COLOUR_ID:].sum()
    return math.exp(h * w * math.log(colour) + (h - 1) * math.log(p[tok.ROW_END_ID]) + math.log(p[tok.SEG_END_ID]))


DIMENSION_ORDERS = {"data": "data order: shape -> image", "caption_first": "caption-first: caption, shape -> image"}


def dimension_rows(outs_by_order: dict[str, list], items: list[Item], unigram: np.ndarray) -> list[dict]:
    """Free dimension consistency per order from the generations (``generate.Generation``s)."""
    baseline = float(np.mean([_exact_image_probability(unigram, i.shape) for i in items]))
    return [{"skill": "dimensions", "metric": DIMENSION_ORDERS[order],
             "value": gen.dimension_consistency(outs)["share_of_attempts"], "baseline": baseline,
             "baseline_is": "unigram sampler (exact probability)", "items": len(items)}
            for order, outs in outs_by_order.items()]


def caption_rows(written: list[str], items: list[Item], train_captions: list[str], seed: int = 0) -> list[dict]:
    """Group accuracy and name similarity of generated captions against the references."""
    refs = [i.caption for i in items]
    groups = [caption_group(c) for c in train_captions]
    known = set(groups)
    majority = max(sorted(known), key=groups.count)
    rng = np.random.default_rng(seed)
    random_names = [caption_name(train_captions[k]) for k in rng.integers(0, len(train_captions), len(items))]
    return [
        {"skill": "sprite -> caption", "metric": "group accuracy",
         "value": float(np.mean([caption_group(w, known) == caption_group(r) for w, r in zip(written, refs)])),
         "baseline": float(np.mean([caption_group(r) == majority for r in refs])),
         "baseline_is": f"always the majority group ({majority!r})", "items": len(items)},
        {"skill": "sprite -> caption", "metric": "name similarity",
         "value": float(np.mean([name_similarity(caption_name(w), caption_name(r)) for w, r in zip(written, refs)])),
         "baseline": float(np.mean([name_similarity(n, caption_name(r)) for n, r in zip(random_names, refs)])),
         "baseline_is": "name of a random training item", "items": len(items)},
    ]


def sprite_rows(drawn: list[np.ndarray], items: list[Item], classifier: SpriteClassifier) -> list[dict]:
    """Group accuracy of drawn sprites (palette indices) by the classifier, with its ceiling.

    The floor is the better of chance and "always the training set's majority group": on a
    subset with few groups (3 of 04's 4 scored items are faces) a drawing that tells the
    classifier nothing can still score far above 1 / groups."""
    truth = np.array([caption_group(i.caption) for i in items])
    chance = 1 / len(classifier.groups)
    majority = classifier.majority
    constant = float(np.mean(truth == majority))
    floor, floor_is = ((constant, f"always the majority group ({majority!r}); chance is {chance:.3f}")
                       if constant > chance else (chance, f"chance (1 / {len(classifier.groups)} groups)"))
    return [
        {"skill": "caption -> sprite", "metric": "group accuracy (classifier)",
         "value": float((classifier.predict(drawn) == truth).mean()), "baseline": floor,
         "baseline_is": floor_is, "items": len(items)},
        {"skill": "caption -> sprite", "metric": "classifier on the real held-out sprites (ceiling)",
         "value": float((classifier.predict([i.image for i in items]) == truth).mean()), "baseline": floor,
         "baseline_is": floor_is, "items": len(items)},
    ]


def _generations(model, items: list[Item], cfg: SkillsConfig, caption_budget: int) -> dict:
    """Everything the report samples: free images in both orders, captions, drawn sprites."""
    images = {order: _generate(model, [gen.caption_to_sprite_prompt(i.caption, i.shape, caption_first=order == "caption_first")
                                       for i in items], [2 * h * (w + 1) for h, w in (i.shape for i in items)], cfg)
              for order in DIMENSION_ORDERS}
    captions = _generate(model, [i.prompt for i in items], [caption_budget] * len(items), cfg,
                         temperature=cfg.caption_temperature)
    sprites = _generate(model, [gen.caption_to_sprite_prompt(i.caption, i.shape, caption_first=True) for i in items],
                        [h * (w + 1) for h, w in (i.shape for i in items)], cfg, constrained=True)
    return {"images": images, "captions": [o.texts[-1] if o.texts else "" for o in captions],
            "drawn": [palette_indices(o.images[-1]) for o in sprites]}


def _bits_rows(model, test_seqs, unigram) -> list[dict]:
    """Bits per token on the held-out items: whole items in both orders for causal models; for
    ``next`` models (one target after each window) every token after a window of the length
    they were trained on. Baseline: the unigram's bits on the same target tokens."""
    if model.config.objective == "causal":
        views = {f"bits per token ({o.replace('_', '-')})": data.ItemDataset(test_seqs, o)
                 for o in ("data", "caption_first")}
    else:
        run = getattr(model, "run", None)
        length = (run.context_length if run is not None else None) or gen.DEFAULT_WINDOW
        length = min(length, min(len(s) for s in test_seqs) - 1)
        views = {f"bits per token (next token after {length})": data.WindowDataset(test_seqs, length, 1, "next")}
    rows = []
    for skill, samples in views.items():
        metrics = evaluate.token_metrics(model, samples, batch_size=16).set_index("modality")
        targets = _targets(samples)
        kinds = tok.modality(targets)
        for name in ("all", *tok.MODALITIES):
            sel = np.ones(len(targets), bool) if name == "all" else kinds == tok.MODALITIES.index(name)
            rows.append({"skill": skill, "metric": name, "value": float(metrics.loc[name, "bits_per_token"]),
                         "baseline": float(-np.log2(unigram[targets[sel]]).mean()) if sel.any() else math.nan,
                         "baseline_is": "training token frequencies (unigram)", "items": len(test_seqs)})
    return rows


def _targets(samples) -> np.ndarray:
    """Every target token of a dataset, as the loss counts them (padding dropped)."""
    ys = [np.asarray(samples[i][1]).reshape(-1) for i in range(len(samples))]
    ys = np.concatenate(ys).astype(np.int64)
    return ys[ys != tok.PAD_ID]


def measure(model, train_seqs: list[np.ndarray], test_seqs: list[np.ndarray],
            cfg: SkillsConfig | None = None, classifier: SpriteClassifier | None = None,
            copy: pd.DataFrame | None = None) -> Skills:
    """The skills report of ``model`` on ``cfg.items`` held-out items spread over the split (all for
    bits per token). ``classifier``: a fitted ``SpriteClassifier`` (fitted on ``train_seqs``
    when None); ``copy``: rows from ``copying.copy_rows`` to append (same columns)."""
    cfg = cfg or SkillsConfig()
    items = spread([i for i in map(Item.of, test_seqs) if i is not None], cfg.items)
    if not items:
        raise ValueError("no held-out item has the shape, image, caption segments the skills need")
    train_items = [i for i in map(Item.of, train_seqs) if i is not None]
    classifier = classifier or fit_classifier(train_seqs)
    unigram = _unigram(train_seqs)
    train_captions = [i.caption for i in train_items]
    caption_budget = int(1.5 * max(len(c) for c in train_captions)) + 8 if train_captions else 160
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            made = _generations(model, items, cfg, caption_budget)
            bits = _bits_rows(model, test_seqs, unigram)
    finally:
        model.train(was_training)
    rows = (dimension_rows(made["images"], items, unigram) + caption_rows(made["captions"], items, train_captions, cfg.seed)
            + sprite_rows(made["drawn"], items, classifier) + bits)
    table = pd.DataFrame(rows, columns=COLUMNS)
    if copy is not None:
        table = pd.concat([table, copy[list(COLUMNS)]], ignore_index=True)
    examples = {"references": [tok.PALETTE[i.image] for i in items], "reference_captions": [i.caption for i in items],
                "shapes": [i.shape for i in items], "captions": made["captions"],
                "drawn": [tok.PALETTE[d] for d in made["drawn"]],
                **{f"free_{order}": [o.images[-1] if o.images else None for o in outs]
                   for order, outs in made["images"].items()}}
    return Skills(table, examples)
