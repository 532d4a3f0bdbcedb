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


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_parquet_made_by_pandas_with_png_bytes_or_structs_is_decoded(tmp_path):
    import pandas as pd
    items = make_items(4)
    expected = [tok.encode_item(img, cap) for img, cap in items]
    columns = {"bytes": [png_bytes(img) for img, _ in items],
               "struct": [{"bytes": png_bytes(img), "path": None} for img, _ in items]}
    for name, images in columns.items():
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"image": images, "caption": [cap for _, cap in items]}).to_parquet(path)
        for got, want in zip(data.sequences(data.load_pixelbytes(str(path))), expected):
            np.testing.assert_array_equal(got, want)
    pd.DataFrame({"image": ["a.png", "b.png"], "caption": ["a", "b"]}).to_parquet(tmp_path / "names.parquet")
    with pytest.raises(ValueError, match=r"row 0, column 'image': a str value \(Value\('large_string'\)\); expected"):
        data.load_pixelbytes(str(tmp_path / "names.parquet"))


def test_a_relative_source_is_stored_absolute_and_a_missing_path_is_named_before_the_hub(tmp_path, monkeypatch):
    import pandas as pd
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_load_hub", lambda *a: pytest.fail("a path-like source reached the hub"))
    (tmp_path / "pq").mkdir()
    img, cap = make_items(1)[0]
    pd.DataFrame({"image": [png_bytes(img)] * 2, "caption": [cap] * 2}).to_parquet("pq/x.parquet")
    assert DataConfig(source="pq/x.parquet").source == str(tmp_path / "pq" / "x.parquet")
    assert DataConfig(source="embedded").source == "embedded"
    for typo in ("pq/y.parquet", "./pq/y", "pq/a/b"):
        with pytest.raises(FileNotFoundError, match=f"no such file or folder {tmp_path / typo.lstrip('./')}"):
            data.load_pixelbytes(typo)


def test_an_empty_parquet_and_a_mixed_folder_name_the_file(tmp_path):
    import pandas as pd
    img, cap = make_items(1)[0]
    pd.DataFrame({"image": pd.Series([], dtype=object), "caption": pd.Series([], dtype=str)}).to_parquet(
        tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty.parquet'}: an empty parquet file \\(0 rows\\)"):
        data.load_pixelbytes(str(tmp_path / "empty.parquet"))
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{tmp_path / 'zero.parquet'}: not a readable parquet file"):
        data.load_pixelbytes(str(tmp_path / "zero.parquet"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pd.DataFrame({"image": [png_bytes(img)] * 2, "caption": [cap] * 2}).to_parquet(mixed / "a.parquet")
    pd.DataFrame({"image": [png_bytes(img)] * 2, "caption": [1, 2]}).to_parquet(mixed / "b.parquet")
    with pytest.raises(ValueError, match=f"{mixed / 'b.parquet'}: columns .*'caption': 'int64'.* differ from "
                                         f"{mixed / 'a.parquet'}'s"):
        data.load_pixelbytes(str(mixed))


def test_images_too_large_are_resized_with_the_data_option(tmp_path):
    import pandas as pd
    wide = tok.PALETTE[np.arange(300 * 20).reshape(20, 300) % 55]           # 20 x 300 pixels
    pd.DataFrame({"image": [png_bytes(wide)] * 2, "caption": ["a", "b"]}).to_parquet(tmp_path / "w.parquet")
    with pytest.raises(ValueError, match="pass resize=True"):
        data.load(DataConfig(source=str(tmp_path / "w.parquet")))
    seqs = data.load(DataConfig(source=str(tmp_path / "w.parquet"), resize=True))
    assert tok.parse_shape(tok.decode(tok.centre_ids(seqs[0]))[0].text) == (9, 128)


def test_a_mode_i_image_of_8_bit_values_is_not_read_black():
    from PIL import Image
    values = (np.arange(20).reshape(4, 5) * 12).astype(np.int32)          # 0..228 in 32-bit ints
    with pytest.warns(UserWarning, match="mode 'I' .* holding values 0..255: read as 8-bit"):
        rgb = tok.load_rgb(Image.fromarray(values, "I"))
    np.testing.assert_array_equal(rgb[..., 0], values)


def test_duplicate_items_are_dropped_before_the_split_with_a_count():
    seqs = [tok.encode_item(img, cap) for img, cap in make_items(10)]
    with pytest.warns(UserWarning, match="5 of 15 items repeat an earlier item: dropped before the train/held-out"):
        train, test = data.split(seqs + seqs[:5], DataConfig(test_size=0.3))
    assert sorted([*train, *test]) == list(range(10))
    np.testing.assert_array_equal(train, data.split(seqs, DataConfig(test_size=0.3))[0])   # as without them


def test_an_item_of_four_segments_names_its_row():
    seqs = [tok.encode_item(img, cap) for img, cap in make_items(8)]
    seqs[6] = np.concatenate([seqs[6], tok.encode_text("one more")])
    run = RunConfig(data=DataConfig(test_size=0.25), samples=SampleConfig(unit="item", orders="both"),
                    model=ModelConfig(objective="causal"))
    with pytest.raises(ValueError, match="row 6: an item has 3 segments .* this one has 4"):
        data.make_datasets(seqs, run)


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
    x, y, positions = data.ItemDataset.collate(batch)
    longest = max(len(b[1]) for b in batch)
    assert x.shape == (3, longest, 3, 3) and y.shape == (3, longest)
    for row, (xi, yi) in enumerate(batch):
        n = len(yi)
        assert torch.equal(x[row, :n], xi) and torch.equal(y[row, :n], yi)
        assert not x[row, n:].any() and not y[row, n:].any()              # padding: id 0, ignored by the loss
        assert torch.equal(positions[row, :n], tok.positions(xi[None])[0])   # each stream's own positions


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
    seqs = [tok.encode_item(img, cap) for img, cap in make_items(20)]
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


# ---------------------------------------------------------------------------------------------
# Bad rows: named with their row and column


def write_parquet(path, columns: dict):
    import datasets
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return str(path)


def test_none_captions_are_read_as_empty_with_one_warning_naming_the_rows(tmp_path):
    items = make_items(4)
    repo = tmp_path / "repo"
    write_hub_like_repo(repo, [(img, None if i in (1, 3) else cap) for i, (img, cap) in enumerate(items)],
                        with_pixelbyte=False)
    with pytest.warns(UserWarning) as record:
        ds = data.load_pixelbytes(str(repo))
    assert [str(w.message) for w in record] == [
        f"dataset {str(repo)!r}: column 'caption' is None in 2 of 4 rows (rows [1, 3]); those items are "
        f"encoded as an empty caption is: shape + image, no caption segment"]
    for i, (seq, (img, cap)) in enumerate(zip(data.sequences(ds), items)):
        np.testing.assert_array_equal(seq, tok.encode_item(img, "" if i in (1, 3) else cap))
    assert [s.kind for s in tok.decode(tok.centre_ids(data.sequences(ds)[1]))] == ["text", "image"]


def test_bad_images_and_captions_name_the_row_and_the_column(tmp_path):
    import datasets
    good = make_items(1)[0][0].tolist()                              # (h, w, 3) as nested lists
    cases = [
        ({"image": [good, []], "caption": ["a", "b"]},
         r"row 1, column 'image': image is empty \(an array of shape \(0,\)\)"),
        ({"image": [good, [[], [], []]], "caption": ["a", "b"]},
         r"row 1, column 'image': image is empty \(3x0 pixels, HxW\): an item needs an image with H, W > 0"),
        ({"image": [good, good, None], "caption": ["a", "b", "c"]},
         r"row 2, column 'image': None; every item needs an image"),
        ({"image": [good, good], "caption": [7, 8]},
         r"row 0, column 'caption': expected a string \(or None\), got int 7"),
        ({"image": [good, (np.array(good) * 300).tolist()], "caption": ["a", "b"]},
         r"row 1, column 'image': image \(array of dtype int64\) holds values 0..\d+; expected 8-bit values"),
    ]
    for k, (columns, message) in enumerate(cases):
        path = write_parquet(tmp_path / f"{k}.parquet", columns)
        with pytest.raises(ValueError, match=rf"dataset '{path}', " + message):
            data.load_pixelbytes(path)
    corrupt = tmp_path / "corrupt.parquet"
    datasets.Dataset.from_dict({"image": [{"bytes": b"not a png", "path": None}], "caption": ["a"]}) \
        .cast_column("image", datasets.Image()).to_parquet(str(corrupt))
    with pytest.raises(ValueError, match=rf"dataset '{corrupt}', row 0, column 'image': cannot identify image file"):
        data.load_pixelbytes(str(corrupt))


def flat_id_items():
    """Three items as flat centre ids (not windows), 55 + 25 + 10 ids: divisible by 9 in total,
    so the old reader cut them into 10 windows across items without complaint."""
    seqs = [tok.encode_item(np.zeros((h, w, 3), np.uint8), "") for h, w in ((6, 7), (3, 5), (1, 2))]
    ids = [tok.centre_ids(s).tolist() for s in seqs]
    assert [len(i) for i in ids] == [55, 25, 10] and sum(map(len, ids)) % 9 == 0
    return seqs, ids


def test_a_pixelbyte_column_of_flat_ids_is_refused_naming_row_and_shape(tmp_path):
    import datasets
    seqs, ids = flat_id_items()
    expected = (r"row 0: found shape \(55,\), expected \(L, 3, 3\) windows \(L >= 1 tokens, each its 3x3 "
                r"context\); token ids become windows with tokenizer.windows_from_ids\(ids\)")
    with pytest.raises(ValueError, match=r"column 'pixelbyte', " + expected):
        data.sequences(datasets.Dataset.from_dict({"pixelbyte": ids}))
    items = make_items(3)
    path = write_parquet(tmp_path / "flat.parquet", {"image": [img.tolist() for img, _ in items],
                                                      "caption": [c for _, c in items], "pixelbyte": ids})
    with pytest.raises(ValueError, match=rf"dataset '{path}', column 'pixelbyte', " + expected):
        data.load_pixelbytes(path)                                    # refused when loaded, not later
    # what the message says to do works
    fixed = datasets.Dataset.from_dict({"pixelbyte": [tok.windows_from_ids(i).tolist() for i in ids]})
    for got, seq in zip(data.sequences(fixed), seqs):
        np.testing.assert_array_equal(got, seq)


@pytest.mark.parametrize("case, message", [
    ("flattened windows", r"row 0: found shape \(\d+, 9\), expected \(L, 3, 3\) windows .*"
                          r"np.reshape\(item, \(-1, 3, 3\)\)"),
    ("a bad window in row 2", r"row 2: found shape \(\d+, 2, 3\), expected \(L, 3, 3\)"),
    ("a ragged window in row 1", r"row 1: found shape \(2, 3, 2..3\), expected \(L, 3, 3\)"),
    ("an empty item", r"row 1: found shape \(0,\), expected \(L, 3, 3\) windows \(L >= 1 tokens"),
    ("a None item", r"row 2: found None, expected \(L, 3, 3\) windows"),
    ("float ids", r"row 0: found shape \(\d+, 3, 3\) of double values \(token ids are integers\)"),
    ("ids outside the vocabulary", r"row 1: token id 200 outside the vocabulary 0..112"),
    ("a string column", r"column 'pixelbyte' holds string values; expected \(L, 3, 3\) windows per item"),
])
def test_a_pixelbyte_column_of_the_wrong_shape_names_the_row(case, message):
    import datasets
    s = [x.tolist() for x in _seqs()[:3]]
    column = {"flattened windows": [np.reshape(x, (-1, 9)).tolist() for x in s],
              "a bad window in row 2": [s[0], s[1], np.asarray(s[2])[:, :2].tolist()],
              "a ragged window in row 1": [s[0], [s[1][0], s[1][1][:2] + [[1, 2]]], s[2]],
              "an empty item": [s[0], [], s[2]],
              "a None item": [s[0], s[1], None],
              "float ids": [np.asarray(x, float).tolist() for x in s],
              "ids outside the vocabulary": [s[0], (np.asarray(s[1]) + 200).tolist()],
              "a string column": ["(3, 4)", "abc"]}[case]
    with pytest.raises(ValueError, match=message):
        data.sequences(datasets.Dataset.from_dict({"pixelbyte": column}))


def test_a_good_pixelbyte_column_reads_the_same_from_every_arrow_layout():
    import datasets
    seqs = _seqs()
    as_lists = datasets.Dataset.from_dict({"pixelbyte": [s.tolist() for s in seqs]})      # list<list<list<int64>>>
    fixed = data._with_pixelbyte_column(datasets.Dataset.from_dict({"caption": ["x"] * len(seqs)}), seqs)
    for ds in (as_lists, fixed):
        for got, seq in zip(data.sequences(ds), seqs):
            np.testing.assert_array_equal(got, seq)
        picked = data.sequences(ds.select([3, 0]))
        np.testing.assert_array_equal(picked[0], seqs[3])
        np.testing.assert_array_equal(picked[1], seqs[0])
