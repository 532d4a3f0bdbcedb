"""The mission's skills on held-out items, every figure beside its baseline (in brackets):
``measure(model, train_seqs, test_seqs, SkillsConfig(items=32))`` -> ``Skills`` (``.table``, ``.examples``).
Declared dimensions kept by free samples (unigram); sprite -> caption group and name (majority group,
random name); caption -> sprite group by ``SpriteClassifier`` (chance or majority; ceiling: the real
sprites); cross-modal swap gains and retrieval (``cross_rows``); bits per token by modality (unigram).
"""
from __future__ import annotations

import difflib
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import data, evaluate, generate as gen, tokenizer as tok
from .config import _check_ints, _check_numbers, _fail, _is_int

COLUMNS = ("skill", "metric", "value", "baseline", "baseline_is", "items")


def caption_group(caption: str, known=None) -> str:
    """'grinning face. smileys and emotion, face smiling' -> 'smileys and emotion' (after the last ". "
    up to ","). With ``known`` groups, the first ". <group>," naming one: generated captions may run on."""
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


def one_per_group(captions: list[str], n: int) -> list[int]:
    """Indices of up to ``n`` captions: the first of each ``caption_group``, then the rest, in order
    (free-text captions, each its own "group", keep their order)."""
    groups = [caption_group(c) for c in captions]
    firsts = [groups.index(g) for g in dict.fromkeys(groups)]
    return list(dict.fromkeys([*firsts, *range(len(captions))]))[:n]


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over the list: datasets are often sorted by category (the emoji are)."""
    return [items[k] for k in data.evenly_spaced(len(items), n)]


# The sprite classifier behind caption -> sprite


class SpriteClassifier:
    """Logistic regression from a sprite's colours to its caption group. Features: colour counts in each
    block of a 4x4 grid over a 24x24 canvas (sprite top-left, white around), and the whole canvas's."""

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
    """Why the captions have no groups to score, or None: groups exist when ``share`` of the captions have a
    ``caption_group`` held by ``members`` captions or more (the emoji's do; Pokedex paragraphs do not)."""
    groups = [caption_group(c) for c in captions]
    counts = Counter(groups)
    shared = sum(counts[g] >= members for g in groups) / max(1, len(groups))
    return None if shared >= share else (
        f"left out: the captions have no groups ({len(counts)} distinct group texts among {len(groups)} "
        f"training captions, {shared:.0%} of them in a group of {members} or more)")


# The report


@dataclass
class SkillsConfig:
    items: int = 32                 # held-out items scored (evenly spread over the split)
    retrieval: tuple = (8, 32)      # retrieval among K held-out items, for each K (fewer if fewer items)
    temperature: float = 0.8        # sampling temperature of images (greedy images of small models degenerate)
    caption_temperature: float = 0.0  # captions: 0 = greedy, as captioning is scored (the likeliest caption)
    top_k: int | None = None        # sample among the k likeliest tokens only (None = all)
    guidance: float | None = None   # classifier-free guidance scale of every sample (condition models; None = 1)
    seed: int = 0
    batch_size: int = 32            # prompts generated at once

    def __post_init__(self):
        _check_ints(self, ("items", "batch_size"), 1)
        _check_numbers(self, ("temperature", "caption_temperature"))
        if not all(_is_int(k, 2) for k in self.retrieval):
            _fail(self, "retrieval", "expected integers >= 2")


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
        for r in self.table.itertuples():
            metric = r.metric.replace("|", "\\|")                    # "p(a | b)" inside a table cell
            lines.append(f"| {r.skill} | {metric} | {fmt(r.value)} | {fmt(r.baseline)} | {r.baseline_is} | {r.items} |")
        return "\n".join(lines)


def _generate(model, prompts, budgets, cfg: SkillsConfig, constrained: bool = False, temperature=None):
    out = []
    for b in range(0, len(prompts), cfg.batch_size):
        out += gen.generate(model, prompts[b:b + cfg.batch_size], budgets[b:b + cfg.batch_size],
                            temperature=cfg.temperature if temperature is None else temperature, top_k=cfg.top_k,
                            seed=cfg.seed + b, stop_after_segments=1, constrained=constrained, guidance=cfg.guidance)
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
    picks = np.random.default_rng(seed).integers(0, len(train_captions), len(items))
    random_names = [caption_name(train_captions[k]) for k in picks]
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
    if why := no_groups_reason(train_captions):
        rows[0].update(value=math.nan, baseline=math.nan, baseline_is=why)
    return rows


def sprite_rows(drawn: list[np.ndarray], items: list[Item], classifier: SpriteClassifier | None,
                why: str | None = None) -> list[dict]:
    """Group accuracy of drawn sprites (palette indices) by the classifier, and its ceiling (nan and
    ``why`` without one). Floor: the better of chance and the majority group, which few groups favour."""
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


# Cross-modal: does one modality inform the other? Read from the model's own likelihood of
# held-out items, so they need no caption groups (causal models only).

CROSS = {"caption -> sprite": ("caption", "sprite", "image"), "sprite -> caption": ("sprite", "caption", "caption")}


def pair_stream(a: Item, b: Item, direction: str) -> tuple[np.ndarray, int]:
    """b's scored segments after a's conditioning ones (caption, or shape and image): (windows (L, 3, 3),
    where b's begin). Segments are windowed on their own, so any pair is a well-formed stream."""
    first, then = (a.segments[2:], b.segments[:2]) if direction == "caption -> sprite" \
        else (a.segments[:2], b.segments[2:])
    return np.concatenate(first + then), sum(map(len, first))


@torch.no_grad()
def stream_bits(model, streams: list[np.ndarray], starts: list[int], batch_size: int = 32,
                guidance: float | None = None) -> list[np.ndarray]:
    """Bits (-log2 p) of every token of each stream (L_k, 3, 3) from ``starts[k]`` on, by a causal model,
    batched by length as ``data.ItemDataset`` does (slow reference: ``generate.log_likelihood``); with
    ``guidance`` s, of the distribution ``generate`` samples: uncond + s (cond - uncond)."""
    samples = data.ItemDataset(streams)                     # sorted by length: little padding
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [None] * len(streams)
    for b in range(0, len(samples), batch_size):
        chosen = range(b, min(b + batch_size, len(samples)))
        x, y, *positions = (t.to(device) for t in samples.collate([samples[i] for i in chosen]))
        logits, _ = model(x, None, *positions)              # (B, L, V)
        if guidance is not None:
            uncond, _ = model(x, None, *positions, unconditional=torch.ones(len(x), dtype=torch.bool))
            logits = uncond + guidance * (logits - uncond)
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


def cross_rows(model, items: list[Item], cfg: SkillsConfig, groups: list[str] | None = None,
               guidance: float | None = None) -> list[dict]:
    """Both directions. Swap gain: bits per token of an item's image (caption) after a partner's caption
    (sprite) minus after its own, and the share likelier after their own. Retrieval among K: the share of
    queries a whose own b is likeliest by p(b | a) and by p(b | a) / p(b). Ignoring a scores 0, 0.5, 1 / K.
    ``guidance``: score the guided distribution instead (``stream_bits``)."""
    n = len(items)
    ks = {}                         # k scored -> the K asked, which names the row (fewer items: k < K, said)
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
            alones = [np.concatenate(i.segments[:2] if swapped == "image" else i.segments[2:]) for i in items]
            scores = stream_bits(model, list(streams) + alones, list(starts) + [0] * n, cfg.batch_size, guidance)
            bits = dict(zip(pairs, scores))
            alone = np.array([v.sum() for v in scores[len(pairs):]])      # b's bits with nothing before
            skip = [len(i.segments[0]) if swapped == "image" else 0 for i in items]   # the shape is not the image
            own = np.array([bits[b, b][skip[b]:].sum() for b in range(n)])
            other = np.array([bits[partner[b], b][skip[b]:].sum() for b in range(n)])
            values["gain"] = float((other - own).sum() / sum(len(bits[b, b]) - skip[b] for b in range(n)))
            values["share"] = float(np.mean(0.5 + 0.5 * np.sign(other - own)))
            total = {pair: v.sum() for pair, v in bits.items()}
            # for each query a, the likeliest candidate b; then (noisy channel) the one a made likeliest
            for (k, chosen), (norm, prior) in itertools.product(sets.items(), ((None, 0 * alone), ("pmi", alone))):
                values[k, norm] = float(np.mean([min(s, key=lambda b: total[a, b] - prior[b]) == a
                                                 for s in chosen for a in s]))
        row = {"skill": direction, "items": n}
        rows += [{**row, "metric": f"swap gain: own {given} minus another's, bits per {swapped} token",
                  "value": values.get("gain", math.nan), "baseline": 0.0,
                  "baseline_is": why or f"a model that ignores the {given}"},
                 {**row, "metric": f"swap: share of items likelier after their own {given}",
                  "value": values.get("share", math.nan), "baseline": 0.5,
                  "baseline_is": why or f"a model that ignores the {given} (ties count half)"}]
        for norm, by in ((None, ""), ("pmi", f" / p({scored})")):
            rows += [{**row, "metric": f"retrieval: top-1 {scored} among {asked} by p({scored} | {given}){by}",
                      "value": values.get((k, norm), math.nan), "baseline": 1 / k,
                      "items": k * len(sets[k]), "baseline_is": why or f"chance (1 / {k})"
                      + (f"; only {n} items, not {asked}" if k < asked else "")} for k, asked in ks.items()]
    return rows


def _generations(model, items: list[Item], cfg: SkillsConfig, caption_budget: int) -> dict:
    """Everything the report samples: free images in both orders, captions, drawn sprites."""
    budgets = [h * (w + 1) for h, w in (i.shape for i in items)]          # one image's tokens
    prompts = {first: [gen.caption_to_sprite_prompt(i.caption, i.shape, caption_first=first) for i in items]
               for first in (False, True)}
    images = {order: _generate(model, prompts[order == "caption_first"], [2 * b for b in budgets], cfg)
              for order in DIMENSION_ORDERS}
    captions = _generate(model, [i.prompt for i in items], [caption_budget] * len(items), cfg,
                         temperature=cfg.caption_temperature)
    sprites = _generate(model, prompts[True], budgets, cfg, constrained=True)
    return {"images": images, "captions": [o.texts[-1] if o.texts else "" for o in captions],
            "drawn": [tok.quantize(o.images[-1]) for o in sprites]}      # (h, w) palette indices


def _bits_rows(model, test_seqs, unigram) -> list[dict]:
    """Bits per token on the held-out items (whole items, both orders; ``next`` models: every token after
    a window of their training length), beside the unigram's on the same targets."""
    if model.config.objective == "causal":
        views = {f"bits per token ({o.replace('_', '-')})": data.ItemDataset(test_seqs, o)
                 for o in ("data", "caption_first")}
    else:
        length = getattr(getattr(model, "run", None), "context_length", None) or gen.DEFAULT_WINDOW
        length = min(length, min(len(s) for s in test_seqs) - 1)
        views = {f"bits per token (next token after {length})": data.WindowDataset(test_seqs, length, 1, "next")}
    rows = []
    for skill, samples in views.items():
        metrics = evaluate.token_metrics(model, samples, batch_size=16).set_index("modality")
        ys = np.concatenate([np.asarray(samples[i][1]).reshape(-1) for i in range(len(samples))]).astype(np.int64)
        targets = ys[ys != tok.PAD_ID]                   # every target token, as the loss counts them
        kinds = tok.modality(targets)
        for name in ("all", *tok.MODALITIES):
            sel = np.ones(len(targets), bool) if name == "all" else kinds == tok.MODALITIES.index(name)
            rows.append({"skill": skill, "metric": name, "value": float(metrics.loc[name, "bits_per_token"]),
                         "baseline": float(-np.log2(unigram[targets[sel]]).mean()) if sel.any() else math.nan,
                         "baseline_is": "training token frequencies (unigram)", "items": len(test_seqs)})
    return rows


def measure(model, train_seqs: list[np.ndarray], test_seqs: list[np.ndarray],
            cfg: SkillsConfig | None = None, classifier: SpriteClassifier | None = None,
            copy: pd.DataFrame | None = None) -> Skills:
    """The skills report on ``cfg.items`` held-out items (all for bits per token); group metrics are left
    out, with the reason, without caption groups. ``copy``: rows from ``copying.copy_rows`` to append."""
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
    rows = (dimension_rows(made["images"], items, unigram)
            + caption_rows(made["captions"], items, train_captions, cfg.seed)
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
