"""Tokenizer: golden vectors from the original encoder, incremental == batch, round trips, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from pixelbyte import tokenizer as tok

FIXTURE = Path(__file__).parent / "fixtures" / "pixelbytes_upstream_vectors.json"
GOLDEN = json.loads(FIXTURE.read_text())
CASES = GOLDEN["cases"]


def test_vocabulary_matches_original_order():
    vocab = GOLDEN["vocab"]
    assert tok.VOCAB_SIZE == len(vocab) == 113
    assert [b.decode("latin-1") for b in tok.BYTE_TOKENS] == vocab[:58]
    assert tok.PALETTE.tolist() == vocab[58:]
    assert (tok.PAD_ID, tok.ROW_END_ID, tok.SEG_END_ID) == (0, 1, 2)
    assert tok.BYTE_TOKENS[23] == b"\xc2" and tok.BYTE_TOKENS[24] == b"\xa0"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_vectors(case):
    image = np.array(case["image_rgb"], dtype=np.uint8)
    expected = np.array(case["pixelbyte"], dtype=np.uint8)
    got = tok.encode_item(image, case["caption"])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    # a PIL image encodes the same
    np.testing.assert_array_equal(tok.encode_item(Image.fromarray(image), case["caption"]), expected)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_incremental_builder_reproduces_batch(case):
    expected = np.array(case["pixelbyte"], dtype=np.uint8)
    np.testing.assert_array_equal(tok.windows_from_ids(tok.centre_ids(expected)), expected)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decode_round_trip(case):
    image = np.array(case["image_rgb"], dtype=np.uint8)
    decoded_image, caption = tok.decode_item(tok.encode_item(image, case["caption"]))
    assert caption == case["caption"]
    np.testing.assert_array_equal(decoded_image, tok.to_palette_rgb(image))
    segs = tok.decode(tok.centre_ids(tok.encode_item(image, case["caption"])))
    assert [s.kind for s in segs] == ["text", "image", "text"]
    assert tok.parse_shape(segs[0].text) == image.shape[:2]
    assert segs[1].row_widths == [image.shape[1]] * image.shape[0]
    assert all(not s.issues for s in segs)


def test_non_palette_colours_map_in_cielab_not_rgb():
    rgb = np.array([[[1, 31, 2]]], dtype=np.uint8)
    idx = tok.quantize(rgb)[0, 0]
    lab = tok.rgb_to_lab(rgb)[0, 0]
    dists = ((tok.rgb_to_lab(tok.PALETTE) - lab) ** 2).sum(-1)
    assert idx == dists.argmin()
    # skimage's published value for pure red, as an independent check of the Lab constants
    np.testing.assert_allclose(tok.rgb_to_lab(np.array([255, 0, 0], np.uint8)),
                               [53.2408, 80.0925, 67.2032], atol=1e-3)


@st.composite
def items(draw):
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    colours = draw(st.lists(st.integers(0, 54), min_size=h * w, max_size=h * w))
    image = tok.PALETTE[np.array(colours).reshape(h, w)]
    caption = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz .,;:!()'-0123456789", max_size=40))
    return image, caption


@settings(max_examples=60, deadline=None)
@given(items())
def test_property_incremental_equals_batch_and_round_trip(item):
    image, caption = item
    windows = tok.encode_item(image, caption)
    np.testing.assert_array_equal(tok.windows_from_ids(tok.centre_ids(windows)), windows)
    decoded_image, decoded_caption = tok.decode_item(windows)
    np.testing.assert_array_equal(decoded_image, image)
    assert decoded_caption == caption


def test_window_layout_is_causal():
    windows = tok.encode_item(tok.PALETTE[np.arange(12).reshape(3, 4)], "ab")
    assert (windows[:, 1, 2] == 0).all() and (windows[:, 2, :] == 0).all()
    # the first token of each segment sees nothing but itself
    starts = np.r_[0, np.where(tok.centre_ids(windows) == tok.SEG_END_ID)[0][:-1] + 1]
    for s in starts:
        w = windows[s].copy()
        w[1, 1] = 0
        assert not w.any()


def test_builder_context_masks_centre():
    builder = tok.ContextBuilder()
    builder.feed([tok.FIRST_COLOUR_ID, tok.FIRST_COLOUR_ID + 1, tok.ROW_END_ID])
    ctx = builder.context()
    assert ctx[1, 1] == 0
    assert ctx[0].tolist() == [0, tok.FIRST_COLOUR_ID, tok.FIRST_COLOUR_ID + 1]
    assert builder.window(7)[1, 1] == 7
    with pytest.raises(ValueError, match="outside the vocabulary"):
        builder.push(113)


# ---------------------------------------------------------------------------------------------
# text policy and bad input


def test_text_policy_nfkd_lowercase_ascii_and_counted_replacements():
    assert tok.normalize_text("Pokémon Évolue") == ("pokemon evolue", 0)
    assert tok.normalize_text("what?\tnew\nline & 🍎") == ("what  new line   ", 4)
    stats = tok.EncodeStats()
    windows = tok.encode_item(np.zeros((2, 2, 3), np.uint8), "A?B", stats=stats)
    assert stats.text_replaced == 1
    assert tok.decode_item(windows)[1] == "a b"


def test_text_to_ids_rejects_unknown_characters_clearly():
    with pytest.raises(ValueError, match=r"characters without a token: \['\?'\]"):
        tok.text_to_ids("why?")


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)          # fully transparent black
    rgba[0, 0] = [0, 0, 0, 255]                   # one opaque black pixel
    rgb = tok.load_rgb(rgba)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert (rgb.reshape(-1, 3)[1:] == 255).all()
    pil = Image.fromarray(rgba, "RGBA")
    np.testing.assert_array_equal(tok.load_rgb(pil), rgb)


def test_large_images_refused_or_downscaled_on_request():
    big = np.zeros((300, 150, 3), np.uint8)
    with pytest.raises(ValueError, match="larger than max_side=128; pass resize=True"):
        tok.encode_item(big, "x")
    small = tok.load_rgb(big, max_side=32, resize=True)
    assert small.shape == (32, 16, 3)
    assert tok.decode_item(tok.encode_item(big, "x", max_side=32, resize=True))[0].shape == (32, 16, 3)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.uint8), r"shape \(H, W, 3\) or \(H, W, 4\), got \(4, 4\)"),
    (np.zeros((2, 2, 5), np.uint8), r"got \(2, 2, 5\)"),
    (np.full((2, 2, 3), 255.0, np.float32), r"image \(array of dtype float32\) holds values 255..255; float pixel "
                                            r"values must lie in \[0, 1\]"),
    (np.full((1, 1, 3), np.nan), r"image \(array of dtype float64\) holds NaN or infinite values"),
    (np.full((2, 2, 3), 300), r"image \(array of dtype int64\) holds values 300..300; expected 8-bit values 0..255 "
                              r"\(uint16 arrays are read as 16-bit, float arrays as 0..1\)"),
    (np.full((2, 2, 3), -1), r"holds values -1..-1; expected 8-bit values 0..255"),
    (np.zeros((2, 2, 3), bool), r"image array of dtype bool: expected integer \(uint8 0..255, uint16 0..65535\) "
                                r"or float \(0..1\) pixel values"),
    (Image.fromarray(np.full((2, 2), 255.0, np.float32)), r"image \(PIL mode 'F'\) holds values 255..255; float "
                                                          r"pixel values must lie in \[0, 1\]"),
    (Image.fromarray(np.array([[70000, -5]], np.int32)), r"image \(PIL mode 'I'\) holds values -5..70000; expected "
                                                         r"16-bit values 0..65535"),
])
def test_bad_images_give_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        tok.load_rgb(bad)
    with pytest.raises(ValueError, match=message):
        tok.encode_item(bad, "caption")


# 16-bit values v -> round(v / 257); float values v in [0, 1] -> round(v * 255), halves up
SIXTEEN_BIT = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
SIXTEEN_BIT_8 = [0, 0, 1, 1, 128, 255]
FLOATS = np.array([[0.0, 0.2, 0.499, 0.5, 1 / 255, 1.0]], np.float32)
FLOATS_8 = [0, 51, 127, 128, 1, 255]


@pytest.mark.parametrize("image, expected", [
    (Image.fromarray(SIXTEEN_BIT), SIXTEEN_BIT_8),                                  # mode I;16
    (Image.fromarray(SIXTEEN_BIT).convert("I"), SIXTEEN_BIT_8),                     # mode I (old 16-bit PNGs)
    (Image.frombytes("I;16B", (6, 1), SIXTEEN_BIT.astype(">u2").tobytes()), SIXTEEN_BIT_8),
    (np.stack([SIXTEEN_BIT] * 3, -1), SIXTEEN_BIT_8),                               # uint16 (H, W, 3)
    (Image.fromarray(FLOATS), FLOATS_8),                                            # mode F
    (np.stack([FLOATS] * 3, -1), FLOATS_8),                                         # float32 (H, W, 3)
    (np.stack([FLOATS.astype(np.float64)] * 3, -1), FLOATS_8),
    (np.stack([np.array([[0, 51, 127, 128, 1, 255]])] * 3, -1), FLOATS_8),          # int64 0..255: as it is
], ids=["I;16", "I", "I;16B", "uint16", "F", "float32", "float64", "int64"])
def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped(image, expected):
    rgb = tok.load_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 6, 3)
    assert rgb[0, :, 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()
    assert tok.decode_item(tok.encode_item(image, "x"))[0].shape == (1, 6, 3)
    assert tok.to_8bit(np.array([65535, 257, 0], np.uint16), "16", "u16").tolist() == [255, 1, 0]
    assert tok.to_8bit(np.array([1.0, 0.5, 0.0]), "float", "f").tolist() == [255, 128, 0]


@pytest.mark.parametrize("image, size", [
    (Image.new("RGB", (0, 0)), "0x0"), (Image.new("RGB", (5, 0)), "0x5"), (Image.new("L", (0, 5)), "5x0"),
    (Image.new("I;16", (0, 3)), "3x0"), (Image.new("F", (3, 0)), "0x3"),
    (np.zeros((0, 5, 3), np.uint8), "0x5"), (np.zeros((5, 0, 3), np.uint8), "5x0"), (np.zeros((0, 5)), "0x5"),
    (np.zeros((5, 0)), "5x0"), (np.zeros((0, 0, 4), np.uint8), "0x0"),
], ids=lambda v: getattr(v, "mode", None) or str(getattr(v, "shape", v)))
def test_empty_images_are_refused_on_every_path(image, size):
    message = rf"image is empty \({size} pixels, HxW\): an item needs an image with H, W > 0"
    with pytest.raises(ValueError, match=message):
        tok.load_rgb(image)
    with pytest.raises(ValueError, match=message):
        tok.encode_item(image, "caption")
    with pytest.raises(ValueError, match=r"image is empty \(an array of shape \(0,\)\)"):
        tok.encode_item([], "caption")            # (load_pixelbytes: tests/test_data.py)


def test_a_caption_must_be_a_string():
    image = np.zeros((2, 2, 3), np.uint8)
    for bad in (None, 5, b"bytes"):
        with pytest.raises(TypeError, match=rf"caption={bad!r}: expected a string; use '' for an item "
                                            r"without a caption \(load_pixelbytes reads a None caption as ''"):
            tok.encode_item(image, bad)
    with pytest.raises(TypeError, match="text must be a string, got NoneType None"):
        tok.normalize_text(None)
    with pytest.raises(TypeError, match="text must be a string"):
        tok.encode_text(None)


def test_empty_caption_gives_shape_and_image_only():
    segs = tok.decode(tok.centre_ids(tok.encode_item(np.zeros((2, 2, 3), np.uint8), "")))
    assert [s.kind for s in segs] == ["text", "image"]



def test_item_sprite_is_the_declared_shape_and_the_image_as_palette_indices():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, len(tok.PALETTE), size=(3, 5))
    for caption in ("a red thing. objects, tool", ""):
        shape, image = tok.item_sprite(tok.encode_item(tok.PALETTE[indices], caption))
        assert shape == (3, 5) and (image == tok.quantize(tok.PALETTE[indices])).all()
    windows = tok.encode_item(tok.PALETTE[indices], "x")
    ids = tok.centre_ids(windows)
    wrong = tok.windows_from_ids(np.concatenate([tok.text_to_ids("(4, 5)\n"), ids[ids.tolist().index(tok.SEG_END_ID) + 1:]]))
    assert tok.item_sprite(wrong) is None                               # declares 4 rows, holds 3
    assert tok.item_sprite(windows[:4]) is None                         # no image segment

# ---------------------------------------------------------------------------------------------
# decoding malformed streams


def _ids(text):
    return list(tok.text_to_ids(text))


def test_decode_ragged_image_reports_widths():
    c = tok.FIRST_COLOUR_ID
    stream = _ids("(2, 3)") + [2] + [c, c, c, 1, c, c, 2] + _ids("cap") + [2]
    shape_seg, image_seg, text_seg = tok.decode(stream)
    assert image_seg.row_widths == [3, 2]
    assert image_seg.image.shape == (2, 3, 3)
    assert image_seg.image[1, 2].tolist() == [255, 255, 255]   # missing pixel shown white
    assert any("ragged" in i for i in image_seg.issues)
    assert text_seg.text == "cap" and not text_seg.issues


def test_decode_missing_final_newline_and_stray_tokens():
    c = tok.FIRST_COLOUR_ID
    segs = tok.decode(_ids("hi") + [c] + [2] + [c, c, 1, c, tok.SPACE_ID, c])
    assert segs[0].text == "hi" and any("colour token" in i for i in segs[0].issues)
    assert segs[1].kind == "image" and not segs[1].terminated
    assert segs[1].row_widths == [2, 2]
    assert any("not terminated" in i for i in segs[1].issues)
    assert any("byte token" in i for i in segs[1].issues)


def test_decode_rejects_out_of_vocabulary_ids():
    with pytest.raises(ValueError, match="outside 0..112"):
        tok.decode([3, 200])


# ---------------------------------------------------------------------------------------------
# Modalities


def test_modality_of_every_id():
    ids = np.arange(tok.VOCAB_SIZE)
    expected = np.where(ids >= 58, 1, np.where(ids <= 2, 2, 0))        # pixel | structure | text
    np.testing.assert_array_equal(tok.modality(ids), expected)
    assert tok.MODALITIES[tok.modality(np.int64(tok.ROW_END_ID))] == "structure"
    import torch
    np.testing.assert_array_equal(tok.modality(torch.arange(tok.VOCAB_SIZE)).numpy(), expected)  # tensors too


# ---------------------------------------------------------------------------------------------
# Segment orders: caption first is the same windows, segments moved


def _check_caption_first(image, caption):
    data = tok.encode_item(image, caption)
    first = tok.encode_item(image, caption, order="caption_first")
    np.testing.assert_array_equal(tok.reorder(data, "caption_first"), first)
    blocks = tok.split_segments(data)
    np.testing.assert_array_equal(np.concatenate(blocks), data)          # split_segments loses nothing
    assert all(tok.centre_ids(b)[-1] == tok.SEG_END_ID for b in blocks)
    data_segs, first_segs = tok.decode(tok.centre_ids(data)), tok.decode(tok.centre_ids(first))
    if caption:
        shape, picture, text = blocks
        np.testing.assert_array_equal(first, np.concatenate([text, shape, picture]))
        order = [2, 0, 1]                                                 # caption, shape, image
    else:                                                                 # shape + image: nothing to move
        np.testing.assert_array_equal(first, data)
        order = [0, 1]
    assert len(first_segs) == len(data_segs) == len(order)
    for got, k in zip(first_segs, order):                                 # the same segments, reordered
        want = data_segs[k]
        assert (got.kind, got.text, got.row_widths, got.issues) == (want.kind, want.text, want.row_widths, want.issues)
        if want.image is not None:
            np.testing.assert_array_equal(got.image, want.image)
    decoded_image, decoded_caption = tok.decode_item(first, order="caption_first")
    np.testing.assert_array_equal(decoded_image, tok.to_palette_rgb(image))
    assert decoded_caption == tok.normalize_text(caption)[0]
    assert tok.decode_item(data)[1] == tok.decode_item(data, order="data")[1] == decoded_caption


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_caption_first_is_lossless_on_golden_items(case):
    _check_caption_first(np.array(case["image_rgb"], dtype=np.uint8), case["caption"])


@settings(max_examples=40, deadline=None)
@given(items())
def test_property_caption_first_is_lossless(item):
    _check_caption_first(*item)


def test_reorder_and_order_errors():
    data = tok.encode_item(tok.PALETTE[np.arange(6).reshape(2, 3)], "ab")
    assert tok.reorder(data, "data") is data
    with pytest.raises(ValueError, match=r"order='reversed': allowed values are \['data', 'caption_first'\]"):
        tok.reorder(data, "reversed")
    with pytest.raises(ValueError, match="order='reversed'"):
        tok.encode_item(np.zeros((2, 2, 3), np.uint8), "x", order="reversed")
    with pytest.raises(ValueError, match="order='reversed'"):
        tok.decode_item(data, order="reversed")
    two_items = np.concatenate([data, data])
    with pytest.raises(ValueError, match="this one has 6"):
        tok.reorder(two_items, "caption_first")


# ---------------------------------------------------------------------------------------------
# Where a token sits: positions (batch, torch), StreamPositions (one token at a time), previous_ids


def reference_positions(token_ids) -> np.ndarray:
    """A slow, obviously-correct reference of ``tok.positions``, from the true ids: one Python
    pass over the stream, shapes parsed by ``tok.parse_shape`` (the regex). -> (L + 1, 7)."""
    rows, segment, row, column, declared, text = [], 0, 0, 0, (0, 0), []
    for t in list(token_ids) + [None]:
        h, w = declared
        rows.append([segment, row, column, h, w, h - row + 1 if h else 0, w - column + 1 if h else 0])
        if t == tok.SEG_END_ID:
            ok = 5 <= len(text) <= 12 and text[0] == _ids("(")[0] and max(text) < tok.FIRST_COLOUR_ID
            shape = tok.parse_shape(bytes(tok.BYTE_TOKENS[i][0] for i in text).decode("latin-1")) if ok else None
            declared, segment, row, column, text = shape or (0, 0), segment + 1, 0, 0, []
        elif t is not None:
            row, column = (row + 1, 0) if t == tok.ROW_END_ID else (row, column + 1)
            text.append(t)
    return np.clip(np.array(rows, dtype=np.int64), 0, tok.POSITION_LIMITS)


def batch_positions(token_ids) -> np.ndarray:
    """tok.positions of the stream's masked windows -> (L, 7)."""
    masked = tok.windows_from_ids(token_ids).astype(np.int64)
    masked[:, 1, 1] = 0
    return tok.positions(torch.from_numpy(masked)[None])[0].numpy()


def incremental_positions(token_ids) -> np.ndarray:
    where, out = tok.StreamPositions(1), []
    for t in token_ids:
        out.append(where.features()[0])
        where.push(torch.tensor([t]))
    return torch.stack(out + [where.features()[0]]).numpy()


def test_positions_hand_made():
    c = tok.FIRST_COLOUR_ID
    stream = _ids("(2, 3)") + [2] + [c, c, c, 1, c, c, c, 2] + _ids("ab") + [2]
    #            segment row column  h  w  rows left  columns left
    expected = ([[0, 0, k, 0, 0, 0, 0] for k in range(7)]                    # "(2, 3)\n"
                + [[1, 0, k, 2, 3, 3, 4 - k] for k in range(4)]              # first image row + \t
                + [[1, 1, k, 2, 3, 2, 4 - k] for k in range(4)]              # second row + \n
                + [[2, 0, k, 0, 0, 0, 0] for k in range(3)])                 # "ab\n": an image declares nothing
    np.testing.assert_array_equal(batch_positions(stream), expected)
    np.testing.assert_array_equal(reference_positions(stream)[:-1], expected)
    # a shape text declares the next segment, even when nothing came yet; only a shape does
    assert incremental_positions(_ids("(4, 15)") + [2])[-1, :5].tolist() == [1, 0, 0, 4, 15]
    assert incremental_positions(_ids("(4, 15) big") + [2])[-1, :5].tolist() == [1, 0, 0, 0, 0]
    assert incremental_positions(_ids("(4, 1x)") + [2])[-1, :5].tolist() == [1, 0, 0, 0, 0]
    assert incremental_positions(_ids("( 4 ,15 )  ") + [2])[-1, :5].tolist() == [1, 0, 0, 4, 15]
    # a text segment with a row end counts rows too
    assert batch_positions(_ids("a") + [1] + _ids("b"))[:, 1:3].tolist() == [[0, 0], [0, 1], [1, 0]]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_batch_incremental_and_reference_positions_agree_on_real_items(case):
    ids = tok.centre_ids(np.array(case["pixelbyte"], dtype=np.uint8)).astype(np.int64)
    stream = np.concatenate([ids, ids])                                   # two items in one stream
    expected = reference_positions(stream)
    np.testing.assert_array_equal(incremental_positions(stream), expected)
    np.testing.assert_array_equal(batch_positions(stream), expected[:-1])
    h, w = np.array(case["image_rgb"]).shape[:2]
    image = expected[len(str((h, w))) + 1:][:h * (w + 1)]
    assert (image[:, 3:5] == [h, w]).all() and image[:, 1].max() == h - 1 and image[:, 2].max() == w


@st.composite
def streams(draw, with_pad=True):
    """Token streams mixing random ids, separators and (partial, oversized) shape texts."""
    low = 0 if with_pad else 1
    chunks = draw(st.lists(st.one_of(
        st.lists(st.integers(low, tok.VOCAB_SIZE - 1), max_size=8),
        st.lists(st.sampled_from([tok.ROW_END_ID, tok.SEG_END_ID, tok.FIRST_COLOUR_ID]), max_size=4),
        st.builds(lambda h, w, cut: _ids(f"({h}, {w})")[:cut] + [tok.SEG_END_ID],
                  st.integers(0, 300), st.integers(0, 300), st.integers(1, 12))), max_size=12))
    return [t for chunk in chunks for t in chunk]


@settings(max_examples=150, deadline=None)
@given(streams(with_pad=False))
def test_property_batch_and_incremental_positions_equal_the_reference(ids):
    expected = reference_positions(ids)
    np.testing.assert_array_equal(incremental_positions(ids), expected)
    if ids:
        np.testing.assert_array_equal(batch_positions(ids), expected[:-1])


def test_positions_of_a_padded_batch_are_each_streams_own():
    a, b = _ids("(1, 2)") + [2, 60, 61, 2] + _ids("hi") + [2], _ids("(3, 1)") + [2, 60]
    masked = [tok.windows_from_ids(s).astype(np.int64) for s in (a, b)]
    for m in masked:
        m[:, 1, 1] = 0
    batch = np.zeros((2, len(a), 3, 3), dtype=np.int64)
    batch[0], batch[1, :len(b)] = masked[0], masked[1]
    out = tok.positions(torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(out[0], batch_positions(a))
    np.testing.assert_array_equal(out[1, :len(b)], batch_positions(b))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_previous_ids_of_masked_windows_are_the_ids_shifted(case):
    windows = np.array(case["pixelbyte"], dtype=np.uint8)
    stream = np.concatenate([windows, windows])                           # a second item after the first
    ids = tok.centre_ids(stream).astype(np.int64)
    masked = stream.copy()
    masked[:, 1, 1] = 0                                                   # what a causal model is fed
    np.testing.assert_array_equal(tok.previous_ids(torch.from_numpy(masked)), np.r_[tok.SEG_END_ID, ids[:-1]])
    batch = torch.from_numpy(np.stack([masked, masked[::-1].copy()]))     # any leading shape
    assert tok.previous_ids(batch).shape == (2, len(ids))
    np.testing.assert_array_equal(tok.previous_ids(batch)[0], np.r_[tok.SEG_END_ID, ids[:-1]])


@settings(max_examples=150, deadline=None)
@given(streams(with_pad=False))
def test_property_previous_ids_of_any_stream_without_padding(ids):
    masked = tok.windows_from_ids(ids)
    masked[:, 1, 1] = 0
    np.testing.assert_array_equal(tok.previous_ids(torch.from_numpy(masked)),
                                  np.r_[tok.SEG_END_ID, ids[:-1]][:len(ids)])
