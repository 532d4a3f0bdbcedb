"""Datasets: load PixelBytes items and cut their token windows into training samples.

Sources (``load_pixelbytes``):
- ``"embedded"`` (default): emoji sprites shipped in ``pixelbyte/data/`` (see its README card);
- ``"ffurfaro/PixelBytes-Pokemon"`` or any hub id: ``datasets.load_dataset`` (used on Kaggle);
- a local parquet file or a folder of parquet files with ``image`` + ``caption`` columns.
The ``pixelbyte`` column is computed with the project's encoder when a source lacks it.

Storage (``WindowDataset``): every item's windows are concatenated once into one uint8 array of
shape (N_tokens, 3, 3) -- 9 bytes per token -- and a sample is a view into it, so stride 1
costs one int64 start offset per window, not a copy of the window.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import tokenizer as tok

EMBEDDED = "embedded"
EMBEDDED_PATH = Path(__file__).parent / "data" / "emoji_sprites.parquet"
HUB_DATASET = "ffurfaro/PixelBytes-Pokemon"
OBJECTIVES = ("next", "causal")


# ---------------------------------------------------------------------------------------------
# Loading


def _parquet_files(path: Path) -> list[str]:
    files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    return files


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (offline mode, DNS, refused), or None if it answers.

    ``datasets`` retries an unreachable hub for ~30 s; probing one TCP connection first makes
    an offline machine fail in milliseconds instead.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname} unreachable: {err}"
    return None


def _load_hub(name: str, split: str):
    import datasets

    hint = (f"Without network access use the embedded default: load_pixelbytes('{EMBEDDED}'), "
            f"or a local parquet copy: load_pixelbytes('/path/to/data.parquet')")
    reason = _hub_unreachable_reason()
    if reason is not None:
        raise ConnectionError(f"cannot load {name!r} from the Hugging Face hub ({reason}). {hint}")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:  # unknown repo, rate limit, cut connection...: say what to do instead
        raise ConnectionError(
            f"could not load {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). {hint}") from err


def load_pixelbytes(source: str = EMBEDDED, split: str = "train", limit: int | None = None,
                    max_side: int = tok.MAX_IMAGE_SIDE, resize: bool = False):
    """Load a PixelBytes dataset as a ``datasets.Dataset`` with image, caption, pixelbyte.

    ``source`` is ``"embedded"``, a hub dataset id, or a local parquet file/folder. ``limit``
    keeps the first items (quick runs). Missing ``pixelbyte`` columns are computed with
    ``tokenizer.encode_item`` (images larger than ``max_side`` are refused unless ``resize``).
    """
    import datasets

    if source == EMBEDDED:
        ds = datasets.Dataset.from_parquet(str(EMBEDDED_PATH))
    elif os.path.exists(source):
        ds = datasets.Dataset.from_parquet(_parquet_files(Path(source)))
    elif "/" in source and not source.startswith((".", "/")):
        ds = _load_hub(source, split)
    else:
        raise FileNotFoundError(
            f"dataset source {source!r} is neither '{EMBEDDED}', an existing parquet file/folder, "
            f"nor a hub id like '{HUB_DATASET}'")
    missing = {"image", "caption"} - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {source!r} lacks column(s) {sorted(missing)}; "
                         f"it has {ds.column_names}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"dataset {source!r} (split {split!r}, limit {limit}) has no items")
    if "pixelbyte" not in ds.column_names:
        seqs = [tok.encode_item(img, cap, max_side=max_side, resize=resize)
                for img, cap in zip(ds["image"], ds["caption"])]
        ds = _with_pixelbyte_column(ds, seqs)
    return ds


def _with_pixelbyte_column(ds, seqs: list[np.ndarray]):
    """Add the pixelbyte column (list of 3x3 uint8 windows per item) built as one Arrow array;
    going through nested Python lists costs ~100x more for the same column."""
    import datasets
    import pyarrow as pa

    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.concatenate(seqs).reshape(-1))
    windows = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(values, 3), 3)
    table = ds.data.table.append_column("pixelbyte", pa.ListArray.from_arrays(offsets, windows))
    features = datasets.Features({**ds.features, "pixelbyte": datasets.List(
        datasets.List(datasets.List(datasets.Value("uint8"), length=3), length=3))})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def sequences(ds) -> list[np.ndarray]:
    """Pixelbyte column -> one (L_i, 3, 3) uint8 array per item (read straight from Arrow)."""
    import pyarrow as pa

    column = ds.with_format("arrow")["pixelbyte"]        # respects .select() views
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy()
    values = column.flatten()                             # windows of the selected rows only
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
            or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    values = values.to_numpy(zero_copy_only=False)
    if len(values) and (values.min() < 0 or values.max() >= tok.VOCAB_SIZE):
        raise ValueError(f"pixelbyte column holds ids outside 0..{tok.VOCAB_SIZE - 1}")
    values = values.astype(np.uint8).reshape(-1, 3, 3)
    starts = offsets - offsets[0]
    return [values[a:b] for a, b in zip(starts[:-1], starts[1:])]


def split_items(n_items: int, test_size: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test split *by item* (no window of a test item is trained on)."""
    if n_items < 2:
        raise ValueError(f"need at least 2 items to split, got {n_items}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    order = np.random.default_rng(seed).permutation(n_items)
    n_test = min(max(1, round(n_items * test_size)), n_items - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass
class WindowConfig:
    seq_length: int = 256
    stride: int = 32
    objective: str = "next"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("seq_length", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class WindowDataset(Dataset):
    """Training samples cut from pixelbyte sequences, within each item.

    Alignment, for a sample starting at token ``s`` of an item with windows ``w`` (L, 3, 3):
    - ``next`` (the seed's objective): ``x = w[s : s+L]`` (full windows, centres included),
      ``y = w[s+L, 1, 1]`` -- the single token after the window. Needs ``s + L + 1 <= len``.
    - ``causal``: ``x = w[s : s+L]`` with every centre zeroed (each position sees its causal
      neighbourhood: row above and left, all earlier tokens), ``y = w[s : s+L, 1, 1]`` -- every
      position predicts its own centre token. Needs ``s + L <= len``.
    Items too short for one sample are skipped; if all are, that is an error.
    ``x`` is int64 (L, 3, 3); ``y`` is int64 () for next, (L,) for causal.
    """

    def __init__(self, seqs: list[np.ndarray], cfg: WindowConfig):
        if not seqs:
            raise ValueError("no sequences given: the dataset is empty")
        self.cfg = cfg
        L, need = cfg.seq_length, cfg.seq_length + (1 if cfg.objective == "next" else 0)
        lengths = np.array([len(s) for s in seqs])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = [off + np.arange(0, n - need + 1, cfg.stride) for off, n in zip(offsets, lengths) if n >= need]
        if not starts:
            raise ValueError(
                f"seq_length={L} (objective {cfg.objective!r} needs {need} tokens) is longer than "
                f"every item (longest: {lengths.max()} tokens); lower seq_length")
        self.tokens = np.concatenate(seqs).astype(np.uint8, copy=False)   # (N, 3, 3), 9 B/token
        self.starts = np.concatenate(starts).astype(np.int64)            # (n_samples,)
        self.n_items = int((lengths >= need).sum())

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s, L = int(self.starts[i]), self.cfg.seq_length
        x = torch.from_numpy(self.tokens[s:s + L]).long()              # (L, 3, 3)
        if self.cfg.objective == "next":
            return x, torch.tensor(int(self.tokens[s + L, 1, 1]))
        y = x[:, 1, 1].clone()                                         # (L,)
        x[:, 1, 1] = 0
        return x, y

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def make_datasets(seqs: list[np.ndarray], cfg: WindowConfig, test_size: float = 0.1,
                  seed: int = 0) -> tuple[WindowDataset, WindowDataset]:
    """Split items deterministically, then window each side."""
    train_idx, test_idx = split_items(len(seqs), test_size, seed)
    return (WindowDataset([seqs[i] for i in train_idx], cfg),
            WindowDataset([seqs[i] for i in test_idx], cfg))


def token_stats(seqs: list[np.ndarray]) -> dict:
    """Token counts by modality (pixels vs text bytes) over a list of sequences."""
    centres = np.concatenate([tok.centre_ids(s) for s in seqs])
    pixels = int(tok.is_colour(centres).sum())
    return {"items": len(seqs), "tokens": len(centres), "pixel_tokens": pixels,
            "text_tokens": len(centres) - pixels, "pixel_share": pixels / max(1, len(centres)),
            "mean_length": float(np.mean([len(s) for s in seqs]))}
