"""PixelBytes encoding: one 113-token vocabulary for bytes and NES-palette pixels.

An item (image + caption) becomes three segments -- the shape text ``"(h, w)"``, the image,
the caption -- and every token carries its causal 3x3 neighbourhood (the "PxBy" context):

    [[up-left, up, up-right],
     [left,    self, 0      ],
     [0,       0,    0      ]]

Rows end with ``\\t`` (id 1), a segment with ``\\n`` (id 2); each segment is padded on its own.
This reproduces the original dataset's encoder exactly (tests/fixtures/pixelbytes_upstream_vectors.json).
Inputs are refused rather than guessed at (no clipping, no empty or oversized images).
"""
from __future__ import annotations

import functools
import re
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# Vocabulary (the original order: 58 byte tokens, then 55 NES colours)
BYTE_TOKENS: tuple[bytes, ...] = (
    b"\x00", b"\t", b"\n", b" ", b'"', b"'", b"(", b")", b"*", b",", b"-", b"+", b".",
    *[str(d).encode() for d in range(10)], b"\xc2", b"\xa0", b":", b"[", b"]", b";", b"/",
    b"%", b"!", *[bytes([c]) for c in range(ord("a"), ord("z") + 1)])
PALETTE = np.array([
    [0, 0, 0], [252, 252, 252], [248, 248, 248], [188, 188, 188], [124, 124, 124],
    [164, 228, 252], [60, 188, 252], [0, 120, 248], [0, 0, 252], [184, 184, 248],
    [104, 136, 252], [0, 88, 248], [0, 0, 188], [216, 184, 248], [152, 120, 248],
    [104, 68, 252], [68, 40, 188], [248, 184, 248], [248, 120, 248], [216, 0, 204],
    [148, 0, 132], [248, 164, 192], [248, 88, 152], [228, 0, 88], [168, 0, 32],
    [240, 208, 176], [248, 120, 88], [248, 56, 0], [168, 16, 0], [252, 224, 168],
    [252, 160, 68], [228, 92, 16], [136, 20, 0], [248, 216, 120], [248, 184, 0],
    [172, 124, 0], [80, 48, 0], [216, 248, 120], [184, 248, 24], [0, 184, 0],
    [0, 120, 0], [184, 248, 184], [88, 216, 84], [0, 168, 0], [0, 104, 0],
    [184, 248, 216], [88, 248, 152], [0, 168, 68], [0, 88, 0], [0, 252, 252],
    [0, 232, 216], [0, 136, 136], [0, 64, 88], [248, 216, 248], [120, 120, 120],
], dtype=np.uint8)  # (55, 3) RGB

N_BYTES = len(BYTE_TOKENS)            # 58
VOCAB_SIZE = N_BYTES + len(PALETTE)   # 113
PAD_ID, ROW_END_ID, SEG_END_ID, SPACE_ID = 0, 1, 2, 3
FIRST_COLOUR_ID = N_BYTES

_ID_TO_BYTE = np.array([b[0] for b in BYTE_TOKENS], dtype=np.uint8)
_BYTE_TO_ID = np.full(256, -1, dtype=np.int16)          # byte value -> token id (-1: no token)
_BYTE_TO_ID[_ID_TO_BYTE] = np.arange(N_BYTES)

MAX_IMAGE_SIDE = 128  # sprites are ~25 px; anything this large is almost surely a mistake


def is_colour(token_ids: np.ndarray) -> np.ndarray:
    """Boolean mask of colour (pixel) tokens."""
    return np.asarray(token_ids) >= FIRST_COLOUR_ID


# What a token is, for every per-modality number (training metrics, evaluation, reports): the
# bytes of the shape text and the caption are "text", colours are "pixel", and padding, the row
# end \t and the segment end \n are "structure" (they carry the layout, not content).
MODALITIES = ("text", "pixel", "structure")


def modality(token_ids):
    """Index into MODALITIES per token (0 text, 1 pixel, 2 structure); numpy or torch alike."""
    return (token_ids >= FIRST_COLOUR_ID) * 1 + (token_ids < SPACE_ID) * 2


# Colour: nearest NES colour in CIELAB (sRGB, D65), as the original dataset did

def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB float64 (..., 3), D65 white (same constants as skimage)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.412453, 0.357580, 0.180423],
                  [0.212671, 0.715160, 0.072169],
                  [0.019334, 0.119193, 0.950227]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


_PALETTE_LAB = rgb_to_lab(PALETTE)  # (55, 3)


def quantize(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> palette index (H, W) int64 of the nearest colour in CIELAB."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    # sprites hold few distinct colours: convert each once, not once per pixel
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    lab = rgb_to_lab(colours)                                            # (U, 3)
    dist = ((lab[:, None, :] - _PALETTE_LAB) ** 2).sum(-1)               # (U, 55)
    return dist.argmin(-1)[inverse].reshape(rgb.shape[:-1])


def to_palette_rgb(rgb: np.ndarray) -> np.ndarray:
    """Snap every pixel to its nearest NES colour: (H, W, 3) uint8 -> (H, W, 3) uint8."""
    return PALETTE[quantize(rgb)]


# Inputs: images and text, with their documented policies

def load_rgb(image, max_side: int = MAX_IMAGE_SIDE, resize: bool = False) -> np.ndarray:
    """PIL image or (H, W, 3|4) array -> (H, W, 3) uint8 RGB: 8 bits by type (``to_8bit``), alpha
    composited on white (as the Pokemon dataset's backgrounds); an image longer than ``max_side``
    is refused unless ``resize=True`` downscales it (nearest neighbour)."""
    from PIL import Image

    shape = image.size[::-1] if isinstance(image, Image.Image) else np.shape(image)
    if 0 in shape:
        size = f"{shape[0]}x{shape[1]} pixels, HxW" if len(shape) >= 2 else f"an array of shape {shape}"
        raise ValueError(f"image is empty ({size}): an item needs an image with H, W > 0")
    if isinstance(image, Image.Image):
        pil = image
        if pil.mode in SIXTEEN_BIT_MODES or pil.mode == "F":
            values, depth = np.asarray(pil), "float" if pil.mode == "F" else "16"
            if pil.mode == "I" and 0 <= values.min() and values.max() <= 255:   # read as 16-bit: black
                depth = "8"
                warnings.warn("a PIL mode 'I' (32-bit) image holding values 0..255: read as 8-bit", stacklevel=2)
            pil = Image.fromarray(to_8bit(values, depth, f"PIL mode {pil.mode!r}"), "L")
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"image must have shape (H, W, 3) or (H, W, 4), got {arr.shape}")
        arr = to_8bit(arr, _array_depth(arr.dtype), f"array of dtype {arr.dtype}")
        pil = Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        pil = Image.alpha_composite(Image.new("RGBA", pil.size, "white"), pil.convert("RGBA"))
    pil = pil.convert("RGB")
    w, h = pil.size
    if max(h, w) > max_side:
        if not resize:
            raise ValueError(f"image is {h}x{w} (HxW), larger than max_side={max_side}; pass resize=True "
                             f"to downscale it, or raise max_side")
        scale = max_side / max(h, w)
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    return np.asarray(pil, dtype=np.uint8)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")   # PIL modes read as 16-bit values


def _array_depth(dtype: np.dtype) -> str:
    """How an array's values are read: uint16 as 16 bits, floats as 0..1, other integers as 0..255."""
    if dtype == np.uint16:
        return "16"
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "8"
    raise ValueError(f"image array of dtype {dtype}: expected integer (uint8 0..255, uint16 0..65535) "
                     f"or float (0..1) pixel values")


def to_8bit(values: np.ndarray, depth: str, what: str) -> np.ndarray:
    """Pixel values -> uint8: ``depth`` "8" (0..255), "16" (0..65535, round(v / 257)) or "float"
    (0..1, round(v * 255), halves up). Values outside the range are refused, naming ``what``."""
    v = np.asarray(values)
    if depth == "float":
        if not np.isfinite(v).all():
            raise ValueError(f"image ({what}) holds NaN or infinite values")
        lo, hi = float(v.min()), float(v.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"image ({what}) holds values {lo:g}..{hi:g}; float pixel values must lie "
                             f"in [0, 1] (for 0..255 floats, pass them as uint8)")
        return np.floor(v.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    lo, hi, top = int(v.min()), int(v.max()), 65535 if depth == "16" else 255
    if lo < 0 or hi > top:
        rule = "16-bit values 0..65535" if depth == "16" else \
            "8-bit values 0..255 (uint16 arrays are read as 16-bit, float arrays as 0..1)"
        raise ValueError(f"image ({what}) holds values {lo}..{hi}; expected {rule}")
    if depth == "16":
        return ((v.astype(np.int64) + 128) // 257).astype(np.uint8)     # round(v / 257), exact
    return v.astype(np.uint8, copy=False)


def normalize_text(text: str) -> tuple[str, int]:
    """NFKD, drop non-ASCII (as the original dataset), lowercase -> ``(clean_text, n_replaced)``:
    ASCII characters without a token, and ``\\t`` ``\\n`` (the separators), become counted spaces."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__} {text!r}")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    raw = np.frombuffer(ascii_text.encode(), dtype=np.uint8)
    unknown = _BYTE_TO_ID[raw] < SPACE_ID                  # no token, or \x00 \t \n (padding, separators)
    return np.where(unknown, ord(" "), raw).astype(np.uint8).tobytes().decode(), int(unknown.sum())


def text_to_ids(text: str) -> np.ndarray:
    """Clean text -> byte token ids (uint8). Raises if ``text`` holds a character with no token."""
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ids = _BYTE_TO_ID[raw]
    if (ids < 0).any():
        bad = sorted({chr(b) for b in raw[ids < 0]})
        raise ValueError(f"characters without a token: {bad}; run normalize_text() first")
    return ids.astype(np.uint8)


def ids_to_text(token_ids) -> str:
    """Byte token ids -> text (the inverse of ``text_to_ids``; colour ids must not be passed)."""
    return _ID_TO_BYTE[np.asarray(token_ids, dtype=np.int64)].tobytes().decode("latin-1")


# Batch encoding: segments -> causal 3x3 windows

def segment_windows(grid: np.ndarray) -> np.ndarray:
    """Token grid (rows, cols) -> causal windows (rows * (cols + 1), 3, 3) uint8: with the separator column
    (``\\t``, the last row ``\\n``), each cell's 3x3 neighbourhood less the cells later in reading order."""
    rows, cols = grid.shape
    sep = np.full((rows, 1), ROW_END_ID, dtype=np.uint8)
    sep[-1, 0] = SEG_END_ID
    full = np.concatenate([grid.astype(np.uint8), sep], axis=1)          # (rows, cols + 1)
    padded = np.pad(full, 1)                                              # (rows + 2, cols + 3)
    win = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))       # (rows, cols + 1, 3, 3)
    win = win.reshape(-1, 3, 3).copy()
    win[:, 1, 2] = 0
    win[:, 2, :] = 0
    return win


@dataclass
class EncodeStats:
    """What the encoder had to change to make an item encodable."""
    text_replaced: int = 0       # ASCII characters without a token, replaced by a space


ITEM_ORDERS = ("data", "caption_first")


def encode_item(image, caption: str, max_side: int = MAX_IMAGE_SIDE, resize: bool = False,
                stats: EncodeStats | None = None, order: str = "data") -> np.ndarray:
    """(image, caption) -> pixelbyte sequence (L, 3, 3) uint8 in ``order``: "data" (shape text, image, caption:
    the original dataset's) or "caption_first" (the caption first, to condition the image; see ``reorder``)."""
    if not isinstance(caption, str):
        raise TypeError(f"caption={caption!r}: expected a string; use '' for an item without a caption "
                        f"(load_pixelbytes reads a None caption as '' and warns)")
    rgb = load_rgb(image, max_side=max_side, resize=resize)
    h, w = rgb.shape[:2]
    clean, n_replaced = normalize_text(caption)
    if stats is not None:
        stats.text_replaced += n_replaced
    shape_ids = text_to_ids(str((h, w)))
    pixel_ids = (quantize(rgb) + FIRST_COLOUR_ID).astype(np.uint8)      # (h, w)
    parts = [segment_windows(shape_ids[None]), segment_windows(pixel_ids)]
    if clean:  # an empty caption is allowed: the item is then shape + image
        parts.append(segment_windows(text_to_ids(clean)[None]))
    return reorder(np.concatenate(parts), order)


def split_segments(windows: np.ndarray) -> list[np.ndarray]:
    """An item's windows (L, 3, 3) -> one block of windows per segment (each ends with its \n)."""
    ends = np.flatnonzero(np.asarray(windows)[:, 1, 1] == SEG_END_ID) + 1
    return [block for block in np.split(windows, ends) if len(block)]


def reorder(windows: np.ndarray, order: str) -> np.ndarray:
    """A data-order item (shape, image[, caption]) -> the same item in ``order``: ``caption_first``
    moves the caption segment to the front; an item without a caption is returned as it is."""
    if order not in ITEM_ORDERS:
        raise ValueError(f"order={order!r}: allowed values are {list(ITEM_ORDERS)}")
    blocks = split_segments(windows)
    if order == "data" or len(blocks) < 3:
        return windows
    if len(blocks) != 3:
        raise ValueError(f"an item has 3 segments (shape, image, caption), this one has {len(blocks)}")
    shape, image, caption = blocks
    return np.concatenate([caption, shape, image])


def encode_text(text: str) -> np.ndarray:
    """A text-only segment -> (len + 1, 3, 3) windows (useful for prompts)."""
    clean, _ = normalize_text(text)
    return segment_windows(text_to_ids(clean)[None])


# Incremental windows: the same windows, one token at a time (generation depends on this)

class ContextBuilder:
    """Feed token ids one by one (``token_ids``: a stream to start after); get each token's causal
    3x3 window, exactly the batch encoder's for a well-formed stream. ``window(id)`` peeks; ``push`` consumes."""

    def __init__(self, token_ids=()):
        self.prev_row: list[int] = []   # row above, including its separator; [] on a segment's first row
        self.row: list[int] = []        # current row so far
        self.feed(token_ids)

    def window(self, token_id: int) -> np.ndarray:
        """The (3, 3) uint8 window the token ``token_id`` would get at the current position."""
        c = len(self.row)
        win = np.zeros((3, 3), dtype=np.uint8)
        above = ([PAD_ID] + self.prev_row)[c:c + 3]        # columns c - 1, c, c + 1 of the row above
        win[0, :len(above)] = above
        if c > 0:
            win[1, 0] = self.row[-1]
        win[1, 1] = token_id
        return win

    def context(self) -> np.ndarray:
        """The window of the next position with the centre masked (what a causal model sees)."""
        return self.window(PAD_ID)

    def push(self, token_id: int) -> np.ndarray:
        token_id = int(token_id)
        if not 0 <= token_id < VOCAB_SIZE:
            raise ValueError(f"token id {token_id} outside the vocabulary 0..{VOCAB_SIZE - 1}")
        win = self.window(token_id)
        self.row.append(token_id)
        if token_id == ROW_END_ID:
            self.prev_row, self.row = self.row, []
        elif token_id == SEG_END_ID:
            self.prev_row, self.row = [], []
        return win

    def feed(self, token_ids) -> np.ndarray:
        """Push many ids; returns their windows (n, 3, 3) uint8."""
        ids = list(np.asarray(token_ids).reshape(-1))
        return np.stack([self.push(t) for t in ids]) if ids else np.zeros((0, 3, 3), np.uint8)


def windows_from_ids(token_ids) -> np.ndarray:
    """Flat id stream -> windows (L, 3, 3), through the incremental builder."""
    return ContextBuilder().feed(token_ids)


# Decoding: a flat id stream back to text and images, tolerant of malformed streams
_SHAPE_RE = re.compile(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")


def parse_shape(text: str) -> tuple[int, int] | None:
    """``"(22, 25)"`` -> (22, 25); None when the text is not a shape."""
    m = _SHAPE_RE.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def item_sprite(windows: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """(declared (h, w), image as (h, w) palette indices) of a data-order item; None unless its
    first two segments are a shape text and an image of exactly that shape."""
    blocks = split_segments(windows)
    if len(blocks) < 2:
        return None
    head = decode(centre_ids(blocks[0]))[0]
    shape = parse_shape(head.text) if head.kind == "text" else None
    ids = centre_ids(blocks[1]).astype(np.int64)
    if shape is None or len(ids) != shape[0] * (shape[1] + 1):
        return None
    pixels = ids.reshape(shape[0], shape[1] + 1)[:, :-1]         # each row ends with \t (the last: \n)
    if (pixels < FIRST_COLOUR_ID).any():
        return None
    return shape, pixels - FIRST_COLOUR_ID


@dataclass
class Segment:
    kind: str                                 # "text" or "image"
    text: str | None = None
    image: np.ndarray | None = None           # (H, W, 3) uint8; ragged rows padded with white
    row_widths: list[int] = field(default_factory=list)  # pixels per row (images)
    terminated: bool = True                   # ended by \n
    issues: list[str] = field(default_factory=list)


def _decode_segment(ids: np.ndarray, terminated: bool) -> Segment:
    arr = np.asarray(ids, dtype=np.int64)
    issues = [] if terminated else ["segment not terminated by \\n"]
    body = arr[arr != PAD_ID]
    if len(body) < len(arr):
        issues.append(f"{len(arr) - len(body)} padding token(s) ignored")
    colour = is_colour(body)
    if colour.sum() * 2 <= len(body):                     # mostly bytes: a text segment
        if colour.any():
            issues.append(f"{int(colour.sum())} colour token(s) inside text dropped")
        tabs = body == ROW_END_ID
        if tabs.any():
            issues.append(f"{int(tabs.sum())} row separator(s) inside text dropped")
        return Segment("text", text=ids_to_text(body[~colour & ~tabs]), terminated=terminated, issues=issues)
    issues += [f"byte token {t} inside image dropped" for t in body[~colour & (body != ROW_END_ID)]]
    pieces = np.split(body, np.flatnonzero(body == ROW_END_ID) + 1)         # each row with its \t
    rows = [r[r >= FIRST_COLOUR_ID] - FIRST_COLOUR_ID for r in pieces]
    if len(rows) > 1 and not len(rows[-1]):              # the last row ended with its \t
        rows.pop()
    widths = [len(r) for r in rows]
    if len(set(widths)) > 1:
        issues.append(f"ragged rows: widths {sorted(set(widths))}")
    image = np.full((len(rows), max(widths), 3), 255, dtype=np.uint8)
    for i, r in enumerate(rows):
        image[i, :len(r)] = PALETTE[r]
    return Segment("image", image=image, row_widths=widths, terminated=terminated, issues=issues)


def decode(token_ids) -> list[Segment]:
    """Flat token ids -> segments split at ``\\n``. Never raises on malformed streams:
    ragged rows, stray tokens and a missing final ``\\n`` are reported in ``Segment.issues``."""
    ids = np.asarray(token_ids).reshape(-1).astype(np.int64)
    bad = ids[(ids < 0) | (ids >= VOCAB_SIZE)]
    if len(bad):
        raise ValueError(f"token ids outside 0..{VOCAB_SIZE - 1}: {bad[:5].tolist()}")
    *complete, rest = np.split(ids, np.flatnonzero(ids == SEG_END_ID) + 1)
    segments = [_decode_segment(s[:-1], terminated=True) for s in complete]
    if (rest != PAD_ID).any():
        segments.append(_decode_segment(rest, terminated=False))
    return segments


def centre_ids(windows: np.ndarray) -> np.ndarray:
    """Windows (..., 3, 3) -> their centre token ids (...)."""
    return np.asarray(windows)[..., 1, 1]


def decode_item(windows: np.ndarray, order: str = "data") -> tuple[np.ndarray | None, str]:
    """Pixelbyte sequence (L, 3, 3) -> (image, caption): the inverse of ``encode_item`` with the
    same ``order`` (data: shape, image, caption | caption_first: caption, shape, image)."""
    if order not in ITEM_ORDERS:
        raise ValueError(f"order={order!r}: allowed values are {list(ITEM_ORDERS)}")
    segs = decode(centre_ids(windows))
    image = next((s.image for s in segs if s.kind == "image"), None)
    texts = [s.text for s in segs if s.kind == "text"]
    caption = (texts[1] if order == "data" else texts[0]) if len(texts) > 1 else ""
    return image, caption


# Where a token sits in the stream, read from the tokens before it only. Torch ops, so a model
# computes them on its device inside its graph (no host round trip per step): batched from
# causal windows (``positions``) and one token at a time (``StreamPositions``), same numbers.

POSITION_FEATURES = ("segment", "row", "column", "height", "width", "rows_left", "columns_left")
POSITION_LIMITS = (7,) + (MAX_IMAGE_SIDE + 2,) * 6     # each feature is clipped to 0..limit
SHAPE_TEXT_MAX = 12                                    # longer segments never spell a shape


def _shape_machine() -> tuple[np.ndarray, np.ndarray]:
    """The shape text ``(h, w)`` as a state machine over token ids, ``_SHAPE_RE`` spelled out:
    state 0 wants "(", 1 spaces then h, 2 in h, 3 spaces then ",", 4 spaces then w, 5 in w,
    6 spaces then ")", 7 accepted (trailing spaces), 8 rejected. -> (next state (9, V), digit (V,))."""
    ids = {c: _BYTE_TO_ID[ord(c)] for c in "(),"}
    space = [i for i, b in enumerate(BYTE_TOKENS) if re.fullmatch(r"\s", b.decode("latin-1"))]
    digit = np.full(VOCAB_SIZE, -1, dtype=np.int64)
    digit[[_BYTE_TO_ID[ord(str(d))] for d in range(10)]] = np.arange(10)
    digits = np.flatnonzero(digit >= 0)
    nxt = np.full((9, VOCAB_SIZE), 8, dtype=np.int64)
    nxt[0, ids["("]] = 1
    for state, on_space, on_digit, on_mark, mark in ((1, 1, 2, None, None), (2, 3, 2, 4, ","),
                                                      (3, 3, None, 4, ","), (4, 4, 5, None, None),
                                                      (5, 6, 5, 7, ")"), (6, 6, None, 7, ")"), (7, 7, None, None, None)):
        nxt[state, space] = on_space
        if on_digit is not None:
            nxt[state, digits] = on_digit
        if mark is not None:
            nxt[state, ids[mark]] = on_mark
    return nxt, digit


_SHAPE_NEXT, _DIGIT = _shape_machine()


@functools.lru_cache(maxsize=None)
def _cached_tables(device: torch.device):
    return (torch.as_tensor(_SHAPE_NEXT, device=device), torch.as_tensor(_DIGIT, device=device),
            torch.tensor(POSITION_LIMITS, device=device))


def _tables(device: torch.device):
    """The shape tables and feature limits on ``device``: cached eagerly (not copied per token), traced under compile."""
    return _cached_tables.__wrapped__(device) if torch.compiler.is_compiling() else _cached_tables(device)


def parse_shape_ids(tail, n):
    """The (h, w) the last ``n`` of ``tail`` spell as a shape text, else (0, 0).
    tail : (..., SHAPE_TEXT_MAX) long, n : (...) long -> (..., 2) long."""
    nxt, digit, _ = _tables(tail.device)
    state = torch.zeros_like(n)
    h, w = torch.zeros_like(n), torch.zeros_like(n)
    for j in range(SHAPE_TEXT_MAX):                     # a fixed number of steps: one graph
        token = tail[..., j]
        state = torch.where(j >= SHAPE_TEXT_MAX - n, nxt[state, token], state)
        h = torch.where(state == 2, h * 10 + digit[token], h)
        w = torch.where(state == 5, w * 10 + digit[token], w)
    ok = (state == 7) & (n >= 5) & (n <= SHAPE_TEXT_MAX)
    return torch.stack([h, w], -1) * ok[..., None]


def position_features(segment, row, column, declared):
    """(...) segment, row, column and (..., 2) declared (h, w) -> (..., 7) clipped features."""
    height, width = declared.unbind(-1)
    has = height > 0
    rows_left = torch.where(has, height - row + 1, 0)             # 1 = the last row / past it
    cols_left = torch.where(has, width - column + 1, 0)
    out = torch.stack([segment, row, column, height, width, rows_left, cols_left], -1)
    return torch.minimum(out.clamp_min(0), _tables(out.device)[2])


def previous_ids(causal_windows):
    """Masked windows of a stream from its start (..., L, 3, 3) -> the id of the token before each
    position (..., L), \\n at position 0. The left cell, else (a row's start) \\t when there is a row
    above, \\n when not; real tokens are never 0, so this is exact for any well-formed stream."""
    left, above = causal_windows[..., 1, 0], causal_windows[..., 0, :].amax(-1)
    return torch.where(left != PAD_ID, left, torch.where(above != PAD_ID, ROW_END_ID, SEG_END_ID))


def segment_starts(causal_windows, prev=None):
    """Causal windows (B, L, 3, 3) of streams from their start -> (B, L): where the segment of each
    position starts. ``prev``: their ``previous_ids`` when already computed."""
    starts = (previous_ids(causal_windows) if prev is None else prev) == SEG_END_ID
    t = torch.arange(starts.shape[-1], device=starts.device)
    return torch.where(starts, t, 0).cummax(-1).values


def positions(causal_windows, prev=None):
    """Causal windows (B, L, 3, 3) of streams from their start -> ``POSITION_FEATURES`` (B, L, 7):
    segment, row and column in it, the (h, w) the previous segment declared ("(h, w)", else 0)
    and the rows / columns left. ``prev``: their ``previous_ids`` when already computed."""
    prev = (previous_ids(causal_windows) if prev is None else prev).long()     # (B, L)
    t = torch.arange(prev.shape[-1], device=prev.device)
    seg_start, row_end = prev == SEG_END_ID, prev == ROW_END_ID
    segment = seg_start.cumsum(-1) - 1
    seg_begin = segment_starts(causal_windows, prev)
    column = t - torch.where(seg_start | row_end, t, 0).cummax(-1).values
    rows = row_end.cumsum(-1)
    row = rows - rows.gather(-1, seg_begin)
    # at a segment's first position: the previous segment (its last <= 12 tokens, and its length)
    tail = F.pad(prev, (SHAPE_TEXT_MAX, 0)).unfold(-1, SHAPE_TEXT_MAX, 1)[..., :-1, :]   # (B, L, 12)
    n = F.pad((t - seg_begin)[..., :-1], (1, 0))                     # tokens of the segment before
    shape = parse_shape_ids(tail, n) * seg_start[..., None]          # (B, L, 2)
    declared = shape.gather(-2, seg_begin[..., None].expand_as(shape))
    return position_features(segment, row, column, declared)


class StreamPositions:
    """``positions`` one token at a time for a batch of streams, as tensors on ``device``:
    ``features()`` (B, 7) is the position of the next token, ``push(ids (B,))`` advances."""

    def __init__(self, batch_size: int, device=None):
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.segment, self.row, self.column, self.length = zeros, zeros, zeros, zeros
        self.declared = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
        self.tail = torch.zeros(batch_size, SHAPE_TEXT_MAX, dtype=torch.long, device=device)

    def features(self):
        return position_features(self.segment, self.row, self.column, self.declared)

    def push(self, token_ids) -> None:
        token = token_ids.long()
        seg, row_end = token == SEG_END_ID, token == ROW_END_ID
        self.declared = torch.where(seg[:, None], parse_shape_ids(self.tail, self.length), self.declared)
        self.segment = self.segment + seg
        self.row = torch.where(seg, 0, self.row + row_end)
        self.column = torch.where(seg | row_end, 0, self.column + 1)
        self.tail = torch.where(seg[:, None], 0, torch.cat([self.tail[:, 1:], token[:, None]], 1))
        self.length = torch.where(seg, 0, self.length + 1)
