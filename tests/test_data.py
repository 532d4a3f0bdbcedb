"""Datasets: loading from every source, item split, windows and their exact alignment."""
import numpy as np
import pytest
import torch

from pixelbyte import data, tokenizer as tok


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
    cfg = data.WindowConfig(seq_length=16, stride=5, objective="next")
    ds = data.WindowDataset(seqs, cfg)
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


def test_causal_objective_alignment():
    seqs = _seqs()
    ds = data.WindowDataset(seqs, data.WindowConfig(seq_length=12, stride=7, objective="causal"))
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
    ds = data.WindowDataset(seqs, data.WindowConfig(seq_length=8, stride=1, objective="next"))
    assert ds.tokens.dtype == np.uint8 and ds.tokens.shape == (sum(map(len, seqs)), 3, 3)
    assert ds.tokens.nbytes == 9 * ds.n_tokens
    assert ds.starts.nbytes == 8 * len(ds)          # one offset per window at stride 1


def test_window_errors_are_clear():
    with pytest.raises(ValueError, match="longer than every item"):
        data.WindowDataset(_seqs(), data.WindowConfig(seq_length=10_000))
    with pytest.raises(ValueError, match="dataset is empty"):
        data.WindowDataset([], data.WindowConfig())
    with pytest.raises(ValueError, match="objective must be one of"):
        data.WindowConfig(objective="last")
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        data.WindowConfig(stride=0)


def test_make_datasets_splits_items_then_windows():
    seqs = _seqs() * 4
    train, test = data.make_datasets(seqs, data.WindowConfig(seq_length=8, stride=4), test_size=0.25, seed=1)
    assert train.n_items + test.n_items == len(seqs)
    stats = data.token_stats(seqs)
    assert stats["tokens"] == sum(map(len, seqs))
    assert 0 < stats["pixel_share"] < 1
