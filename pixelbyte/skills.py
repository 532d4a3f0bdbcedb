"""The mission's skills, measured on held-out items, every figure beside its baseline.

    report = skills.measure(model, train_seqs, test_seqs, SkillsConfig(items=32))
    report.table          # skill, metric, value, baseline, baseline_is, items
    report.examples       # generated captions and sprites, for the pictures

- keep the declared dimensions: from a shape text (or a caption then its shape), the share of
  freely sampled images of exactly h rows of w colours; baseline: the training token frequencies;
- sprite -> caption: the share of captions in the reference's group, and how close the name is;
  baselines: the majority training group, a random training name;
- caption -> sprite: a classifier fitted on the training sprites (``SpriteClassifier``) names
  each drawing's group; floor: chance or the majority group; ceiling: the real held-out sprites;
- the stream: bits per token on whole held-out items by modality, both orders; baseline: unigram.
Copy skills come from ``copying`` (``measure(copy=...)``).
"""
from __future__ import annotations

import difflib
import math
from collections import Counter
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
    """'grinning face. smileys and emotion, face smiling' -> 'grinning face'; a caption without
    ". " is all name (never "": two empty names would score a perfect similarity)."""
    return caption.rsplit(". ", 1)[0].strip()


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
    segments: tuple = field(default=(), repr=False)   # (shape, image, caption) windows (L_s, 3, 3)

    @classmethod
    def of(cls, windows: np.ndarray) -> "Item | None":
        blocks = tok.split_segments(windows)
        sprite = tok.item_sprite(windows) if len(blocks) == 3 else None
        caption = tok.decode(tok.centre_ids(blocks[2]))[0] if sprite is not None else None
        if caption is None or caption.kind != "text":
            return None
        return cls(sprite[0], sprite[1], caption.text, [int(t) for t in tok.centre_ids(np.concatenate(blocks[:2]))],
                   tuple(blocks))


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over the list (``data.evenly_spaced``): datasets are often
    sorted by category (the embedded emoji are), so the first n would come from one or two groups."""
    return [items[k] for k in data.evenly_spaced(len(items), n)]


# ---------------------------------------------------------------------------------------------
# The sprite classifier behind caption -> sprite


class SpriteClassifier:
    """Logistic regression (scikit-learn) from a sprite's colours to its caption group. Features:
    colour counts in each block of a 4x4 grid over a 24x24 canvas (the sprite top-left, white
    around it), plus the whole canvas's colour histogram."""

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


def fit_classifier(train_seqs: list[np.ndarray]) -> SpriteClassifier | None:
    """The classifier of the training sprites' groups; None when their captions have none."""
    items = [i for i in map(Item.of, train_seqs) if i is not None]
    if no_groups_reason([i.caption for i in items]):
        return None
    return SpriteClassifier().fit([i.image for i in items], [caption_group(i.caption) for i in items])


def no_groups_reason(captions: list[str], members: int = 3, share: float = 0.8) -> str | None:
    """Why the captions have no groups to score (None when they have): groups exist when at
    least ``share`` of the captions have a ``caption_group`` held by ``members`` captions or more
    (the emoji's do; free-text paragraphs such as Pokedex entries do not)."""
    groups = [caption_group(c) for c in captions]
    counts = Counter(groups)
    shared = sum(counts[g] >= members for g in groups) / max(1, len(groups))
    return None if shared >= share else (
        f"left out: the captions have no groups ({len(counts)} distinct group texts among {len(groups)} "
        f"training captions, {shared:.0%} of them in a group of {members} or more)")


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class SkillsConfig:
    items: int = 32                 # held-out items scored (evenly spread over the split)
    retrieval: tuple = (8, 32)      # retrieval among K held-out items, for each K (fewer if fewer items)
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
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in self.retrieval):
            raise ValueError(f"SkillsConfig.retrieval={self.retrieval!r}: expected integers >= 2")


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
    rows = [
        {"skill": "sprite -> caption", "metric": "group accuracy",
         "value": float(np.mean([caption_group(w, known) == caption_group(r) for w, r in zip(written, refs)])),
         "baseline": float(np.mean([caption_group(r) == majority for r in refs])),
         "baseline_is": f"always the majority group ({majority!r})", "items": len(items)},
        {"skill": "sprite -> caption", "metric": "name similarity",
         "value": float(np.mean([name_similarity(caption_name(w), caption_name(r)) for w, r in zip(written, refs)])),
         "baseline": float(np.mean([name_similarity(n, caption_name(r)) for n, r in zip(random_names, refs)])),
         "baseline_is": "name of a random training item", "items": len(items)},
    ]
    why = no_groups_reason(train_captions)
    if why:
        rows[0].update(value=math.nan, baseline=math.nan, baseline_is=why)
    return rows


def sprite_rows(drawn: list[np.ndarray], items: list[Item], classifier: SpriteClassifier | None,
                why: str | None = None) -> list[dict]:
    """Group accuracy of drawn sprites (palette indices) by the classifier, with its ceiling;
    without a classifier (captions without groups), the same rows with nan and ``why``. The
    floor is the better of chance and "always the majority group": on a subset with few groups a
    drawing that tells the classifier nothing can still score far above 1 / groups."""
    sprites = {"group accuracy (classifier)": drawn,
               "classifier on the real held-out sprites (ceiling)": [i.image for i in items]}
    row = {"skill": "caption -> sprite", "items": len(items)}
    if classifier is None:
        return [{**row, "metric": metric, "value": math.nan, "baseline": math.nan,
                 "baseline_is": why or "left out: no sprite classifier"} for metric in sprites]
    truth = np.array([caption_group(i.caption) for i in items])
    chance, majority = 1 / len(classifier.groups), classifier.majority
    constant = float(np.mean(truth == majority))
    floor, floor_is = ((constant, f"always the majority group ({majority!r}); chance is {chance:.3f}")
                       if constant > chance else (chance, f"chance (1 / {len(classifier.groups)} groups)"))
    return [{**row, "metric": metric, "value": float((classifier.predict(images) == truth).mean()),
             "baseline": floor, "baseline_is": floor_is} for metric, images in sprites.items()]


# ---------------------------------------------------------------------------------------------
# Cross-modal: does one modality inform the other? Read from the model's own likelihood of
# held-out items, so they need no caption groups (causal models only).

CROSS = {"caption -> sprite": ("caption", "sprite", "image"), "sprite -> caption": ("sprite", "caption", "caption")}


def pair_stream(a: Item, b: Item, direction: str) -> tuple[np.ndarray, int]:
    """b's scored segments after a's conditioning ones: (windows (L, 3, 3), where b's begin).
    caption -> sprite: a's caption, b's shape and image; sprite -> caption: a's shape and image,
    b's caption. Segments are windowed on their own, so any pair is a well-formed stream."""
    first, then = (a.segments[2:], b.segments[:2]) if direction == "caption -> sprite" \
        else (a.segments[:2], b.segments[2:])
    return np.concatenate(first + then), sum(map(len, first))


@torch.no_grad()
def stream_bits(model, streams: list[np.ndarray], starts: list[int], batch_size: int = 32) -> list[np.ndarray]:
    """Bits (-log2 p) of every token of each stream (L_k, 3, 3) from ``starts[k]`` on, by a
    causal model reading the whole stream. Streams are batched by length and zero-padded at the
    end as ``data.ItemDataset`` does: many candidate streams per forward pass. The slow
    reference is ``generate.log_likelihood`` (teacher-forced, token by token)."""
    samples = data.ItemDataset(streams)                     # sorted by length: little padding
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [None] * len(streams)
    for b in range(0, len(samples), batch_size):
        chosen = range(b, min(b + batch_size, len(samples)))
        x, y, *positions = (t.to(device) for t in samples.collate([samples[i] for i in chosen]))
        logits, _ = model(x, None, *positions)              # (B, L, V)
        logp = torch.log_softmax(logits.double(), -1).gather(-1, y[..., None])[..., 0]   # (B, L)
        bits = (-logp / math.log(2)).cpu().numpy()
        for row, i in enumerate(chosen):
            k = samples.source_index[i]
            out[k] = bits[row, starts[k]:len(streams[k])]
    return out


def partners(n: int, groups: list[str] | None = None, seed: int = 0) -> list[int]:
    """Each item's swap partner: another item, of another group where groups exist (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        apart = [j for j in others if groups is not None and groups[j] != groups[i]]
        out.append(int(rng.choice(apart or others)))
    return out


def cross_rows(model, items: list[Item], cfg: SkillsConfig, groups: list[str] | None = None) -> list[dict]:
    """Both directions on ``items``. Swap gain: bits per token of an item's image (caption) after
    its own caption (sprite) minus after a partner's (of another group where ``groups`` exist),
    and the share of items likelier after their own. Retrieval: among K items, the share of
    queries whose own candidate is the likeliest. A model that ignores the partner scores gain 0,
    share 0.5 (ties count half) and exactly 1 / K (the same candidate wins for every query)."""
    n = len(items)
    ks = {}                                                  # k scored -> the K asked
    for asked in cfg.retrieval:
        ks.setdefault(max(2, min(asked, n)), asked)
    why = None if model.config.objective == "causal" else \
        f"left out: needs a causal model, this one's objective is {model.config.objective!r}"
    why = why or (None if n >= 2 else "left out: needs 2 held-out items or more")
    rng = np.random.default_rng(cfg.seed)
    partner, order = (partners(n, groups, cfg.seed) if n >= 2 else []), rng.permutation(n)
    sets = {k: [order[g:g + k] for g in range(0, n - k + 1, k)] for k in ks}
    rows = []
    for direction, (given, scored, swapped) in CROSS.items():
        values = {}
        if why is None:
            pairs = sorted({(b, b) for b in range(n)} | {(partner[b], b) for b in range(n)}
                           | {(a, b) for chosen in sets.values() for s in chosen for a in s for b in s})
            streams, starts = zip(*(pair_stream(items[a], items[b], direction) for a, b in pairs))
            bits = dict(zip(pairs, stream_bits(model, list(streams), list(starts), cfg.batch_size)))
            skip = [len(i.segments[0]) if swapped == "image" else 0 for i in items]   # the shape is not the image
            own = np.array([bits[b, b][skip[b]:].sum() for b in range(n)])
            other = np.array([bits[partner[b], b][skip[b]:].sum() for b in range(n)])
            values["gain"] = float((other - own).sum() / sum(len(bits[b, b]) - skip[b] for b in range(n)))
            values["share"] = float(np.mean(0.5 + 0.5 * np.sign(other - own)))
            total = {pair: v.sum() for pair, v in bits.items()}
            for k, chosen in sets.items():                   # for each query a, the likeliest candidate b
                values[k] = float(np.mean([min(s, key=lambda b: total[a, b]) == a for s in chosen for a in s]))
        row = {"skill": direction, "items": n}
        rows += [{**row, "metric": f"swap gain: own {given} minus another's, bits per {swapped} token",
                  "value": values.get("gain", math.nan), "baseline": 0.0,
                  "baseline_is": why or f"a model that ignores the {given}"},
                 {**row, "metric": f"swap: share of items likelier after their own {given}",
                  "value": values.get("share", math.nan), "baseline": 0.5,
                  "baseline_is": why or f"a model that ignores the {given} (ties count half)"}]
        rows += [{**row, "metric": f"retrieval: top-1 {scored} among {k} by p({scored} | {given})",
                  "value": values.get(k, math.nan), "baseline": 1 / k, "items": k * len(sets[k]),
                  "baseline_is": why or f"chance (1 / {k})" + (f"; only {n} items, not {asked}" if k < asked else "")}
                 for k, asked in ks.items()]
    return rows


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
            "drawn": [tok.quantize(o.images[-1]) for o in sprites]}      # (h, w) palette indices


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
    bits per token). Group metrics are left out, with the reason, where the training captions have
    no groups (``no_groups_reason``). ``classifier``: a fitted ``SpriteClassifier`` (fitted on
    ``train_seqs`` when None); ``copy``: rows from ``copying.copy_rows`` to append."""
    cfg = cfg or SkillsConfig()
    items = spread([i for i in map(Item.of, test_seqs) if i is not None], cfg.items)
    if not items:
        raise ValueError("no held-out item has the shape, image, caption segments the skills need")
    train_captions = [i.caption for i in map(Item.of, train_seqs) if i is not None]
    why = no_groups_reason(train_captions)
    classifier = None if why else classifier or fit_classifier(train_seqs)
    unigram = _unigram(train_seqs)
    caption_budget = int(1.5 * max(len(c) for c in train_captions)) + 8 if train_captions else 160
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            made = _generations(model, items, cfg, caption_budget)
            bits = _bits_rows(model, test_seqs, unigram)
            cross = cross_rows(model, items, cfg, None if why else [caption_group(i.caption) for i in items])
    finally:
        model.train(was_training)
    rows = (dimension_rows(made["images"], items, unigram) + caption_rows(made["captions"], items, train_captions, cfg.seed)
            + sprite_rows(made["drawn"], items, classifier, why) + cross + bits)
    table = pd.DataFrame(rows, columns=COLUMNS)
    if copy is not None:
        table = pd.concat([table, copy[list(COLUMNS)]], ignore_index=True)
    examples = {"references": [tok.PALETTE[i.image] for i in items], "reference_captions": [i.caption for i in items],
                "shapes": [i.shape for i in items], "captions": made["captions"],
                "drawn": [tok.PALETTE[d] for d in made["drawn"]],
                **{f"free_{order}": [o.images[-1] if o.images else None for o in outs]
                   for order, outs in made["images"].items()}}
    return Skills(table, examples)
