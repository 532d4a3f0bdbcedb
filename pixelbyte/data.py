"""Datasets: load PixelBytes items (the embedded emoji sprites, a hub dataset id or parquet files with image and
caption columns), encode their ``pixelbyte`` windows or check those a source brings (errors name the row), and
cut them into training samples: windows inside items (``WindowDataset``) or whole items (``ItemDataset``).
"""
from __future__ import annotations

import functools
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from . import tokenizer as tok
from .config import EMBEDDED, HUB_DATASET, OBJECTIVES, ORDERS, DataConfig, RunConfig, SampleConfig, is_hub_id

EMBEDDED_PATH = Path(__file__).parent / "data" / "emoji_sprites.parquet"


def _parquet_files(path: Path) -> list[str]:
    """A file or folder source's parquet files, each readable, with rows and the same columns (errors name it)."""
    files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    columns = {}
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as err:                        # an empty (0-byte) or corrupt file
            raise ValueError(f"{file}: not a readable parquet file ({type(err).__name__}: {err})") from None
        if parquet.metadata.num_rows == 0:
            raise ValueError(f"{file}: an empty parquet file (0 rows); expected rows with image + caption columns")
        columns[file] = {c.name: str(c.type) for c in parquet.schema_arrow}
        if columns[file] != columns[files[0]]:
            raise ValueError(f"{file}: columns {columns[file]} differ from {files[0]}'s {columns[files[0]]}; "
                             f"the files of a folder make one dataset and need the same columns and types")
    return files


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (offline mode, DNS, refused), or None if it answers: one
    TCP probe fails at once where ``datasets`` would retry for ~30 s."""
    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
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
    """A PixelBytes dataset as a ``datasets.Dataset`` with image, caption, pixelbyte: from
    ``"embedded"``, a hub dataset id or a local parquet file/folder, the first ``limit`` items.
    A missing ``pixelbyte`` column is encoded (images larger than ``max_side``: ``resize``)."""
    import datasets

    if source == EMBEDDED:
        ds = datasets.Dataset.from_parquet(str(EMBEDDED_PATH))
    elif os.path.exists(source):
        ds = datasets.Dataset.from_parquet(_parquet_files(Path(source)))
    elif is_hub_id(source) and not source.endswith(".parquet"):
        ds = _load_hub(source, split)
    else:
        raise FileNotFoundError(
            f"no such file or folder {os.path.abspath(os.path.expanduser(source))}: dataset source {source!r} "
            f"is neither '{EMBEDDED}', an existing parquet file/folder, nor a hub id like '{HUB_DATASET}'")
    missing = {"image", "caption"} - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {source!r} lacks column(s) {sorted(missing)}; it has {ds.column_names}")
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
                      f"(rows {missing[:5]}{' ...' if len(missing) > 5 else ''}); those items are encoded as an "
                      f"empty caption is: shape + image, no caption segment", stacklevel=3)
    feature = ds.features["image"]
    if getattr(feature, "dtype", None) in ("binary", "large_binary") or \
            (isinstance(feature, dict) and set(feature) <= {"bytes", "path"}):
        feature = datasets.Image()          # PNG bytes or {bytes, path} structs, as pandas / pyarrow write them
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
            if decoded and isinstance(image, (str, bytes, dict, int, float)):
                raise ValueError(f"a {type(image).__name__} value ({ds.features['image']}); expected an image: PNG "
                                 f"bytes, a {{bytes, path}} struct, an (H, W, 3|4) array or a PIL image")
            image = image if decoded else feature.decode_example(image)
            seqs.append(tok.encode_item(image, caption or "", max_side=max_side, resize=resize))
        except Exception as err:                 # an unreadable file, an empty image, a bad mode...
            raise ValueError(f"{where}, column 'image': {err}") from err
    return seqs


def _with_pixelbyte_column(ds, seqs: list[np.ndarray]):
    """Add the pixelbyte column (3x3 uint8 windows per item) built as one Arrow array, not through
    nested Python lists (far slower)."""
    import datasets

    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.concatenate(seqs).reshape(-1))
    windows = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(values, 3), 3)
    table = ds.data.table.append_column("pixelbyte", pa.ListArray.from_arrays(offsets, windows))
    features = datasets.Features({**ds.features, "pixelbyte": datasets.List(
        datasets.List(datasets.List(datasets.Value("uint8"), length=3), length=3))})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def sequences(ds) -> list[np.ndarray]:
    """Pixelbyte column -> one (L_i, 3, 3) uint8 array per item, read straight from Arrow and checked (``_windows``)."""
    column = _pixelbyte_column(ds)
    windows, lengths = _windows(column, "column 'pixelbyte'")
    ends = np.cumsum(lengths)
    return [windows[a:b] for a, b in zip(ends - lengths, ends)]


def _pixelbyte_column(ds):
    column = ds.with_format("arrow")["pixelbyte"]        # respects .select() views
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _is_list(arrow_type) -> bool:
    return isinstance(arrow_type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType))


def _list_lengths(array) -> np.ndarray:
    """Length of each list of an Arrow list array, -1 for a null entry."""
    return pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _windows(column, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A pixelbyte column (Arrow) -> (all windows (N, 3, 3) uint8, windows per item). Every item must be L >= 1
    windows of 3x3 ids in the vocabulary; the first that is not is named with its shape, e.g. ``(54,)``."""
    if not _is_list(column.type):
        raise ValueError(f"{where} holds {column.type} values; expected (L, 3, 3) windows per item")
    lengths = _list_lengths(column)                                      # windows per item
    ok, level = bool((lengths >= 1).all()), column.flatten()
    for _ in range(2):                                                   # 3 rows of 3 ids each
        ok = ok and _lists_of_three(level)
        level = level.flatten() if _is_list(level.type) else level
    if not (ok and pa.types.is_integer(level.type) and not level.null_count):
        row = next((r for r in range(len(column)) if not _is_windows(column[r].as_py())), 0)
        found = _nested_shape(column[row].as_py())
        hint = ("; token ids become windows with tokenizer.windows_from_ids(ids), flattened windows "
                "with np.reshape(item, (-1, 3, 3))" if len(found) == 1 and found[0] else
                "; windows stored as 9 ids each: np.reshape(item, (-1, 3, 3))" if found[1:] == (9,) else "")
        kind = "" if _is_list(level.type) or pa.types.is_integer(level.type) else \
            f" of {level.type} values (token ids are integers)"
        found = f"shape ({', '.join(map(str, found))}{',' * (len(found) == 1)})" if column[row].is_valid else "None"
        raise ValueError(f"{where}, row {row}: found {found}{kind}, expected (L, 3, 3) windows "
                         f"(L >= 1 tokens, each its 3x3 context){hint}")
    values = level.to_numpy(zero_copy_only=False)
    out_of_vocabulary = (values < 0) | (values >= tok.VOCAB_SIZE)
    if out_of_vocabulary.any():
        first = int(np.argmax(out_of_vocabulary))
        row = int(np.searchsorted(np.cumsum(lengths) * 9, first, side="right"))
        raise ValueError(f"{where}, row {row}: token id {int(values[first])} outside the "
                         f"vocabulary 0..{tok.VOCAB_SIZE - 1}")
    return values.astype(np.uint8, copy=False).reshape(-1, 3, 3), lengths


def _lists_of_three(array) -> bool:
    if getattr(array.type, "list_size", None) == 3 and not array.null_count:    # fixed-size: nothing to count
        return True
    return _is_list(array.type) and bool((_list_lengths(array) == 3).all())


def _is_windows(item) -> bool:
    """A Python item is (L >= 1, 3, 3) integer ids."""
    return _nested_shape(item)[1:] == (3, 3) and all(type(i) is int for w in item for r in w for i in r)


def _nested_shape(value) -> tuple:
    """Shape of nested lists; a ragged axis as 'min..max': [[1, 2], [3]] -> (2, '1..2')."""
    shape, level = [], [value]
    while level and all(isinstance(v, list) for v in level):
        sizes = [len(v) for v in level]
        shape.append(sizes[0] if min(sizes) == max(sizes) else f"{min(sizes)}..{max(sizes)}")
        level = [x for v in level for x in v]
    return tuple(shape)


def split_items(n_items: int, test_size: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test split *by item* (no window of a test item is trained on)."""
    if n_items < 2:
        raise ValueError(f"need at least 2 items to split, got {n_items}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    order = np.random.default_rng(seed).permutation(n_items)
    n_test = min(max(1, round(n_items * test_size)), n_items - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# Training samples: windows inside items (the paper's) or whole items
def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def collate(batch, positions: bool = True):
    """[(x (L_i, 3, 3), y (L_i,) or ())] -> x (B, L, 3, 3), y (B, L) or (B,), positions (B, L, 7), zero-padded at
    the end (id 0, ignored by the loss); positions are computed here so a training step does no host work."""
    x = torch.zeros(len(batch), max(len(xi) for xi, _ in batch), 3, 3, dtype=torch.long)
    causal = batch[0][1].dim() == 1                      # else next: one target each, stacked
    y = torch.zeros(x.shape[:2], dtype=torch.long) if causal else torch.stack([yi for _, yi in batch])
    for b, (xi, yi) in enumerate(batch):                 # copies into one buffer: faster than pad_sequence
        x[b, :len(xi)] = xi
        if causal:
            y[b, :len(yi)] = yi
    return (x, y, tok.positions(x)) if positions else (x, y)


class WindowDataset(Dataset):
    """Windows of ``seq_length`` tokens every ``stride`` tokens inside each item (items too short are skipped),
    views into one uint8 array. A window at token ``s`` of an item's windows ``w`` is ``x = w[s : s+L]`` (int64) and
    - ``next``: ``y = w[s+L, 1, 1]``, the single token after the window;
    - ``causal``: ``y = w[s : s+L, 1, 1]``, every position's own token, with the centres of ``x`` zeroed (each
      position sees its causal neighbourhood: the row above and left, all earlier tokens)."""

    def __init__(self, seqs: list[np.ndarray], seq_length: int = 256, stride: int = 32, objective: str = "next"):
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
        self.n_items, self.n_tokens = int((lengths >= need).sum()), len(self.tokens)

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

    collate = staticmethod(functools.partial(collate, positions=False))   # windows never take positions

    def describe(self, batch_size: int | None = None) -> dict:
        """What the samples are (``batch_size`` as for ``ItemDataset``; windows are never padded)."""
        return {"unit": "window", "samples": len(self), "items": self.n_items, "tokens": self.n_tokens,
                "seq_length": self.seq_length, "stride": self.stride, "objective": self.objective}


class ItemDataset(Dataset):
    """Whole items as ``causal`` samples (``x`` the windows with centres zeroed, ``y`` the tokens), so the model
    sees where an image ends; ``orders``: "data", "caption_first" or "both" (each item in each order). Samples
    are stored sorted by length (``source_index[i]``: the position in ``seqs`` of sample i)."""

    objective = "causal"

    def __init__(self, seqs: list[np.ndarray], orders: str = "data", bucket: int = 16, rows=None):
        if not seqs:
            raise ValueError("no sequences given: the dataset is empty")
        if orders not in ORDERS:
            raise ValueError(f"orders must be one of {list(ORDERS)}, got {orders!r}")
        _check_positive(bucket=bucket)
        samples = [(i, _reordered(s, order, i if rows is None else rows[i]))
                   for i, s in enumerate(seqs) for order in (tok.ITEM_ORDERS if orders == "both" else (orders,))]
        samples.sort(key=lambda pair: len(pair[1]))                      # stable: ties keep their order
        self.source_index = np.array([i for i, _ in samples], dtype=np.int64)
        self.items = [s for _, s in samples]                              # (L_i, 3, 3) uint8 each
        self.lengths = np.array([len(s) for s in self.items], dtype=np.int64)
        self.orders, self.bucket, self.n_items, self.n_tokens = orders, bucket, len(seqs), int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.items[i].astype(np.int64))             # (L_i, 3, 3), a copy
        y = x[:, 1, 1].clone()                                            # (L_i,)
        x[:, 1, 1] = 0
        return x, y

    collate = staticmethod(collate)

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """One epoch's order whose consecutive ``batch_size`` blocks are batches of similar
        lengths: shuffle, sort each group of ``bucket`` batches by length, shuffle the batches."""
        order = torch.randperm(len(self), generator=generator)
        order = torch.cat([c[torch.from_numpy(np.argsort(self.lengths[c.numpy()], kind="stable"))]
                           for c in order.split(batch_size * self.bucket)])
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

    def describe(self, batch_size: int | None = None) -> dict:
        info = {"unit": "item", "samples": len(self), "items": self.n_items, "tokens": self.n_tokens,
                "orders": self.orders, "bucket": self.bucket,
                "length_min": int(self.lengths.min()), "length_max": int(self.lengths.max())}
        if batch_size:
            info["padding_share"] = self.padding_share(batch_size)
        return info


def evenly_spaced(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all when n is None or larger): a quick evaluation
    subset not biased to one end of a sorted dataset (items sorted by length, emoji by category)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def _reordered(windows: np.ndarray, order: str, row: int) -> np.ndarray:
    try:
        return tok.reorder(windows, order)
    except ValueError as err:                 # e.g. an item of 4 segments
        raise ValueError(f"row {row}: {err}") from None


def make_samples(seqs: list[np.ndarray], samples: SampleConfig, objective: str, rows=None):
    """The samples ``samples`` describes for a model of ``objective`` (``rows``: the data rows of ``seqs``)."""
    if samples.unit == "item":
        if objective != "causal":
            raise ValueError("whole-item samples (unit='item') need objective='causal'")
        return ItemDataset(seqs, samples.orders, samples.bucket, rows)
    return WindowDataset(seqs, samples.seq_length, samples.stride, objective)


def split(seqs: list, data_cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) item indices of a run's data (``split_items`` with its settings); items that repeat
    an earlier one are dropped first, with a warning, so no item is on both sides."""
    first = np.array(sorted({np.asarray(s).tobytes(): i for i, s in reversed(list(enumerate(seqs)))}.values()),
                     dtype=np.int64)
    if len(first) < len(seqs):
        warnings.warn(f"{len(seqs) - len(first)} of {len(seqs)} items repeat an earlier item: dropped before "
                      f"the train/held-out split", stacklevel=2)
    train, test = split_items(len(first), data_cfg.test_size, data_cfg.split_seed)
    return first[train], first[test]


def make_datasets(seqs: list[np.ndarray], run: RunConfig):
    """Split the items as ``run.data`` says, then cut each side into ``run.samples``."""
    train_idx, test_idx = split(seqs, run.data)
    return tuple(make_samples([seqs[i] for i in idx], run.samples, run.model.objective, idx)
                 for idx in (train_idx, test_idx))


def load(data_cfg: DataConfig) -> list[np.ndarray]:
    """A run's items as pixelbyte sequences: ``load_pixelbytes(source, limit, resize)``."""
    return sequences(load_pixelbytes(data_cfg.source, limit=data_cfg.limit, resize=data_cfg.resize))


def token_stats(seqs: list[np.ndarray]) -> dict:
    """Token counts by modality (``tokenizer.MODALITIES``) over a list of sequences."""
    centres = np.concatenate([tok.centre_ids(s) for s in seqs])
    counts = np.bincount(tok.modality(centres.astype(np.int64)), minlength=len(tok.MODALITIES))
    n = max(1, len(centres))
    return {"items": len(seqs), "tokens": len(centres),
            **{f"{name}_tokens": int(c) for name, c in zip(tok.MODALITIES, counts)},
            **{f"{name}_share": float(c / n) for name, c in zip(tok.MODALITIES, counts)},
            "mean_length": float(np.mean([len(s) for s in seqs]))}
