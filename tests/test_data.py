"""Datasets: loading from every source, item split, windows and their exact alignment, whole-item
samples (nothing dropped, little padding, length-bucketed epochs), and a run's datasets."""
import numpy as np
import pytest
import torch

from pixelbyte import data, tokenizer as tok
from pixelbyte.config import DataConfig, ModelConfig, RunConfig, SampleConfig


def make_items(n=6, seed=0):
    """Small sprites with captions, like the Pokemon rows (image + caption)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = rng.integers(3, 9, size=2)
        image = tok.PALETTE[rng.integers(0, 55, (h, w))]
        items.append((image, f"sprite number {i}. a {'tall' if h > w else 'wide'} thing"))
    return items


def write_hub_like_repo(root, items, with_pixelbyte=True):
    """A local dataset repo with the PixelBytes-Pokemon schema: data/train-*.parquet."""
    import datasets
    from PIL import Image

    columns = {"image": [Image.fromarray(img) for img, _ in items], "caption": [c for _, c in items]}
    if with_pixelbyte:
        columns["pixelbyte"] = [tok.encode_item(img, cap).tolist() for img, cap in items]
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_local_parquet_computes_missing_pixelbyte_column(tmp_path):
    items = make_items()
    write_hub_like_repo(tmp_path, items, with_pixelbyte=False)
    ds = data.load_pixelbytes(str(tmp_path))
    assert len(ds) == len(items) and "pixelbyte" in ds.column_names
    for seq, (img, cap) in zip(data.sequences(ds), items):
        np.testing.assert_array_equal(seq, tok.encode_item(img, cap))
    picked = data.sequences(ds.select([4, 1]))          # views read only their own rows
    np.testing.assert_array_equal(picked[0], tok.encode_item(*items[4]))
    np.testing.assert_array_equal(picked[1], tok.encode_item(*items[1]))


def test_hub_loading_path_on_a_local_repo_with_the_hub_schema(tmp_path, monkeypatch):
    """The real `datasets.load_dataset(name)` call, on a repo laid out like the Hub one."""
    items = make_items(4)
    repo = write_hub_like_repo(tmp_path / "PixelBytes-Pokemon", items)
    monkeypatch.setattr(data, "_hub_unreachable_reason", lambda timeout=3.0: None)
    ds = data._load_hub(str(repo), "train")
    assert set(ds.column_names) == {"image", "caption", "pixelbyte"}
    seqs = data.sequences(ds)
    assert [s.shape[1:] for s in seqs] == [(3, 3)] * len(items)
    np.testing.assert_array_equal(seqs[2], tok.encode_item(*items[2]))


def test_unreachable_hub_fails_fast_naming_the_embedded_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="load_pixelbytes\\('embedded'\\)"):
        data.load_pixelbytes(data.HUB_DATASET)


def test_bad_sources_and_empty_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'embedded'"):
        data.load_pixelbytes("no_such_dataset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        data.load_pixelbytes(str(tmp_path / "empty"))
    write_hub_like_repo(tmp_path / "r", make_items(2))
    with pytest.raises(ValueError, match="has no items"):
        data.load_pixelbytes(str(tmp_path / "r"), limit=0)


def test_missing_columns_are_named(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"text": ["a"]}).to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption', 'image'\]"):
        data.load_pixelbytes(str(tmp_path / "x.parquet"))


def test_split_is_by_item_deterministic_and_disjoint():
    train, test = data.split_items(100, test_size=0.1, seed=3)
    assert len(test) == 10 and len(train) == 90
    assert not set(train) & set(test) and set(train) | set(test) == set(range(100))
    again = data.split_items(100, test_size=0.1, seed=3)
    assert all((a == b).all() for a, b in zip((train, test), again))
    assert not (data.split_items(100, 0.1, seed=4)[1] == test).all()
    with pytest.raises(ValueError, match="test_size"):
        data.split_items(10, test_size=1.5)


def _seqs():
    return [tok.encode_item(img, cap) for img, cap in make_items(5)]


def test_next_objective_alignment():
    seqs = _seqs()
    ds = data.WindowDataset(seqs, seq_length=16, stride=5, objective="next")
    flat = np.concatenate(seqs)
    for i in range(len(ds)):
        x, y = ds[i]
        s = ds.starts[i]
        assert x.dtype == torch.int64 and x.shape == (16, 3, 3) and y.shape == ()
        np.testing.assert_array_equal(x.numpy(), flat[s:s + 16])          # full windows
        assert y.item() == flat[s + 16, 1, 1]                              # the token after
    # windows never cross items: every sample lies inside one item
    bounds = np.cumsum([len(s) for s in seqs])
    for s in ds.starts:
        item = np.searchsorted(bounds, s, side="right")
        assert s + 16 + 1 <= bounds[item]
    expected = sum(len(range(0, len(s) - 17 + 1, 5)) for s in seqs if len(s) >= 17)
    assert len(ds) == expected
    assert ds.describe() == {"unit": "window", "samples": len(ds), "items": 5, "tokens": len(flat),
                             "seq_length": 16, "stride": 5, "objective": "next"}


def test_causal_objective_alignment():
    seqs = _seqs()
    ds = data.WindowDataset(seqs, seq_length=12, stride=7, objective="causal")
    flat = np.concatenate(seqs)
    x, y = ds[3]
    s = ds.starts[3]
    np.testing.assert_array_equal(y.numpy(), flat[s:s + 12, 1, 1])      # own centre tokens
    assert (x[:, 1, 1] == 0).all()                                       # centre masked
    masked = flat[s:s + 12].copy()
    masked[:, 1, 1] = 0
    np.testing.assert_array_equal(x.numpy(), masked)                     # rest of window intact
    assert (ds.tokens[s:s + 12, 1, 1] == y.numpy()).all()                # storage not mutated


def test_storage_is_shared_uint8_not_per_window_copies():
    seqs = _seqs()
    ds = data.WindowDataset(seqs, seq_length=8, stride=1, objective="next")
    assert ds.tokens.dtype == np.uint8 and ds.tokens.shape == (sum(map(len, seqs)), 3, 3)
    assert ds.tokens.nbytes == 9 * ds.n_tokens
    assert ds.starts.nbytes == 8 * len(ds)          # one offset per window at stride 1


def test_window_errors_are_clear():
    with pytest.raises(ValueError, match="longer than every item.*unit='item'"):
        data.WindowDataset(_seqs(), seq_length=10_000)
    with pytest.raises(ValueError, match="dataset is empty"):
        data.WindowDataset([])
    with pytest.raises(ValueError, match="objective must be one of"):
        data.WindowDataset(_seqs(), objective="last")
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        data.WindowDataset(_seqs(), stride=0)
    with pytest.raises(ValueError, match="seq_length must be a positive integer, got 0"):
        data.WindowDataset(_seqs(), seq_length=0, objective="causal")
    with pytest.raises(ValueError, match="SampleConfig.stride=0"):      # the run's config says it first
        SampleConfig(stride=0)


# ---------------------------------------------------------------------------------------------
# Whole items


def varied_items(n=40, seed=0):
    """Sprites from 1x1 to 9x9 with short or long captions: lengths from ~10 to ~140 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = rng.integers(1, 10, size=2)
        caption = " ".join(["word"] * int(rng.integers(0, 8)))
        out.append(tok.encode_item(tok.PALETTE[rng.integers(0, 55, (h, w))], caption))
    return out


def test_item_samples_keep_every_item_whole_however_short():
    seqs = varied_items(12) + [tok.encode_item(tok.PALETTE[:1][None], "")]   # "(1, 1)\n" + 1 pixel + \n
    assert min(map(len, seqs)) == 9
    ds = data.ItemDataset(seqs)
    assert len(ds) == ds.n_items == len(seqs)                            # none dropped for being short
    assert sorted(ds.source_index.tolist()) == list(range(len(seqs)))
    assert list(ds.lengths) == sorted(map(len, seqs))                    # stored sorted by length
    for i in range(len(ds)):
        x, y = ds[i]
        seq = seqs[ds.source_index[i]]
        np.testing.assert_array_equal(y.numpy(), tok.centre_ids(seq))     # every token a target
        assert (x[:, 1, 1] == 0).all()
        masked = seq.astype(np.int64)
        masked[:, 1, 1] = 0
        np.testing.assert_array_equal(x.numpy(), masked)
    assert ds.n_tokens == sum(map(len, seqs)) and ds.objective == "causal"
    with pytest.raises(ValueError, match="longer than every item"):   # windows would drop them all
        data.WindowDataset(seqs[-1:], seq_length=16, objective="causal")


def test_item_orders_data_caption_first_and_both():
    seqs = varied_items(6)
    first = data.ItemDataset(seqs, orders="caption_first")
    for i in range(len(first)):
        np.testing.assert_array_equal(first.items[i], tok.reorder(seqs[first.source_index[i]], "caption_first"))
    both = data.ItemDataset(seqs, orders="both")
    assert len(both) == 2 * len(seqs) and both.n_items == len(seqs)
    for k in range(len(seqs)):
        mine = [both.items[i] for i in np.flatnonzero(both.source_index == k)]
        got = sorted(tok.centre_ids(m).tobytes() for m in mine)
        want = sorted(tok.centre_ids(tok.reorder(seqs[k], o)).tobytes() for o in ("data", "caption_first"))
        assert got == want
    with pytest.raises(ValueError, match="orders must be one of"):
        data.ItemDataset(seqs, orders="shuffled")
    with pytest.raises(ValueError, match="bucket must be a positive integer, got 0"):
        data.ItemDataset(seqs, bucket=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        data.ItemDataset([])


def test_collate_pads_at_the_end_with_zeros():
    ds = data.ItemDataset(varied_items(5))
    batch = [ds[4], ds[0], ds[2]]
    x, y = data.ItemDataset.collate(batch)
    longest = max(len(b[1]) for b in batch)
    assert x.shape == (3, longest, 3, 3) and y.shape == (3, longest)
    for row, (xi, yi) in enumerate(batch):
        n = len(yi)
        assert torch.equal(x[row, :n], xi) and torch.equal(y[row, :n], yi)
        assert not x[row, n:].any() and not y[row, n:].any()              # padding: id 0, ignored by the loss


def test_epoch_order_batches_similar_lengths_and_is_seeded():
    ds = data.ItemDataset(varied_items(40), bucket=16)
    batch = 4
    gen = torch.Generator().manual_seed(0)
    order = ds.epoch_order(gen, batch)
    assert sorted(order.tolist()) == list(range(len(ds)))                 # a permutation
    # 40 samples < one bucket of 16 batches: each batch is a run of neighbours in length order
    sorted_lengths = np.sort(ds.lengths)
    blocks = {tuple(sorted_lengths[k:k + batch]) for k in range(0, len(ds), batch)}
    for b in range(len(ds) // batch):
        assert tuple(np.sort(ds.lengths[order[b * batch:(b + 1) * batch].numpy()])) in blocks
    # deterministic per generator state, different from the next epoch and another seed
    again = ds.epoch_order(torch.Generator().manual_seed(0), batch)
    assert torch.equal(order, again)
    assert not torch.equal(ds.epoch_order(gen, batch), order)             # the generator moved on
    assert not torch.equal(ds.epoch_order(torch.Generator().manual_seed(1), batch), order)
    # batches still come in shuffled order (not shortest first)
    firsts = ds.lengths[order[::batch].numpy()]
    assert not (np.diff(firsts) >= 0).all()


def test_padding_share_is_reported_and_bucketing_lowers_it():
    seqs = varied_items(64)
    batch = 8
    bucketed, unsorted = data.ItemDataset(seqs, bucket=16), data.ItemDataset(seqs, bucket=1)
    share = bucketed.padding_share(batch)
    # by hand from the epoch's batches
    order = bucketed.epoch_order(torch.Generator().manual_seed(0), batch).numpy()
    lengths = bucketed.lengths[order].reshape(-1, batch)
    assert share == pytest.approx(1 - lengths.sum() / (lengths.max(1) * batch).sum())
    assert share < 0.5 * unsorted.padding_share(batch)
    assert 0 <= share and 0.2 < unsorted.padding_share(batch) < 1
    info = bucketed.describe(batch)
    assert info["padding_share"] == share and info["unit"] == "item" and info["samples"] == 64
    assert (info["length_min"], info["length_max"]) == (min(map(len, seqs)), max(map(len, seqs)))
    assert "padding_share" not in bucketed.describe()


# ---------------------------------------------------------------------------------------------
# A run's datasets


def test_make_samples_follows_the_sample_config():
    seqs = varied_items(8)
    windows = data.make_samples(seqs, SampleConfig(seq_length=8, stride=3), "causal")
    assert isinstance(windows, data.WindowDataset)
    assert (windows.seq_length, windows.stride, windows.objective) == (8, 3, "causal")
    items = data.make_samples(seqs, SampleConfig(unit="item", orders="both", bucket=2), "causal")
    assert isinstance(items, data.ItemDataset) and (items.orders, items.bucket, len(items)) == ("both", 2, 16)
    with pytest.raises(ValueError, match="whole-item samples.*need objective='causal'"):
        data.make_samples(seqs, SampleConfig(unit="item"), "next")


def test_make_datasets_splits_items_then_samples():
    seqs = _seqs() * 4
    run = RunConfig(data=DataConfig(test_size=0.25, split_seed=1), samples=SampleConfig(seq_length=8, stride=4))
    train, test = data.make_datasets(seqs, run)
    assert train.n_items + test.n_items == len(seqs)
    train_idx, test_idx = data.split(seqs, run.data)
    expected = data.split_items(len(seqs), 0.25, 1)
    np.testing.assert_array_equal(train_idx, expected[0])
    np.testing.assert_array_equal(test_idx, expected[1])
    np.testing.assert_array_equal(test.tokens, np.concatenate([seqs[i] for i in test_idx]))
    stats = data.token_stats(seqs)
    assert stats["tokens"] == sum(map(len, seqs))
    assert 0 < stats["pixel_share"] < 1
    assert stats["text_tokens"] + stats["pixel_tokens"] + stats["structure_tokens"] == stats["tokens"]
    # whole items: the held-out samples are exactly the held-out items
    items_run = RunConfig(data=run.data, samples=SampleConfig(unit="item"), model=ModelConfig(objective="causal"))
    train, test = data.make_datasets(seqs, items_run)
    assert len(test) == len(test_idx)
    for i, item in enumerate(test.items):
        np.testing.assert_array_equal(item, seqs[test_idx[test.source_index[i]]])


def test_load_reads_a_runs_items():
    cfg = DataConfig(source="embedded", limit=3)
    seqs = data.load(cfg)
    assert len(seqs) == 3
    for seq, expected in zip(seqs, data.sequences(data.load_pixelbytes("embedded", limit=3))):
        np.testing.assert_array_equal(seq, expected)
