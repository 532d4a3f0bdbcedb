"""Evaluation: the paper's three scores on hand-made cases, the chunking, the full metric
pipeline (a repeat-last model scores exactly like the repeat-last baseline; true tokens score
perfectly; batching changes nothing) and token-level metrics checked by hand. Copy tasks are
tested in test_copying.py."""
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from pixelbyte import data, evaluate as E, generate as G, tokenizer as tok
from pixelbyte.models import ModelConfig, PixelByteModel

V = tok.VOCAB_SIZE



class RepeatLastModel(torch.nn.Module):
    """`next` objective: predicts the centre of the window it is fed (the last token)."""
    is_causal = True
    select = PixelByteModel.select                              # the contract: the objective's targets

    def __init__(self, confidence=10.0):
        super().__init__()
        self.config = types.SimpleNamespace(objective="next")
        self.confidence = confidence
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, targets=None, positions=None):        # (B, L, 3, 3) -> (B, L, V), no loss
        return torch.nn.functional.one_hot(x[..., 1, 1], V).float() * self.confidence, None

    def init_state(self, batch_size, device=None):
        return None

    def step(self, x_t, state):
        return self.forward(x_t[:, None])[0][:, 0], state


def make_items(n=4, seed=0):
    """Sprites (6..9 px) with captions: 100-170 tokens each, so several 80-token chunks."""
    rng = np.random.default_rng(seed)
    words = ["small", "red", "bird", "with", "a", "long", "tail", "and", "blue", "wings", "it", "flies"]
    items = []
    for _ in range(n):
        h, w = rng.integers(6, 10, size=2)
        colours = rng.choice(55, size=4, replace=False)
        image = tok.PALETTE[rng.choice(colours, size=(h, w))]
        caption = " ".join(rng.choice(words, size=rng.integers(6, 12))) + "."
        items.append(tok.encode_item(image, caption))
    return items


# ---------------------------------------------------------------------------------------------
# The three scores


def test_scores_identical_windows():
    windows = make_items(1)[0][:16]                            # (16, 3, 3) uint8
    assert E.scores(windows, windows.copy()) == {"hamming": 0.0, "cosine": 1.0, "bleu": 1.0}
    big = np.full(144, 112, dtype=np.uint8)                    # uint8 products would overflow
    assert E.cosine(big, big) == pytest.approx(1.0)


def test_scores_hand_computed():
    ref, gen = [1, 2, 3, 4, 5], [1, 2, 3, 4, 9]
    assert E.hamming(ref, gen) == pytest.approx(1 / 5)
    assert E.cosine(ref, gen) == pytest.approx(75 / math.sqrt(55 * 111))
    # equal lengths (brevity penalty 1); 1..4-gram precisions 4/5, 3/4, 2/3, 1/2
    assert E.bleu(ref, gen) == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # no 4-gram in common: nltk's unsmoothed BLEU is (almost) 0, without a warning escaping
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        assert E.bleu([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]) < 1e-10
    assert math.isnan(E.cosine([0, 0, 0], [1, 2, 3]))


def test_paper_chunks_wrap_around():
    seqs = [np.zeros((170, 3, 3), np.uint8), np.zeros((50, 3, 3), np.uint8)]
    chunks = E.paper_chunks(seqs)
    assert [(c.item, c.start) for c in chunks] == [(0, 0), (0, 80), (0, 160), (1, 0)]
    np.testing.assert_array_equal(chunks[2].indices, np.r_[160:170, 0:70])
    np.testing.assert_array_equal(chunks[3].indices, np.arange(80) % 50)
    assert len(E.paper_chunks(seqs, max_chunks=2)) == 2


# ---------------------------------------------------------------------------------------------
# The paper's metrics


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.fixture(scope="module")
def baseline_result(items):
    return E.paper_metrics(None, items, train_seqs=items[:2], seed=0)


def test_true_tokens_reproduce_the_reference_windows(items, baseline_result):
    """The context building (history + prompt, then the new tokens) gives the dataset's windows."""
    chunks = baseline_result["chunks"]
    true = chunks[chunks.method == "true_tokens"]
    assert len(true) == len(E.paper_chunks(items)) > 4
    assert (true.hamming == 0).all() and (true.bleu == 1).all() and np.allclose(true.cosine, 1)


def test_baselines_in_plausible_ranges(baseline_result):
    summary = baseline_result["summary"].set_index("method")
    assert list(summary.index) == ["repeat_last", "most_frequent_train", "most_frequent_prompt",
                                   "random", "true_tokens"]
    for m in E.METRICS:
        for suffix in ("", "_centre"):
            values = summary[f"{m}{suffix}_mean"]
            assert ((values >= 0) & (values <= 1)).all(), (m, suffix)
    rnd, rep = summary.loc["random"], summary.loc["repeat_last"]
    # random ids: most flattened cells still agree (zeros); almost no centre agrees
    assert 0.15 < rnd.hamming_mean < 0.6 and rnd.hamming_centre_mean > 0.85
    assert rnd.bleu_centre_mean < 0.05
    # repeating the last token beats random on the flattened windows (the README's point)
    assert rep.hamming_mean < rnd.hamming_mean and rep.bleu_mean > rnd.bleu_mean
    assert rep.hamming_centre_mean < rnd.hamming_centre_mean
    assert (summary.chunks == summary.chunks.iloc[0]).all()


def test_repeat_last_model_scores_like_the_baseline(items):
    """The model path (generation from prompt windows) and the baseline path agree exactly."""
    result = E.paper_metrics(RepeatLastModel(), items, max_chunks=6, batch_size=4)
    chunks = result["chunks"]
    cols = [c for c in chunks.columns if c.split("_")[0] in E.METRICS]
    model = chunks[chunks.method == "model"][cols].reset_index(drop=True)
    baseline = chunks[chunks.method == "repeat_last"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(model, baseline)
    assert len(model) == 6


def test_model_metrics_batched_equals_one_by_one_and_by_hand(items):
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, depth=1))
    a = E.paper_metrics(model, items, max_chunks=5, batch_size=5)["chunks"]
    b = E.paper_metrics(model, items, max_chunks=5, batch_size=1, use_state=False)["chunks"]
    pd.testing.assert_frame_equal(a, b)
    # chunk 1 by hand: 64 prompt windows from the data, 16 greedy tokens, windows from history
    chunk = E.paper_chunks(items)[1]
    seq, idx = items[chunk.item], chunk.indices
    ids = tok.centre_ids(seq)
    (gen,) = G.generate(model, ids[idx[:64]], 16, histories=[ids[:chunk.start]])
    row = a[(a.method == "model")].iloc[1]
    expected = E.scores(seq[idx[64:]], gen.new_windows())
    assert row.hamming == pytest.approx(expected["hamming"]) and row.bleu == pytest.approx(expected["bleu"])
    assert row.hamming_centre == pytest.approx(E.hamming(tok.centre_ids(seq[idx[64:]]), gen.new))


def test_bidirectional_model_and_summary_format(items):
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="attention", bidirectional=True, dim=16, hidden=16,
                                       depth=1, n_heads=2))
    result = E.paper_metrics(model, items, max_chunks=3)
    table = E.format_summary(result["summary"])
    assert table.loc[0, "method"] == "model" and "+-" in table.loc[0, "hamming"]
    assert "most_frequent_data" in set(table.method)


# ---------------------------------------------------------------------------------------------
# Token-level metrics


def test_token_metrics_by_hand(items):
    ds = data.WindowDataset(items, seq_length=20, stride=7, objective="next")
    table = E.token_metrics(RepeatLastModel(confidence=10.0), ds, batch_size=16).set_index("modality")
    last = np.array([int(ds[i][0][-1, 1, 1]) for i in range(len(ds))])
    target = np.array([int(ds[i][1]) for i in range(len(ds))])
    right = last == target
    log_z = math.log(math.exp(10.0) + (V - 1))                 # one logit at 10, the rest at 0
    bits = np.where(right, log_z - 10.0, log_z) / math.log(2)
    assert table.loc["all", "tokens"] == len(ds)
    assert table.loc["all", "accuracy"] == pytest.approx(right.mean())
    assert table.loc["all", "bits_per_token"] == pytest.approx(bits.mean())
    assert list(table.index) == ["all", "text", "pixel", "structure"]
    masks = {"pixel": target >= 58, "structure": target <= 2, "text": (target >= 3) & (target < 58)}
    for name, mask in masks.items():
        assert mask.any(), name
        assert table.loc[name, "tokens"] == mask.sum()
        assert table.loc[name, "accuracy"] == pytest.approx(right[mask].mean())
        assert table.loc[name, "bits_per_token"] == pytest.approx(bits[mask].mean())
    assert table.loc[["text", "pixel", "structure"], "tokens"].sum() == len(ds)


def test_token_metrics_causal_and_objective_check(items):
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="bysmamba", dim=16, hidden=8, depth=1, objective="causal"))
    ds = data.WindowDataset(items, seq_length=32, stride=32, objective="causal")
    table = E.token_metrics(model, ds, max_batches=1).set_index("modality")
    assert table.loc["all", "tokens"] == min(len(ds), 64) * 32
    assert 3 < table.loc["all", "bits_per_token"] < 12          # untrained: about log2(113) = 6.8
    with pytest.raises(ValueError, match="model objective 'next' does not match the dataset's 'causal'"):
        E.token_metrics(RepeatLastModel(), ds)


def test_token_metrics_on_whole_items_count_no_padding(items):
    """Padded batches of whole items: every real token counted once, padding never, and the
    numbers do not depend on how the items are batched."""
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=16, hidden=8, depth=1, objective="causal",
                                       positions=True))
    ds = data.ItemDataset(items)
    table = E.token_metrics(model, ds, batch_size=3).set_index("modality")
    ids = np.concatenate([tok.centre_ids(s) for s in items])
    assert table.loc["all", "tokens"] == len(ids)
    assert table.loc["structure", "tokens"] == (ids <= 2).sum() and table.loc["pixel", "tokens"] == (ids >= 58).sum()
    one_by_one = E.token_metrics(model, ds, batch_size=1).set_index("modality")
    pd.testing.assert_frame_equal(table, one_by_one, check_exact=False, rtol=1e-6)
