"""Generation: drive a PixelByteModel token by token through text and images in one stream.

Each new token's 3x3 context comes from ``tokenizer.ContextBuilder``, exactly as in training.
``next`` feeds token t's full window and predicts t + 1; ``causal`` feeds position t's masked
window and predicts t (docs/CONTRACTS.md). Causal models step a state (``model.step``);
bidirectional ones re-run ``model.forward`` over the last ``window`` positions per token, as the
original code did. Batch rows are stepped in lockstep with one seeded generator each, so a batch
gives the same tokens as its rows one by one. ``constrained=True`` keeps the stream well formed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import tokenizer as tok
from .config import OBJECTIVES

DEFAULT_WINDOW = 256                 # the training seq_length of the original notebooks

_IDS = np.arange(tok.VOCAB_SIZE)
COLOUR_TOKENS = _IDS >= tok.FIRST_COLOUR_ID                       # (V,) bool
TEXT_TOKENS = (_IDS >= tok.SPACE_ID) & ~COLOUR_TOKENS              # (V,) bool: printable bytes
_CHAR_ID = {b.decode("latin-1"): i for i, b in enumerate(tok.BYTE_TOKENS)}


def _only(*token_ids: int) -> np.ndarray:
    return np.isin(_IDS, token_ids)                                   # (V,) bool


# Constrained decoding: a small state machine over the stream

class StreamGrammar:
    """Which tokens may come next in a well-formed stream: shape text ``"(h, w)"`` (1 <= h, w <= ``max_side``,
    no leading zeros) -> image of h rows of w colours -> text (at least one byte) ... ``replay(prompt)``
    classifies complete segments by content and raises ``ValueError`` if the last cannot be completed."""

    SHAPE, IMAGE, TEXT = "shape", "image", "text"

    def __init__(self, max_side: int = tok.MAX_IMAGE_SIDE):
        if not isinstance(max_side, int) or max_side < 1:
            raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
        self.max_side = max_side
        self.kind = self.SHAPE          # kind of the current segment
        self.segment: list[int] = []    # tokens of the current segment so far
        self.shape: tuple[int, int] | None = None  # (h, w) of the current image
        self.row = self.col = 0         # position inside the current image

    def _shape_chars(self) -> set[str]:
        """The characters that may extend the shape text typed so far."""
        text = tok.ids_to_text(self.segment)
        if not text:
            return {"("}
        height, comma, rest = text[1:].partition(",")
        if comma and not rest:
            return {" "}
        number, end = (rest[1:], ")") if comma else (height, ",")     # typing w, else typing h
        if end in number:
            return {"\n"}
        allowed = {d for d in "0123456789" if (number + d)[0] != "0" and int(number + d) <= self.max_side}
        return allowed | {end} if number else allowed

    def allowed(self) -> np.ndarray:
        """(V,) bool mask of the tokens allowed at the current position."""
        if self.kind == self.SHAPE:
            return _only(*(_CHAR_ID[c] for c in self._shape_chars()))
        if self.kind == self.IMAGE:
            h, w = self.shape
            return COLOUR_TOKENS if self.col < w else _only(tok.ROW_END_ID if self.row < h - 1 else tok.SEG_END_ID)
        return TEXT_TOKENS | _only(tok.SEG_END_ID) if self.segment else TEXT_TOKENS

    def push(self, token_id: int) -> None:
        """Consume a token; raises ``ValueError`` if it is not allowed here."""
        token_id = int(token_id)
        if not 0 <= token_id < tok.VOCAB_SIZE or not self.allowed()[token_id]:
            raise ValueError(f"token {token_id} is not allowed in the {self.kind} segment here "
                             f"(segment so far: {self.segment}, shape {self.shape})")
        if token_id == tok.SEG_END_ID:
            return self._close(self.segment)
        self.segment.append(token_id)
        if self.kind == self.IMAGE:
            self.row, self.col = (self.row + 1, 0) if token_id == tok.ROW_END_ID else (self.row, self.col + 1)

    def _close(self, content: list[int]) -> None:
        """End the current segment whose tokens were ``content``; pick the next kind."""
        arr = np.asarray(content, dtype=np.int64)
        colours = COLOUR_TOKENS[arr]
        shape = None if colours.any() or (arr == tok.ROW_END_ID).any() else tok.parse_shape(tok.ids_to_text(arr))
        if shape is not None and min(shape) >= 1:
            self.kind, self.shape = self.IMAGE, shape
        elif colours.sum() * 2 > len(arr):  # same rule as tokenizer.decode
            self.kind, self.shape = self.TEXT, None
        else:
            self.kind, self.shape = self.SHAPE, None
        self.segment, self.row, self.col = [], 0, 0

    def replay(self, token_ids) -> "StreamGrammar":
        """Position the machine at the end of ``token_ids`` (a prompt); returns self."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        *complete, partial = np.split(ids, np.flatnonzero(ids == tok.SEG_END_ID) + 1)
        for segment in complete:
            self._close(segment[:-1])
        partial = partial.tolist()
        if self.kind == self.SHAPE:
            try:
                for t in partial:
                    self.push(t)
                return self
            except ValueError:
                self.segment = []
                if not TEXT_TOKENS[partial].all():
                    raise ValueError(
                        "constrained mode: the prompt ends inside a segment that is neither a shape "
                        f"text nor plain text ({partial[:12]}...); an image needs its shape "
                        "declared in the segment before it") from None
                self.kind = self.TEXT
        for t in partial:
            try:
                self.push(t)
            except ValueError as err:
                raise ValueError(f"constrained mode: the prompt's unfinished {self.kind} segment "
                                 f"cannot be completed consistently: {err}") from None
        return self


# Results

@dataclass
class Generation:
    """One prompt's result. ``ids`` = prompt + new; ``logprobs`` are the model's raw
    log-probabilities (temperature 1, before constraints) of each new token."""
    prompt: list[int]
    new: list[int]
    stop_reason: str                               # "max_new_tokens" | "segments"
    logprobs: list[float] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # ids before the prompt (context only)

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.new

    @property
    def segments(self) -> list[tok.Segment]:
        """The whole stream (prompt + new) decoded."""
        return tok.decode(self.ids)

    @property
    def new_segments(self) -> list[tok.Segment]:
        """The segments that hold at least one generated token, decoded whole."""
        return self.segments[self.prompt.count(tok.SEG_END_ID):] if self.new else []

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.new_segments if s.kind == "text"]

    @property
    def images(self) -> list[np.ndarray]:
        return [s.image for s in self.new_segments if s.kind == "image"]

    def new_windows(self) -> np.ndarray:
        """(len(new), 3, 3) windows of the generated tokens, built from the real history."""
        return tok.ContextBuilder(self.history + self.prompt).feed(self.new)


# The generator

def _as_ids(prompt) -> list[int]:
    arr = np.asarray(prompt)
    if arr.ndim == 3 and arr.shape[1:] == (3, 3):
        arr = tok.centre_ids(arr)                              # a pixelbyte sequence (L, 3, 3)
    if arr.ndim > 1:
        raise ValueError(f"a prompt is a list of token ids or an (L, 3, 3) sequence, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {arr.dtype} values {arr.reshape(-1)[:5].tolist()}")
    ids = [int(t) for t in arr.reshape(-1)]
    bad = [t for t in ids if not 0 <= t < tok.VOCAB_SIZE]
    if bad:
        raise ValueError(f"prompt token ids outside 0..{tok.VOCAB_SIZE - 1}: {bad[:5]}")
    return ids


def _as_batch(prompts) -> list[list[int]]:
    """One prompt (ids or (L, 3, 3) windows) or a list of prompts -> list of id lists. An empty list
    is refused: it could mean no prompt or one empty prompt (write ``[[]]`` for that)."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.cpu().numpy()
    if isinstance(prompts, np.ndarray):      # (L,) or (L, 3, 3): one prompt; (B, L) or (B, L, 3, 3): a batch
        batched = prompts.ndim == (4 if prompts.shape[-2:] == (3, 3) and prompts.ndim >= 3 else 2)
        return [_as_ids(p) for p in prompts] if batched else [_as_ids(prompts)]
    if isinstance(prompts, (str, bytes)):
        raise TypeError("a prompt is token ids, not text: build it with text_ids(), shape_prompt(), ...")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass [[]] for one empty prompt (a causal model can start "
                         "from nothing), or at least one prompt")
    single = all(isinstance(p, (int, np.integer)) for p in prompts)     # a single id list
    return [_as_ids(prompts)] if single else [_as_ids(p) for p in prompts]


def _per_row(value, n: int, name: str) -> list:
    """A per-batch value (int, None) or one value per prompt -> a list of n values."""
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(f"{name}={value!r}: expected an integer (for every prompt) or one value per "
                        f"prompt, got {type(value).__name__}")
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} prompts")
    return value


class Generator:
    """Token-by-token generation for any model that follows the contract. ``window``: positions the
    re-run feeds (default: the run's ``context_length``, else ``DEFAULT_WINDOW``; the whole stream
    for models with positions). ``max_side``: the largest side a constrained shape may declare."""

    def __init__(self, model, window: int | None = None, use_state: bool | None = None,
                 max_side: int = tok.MAX_IMAGE_SIDE):
        self.model = model
        self.objective = getattr(getattr(model, "config", None), "objective", None)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES} (from model.config.objective), "
                             f"got {self.objective!r}")
        self.is_causal = bool(getattr(model, "is_causal", False))
        self.use_state = self.is_causal if use_state is None else bool(use_state)
        if self.use_state and not self.is_causal:
            raise ValueError("use_state=True needs a causal model (model.is_causal is False: a "
                             "bidirectional model must re-run its window, use_state=False)")
        # models that read positions from the stream must be fed it from its start
        self.feeds_history = bool(getattr(getattr(model, "config", None), "positions", False))
        if window is None and not self.feeds_history:   # what the model was trained to see (its
            run = getattr(model, "run", None)           # run), else the paper's 256
            window = run.context_length if run is not None and run.samples is not None else DEFAULT_WINDOW
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive integer, got {window!r}")
        if window is not None and self.feeds_history and not self.use_state:
            raise ValueError("window: a model with positions reads them from the whole stream; a window "
                             "that cuts the stream would give it wrong positions (leave window=None)")
        self.window = window      # None: the whole history (models trained on whole items)
        self.max_side = max_side
        params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        self.device = params.device if params is not None else torch.device("cpu")

    def _logits(self, x_t: np.ndarray, fed: list[np.ndarray], t: int, rows: list[int], state,
                guidance: float | None = None):
        """x_t (B, 3, 3) fed at position t -> (logits (len(rows), V) float32 CPU, state). With ``guidance``
        the state holds 2B streams, conditional then unconditional, stepped in one batch and mixed."""
        if self.use_state:
            x = torch.from_numpy(x_t).to(self.device)
            if guidance is None:
                logits, state = self.model.step(x, state)
            else:
                both, state = self.model.step(torch.cat([x, x]), state)
                cond, uncond = both.float().chunk(2)
                logits = uncond + guidance * (cond - uncond)
            return logits[rows].float().cpu(), state                     # (R, V)
        if not rows:
            return None, state
        lo = 0 if self.window is None else max(0, t + 1 - self.window)
        x = torch.from_numpy(np.stack(fed[lo:t + 1], axis=1)[rows]).to(self.device)   # (R, t+1-lo, 3, 3)
        return self.model(x)[0][:, -1].float().cpu(), state              # (R, V)

    @staticmethod
    def _sample(logits, temperature: float, top_k: int | None, rngs: list[torch.Generator]) -> list[int]:
        """logits (R, V) (already masked) -> one token per row."""
        if temperature == 0:
            return logits.argmax(-1).tolist()
        logits = (logits - logits.max(-1, keepdim=True).values) / temperature  # max at 0: no inf / inf
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]               # (R, 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        return [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, rngs)]

    def generate(self, prompts, max_new_tokens: int | Sequence[int], *, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | Sequence[int] = 0,
                 stop_after_segments: int | Sequence[int] | None = None, constrained: bool = False,
                 histories: Sequence[Sequence[int]] | None = None, prompt_windows: Sequence[np.ndarray] | None = None,
                 forced: Sequence[Sequence[int]] | None = None, guidance: float | None = None) -> list[Generation]:
        """Continue each prompt (ids or (L, 3, 3); ``next`` needs one token) -> one ``Generation`` each.
        Per batch or per prompt: max_new_tokens, stop_after_segments (after this many ``\\n``), seed (an
        int: row i uses seed + i). temperature 0 is greedy, else sampling (among ``top_k``). constrained:
        mask logits with ``StreamGrammar``. histories: ids before each prompt, setting the ContextBuilder
        but not fed (unless the model reads positions). prompt_windows: windows to feed instead of the
        builder's. forced: a continuation to teacher-force (scored in ``logprobs``). guidance: the
        classifier-free scale, logits = uncond + guidance * (cond - uncond)."""
        prompts = _as_batch(prompts)
        n = len(prompts)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        temperature = float(temperature)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if guidance is not None:
            if not getattr(getattr(self.model, "config", None), "condition", False):
                raise ValueError("guidance needs a model trained with condition=True (and condition_dropout "
                                 "> 0, so it has also learned the unconditional stream)")
            if not self.use_state:
                raise ValueError("guidance steps the conditional and unconditional streams side by side "
                                 "(model.step): it needs use_state=True")
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating)) \
                    or not math.isfinite(guidance):
                raise ValueError(f"guidance must be a finite number (0 = unconditional, 1 = conditional), "
                                 f"got {guidance!r}")
            guidance = float(guidance)
        stop_segments = _per_row(stop_after_segments, n, "stop_after_segments")
        if any(s is not None and (not isinstance(s, (int, np.integer)) or s < 1) for s in stop_segments):
            raise ValueError(f"stop_after_segments must be integers >= 1 or None, got {stop_after_segments!r}")
        forced = None if forced is None else [_as_ids(f) for f in _per_row(forced, n, "forced")]
        budgets = [len(f) for f in forced] if forced is not None else _per_row(max_new_tokens, n, "max_new_tokens")
        if any(not isinstance(b, (int, np.integer)) or b < 0 for b in budgets):
            raise ValueError(f"max_new_tokens must be integers >= 0, got {max_new_tokens!r}")
        shift = 1 if self.objective == "next" else 0
        if shift and any(len(p) == 0 and b > 0 for p, b in zip(prompts, budgets)):
            raise ValueError("a model with objective 'next' needs at least one prompt token")
        histories = [list(map(int, h)) if h is not None else [] for h in _per_row(histories, n, "histories")]
        prompt_windows = _per_row(prompt_windows, n, "prompt_windows")
        for p, w in zip(prompts, prompt_windows):
            if w is not None and (np.shape(w) != (len(p), 3, 3) or (tok.centre_ids(w) != p).any()):
                raise ValueError("prompt_windows must be (len(prompt), 3, 3) with the prompt as centres")
        seeds = [int(seed) + i for i in range(n)] if isinstance(seed, (int, np.integer)) else _per_row(seed, n, "seed")
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2 ** 64 for s in seeds):
            raise ValueError(f"seed must be an integer in 0..2**64 - 1 (row i uses seed + i), got {seed!r}")
        rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
        user_prompts, user_histories = prompts, histories
        if self.feeds_history:   # the history becomes part of what is fed (not of the output)
            prompt_windows = [None if w is None else np.concatenate([tok.windows_from_ids(h), w])
                              for h, w in zip(histories, prompt_windows)]
            prompts, histories = [h + p for h, p in zip(histories, prompts)], [[] for _ in range(n)]

        builders = [tok.ContextBuilder(h) for h in histories]
        grammars = ([StreamGrammar(self.max_side).replay(h + p) for h, p in zip(histories, prompts)]
                    if constrained else None)
        ids = [list(p) for p in prompts]
        new: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        ended = [0] * n
        stop = ["max_new_tokens"] * n
        done = [b == 0 for b in budgets]
        n_steps = max((len(p) + b - shift for p, b in zip(prompts, budgets) if b > 0), default=0)
        fed = []                                                  # what the window re-run feeds

        was_training, threads = getattr(self.model, "training", False), torch.get_num_threads()
        if hasattr(self.model, "eval"):
            self.model.eval()
        if self.device.type == "cpu":     # thousands of tiny ops: one CPU thread runs them faster
            torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                state = None
                if self.use_state and guidance is None:
                    state = self.model.init_state(n, device=self.device)
                elif self.use_state:      # n conditional streams, then the same n without condition
                    state = self.model.init_state(2 * n, device=self.device, unconditional=torch.arange(2 * n) >= n)
                for t in range(n_steps):
                    if all(done):
                        break
                    x_t = np.zeros((n, 3, 3), dtype=np.int64)                 # (B, 3, 3)
                    rows = [i for i in range(n) if not done[i] and t + shift >= len(prompts[i])]
                    for i in (i for i in range(n) if not done[i]):
                        in_prompt = t < len(prompts[i])
                        # next: token t's full window (predicts t + 1); causal: position t's masked one
                        x_t[i] = builders[i].push(ids[i][t]) if shift else builders[i].context()
                        if in_prompt and prompt_windows[i] is not None:
                            x_t[i] = prompt_windows[i][t]
                            if not shift:
                                x_t[i, 1, 1] = tok.PAD_ID
                        if in_prompt and not shift:
                            builders[i].push(ids[i][t])
                    if not self.use_state:
                        fed.append(x_t)
                    logits, state = self._logits(x_t, fed, t, rows, state, guidance)
                    if not rows:
                        continue
                    raw_logp = torch.log_softmax(logits.double(), dim=-1)        # (R, V)
                    if constrained:
                        mask = torch.from_numpy(np.stack([~grammars[i].allowed() for i in rows]))
                        logits = logits.masked_fill(mask, -math.inf)
                    if forced is not None:
                        tokens = [forced[i][len(new[i])] for i in rows]
                    else:
                        tokens = self._sample(logits, temperature, top_k, [rngs[i] for i in rows])
                    for r, (i, token) in enumerate(zip(rows, tokens)):
                        ids[i].append(token)
                        new[i].append(token)
                        logprobs[i].append(float(raw_logp[r, token]))
                        if not shift:
                            builders[i].push(token)
                        if constrained:
                            grammars[i].push(token)
                        ended[i] += token == tok.SEG_END_ID
                        if stop_segments[i] is not None and ended[i] >= stop_segments[i]:
                            done[i], stop[i] = True, "segments"
                        elif len(new[i]) >= budgets[i]:
                            done[i] = True
        finally:
            torch.set_num_threads(threads)
            if was_training and hasattr(self.model, "train"):
                self.model.train()
        return [Generation(prompt=list(p), new=nw, stop_reason=s, logprobs=lp, history=h)
                for p, nw, s, lp, h in zip(user_prompts, new, stop, logprobs, user_histories)]


def generate(model, prompts, max_new_tokens: int | Sequence[int], *, window: int | None = None,
             use_state: bool | None = None, max_side: int = tok.MAX_IMAGE_SIDE, **kwargs) -> list[Generation]:
    """``Generator(model, window, use_state, max_side).generate(...)`` (see there); always a list."""
    return Generator(model, window=window, use_state=use_state, max_side=max_side).generate(
        prompts, max_new_tokens, **kwargs)


def log_likelihood(model, prompts, continuations, **kwargs) -> list[float]:
    """Sum of log p(continuation | prompt) per prompt (natural log), teacher-forced."""
    return [float(sum(g.logprobs)) for g in generate(model, prompts, 0, forced=continuations, **kwargs)]


# Prompt builders (all return token-id lists)

def text_ids(text: str) -> list[int]:
    """Normalised text -> byte token ids (no segment end)."""
    return tok.text_to_ids(tok.normalize_text(text)[0]).tolist()


def continue_prompt(sequence, n_tokens: int | None = None) -> list[int]:
    """The first ``n_tokens`` ids of an item ((L, 3, 3) windows or ids): continue a sequence."""
    return _as_ids(sequence)[:n_tokens]


def shape_prompt(height: int, width: int) -> list[int]:
    """Shape text -> image: the declared shape segment ``"(h, w)\\n"``; generate the image."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return text_ids(str((int(height), int(width)))) + [tok.SEG_END_ID]


def caption_to_sprite_prompt(caption: str, shape: tuple[int, int] | None = None,
                             caption_first: bool = False) -> list[int]:
    """Caption -> sprite prompt. In the data order the caption cannot condition the image: the shape
    segment only (empty with ``shape=None``), for ``caption_to_sprite`` to rank candidates by it.
    ``caption_first=True`` puts ``caption + "\\n"`` first, unseen by a data-order model."""
    shape_ids = [] if shape is None else shape_prompt(*shape)
    return text_ids(caption) + [tok.SEG_END_ID] + shape_ids if caption_first else shape_ids


def sprite_to_caption_prompt(image) -> list[int]:
    """Sprite -> caption: its shape and image segments; generate one segment, read ``texts``."""
    return [int(t) for t in tok.centre_ids(tok.encode_item(image, ""))]


def caption_to_sprite(model, caption: str, shape: tuple[int, int], n_candidates: int = 8,
                      temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                      constrained: bool = True, **generator_kwargs) -> tuple[Generation, list[float]]:
    """Caption -> sprite in the data order: sample ``n_candidates`` images after the declared
    shape, score log p(caption | shape, image) for each, return (best, all scores)."""
    gens = generate(model, [shape_prompt(*shape)] * n_candidates, shape[0] * (shape[1] + 1), temperature=temperature,
                    top_k=top_k, seed=seed, constrained=constrained, stop_after_segments=1, **generator_kwargs)
    caption_ids = text_ids(caption) + [tok.SEG_END_ID]
    scores = log_likelihood(model, [g.ids for g in gens], [caption_ids] * n_candidates, **generator_kwargs)
    return gens[int(np.argmax(scores))], scores


# Dimension consistency (measured)

def _images(segments: list[tok.Segment], first: int = 0) -> list[tuple[tok.Segment, tuple | None]]:
    """(segment, declared shape or None) for every image-like segment from index ``first`` on: those
    decoded as images, and the segment after a shape text even when it is not an image (a failed one)."""
    out, previous = [], None
    for k, seg in enumerate(segments):
        declared = tok.parse_shape(previous.text) if previous is not None and previous.kind == "text" else None
        if k >= first and (seg.kind == "image" or declared is not None):
            out.append((seg, declared))
        previous = seg
    return out


def dimension_consistency(generated, prompt_length: int | None = None) -> dict:
    """Share of generated images whose rows all match the ``(h, w)`` the segment before declared.
    ``generated``: Generation(s), flat ids (images after ``prompt_length`` count) or Segments.
    Images cut off without ``\\n`` count in ``unterminated`` only (failures in ``share_of_attempts``)."""
    items = [generated] if isinstance(generated, Generation) else list(generated)
    if items and all(isinstance(x, tok.Segment) for x in items):
        pairs = _images(items)
    else:
        if all(isinstance(x, (int, np.integer)) for x in items):      # one flat stream
            items = [items]
        pairs = []
        for x in items:
            ids, first = (x.ids, len(x.prompt)) if isinstance(x, Generation) else (_as_ids(x), prompt_length or 0)
            segments = tok.decode(ids)
            done = ids[:first].count(tok.SEG_END_ID) if first < len(ids) else len(segments)   # all before ``first``
            pairs += _images(segments, done)
    counts = {"images": 0, "consistent": 0, "undeclared": 0, "unterminated": 0}
    for seg, declared in pairs:
        if not seg.terminated:
            counts["unterminated"] += 1
            continue
        counts["images"] += 1
        if declared is None:
            counts["undeclared"] += 1
        elif seg.kind == "image" and seg.row_widths == [declared[1]] * declared[0]:
            counts["consistent"] += 1
    counts["share"] = counts["consistent"] / counts["images"] if counts["images"] else float("nan")
    attempted = counts["images"] + counts["unterminated"]   # an unfinished image is a failure too
    counts["share_of_attempts"] = counts["consistent"] / attempted if attempted else float("nan")
    return counts
