"""Generation: stateful == window re-run, batch == one by one, seeded sampling, constrained
decoding (100% consistent by construction, property-tested), segment transitions, prompt
builders, dimension consistency, and tiny models trained in the test that regenerate their data.

Stand-ins follow docs/CONTRACTS.md exactly: ``RandomModel`` (random but deterministic logits,
causal, step == forward) and ``OracleModel`` (replays known sequences and records what it is fed).
"""
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from pixelbyte import data, generate as G, tokenizer as tok
from pixelbyte.config import RunConfig, SampleConfig
from pixelbyte.models import ModelConfig, PixelByteModel

V = tok.VOCAB_SIZE
FAMILIES = ("lstm", "attention", "bysmamba")



# ---------------------------------------------------------------------------------------------
# Stand-in models (the contract: forward -> (logits, loss), is_causal, init_state, step, config.objective)


class RandomModel(torch.nn.Module):
    """Deterministic pseudo-random logits of (window, position): causal, step == forward."""
    is_causal = True

    def __init__(self, objective="next", seed=0, scale=4.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.config = types.SimpleNamespace(objective=objective)
        self.cells = torch.nn.Parameter(torch.randn(9, V, V, generator=gen) * scale / 3)
        self.positions = torch.nn.Parameter(torch.randn(512, V, generator=gen) * scale)

    def _logits(self, x, positions):                          # x : (B, L, 3, 3), positions : (L,)
        flat = x.reshape(*x.shape[:2], 9)                      # (B, L, 9)
        out = sum(self.cells[c][flat[..., c]] for c in range(9))  # (B, L, V)
        return out + self.positions[positions % 512]

    def forward(self, x, targets=None):
        return self._logits(x, torch.arange(x.shape[1])), None

    def init_state(self, batch_size, device=None):
        return 0

    def step(self, x_t, t):
        return self._logits(x_t[:, None], torch.tensor([t]))[:, 0], t + 1


class OracleModel(torch.nn.Module):
    """Predicts the known token of each row (one-hot logits) and records every input window."""
    is_causal = True

    def __init__(self, sequences, objective="next"):
        super().__init__()
        self.config = types.SimpleNamespace(objective=objective)
        self.sequences = [list(map(int, s)) for s in sequences]
        self.fed = []                                          # (B, 3, 3) per step
        self.shift = 1 if objective == "next" else 0

    def init_state(self, batch_size, device=None):
        return 0

    def step(self, x_t, t):
        self.fed.append(x_t.clone())
        logits = torch.zeros(len(x_t), V)
        for b, seq in enumerate(self.sequences):
            if t + self.shift < len(seq):
                logits[b, seq[t + self.shift]] = 10.0
        return logits, t + 1


def make_items():
    """Two small sprites with captions, as real pixelbyte sequences (shape, image, caption)."""
    out = []
    for i, (h, w, caption) in enumerate([(4, 5, "a red cat"), (3, 4, "blue fish")]):
        rng = np.random.default_rng(i)
        out.append(tok.encode_item(tok.PALETTE[rng.choice([0, 1, 20, 30], size=(h, w))], caption))
    return out


def tiny_model(family="lstm", objective="next", bidirectional=False, seed=0, **sizes):
    torch.manual_seed(seed)
    sizes = {"dim": 18, "hidden": 16, "depth": 2, "n_heads": 2, **sizes}
    return PixelByteModel(ModelConfig(model=family, objective=objective, bidirectional=bidirectional,
                                      **sizes))


TRAINABLE = {"dim": 27, "hidden": 32, "depth": 1}            # learns two items in ~60 steps


def train(model, seqs, seq_length, steps=60, lr=2e-2):
    """A few dozen full-batch AdamW steps on every window of ``seqs``; returns (first, last) loss."""
    ds = data.WindowDataset(seqs, seq_length=seq_length, stride=1, objective=model.config.objective)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)                                  # the model's own loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


PROMPTS = [G.shape_prompt(3, 4), G.shape_prompt(3, 4)[:3], G.shape_prompt(2, 2) + [60, 61, 1]]


# ---------------------------------------------------------------------------------------------
# Tiny trained models


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.fixture(scope="module")
def trained_causal(items):
    model = tiny_model("lstm", "causal", **TRAINABLE)
    first, last = train(model, items, seq_length=min(map(len, items)))
    return model, first, last


def test_trained_causal_model_regenerates_its_items(items, trained_causal):
    model, first_loss, last_loss = trained_causal
    assert last_loss < 0.2 * first_loss
    prompts = [tok.centre_ids(s)[:8].tolist() for s in items]
    gens = G.generate(model, prompts, [len(s) - 8 for s in items])
    for gen, seq in zip(gens, items):
        assert gen.new == tok.centre_ids(seq)[8:].tolist()
        # crosses image -> caption at \n, decodes like the original item
        assert [s.kind for s in gen.new_segments] == ["image", "text"]
        assert G.dimension_consistency(gen)["share"] == 1.0
        np.testing.assert_array_equal(gen.new_windows(), seq[8:])
        image, caption = tok.decode_item(seq)
        np.testing.assert_array_equal(gen.images[0], image)
        assert gen.texts == [caption]


def test_trained_next_model_with_its_training_window(items):
    """The `next` objective trained on 12-token windows, generated by re-running that window."""
    model = tiny_model("lstm", "next", **TRAINABLE)
    train(model, items, seq_length=12)
    prompts = [tok.centre_ids(s)[:12].tolist() for s in items]
    gens = G.generate(model, prompts, [len(s) - 12 for s in items], use_state=False, window=12)
    for gen, seq in zip(gens, items):
        assert gen.new == tok.centre_ids(seq)[12:].tolist()
        assert gen.new[-1] == tok.SEG_END_ID


def test_sprite_to_caption_with_trained_model(items, trained_causal):
    model = trained_causal[0]
    image, caption = tok.decode_item(items[1])
    prompt = G.sprite_to_caption_prompt(image)
    (gen,) = G.generate(model, prompt, 40, stop_after_segments=1)
    assert gen.stop_reason == "segments"
    assert gen.texts == [caption]


# ---------------------------------------------------------------------------------------------
# Stateful == window re-run; batch == one by one


@pytest.mark.parametrize("objective", ["next", "causal"])
@pytest.mark.parametrize("family", FAMILIES)
def test_step_equals_window_rerun(family, objective):
    model = tiny_model(family, objective)
    stateful = G.generate(model, PROMPTS, 24)
    rerun = G.generate(model, PROMPTS, 24, use_state=False)
    for a, b in zip(stateful, rerun):
        assert a.new == b.new
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


@pytest.mark.parametrize("objective", ["next", "causal"])
def test_stand_in_step_equals_window_rerun(objective):
    model = RandomModel(objective, seed=3)
    assert G.generate(model, PROMPTS, 30) == G.generate(model, PROMPTS, 30, use_state=False)


@pytest.mark.parametrize("objective", ["next", "causal"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=5)])
def test_batch_equals_one_by_one(objective, sampling):
    model = tiny_model("lstm", objective)
    batch = G.generate(model, PROMPTS, [10, 20, 15], seed=7, **sampling)
    for i, prompt in enumerate(PROMPTS):
        (alone,) = G.generate(model, prompt, [10, 20, 15][i], seed=7 + i, **sampling)
        assert alone.new == batch[i].new
        np.testing.assert_allclose(alone.logprobs, batch[i].logprobs, atol=1e-4)


def test_bidirectional_model_reruns_window_batch_equals_one_by_one():
    model = tiny_model("lstm", "next", bidirectional=True)
    with pytest.raises(ValueError, match="causal model"):
        G.Generator(model, use_state=True)
    batch = G.generate(model, PROMPTS, 12, window=8)
    for i, prompt in enumerate(PROMPTS):
        assert G.generate(model, prompt, 12, window=8)[0].new == batch[i].new
    # by hand: the window's last logits, window = the last 8 full windows of the stream
    (gen,) = G.generate(model, PROMPTS[0], 3, window=8)
    windows = torch.from_numpy(tok.windows_from_ids(gen.ids)).long()
    with torch.no_grad():
        for k in range(3):
            end = len(PROMPTS[0]) + k
            logits = model.logits(windows[None, max(0, end - 8):end])[0, -1]
            assert int(logits.argmax()) == gen.new[k]


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sampling_is_seeded_and_top_k_restricts():
    model = RandomModel("next", seed=1, scale=0.5)
    a = G.generate(model, PROMPTS, 20, temperature=1.0, seed=5)
    assert a == G.generate(model, PROMPTS, 20, temperature=1.0, seed=5)
    assert a != G.generate(model, PROMPTS, 20, temperature=1.0, seed=6)
    assert G.generate(model, PROMPTS, 20, temperature=1.0, top_k=1) == G.generate(model, PROMPTS, 20)
    # top-k: every sampled token is among the k best of its step's logits
    (gen,) = G.generate(model, PROMPTS[0], 20, temperature=2.0, top_k=3, seed=0)
    windows = torch.from_numpy(tok.windows_from_ids(gen.ids)).long()
    with torch.no_grad():
        logits = model(windows[None])[0][0]                    # (L, V)
    for k, token in enumerate(gen.new):
        top3 = logits[len(PROMPTS[0]) - 1 + k].topk(3).indices.tolist()
        assert token in top3


def test_log_likelihood_matches_teacher_forced_forward(items):
    model = tiny_model("attention", "causal")
    ids = tok.centre_ids(items[0]).tolist()
    (ll,) = G.log_likelihood(model, [ids[:10]], [ids[10:]])
    x = torch.from_numpy(items[0]).long()
    x[:, 1, 1] = 0
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(x[None])[0].double(), -1)  # (L, V)
    expected = sum(float(logp[t, ids[t]]) for t in range(10, len(ids)))
    assert ll == pytest.approx(expected, abs=1e-4)


def test_prompt_forms(items):
    model = RandomModel("next", seed=2)
    ids = tok.centre_ids(items[0])[:10]
    expected = G.generate(model, [ids.tolist()] * 2, 6)
    assert G.generate(model, np.stack([ids, ids]), 6) == expected              # (B, L) ids
    assert G.generate(model, torch.from_numpy(np.stack([ids, ids])), 6) == expected
    assert G.generate(model, np.stack([items[0][:10]] * 2), 6) == expected     # (B, L, 3, 3)
    assert G.generate(model, items[0][:10], 6) == expected[:1]                 # one (L, 3, 3)
    assert G.generate(model, ids.tolist(), 6) == expected[:1]                  # one id list


def test_argument_errors():
    model = RandomModel("next")
    with pytest.raises(ValueError, match="at least one prompt token"):
        G.generate(model, [[]], 5)
    with pytest.raises(ValueError, match=r"prompts is empty: pass \[\[\]\] for one empty prompt"):
        G.generate(model, [], 5)
    with pytest.raises(TypeError, match="a prompt is token ids, not text"):
        G.generate(model, "a cat", 5)
    with pytest.raises(ValueError, match=r"prompt token ids outside 0..112: \[113\]"):
        G.generate(model, [3, 113], 5)
    with pytest.raises(ValueError, match=r"a prompt is a list of token ids or an \(L, 3, 3\) sequence"):
        G.generate(model, [np.zeros((2, 2), dtype=np.int64)], 5)
    for bad in (-1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
            G.generate(model, [3], 5, temperature=bad)
    with pytest.raises(ValueError, match="top_k"):
        G.generate(model, [3], 5, top_k=0)
    for bad in (-1, [3, -2]):
        with pytest.raises(ValueError, match="max_new_tokens must be integers >= 0"):
            G.generate(model, [[3], [4]], bad)
    with pytest.raises(TypeError, match=r"max_new_tokens=2.5: expected an integer"):
        G.generate(model, [3], 2.5)
    with pytest.raises(ValueError, match="max_new_tokens has 3 entries for 2 prompts"):
        G.generate(model, [[3], [4]], [1, 2, 3])
    with pytest.raises(ValueError, match="stop_after_segments must be integers >= 1"):
        G.generate(model, [3], 5, stop_after_segments=0)
    with pytest.raises(ValueError, match="prompt_windows must be"):
        G.generate(model, [[3, 4]], 5, prompt_windows=[np.zeros((3, 3, 3), np.uint8)])
    with pytest.raises(ValueError, match="window must be a positive integer, got 0"):
        G.Generator(model, window=0)
    with pytest.raises(ValueError, match="objective"):
        G.Generator(types.SimpleNamespace(config=None, is_causal=True))
    assert G.generate(RandomModel("causal"), [[]], 3)[0].new  # causal models may start from nothing
    assert G.generate(model, [3], 0)[0].new == []             # nothing asked, nothing generated


def test_float_ids_tiny_temperatures_bool_top_k_numpy_scalars_and_seed_range():
    model = tiny_model("lstm", "next")
    with pytest.raises(ValueError, match=r"token ids must be integers, got float64 values \[5.7, 6.2\]"):
        G.generate(model, [np.array([5.7, 6.2])], 2)                    # not silently cut to [5, 6]
    assert G.generate(model, [[5, 6, 7]], 8, temperature=1e-45) == G.generate(model, [[5, 6, 7]], 8)  # ~greedy
    with pytest.raises(ValueError, match="top_k must be a positive integer or None, got True"):
        G.generate(model, [[5]], 2, temperature=1.0, top_k=True)
    assert G.generate(model, [[5]], 6, temperature=np.float32(0.5), top_k=np.int64(3), seed=np.int64(1)) == \
        G.generate(model, [[5]], 6, temperature=0.5, top_k=3, seed=1)
    with pytest.raises(ValueError, match=r"seed must be an integer in 0..2\*\*64 - 1 \(row i uses seed \+ i\)"):
        G.generate(model, [[5]], 2, seed=2 ** 64)
    assert G.generate(model, [[5]], 2, temperature=1.0, seed=2 ** 64 - 1)[0].new


def test_a_bidirectional_model_with_a_huge_budget_allocates_only_what_it_feeds():
    model = tiny_model("lstm", "next", bidirectional=True)
    out = G.generate(model, [G.shape_prompt(1, 2)], 10 ** 12, constrained=True, stop_after_segments=1)[0]
    assert len(out.new) == 3 and out.stop_reason == "segments"      # 2 colours + \n, no 72 TB buffer
    long = G.generate(model, [[5]], 1500, window=8)[0]               # past the buffer's first 1024 steps
    assert len(long.new) == 1500


# ---------------------------------------------------------------------------------------------
# What the model was trained to see: its run's context, whole streams for position models


def test_window_default_comes_from_the_models_run():
    model = tiny_model("lstm", "next")
    assert G.Generator(model, use_state=False).window == G.DEFAULT_WINDOW        # no run recorded
    model.run = RunConfig(samples=SampleConfig(seq_length=12), model=model.config)
    assert G.Generator(model, use_state=False).window == 12
    assert G.Generator(model, use_state=False, window=5).window == 5              # explicit wins
    # the re-run feeds the last 12 positions: as window=12, unlike the whole history
    prompt = tok.centre_ids(make_items()[0])[:30].tolist()
    by_run = G.generate(model, prompt, 6, use_state=False)
    assert by_run == G.generate(model, prompt, 6, use_state=False, window=12)
    assert by_run[0].logprobs != G.generate(model, prompt, 6, use_state=False, window=64)[0].logprobs
    causal = tiny_model("lstm", "causal")
    causal.run = RunConfig(samples=SampleConfig(unit="item"), model=causal.config)
    assert G.Generator(causal, use_state=False).window is None                    # whole items: everything


@pytest.mark.parametrize("family", FAMILIES)
def test_position_models_are_fed_their_whole_stream(items, family):
    model = tiny_model(family, "causal", positions=True)
    assert G.Generator(model, use_state=False).window is None            # even without a recorded run
    ids = np.concatenate([tok.centre_ids(s) for s in items]).tolist()
    history, prompt = ids[:len(items[0]) + 3], ids[len(items[0]) + 3:len(items[0]) + 9]
    with_history = G.generate(model, prompt, 12, histories=[history])
    as_prompt = G.generate(model, history + prompt, 12)
    assert with_history[0].new == as_prompt[0].new
    np.testing.assert_allclose(with_history[0].logprobs, as_prompt[0].logprobs, atol=1e-5)
    assert with_history[0].prompt == prompt and with_history[0].history == history
    rerun = G.generate(model, prompt, 12, histories=[history], use_state=False)
    assert rerun[0].new == with_history[0].new
    np.testing.assert_allclose(rerun[0].logprobs, with_history[0].logprobs, atol=1e-4)
    # the teacher-forced log-likelihood is the model's forward on the whole stream
    (ll,) = G.log_likelihood(model, [ids[:10]], [ids[10:40]])
    x = torch.from_numpy(np.concatenate(items)[:40]).long()
    x[:, 1, 1] = 0
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(x[None])[0].double(), -1)
    assert ll == pytest.approx(sum(float(logp[t, ids[t]]) for t in range(10, 40)), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Context building and segment transitions


@pytest.mark.parametrize("objective", ["next", "causal"])
def test_generated_tokens_get_training_windows_and_transitions_decode(items, objective):
    """An oracle replays a whole item from 3 tokens: every window it is fed is the dataset's
    window (masked for causal), and the stream splits text -> image -> text at each \\n."""
    seq = items[0]
    ids = tok.centre_ids(seq).tolist()
    model = OracleModel([ids], objective)
    (gen,) = G.generate(model, ids[:3], len(ids) - 3)
    assert gen.ids == ids and gen.stop_reason == "max_new_tokens"
    fed = torch.cat(model.fed).numpy()                         # (steps, 3, 3)
    expected = seq.astype(np.int64).copy()
    if objective == "causal":
        expected[:, 1, 1] = 0
    np.testing.assert_array_equal(fed, expected[:len(fed)])
    segs = gen.new_segments
    assert [s.kind for s in segs] == ["text", "image", "text"]
    assert tok.parse_shape(segs[0].text) == (4, 5) and segs[1].row_widths == [5] * 4
    assert segs[2].text == "a red cat" and all(not s.issues for s in segs)
    # stop after the image's \n: two segments end in the generated part
    model = OracleModel([ids], objective)
    (gen,) = G.generate(model, ids[:3], 100, stop_after_segments=2)
    assert gen.stop_reason == "segments" and gen.new[-1] == tok.SEG_END_ID
    assert [s.kind for s in gen.new_segments] == ["text", "image"]


def test_history_sets_row_above_but_is_not_fed(items):
    seq = items[0]
    ids = tok.centre_ids(seq).tolist()
    start = 12                                                 # inside the image's 2nd row
    model = OracleModel([ids[start:]], "next")
    (gen,) = G.generate(model, ids[start:start + 4], 10, histories=[ids[:start]])
    fed = torch.cat(model.fed).numpy()
    np.testing.assert_array_equal(fed, seq[start:start + len(fed)])
    np.testing.assert_array_equal(gen.new_windows(), seq[start + 4:start + 14])


# ---------------------------------------------------------------------------------------------
# Constrained decoding


def test_grammar_shape_state_machine():
    g = G.StreamGrammar(max_side=12)
    allowed = lambda: {tok.BYTE_TOKENS[i].decode("latin-1") for i in np.flatnonzero(g.allowed())}
    assert allowed() == {"("}
    g.push(G._CHAR_ID["("])
    assert allowed() == set("123456789")
    g.push(G._CHAR_ID["1"])
    assert allowed() == set("012,")                            # 10, 11, 12 <= max_side
    for c in "2, 3)":
        g.push(G._CHAR_ID[c])
    assert allowed() == {"\n"}
    g.push(tok.SEG_END_ID)
    assert (g.kind, g.shape) == ("image", (12, 3))
    assert (g.allowed() == G.COLOUR_TOKENS).all()
    with pytest.raises(ValueError):
        g.push(G._CHAR_ID["a"])


def test_grammar_replays_prompts():
    assert G.StreamGrammar().replay(G.shape_prompt(2, 3) + [60, 60, 60]).allowed()[tok.ROW_END_ID]
    caption_first = G.caption_to_sprite_prompt("a cat", caption_first=True)
    assert G.StreamGrammar().replay(caption_first).kind == "shape"
    assert G.StreamGrammar().replay(G.text_ids("hello")).kind == "text"
    item = tok.centre_ids(make_items()[0]).tolist()
    assert G.StreamGrammar().replay(item).kind == "shape"      # after a caption: a new item
    assert G.StreamGrammar().replay(item[:-3]).kind == "text"
    with pytest.raises(ValueError, match="declared"):
        G.StreamGrammar().replay([60, 61])                     # an image with no shape before it
    with pytest.raises(ValueError, match="cannot be completed"):
        G.StreamGrammar().replay(G.shape_prompt(2, 2) + [60, 60, 60])  # row too wide


PROMPT_KINDS = ("empty", "open_paren", "partial_shape", "shape", "partial_image",
                "caption_first", "after_item")


def _prompt(kind, objective, h, w):
    if kind == "empty":
        return [] if objective == "causal" else G.text_ids("(")
    return {"open_paren": G.text_ids("("),
            "partial_shape": G.text_ids(f"({h},"),
            "shape": G.shape_prompt(h, w),
            "partial_image": G.shape_prompt(h, w) + [60] * w + ([tok.ROW_END_ID] if h > 1 else []),
            "caption_first": G.caption_to_sprite_prompt("a small cat", caption_first=True),
            "after_item": tok.centre_ids(make_items()[1]).tolist()}[kind]


def _segments_to_finish_image(kind):
    return 1 if kind in ("shape", "partial_image") else 2


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), objective=st.sampled_from(["next", "causal"]),
       kinds=st.lists(st.sampled_from(PROMPT_KINDS), min_size=1, max_size=3),
       temperature=st.sampled_from([0.0, 1.0, 3.0]), top_k=st.sampled_from([None, 2]),
       max_side=st.integers(1, 5), hw=st.tuples(st.integers(1, 5), st.integers(1, 5)))
def test_constrained_decoding_is_always_consistent(seed, objective, kinds, temperature, top_k,
                                                   max_side, hw):
    """Random logits + constraints: every generated image has the declared shape, and the
    decoder reports no issue, whatever the prompt (a batch of several kinds at once)."""
    model = RandomModel(objective, seed=seed)
    h, w = min(hw[0], max_side), min(hw[1], max_side)
    prompts = [_prompt(k, objective, h, w) for k in kinds]
    gens = G.generate(model, prompts, 64, temperature=temperature, top_k=top_k, seed=seed,
                      constrained=True, max_side=max_side,
                      stop_after_segments=[_segments_to_finish_image(k) for k in kinds])
    for kind, gen in zip(kinds, gens):
        assert gen.stop_reason == "segments"
        result = G.dimension_consistency(gen)
        assert result["images"] == 1 and result["share"] == 1.0, (kind, gen.new)
        assert all(not s.issues for s in gen.new_segments), [s.issues for s in gen.new_segments]
        (image,) = gen.images
        assert max(image.shape[:2]) <= max_side
        if kind in ("shape", "partial_image"):
            assert image.shape[:2] == (h, w)


def test_unconstrained_random_model_is_often_inconsistent():
    """The measured metric sees what constraints prevent."""
    model = RandomModel("next", seed=0, scale=0.3)
    gens = G.generate(model, [G.shape_prompt(3, 3)] * 8, 60, temperature=1.0, stop_after_segments=1)
    result = G.dimension_consistency(gens)
    assert result["images"] + result["unterminated"] >= 1 and result["consistent"] < 8


# ---------------------------------------------------------------------------------------------
# Prompt builders and the consistency metric


def test_prompt_builders(items):
    assert G.shape_prompt(22, 25) == G.text_ids("(22, 25)") + [tok.SEG_END_ID]
    image, caption = tok.decode_item(items[0])
    prompt = G.sprite_to_caption_prompt(image)
    assert prompt == tok.centre_ids(items[0])[:len(prompt)].tolist()
    assert prompt[-1] == tok.SEG_END_ID and tok.decode(prompt)[1].kind == "image"
    assert G.caption_to_sprite_prompt("A Cat!", (4, 5)) == G.shape_prompt(4, 5)   # data order
    first = G.caption_to_sprite_prompt("A Cat!", (4, 5), caption_first=True)
    assert [s.text for s in tok.decode(first)] == ["a cat!", "(4, 5)"]
    assert G.caption_to_sprite_prompt("a cat") == []
    assert G.continue_prompt(items[0], 5) == tok.centre_ids(items[0])[:5].tolist()
    with pytest.raises(ValueError):
        G.shape_prompt(0, 3)


def test_caption_to_sprite_reranks_constrained_candidates(trained_causal):
    model = trained_causal[0]
    best, scores = G.caption_to_sprite(model, "a red cat", (4, 5), n_candidates=4, seed=1)
    assert len(scores) == 4 and all(np.isfinite(scores))
    assert G.dimension_consistency(best)["share"] == 1.0 and best.images[0].shape == (4, 5, 3)


def test_dimension_consistency_hand_made_cases(items):
    ids = tok.centre_ids(items[0]).tolist()                   # (4, 5) image: consistent
    assert G.dimension_consistency(ids) == {"images": 1, "consistent": 1, "undeclared": 0,
                                            "unterminated": 0, "share": 1.0, "share_of_attempts": 1.0}
    shape = G.shape_prompt(2, 3)
    ragged = shape + [60, 60, 60, 1, 60, 60, 2]
    too_many_rows = shape + [60, 60, 60, 1, 60, 60, 60, 1, 60, 60, 60, 2]
    undeclared = G.text_ids("a cat") + [2, 60, 60, 2]
    failed = shape + G.text_ids("oops") + [2]                  # a text where the image should be
    cut = shape + [60, 60]                                     # unterminated: left out of the share
    result = G.dimension_consistency([ids, ragged, too_many_rows, undeclared, failed, cut])
    assert result == {"images": 5, "consistent": 1, "undeclared": 1, "unterminated": 1, "share": 0.2,
                      "share_of_attempts": 1 / 6}
    assert G.dimension_consistency(tok.decode(ragged))["share"] == 0.0
    # only images holding generated tokens count for a Generation
    gen = G.Generation(prompt=ids, new=shape[:-1], stop_reason="max_new_tokens")
    assert G.dimension_consistency(gen)["images"] == 0
    assert np.isnan(G.dimension_consistency(gen)["share"])


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance


def _conditioned_pair():
    """A condition model (its memory given an effect) and the same weights without it."""
    torch.manual_seed(0)
    cond = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, depth=2, objective="causal",
                                      positions=True, condition=True, condition_dropout=0.1)).eval()
    torch.nn.init.normal_(cond.memory.into.weight, std=0.5)
    plain = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, depth=2, objective="causal",
                                       positions=True)).eval()
    plain.load_state_dict({k: v for k, v in cond.state_dict().items() if not k.startswith("memory.")})
    return cond, plain


def test_guidance_one_is_the_conditional_stream_and_zero_the_unconditional():
    cond, plain = _conditioned_pair()
    prompts = [G.caption_to_sprite_prompt("red heart", (3, 4), caption_first=True),
               G.caption_to_sprite_prompt("blue car", (3, 4), caption_first=True)]
    kw = dict(temperature=0.0, stop_after_segments=1)
    conditional = G.generate(cond, prompts, 30, **kw)
    unconditional = G.generate(plain, prompts, 30, **kw)
    assert [g.new for g in conditional] != [g.new for g in unconditional]   # the condition matters here
    for scale, expected in ((1.0, conditional), (0.0, unconditional)):
        guided = G.generate(cond, prompts, 30, guidance=scale, **kw)
        assert [g.new for g in guided] == [g.new for g in expected]
        for g, e in zip(guided, expected):
            np.testing.assert_allclose(g.logprobs, e.logprobs, atol=1e-4)
    # a scale past 1 moves away from the unconditional stream
    far = G.generate(cond, prompts, 30, guidance=3.0, **kw)
    assert [g.new for g in far] != [g.new for g in unconditional]


def test_guidance_is_refused_where_it_cannot_work():
    cond, plain = _conditioned_pair()
    with pytest.raises(ValueError, match="condition=True"):
        G.generate(plain, [[tok.SEG_END_ID]], 2, guidance=2.0)
    with pytest.raises(ValueError, match="use_state=True"):
        G.generate(cond, [[tok.SEG_END_ID]], 2, guidance=2.0, use_state=False)
    with pytest.raises(ValueError, match="finite number"):
        G.generate(cond, [[tok.SEG_END_ID]], 2, guidance=float("nan"))
