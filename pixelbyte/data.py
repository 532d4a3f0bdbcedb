"""Datasets: load PixelBytes items and cut their token windows into training samples.

Sources (``load_pixelbytes``):
- ``"embedded"`` (default): emoji sprites shipped in ``pixelbyte/data/`` (see its README card);
- ``"ffurfaro/PixelBytes-Pokemon"`` or any hub id: ``datasets.load_dataset`` (used on Kaggle);
- a local parquet file or a folder of parquet files with ``image`` + ``caption`` columns.
The ``pixelbyte`` column is computed with the project's encoder when a source lacks it; a
``None`` caption is then read as an empty one (the item is its shape and image), with one warning
that counts those rows; a ``None`` or unreadable image is refused, naming its row. A ``pixelbyte``
column a source brings is checked item by item: (L, 3, 3) windows of ids 0..112, L >= 1 (a
column of flat ids is refused, naming the row and the shape found; build the windows with
``tokenizer.windows_from_ids``).

Storage (``WindowDataset``): every item's windows are concatenated once into one uint8 array of
shape (N_tokens, 3, 3) -- 9 bytes per token -- and a sample is a view into it, so stride 1
costs one int64 start offset per window, not a copy of the window.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import tokenizer as tok
from .config import EMBEDDED, HUB_DATASET, OBJECTIVES, DataConfig, RunConfig, SampleConfig  # noqa: F401

EMBEDDED_PATH = Path(__file__).parent / "data" / "emoji_sprites.parquet"


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
    if "pixelbyte" in ds.column_names:
        _windows(_pixelbyte_column(ds), f"dataset {source!r}, column 'pixelbyte'")
    else:
        ds = _with_pixelbyte_column(ds, _encode_rows(ds, source, max_side, resize))
    return ds


def _encode_rows(ds, source: str, max_side: int, resize: bool) -> list[np.ndarray]:
    """``encode_item`` on every row; an error names the row and the column. A None caption is
    read as "" (the item is then its shape and image), with one warning counting those rows."""
    import datasets

    captions = ds["caption"]
    missing = [i for i, caption in enumerate(captions) if caption is None]
    if missing:
        warnings.warn(f"dataset {source!r}: column 'caption' is None in {len(missing)} of {len(ds)} rows "
                      f"(rows {_first_rows(missing)}); those items are encoded as an empty caption is: "
                      f"shape + image, no caption segment", stacklevel=3)
    feature = ds.features["image"]
    decoded = not isinstance(feature, datasets.Image)          # else decoded here, row by row
    images = ds["image"] if decoded else ds.cast_column("image", datasets.Image(decode=False))["image"]
    seqs = []
    for row, (image, caption) in enumerate(zip(images, captions)):
        where = f"dataset {source!r}, row {row}"
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"{where}, column 'caption': expected a string (or None), "
                             f"got {type(caption).__name__} {caption!r}")
        if image is None:
            raise ValueError(f"{where}, column 'image': None; every item needs an image")
        try:
            image = image if decoded else feature.decode_example(image)
            seqs.append(tok.encode_item(image, caption or "", max_side=max_side, resize=resize))
        except Exception as err:                 # an unreadable file, an empty image, a bad mode...
            raise ValueError(f"{where}, column 'image': {err}") from err
    return seqs


def _first_rows(rows: list[int], n: int = 5) -> str:
    return str(rows) if len(rows) <= n else f"[{', '.join(map(str, rows[:n]))}, ...]"


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
    """Pixelbyte column -> one (L_i, 3, 3) uint8 array per item (read straight from Arrow).
    Every item must be (L, 3, 3) windows of ids 0..112 with L >= 1: an error names the row."""
    column = _pixelbyte_column(ds)
    windows, lengths = _windows(column, "column 'pixelbyte'")
    ends = np.cumsum(lengths)
    return [windows[a:b] for a, b in zip(ends - lengths, ends)]


def _pixelbyte_column(ds):
    import pyarrow as pa

    column = ds.with_format("arrow")["pixelbyte"]        # respects .select() views
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _is_list(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
        or pa.types.is_fixed_size_list(arrow_type)


def _list_lengths(array, always: bool = False) -> np.ndarray | None:
    """Length of each list of an Arrow list array, -1 for a null entry; None (unless ``always``)
    when every entry is a list of 3 (fixed-size lists of 3 without nulls: nothing to check)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_fixed_size_list(array.type):
        if array.type.list_size == 3 and not array.null_count and not always:
            return None
        return np.where(array.is_valid().to_numpy(zero_copy_only=False), array.type.list_size, -1)
    return pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False)


def _windows(column, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A pixelbyte column (Arrow) -> (all windows (N, 3, 3) uint8, windows per item (n_items,)).

    Checked item by item: L >= 1 windows of 3 rows of 3 integer ids in 0..VOCAB_SIZE-1. The
    first item that breaks it is named with the shape found, e.g. ``row 0: found shape (54,)``
    for a column of flat ids (which would otherwise be cut into windows across items)."""
    import pyarrow as pa

    if not _is_list(column.type):
        raise ValueError(f"{where} holds {column.type} values; expected (L, 3, 3) windows per item")
    lengths = _list_lengths(column, always=True).astype(np.int64)        # windows per item
    sizes, level = [lengths], column.flatten()      # sizes[d][i]: length of list i at depth d (0: items)
    while _is_list(level.type) and len(sizes) < 3:
        sizes.append(_list_lengths(level))
        level = level.flatten()

    def row_of(index: int, depth: int) -> int:
        """The item that holds entry ``index`` of depth ``depth`` (len(sizes): the ids)."""
        for d in range(depth - 1, -1, -1):
            index = index // 3 if sizes[d] is None else \
                int(np.searchsorted(np.cumsum(np.maximum(sizes[d], 0)), index, side="right"))
        return index

    bad = [int(i) for i in np.flatnonzero(lengths < 1)[:1]]                 # None, or no windows
    for d in (1, 2):                                                        # 3 rows of 3 ids each
        if d < len(sizes) and sizes[d] is not None:
            bad += [row_of(int(i), d) for i in np.flatnonzero(sizes[d] != 3)[:1]]
    leaf_ok = len(sizes) == 3 and pa.types.is_integer(level.type)
    if len(level) and not leaf_ok:                                          # too few / many axes, not ids
        bad.append(row_of(0, len(sizes)))
    elif level.null_count:
        bad.append(row_of(int(np.flatnonzero(~level.is_valid().to_numpy(zero_copy_only=False))[0]), 3))
    if bad:
        row = min(bad)
        found = _nested_shape(column[row].as_py())
        if len(found) == 1 and found[0]:
            hint = ("; token ids become windows with tokenizer.windows_from_ids(ids), flattened windows "
                    "with np.reshape(item, (-1, 3, 3))")
        elif len(found) == 2 and found[1] == 9:
            hint = "; windows stored as 9 ids each: np.reshape(item, (-1, 3, 3))"
        else:
            hint = ""
        kind = "" if _is_list(level.type) or pa.types.is_integer(level.type) else \
            f" of {level.type} values (token ids are integers)"
        found = f"shape {_shape_text(found)}" if column[row].is_valid else "None"
        raise ValueError(f"{where}, row {row}: found {found}{kind}, expected (L, 3, 3) windows "
                         f"(L >= 1 tokens, each its 3x3 context){hint}")
    values = level.to_numpy(zero_copy_only=False)
    out_of_vocabulary = (values < 0) | (values >= tok.VOCAB_SIZE)
    if out_of_vocabulary.any():
        first = int(np.argmax(out_of_vocabulary))
        raise ValueError(f"{where}, row {row_of(first, 3)}: token id {int(values[first])} outside the "
                         f"vocabulary 0..{tok.VOCAB_SIZE - 1}")
    return values.astype(np.uint8, copy=False).reshape(-1, 3, 3), lengths


def _nested_shape(value) -> tuple:
    """Shape of nested lists; a ragged axis as 'min..max': [[1, 2], [3]] -> (2, '1..2')."""
    shape, level = [], [value]
    while level and all(isinstance(v, list) for v in level):
        sizes = [len(v) for v in level]
        shape.append(sizes[0] if min(sizes) == max(sizes) else f"{min(sizes)}..{max(sizes)}")
        level = [x for v in level for x in v]
    return tuple(shape)


def _shape_text(shape: tuple) -> str:
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


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
# Training samples: windows inside items (the paper's) or whole items


def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
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

    def __init__(self, seqs: list[np.ndarray], seq_length: int = 256, stride: int = 32,
                 objective: str = "next"):
        if not seqs:
            raise ValueError("no sequences given: the dataset is empty")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        _check_positive(seq_length=seq_length, stride=stride)
        self.seq_length, self.stride, self.objective = seq_length, stride, objective
        L, need = seq_length, seq_length + (1 if objective == "next" else 0)
        lengths = np.array([len(s) for s in seqs])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = [off + np.arange(0, n - need + 1, stride) for off, n in zip(offsets, lengths) if n >= need]
        if not starts:
            raise ValueError(
                f"seq_length={L} (objective {objective!r} needs {need} tokens) is longer than "
                f"every item (longest: {lengths.max()} tokens); lower seq_length or use whole-item "
                f"samples (unit='item')")
        self.tokens = np.concatenate(seqs).astype(np.uint8, copy=False)   # (N, 3, 3), 9 B/token
        self.starts = np.concatenate(starts).astype(np.int64)            # (n_samples,)
        self.n_items = int((lengths >= need).sum())

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s, L = int(self.starts[i]), self.seq_length
        x = torch.from_numpy(self.tokens[s:s + L]).long()              # (L, 3, 3)
        if self.objective == "next":
            return x, torch.tensor(int(self.tokens[s + L, 1, 1]))
        y = x[:, 1, 1].clone()                                         # (L,)
        x[:, 1, 1] = 0
        return x, y

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """The order of one epoch's samples: a plain shuffle."""
        return torch.randperm(len(self), generator=generator)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def describe(self, batch_size: int | None = None) -> dict:
        """What the samples are (``batch_size`` as for ``ItemDataset``; windows are never padded)."""
        return {"unit": "window", "samples": len(self), "items": self.n_items, "tokens": self.n_tokens,
                "seq_length": self.seq_length, "stride": self.stride, "objective": self.objective}


ITEM_ORDERS = {"data": ("data",), "caption_first": ("caption_first",), "both": ("data", "caption_first")}


class ItemDataset(Dataset):
    """Whole items as ``causal`` samples: ``x`` = the item's windows with centres zeroed
    (L_i, 3, 3), ``y`` = its tokens (L_i,). So a sample always holds a declared shape with its
    whole image and its caption: the model sees where an image ends (shared/reference/whole_items.md).

    ``orders``: "data" (shape, image, caption), "caption_first" (caption, shape, image: drawing
    conditioned on a caption), or "both" (every item once in each order). Batches are padded
    to their longest item (``collate``; padding is id 0, which the loss ignores) and cut from
    groups of ``bucket`` batches sorted by length, so little of a batch is padding
    (``padding_share``). Samples are stored sorted by length: evaluation in index order pads
    little too; ``source_index[i]`` is the position in ``seqs`` of sample i.
    """

    objective = "causal"

    def __init__(self, seqs: list[np.ndarray], orders: str = "data", bucket: int = 16):
        if not seqs:
            raise ValueError("no sequences given: the dataset is empty")
        if orders not in ITEM_ORDERS:
            raise ValueError(f"orders must be one of {list(ITEM_ORDERS)}, got {orders!r}")
        _check_positive(bucket=bucket)
        samples = [(i, tok.reorder(s, order)) for i, s in enumerate(seqs) for order in ITEM_ORDERS[orders]]
        samples.sort(key=lambda pair: len(pair[1]))                      # stable: ties keep their order
        self.source_index = np.array([i for i, _ in samples], dtype=np.int64)
        self.items = [s for _, s in samples]                              # (L_i, 3, 3) uint8 each
        self.lengths = np.array([len(s) for s in self.items], dtype=np.int64)
        self.orders, self.bucket, self.n_items = orders, bucket, len(seqs)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.items[i].astype(np.int64))             # (L_i, 3, 3), a copy
        y = x[:, 1, 1].clone()                                            # (L_i,)
        x[:, 1, 1] = 0
        return x, y

    @staticmethod
    def collate(batch):
        """[(x (L_i, 3, 3), y (L_i,))] -> x (B, L_max, 3, 3), y (B, L_max), zero-padded at the end."""
        longest = max(len(y) for _, y in batch)
        x = torch.zeros(len(batch), longest, 3, 3, dtype=torch.long)
        y = torch.zeros(len(batch), longest, dtype=torch.long)
        for b, (xi, yi) in enumerate(batch):
            x[b, :len(yi)], y[b, :len(yi)] = xi, yi
        return x, y

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """One epoch's order whose consecutive ``batch_size`` blocks are batches of similar
        lengths: shuffle, sort each group of ``bucket`` batches by length, shuffle the batches."""
        order = torch.randperm(len(self), generator=generator)
        group = batch_size * self.bucket
        chunks = [order[g:g + group] for g in range(0, len(order), group)]
        order = torch.cat([c[torch.from_numpy(np.argsort(self.lengths[c.numpy()], kind="stable"))]
                           for c in chunks])
        n_batches = len(order) // batch_size
        batches = order[:n_batches * batch_size].view(n_batches, batch_size)
        shuffled = batches[torch.randperm(n_batches, generator=generator)].reshape(-1)
        return torch.cat([shuffled, order[n_batches * batch_size:]])

    def padding_share(self, batch_size: int, seed: int = 0) -> float:
        """Share of the padded batch tensor that is padding, over one epoch of ``epoch_order``."""
        order = self.epoch_order(torch.Generator().manual_seed(seed), batch_size).numpy()
        n = len(order) // batch_size * batch_size
        lengths = self.lengths[order[:n]].reshape(-1, batch_size)
        padded = lengths.max(1).sum() * batch_size
        return float(1 - lengths.sum() / padded) if padded else 0.0

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def describe(self, batch_size: int | None = None) -> dict:
        info = {"unit": "item", "samples": len(self), "items": self.n_items, "tokens": self.n_tokens,
                "orders": self.orders, "bucket": self.bucket,
                "length_min": int(self.lengths.min()), "length_max": int(self.lengths.max())}
        if batch_size:
            info["padding_share"] = self.padding_share(batch_size)
        return info


def evenly_spaced(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when n is None or larger):
    a subset for quick evaluation that is not biased to one end of a sorted dataset (items
    sorted by length, emoji sorted by category)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def make_samples(seqs: list[np.ndarray], samples: SampleConfig, objective: str):
    """The training samples ``samples`` describes, for a model trained with ``objective``."""
    if samples.unit == "item":
        if objective != "causal":
            raise ValueError("whole-item samples (unit='item') need objective='causal'")
        return ItemDataset(seqs, samples.orders, samples.bucket)
    return WindowDataset(seqs, samples.seq_length, samples.stride, objective)


def split(seqs: list, data_cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) item indices of a run's data (``split_items`` with its settings)."""
    return split_items(len(seqs), data_cfg.test_size, data_cfg.split_seed)


def make_datasets(seqs: list[np.ndarray], run: RunConfig):
    """Split the items as ``run.data`` says, then cut each side into ``run.samples``."""
    train_idx, test_idx = split(seqs, run.data)
    return (make_samples([seqs[i] for i in train_idx], run.samples, run.model.objective),
            make_samples([seqs[i] for i in test_idx], run.samples, run.model.objective))


def load(data_cfg: DataConfig) -> list[np.ndarray]:
    """A run's items as pixelbyte sequences: ``load_pixelbytes(source, limit)``."""
    return sequences(load_pixelbytes(data_cfg.source, limit=data_cfg.limit))


def token_stats(seqs: list[np.ndarray]) -> dict:
    """Token counts by modality (``tokenizer.MODALITIES``) over a list of sequences."""
    centres = np.concatenate([tok.centre_ids(s) for s in seqs])
    counts = np.bincount(tok.modality(centres.astype(np.int64)), minlength=len(tok.MODALITIES))
    n = max(1, len(centres))
    return {"items": len(seqs), "tokens": len(centres),
            **{f"{name}_tokens": int(c) for name, c in zip(tok.MODALITIES, counts)},
            **{f"{name}_share": float(c / n) for name, c in zip(tok.MODALITIES, counts)},
            "mean_length": float(np.mean([len(s) for s in seqs]))}
