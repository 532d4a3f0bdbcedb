"""Tests of pixelbyte.models: every configuration builds, PxByEmbed shapes (seed-era crash),
step-by-step decoding equal to the full forward, no look-ahead in causal models (position
embeddings included), the model's own loss (select, padding never counted), training reduces the
loss, save/load round trip with its run, runtime overrides and its error messages, and the paper's
configurations under 100k parameters. (Config validation: tests/test_config.py.)

Tiny widths and short sequences throughout (dim 18, hidden 8, L <= 40) so that the file runs in
well under a minute on 2 CPU cores; seeds fixed.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelbyte import tokenizer as tok
from pixelbyte.config import RunConfig, SampleConfig, TrainConfig
from pixelbyte.data import ItemDataset
from pixelbyte.generate import generate
from pixelbyte.models import (
    METADATA_KEY,
    MODELS,
    PAPER_BEST,
    PAPER_CONFIGS,
    PARAMETER_BUDGET,
    CheckpointError,
    ModelConfig,
    PixelByteModel,
    PositionEmbed,
    PxByEmbed,
    count_parameters,
    loss_sums,
    metrics_from_sums,
    paper_config,
    parameter_table,
)

pytestmark = [pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
              pytest.mark.filterwarnings("ignore:.*run.json not found")]   # checked on its own below

V = 113
EMBEDDINGS = [("pxby", True), ("pxby", False), ("center", False)]   # center has no conv


def tiny(model, **kw) -> ModelConfig:
    fields = dict(model=model, dim=18, hidden=8, depth=2, backend="torch")
    return ModelConfig(**{**fields, **kw})


def windows(B, L, seed=0, centre_zero=False):
    x = torch.randint(0, V, (B, L, 3, 3), generator=torch.Generator().manual_seed(seed))
    x[:, :, 1, 2] = 0
    x[:, :, 2, :] = 0
    if centre_zero:
        x[:, :, 1, 1] = 0
    return x


def build(cfg, seed=0):
    torch.manual_seed(seed)
    m = PixelByteModel(cfg).eval()
    if m.memory is not None:          # its projection starts at zero: give the condition an effect
        torch.nn.init.normal_(m.memory.into.weight, std=0.5)
    return m


def real_items(n=3, seed=0) -> list[np.ndarray]:
    """Small sprites with captions, of different lengths (34..80 tokens)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 2 + i, 3 + i
        out.append(tok.encode_item(tok.PALETTE[rng.integers(0, 55, (h, w))], "a cat" + " ok" * i))
    return out


def masked(seq: np.ndarray) -> torch.Tensor:
    """An item's causal input: its windows with the centre zeroed, (L, 3, 3) long."""
    x = torch.from_numpy(seq).long()
    x[:, 1, 1] = 0
    return x


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("embedding,conv", EMBEDDINGS)
def test_every_configuration_gives_logits(model, bidirectional, embedding, conv):
    m = build(tiny(model, bidirectional=bidirectional, embedding=embedding, conv=conv))
    logits, loss = m(windows(2, 7))
    assert logits.shape == (2, 7, V) and loss is None
    assert torch.isfinite(logits).all()
    assert torch.equal(m.logits(windows(2, 7)), logits)
    assert m.is_causal is (not bidirectional)


@pytest.mark.parametrize("model", MODELS)
def test_position_models_give_logits(model):
    m = build(tiny(model, objective="causal", positions=True))
    x = masked(real_items(1)[0])[None]
    assert m.logits(x).shape == (1, len(x[0]), V) and m.where is not None
    assert build(tiny(model, objective="causal")).where is None


def test_pxby_embed_regression_batch2_len256_dim64():
    # the seed-era version added (B*L, dim) to a (B*L, dim, 1, 1) conv output and crashed with
    # "shape '[2, 256, 64]' is invalid for input of size 1073741824"
    torch.manual_seed(0)
    for conv in (True, False):
        embed = PxByEmbed(V, 64, conv=conv)
        x = windows(2, 256)
        out = embed(x)
        assert out.shape == (2, 256, 64)
        # each window is embedded on its own: changing window 100 changes output 100 only
        x2 = x.clone()
        x2[1, 100, 0, 0] = (x2[1, 100, 0, 0] + 1) % V
        changed = (embed(x2) - out).abs().amax(-1) > 0
        assert changed.nonzero().tolist() == [[1, 100]]


def test_pxby_embed_sizes_and_conv_mix():
    embed = PxByEmbed(V, 81)
    assert embed.cell_dim == 9 and embed.alpha.shape == (3, 3)
    assert PxByEmbed(V, 162).cell_dim == 18 and PxByEmbed(V, 36).cell_dim == 9
    assert PxByEmbed(V, 81, conv=False).conv is None
    assert PxByEmbed(V, 5)(windows(3, 1)).shape == (3, 1, 5)


def test_position_features_read_from_windows_are_the_stream_positions():
    """What the model embeds (read from its masked input windows) is where each token sits,
    computed from the true token ids: segment, row, column, declared (h, w), rows / columns left."""
    seqs = real_items(2)
    stream = np.concatenate(seqs)                                    # two items in one stream
    x = masked(stream)[None]                                         # (1, L, 3, 3)
    feats = tok.positions(x)[0].numpy()                              # (L, 7)
    # by hand for the first item's image: (2, 3) declared, segment 1
    h, w = 2, 3
    start = len(str((h, w))) + 1                                     # after "(2, 3)\n"
    image = feats[start:start + h * (w + 1)]
    assert (image[:, 0] == 1).all() and (image[:, 3:5] == [h, w]).all()
    np.testing.assert_array_equal(image[:, 1], np.repeat(np.arange(h), w + 1))        # row
    np.testing.assert_array_equal(image[:, 2], np.tile(np.arange(w + 1), h))          # column
    np.testing.assert_array_equal(image[:, 5], h - image[:, 1] + 1)                   # rows left
    np.testing.assert_array_equal(image[:, 6], w - image[:, 2] + 1)                   # columns left
    assert (feats[:start, 3:] == 0).all()                            # nothing declared in the shape text


# ---------------------------------------------------------------------------------------------
# Decoding and causality


CAUSAL_CASES = {
    "lstm": dict(model="lstm"),
    "lstm_proj": dict(model="lstm", proj_size=4, depth=3),
    "attention_4_heads_odd_head_dim": dict(model="attention", n_heads=4),   # head_dim 5, inner 20
    "attention_auto_heads": dict(model="attention", n_heads="auto"),        # 3 heads of 6
    "bysmamba": dict(model="bysmamba"),
    "bysmamba_center_next": dict(model="bysmamba", embedding="center", conv=False, objective="next"),
    "lstm_positions": dict(model="lstm", positions=True),
    "attention_positions": dict(model="attention", n_heads=2, positions=True),
    "bysmamba_positions": dict(model="bysmamba", positions=True),
    "lstm_condition": dict(model="lstm", positions=True, condition=True),
    "attention_condition": dict(model="attention", n_heads=2, condition=True),
    "bysmamba_condition": dict(model="bysmamba", positions=True, condition=True),
}


def step_through(m, x):
    with torch.no_grad():
        state = m.init_state(x.shape[0])
        stepped = []
        for t in range(x.shape[1]):
            logits, state = m.step(x[:, t], state)
            stepped.append(logits)
    return torch.stack(stepped, 1)


@pytest.mark.parametrize("case", CAUSAL_CASES)
def test_step_matches_forward(case):
    kw = {"objective": "causal", **CAUSAL_CASES[case]}
    m = build(tiny(**kw))
    x = windows(2, 40, centre_zero=kw["objective"] == "causal")   # 40 > first KV-cache capacity
    if kw.get("positions") or kw.get("condition"):   # real streams: items from their start, as in training
        x = torch.stack([masked(np.concatenate(real_items(3, seed))[:40]) for seed in (0, 1)])
    with torch.no_grad():
        full = m.logits(x)
    torch.testing.assert_close(step_through(m, x), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_causal_models_do_not_look_ahead(model, bidirectional):
    cfg = tiny(model, bidirectional=bidirectional)
    m = build(cfg)
    x = windows(1, 20)
    t = 12
    x2 = x.clone()
    x2[0, t] = torch.randint(1, V, (3, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (m.logits(x2) - m.logits(x)).abs().amax(-1)[0]     # (L,)
    assert diff[t] > 0                                        # the changed position reacts
    if bidirectional:
        assert diff[:t].max() > 1e-6, "a bidirectional model must see the future"
    else:
        assert diff[:t].max() == 0, f"logits before {t} changed: the model looks ahead"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("t", [5, 12, 30])                   # shape text, image, next item's image
def test_the_condition_does_not_look_ahead(model, t):
    """The segment memory reads the first layer's outputs up to where each segment starts:
    changing the window at t may change logits >= t, never logits < t; and it does reach the
    later segments (a changed caption changes how the next item's image is scored)."""
    m = build(tiny(model, objective="causal", condition=True, n_heads=2))
    x = masked(np.concatenate(real_items(2)))[None]         # (1, L, 3, 3)
    x2 = x.clone()
    x2[0, t] = torch.randint(1, V, (3, 3), generator=torch.Generator().manual_seed(t))
    x2[0, t, 1, 1] = 0
    with torch.no_grad():
        diff = (m.logits(x2) - m.logits(x)).abs().amax(-1)[0]
        plain = (m.logits(x2, unconditional=torch.ones(1, dtype=torch.bool))
                 - m.logits(x, unconditional=torch.ones(1, dtype=torch.bool))).abs().amax(-1)[0]
    assert diff[t] > 0
    assert diff[:t].max() == 0, f"logits before {t} changed: the condition looks ahead"
    later = tok.segment_starts(x)[0] > t                     # segments that start after t
    assert (diff[later] - plain[later]).abs().max() > 1e-4   # the condition carries t to them


def test_unconditional_rows_equal_a_model_without_the_condition():
    cond = build(tiny("lstm", objective="causal", positions=True, condition=True))
    plain = build(tiny("lstm", objective="causal", positions=True))
    plain.load_state_dict({k: v for k, v in cond.state_dict().items() if not k.startswith("memory.")})
    x = masked(np.concatenate(real_items(2)))[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        both = cond.logits(x, unconditional=torch.tensor([False, True]))
        torch.testing.assert_close(both[1], plain.logits(x[:1])[0])
        assert (both[0] - both[1]).abs().max() > 1e-3
        # a fresh model's condition starts at zero: training starts from the unconditional model
        fresh = PixelByteModel(tiny("lstm", objective="causal", condition=True))
        torch.testing.assert_close(fresh.logits(x[:1]), fresh.logits(x[:1], unconditional=torch.ones(1, dtype=torch.bool)))


def test_condition_dropout_drops_whole_rows_in_training_only():
    m = build(tiny("lstm", objective="causal", condition=True, condition_dropout=0.5))
    x = masked(np.concatenate(real_items(2)))[None].expand(64, -1, -1, -1)
    with torch.no_grad():
        cond = m.logits(x[:1])[0]
        uncond = m.logits(x[:1], unconditional=torch.ones(1, dtype=torch.bool))[0]
        torch.testing.assert_close(m.logits(x[:4]), cond.expand(4, -1, -1))   # eval: never dropped
        m.train()
        torch.manual_seed(0)
        rows = m.logits(x)
    dropped = [torch.allclose(r, uncond, atol=1e-6) for r in rows]
    kept = [torch.allclose(r, cond, atol=1e-6) for r in rows]
    assert all(d != k for d, k in zip(dropped, kept)) and 16 < sum(dropped) < 48


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("t", [5, 12, 30])                   # shape text, image, next item's image
def test_position_embeddings_do_not_look_ahead(model, t):
    """With positions the window at t is also read for where tokens >= t sit (its left cell is
    token t - 1): changing the window at t may change logits >= t, never logits < t."""
    m = build(tiny(model, objective="causal", positions=True, n_heads=2))
    x = masked(np.concatenate(real_items(2)))[None]         # (1, L, 3, 3)
    assert len(x[0]) > t + 10
    x2 = x.clone()
    x2[0, t] = torch.randint(1, V, (3, 3), generator=torch.Generator().manual_seed(t))
    x2[0, t, 1, 1] = 0
    x2[0, t, 1, 0] = tok.ROW_END_ID                       # token t - 1 reads as a row end: positions move
    with torch.no_grad():
        diff = (m.logits(x2) - m.logits(x)).abs().amax(-1)[0]
        pos_diff = (tok.positions(x2) - tok.positions(x)).abs().amax(-1)[0]
    assert diff[t] > 0
    assert diff[:t].max() == 0, f"logits before {t} changed: the position features look ahead"
    assert pos_diff[:t].max() == 0 and pos_diff[t:].max() > 0    # the positions do move after t


def test_attention_knows_token_order():
    # without positions one causal attention layer is blind to the order of the prefix (the
    # paper blamed its attention results on that); rotary positions make the order count
    m = build(tiny("attention", depth=1))
    x = windows(1, 8)
    swapped = x.clone()
    swapped[0, [2, 5]] = x[0, [5, 2]]
    with torch.no_grad():
        assert (m.logits(x)[0, -1] - m.logits(swapped)[0, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("model", MODELS)
def test_bidirectional_models_refuse_to_step(model):
    m = build(tiny(model, bidirectional=True))
    with pytest.raises(RuntimeError, match="bidirectional.*re-run forward"):
        m.init_state(1)
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.step(windows(1, 1)[:, 0], None)


def test_forward_rejects_bad_windows():
    m = build(tiny("lstm"))
    with pytest.raises(ValueError, match=r"\(B, L, 3, 3\)"):
        m(torch.zeros(2, 7, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(2, 7, 3, 3))
    with pytest.raises(ValueError, match="0..112"):        # ids are checked where they enter
        generate(m, [[V]], 1)
    with pytest.raises(ValueError, match=r"step expects windows of shape \(B, 3, 3\)"):
        m.step(torch.zeros(1, 4, 3, 3, dtype=torch.long), m.init_state(1))


# ---------------------------------------------------------------------------------------------
# The model's loss: select, padding


def test_select_shapes_and_errors():
    logits = torch.randn(2, 5, V)
    nxt = build(tiny("lstm"))
    pred, target = nxt.select(logits, torch.tensor([3, 4]))
    assert torch.equal(pred, logits[:, -1]) and target.tolist() == [3, 4]      # the last position
    with pytest.raises(ValueError, match=r"objective 'next' wants targets \(B,\), got \(2, 5\)"):
        nxt.select(logits, torch.ones(2, 5, dtype=torch.long))
    causal = build(tiny("lstm", objective="causal"))
    y = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 0, 0, 0]])                      # row 1 padded
    pred, target = causal.select(logits, y)
    assert pred.shape == (7, V) and target.tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert torch.equal(pred, torch.cat([logits[0], logits[1, :2]]))
    with pytest.raises(ValueError, match=r"objective 'causal' wants targets \(B, L\) = \(2, 5\), got \(2, 4\)"):
        causal.select(logits, y[:, :4])
    with pytest.raises(ValueError, match=r"wants targets \(B, L\)"):
        causal.select(logits, torch.tensor([3, 4]))
    # forward's loss is the mean cross-entropy of what select keeps
    x = windows(2, 5, centre_zero=True)
    out, loss = causal(x, y)
    assert torch.equal(loss, F.cross_entropy(*causal.select(out, y)))
    out, loss = nxt(windows(2, 5), torch.tensor([3, 4]))
    assert torch.equal(loss, F.cross_entropy(out[:, -1], torch.tensor([3, 4])))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("positions", [False, True])
def test_padding_never_enters_the_loss(model, positions):
    m = build(tiny(model, objective="causal", positions=positions, n_heads=2))
    ds = ItemDataset(real_items(3))
    samples = [ds[i] for i in range(len(ds))]
    x, y, _ = ItemDataset.collate(samples)                                     # (3, L_max, 3, 3), (3, L_max)
    pad = y == tok.PAD_ID
    assert pad.any() and (pad.sum(1) > 0).sum() == 2                        # two rows are padded
    with torch.no_grad():
        logits, loss = m(x, y)
        # the same items one by one, unpadded: the same token-weighted loss
        alone = [m(xi[None], yi[None])[1] * len(yi) for xi, yi in samples]
        torch.testing.assert_close(loss, sum(alone) / (~pad).sum(), atol=1e-6, rtol=1e-6)
        # whatever the logits or the inputs at padded positions, nothing changes
        noisy = logits.clone()
        noisy[pad] = 100 * torch.randn(int(pad.sum()), V, generator=torch.Generator().manual_seed(0))
        assert torch.equal(F.cross_entropy(*m.select(noisy, y)), loss)
        assert torch.equal(loss_sums(*m.select(noisy, y)), loss_sums(*m.select(logits, y)))
        x2 = x.clone()
        x2[pad] = windows(1, int(pad.sum()), seed=3, centre_zero=True)[0]
        assert torch.equal(m(x2, y)[1], loss)
        assert loss_sums(*m.select(logits, y))[:, 0].sum() == (~pad).sum()  # padding is never a target


def test_loss_sums_by_modality_by_hand():
    #        text  pixel  \t   text  pixel
    target = torch.tensor([5, 60, 1, 7, 61])
    pred = torch.full((5, V), -50.0)
    pred[torch.arange(5), torch.tensor([5, 61, 1, 8, 61])] = 50.0          # right, wrong, right, wrong, right
    sums = loss_sums(pred, target)
    assert sums[:, 0].tolist() == [2, 2, 1]                                # tokens: text, pixel, structure
    assert sums[:, 2].tolist() == [1, 1, 1]                                # correct
    metrics = metrics_from_sums(sums)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert (metrics["acc_text"], metrics["acc_pixel"], metrics["acc_structure"]) == (0.5, 0.5, 1.0)
    assert metrics["bpt_pixel"] == pytest.approx(100 / 2 / np.log(2), rel=1e-6)   # one miss of 100 nats
    assert np.isnan(metrics_from_sums(loss_sums(pred[:1], target[:1]))["acc_pixel"])   # no pixel token


# ---------------------------------------------------------------------------------------------
# Training


def train_losses(cfg, steps, lr=3e-3, seed=0):
    """AdamW steps on the model's own loss (random targets: (B,) for next, (B, L) for causal)."""
    torch.manual_seed(seed)
    m = PixelByteModel(cfg).train()
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    causal = cfg.objective == "causal"
    x = windows(4, 24, seed=seed, centre_zero=causal)
    y = torch.randint(1, V, (4, 24) if causal else (4,), generator=torch.Generator().manual_seed(seed + 1))
    losses = []
    for _ in range(steps):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_few_adamw_steps_reduce_the_loss(model, bidirectional):
    cfg = tiny(model, bidirectional=bidirectional, objective="next" if bidirectional else "causal")
    losses = train_losses(cfg, steps=15)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses


def test_deep_bysmamba_trains_stably():
    cfg = tiny("bysmamba", depth=8, bidirectional=True)
    losses = train_losses(cfg, steps=12, lr=1e-2)
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.3, losses
    assert max(losses) < losses[0] + 0.1, f"loss spiked: {losses}"


# ---------------------------------------------------------------------------------------------
# Configuration (validation of every field: tests/test_config.py)


def test_n_heads_auto_and_non_dividing_dims():
    assert ModelConfig(model="attention", dim=81, n_heads="auto").heads == 3
    assert ModelConfig(model="attention", dim=36, n_heads="auto").heads == 4
    assert ModelConfig(model="attention", dim=162, n_heads="auto").heads == 3
    cfg = ModelConfig(model="attention", dim=81)             # 4 heads, the paper's count
    assert (cfg.heads, cfg.head_dim) == (4, 21)              # attention inner width 84
    assert PixelByteModel(cfg).logits(windows(1, 5)).shape == (1, 5, V)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(model="attention", n_heads="auto", dim=36, objective="causal", positions=True)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['d_state', 'layers'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "layers": 2, "d_state": 16})
    assert PixelByteModel(cfg.to_dict()).config == cfg


def test_from_run_builds_the_runs_model_from_its_seed():
    run = RunConfig(model=tiny("lstm"), train=TrainConfig(seed=3))
    a, b = PixelByteModel.from_run(run), PixelByteModel.from_run(run)
    assert a.run is run and a.config == run.model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = PixelByteModel.from_run(replace(run, train=replace(run.train, seed=4)))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), other.parameters()))


# ---------------------------------------------------------------------------------------------
# Save / load


@pytest.mark.parametrize("model", MODELS)
def test_save_and_load_round_trip(tmp_path, model):
    cfg = tiny(model, bidirectional=model == "bysmamba", n_heads="auto", dropout=0.1)
    m = build(cfg)
    m.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    loaded = PixelByteModel.from_pretrained(tmp_path)
    assert loaded.config == cfg and not loaded.training
    x = windows(2, 9)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), m.logits(x))
    loaded.save_pretrained(tmp_path / "again")               # the reloaded model saves its config
    assert PixelByteModel.from_pretrained(str(tmp_path / "again")).config == cfg


def test_save_writes_the_run_and_load_gives_it_back(tmp_path):
    from safetensors import safe_open

    run = RunConfig(samples=SampleConfig(unit="item", orders="both"),
                    model=tiny("attention", objective="causal", positions=True, n_heads=2),
                    train=TrainConfig(max_steps=3, betas=(0.8, 0.95), out_dir=str(tmp_path / "run")))
    m = PixelByteModel.from_run(run)
    m.save_pretrained(tmp_path / "model")
    assert {"config.json", "model.safetensors", "run.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
    assert RunConfig.load(tmp_path / "model" / "run.json") == run
    with safe_open(str(tmp_path / "model" / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == run.model.to_dict()   # the header holds the config
    loaded = PixelByteModel.from_pretrained(tmp_path / "model")
    assert loaded.run == run and loaded.config == run.model
    x = masked(real_items(1)[0])[None]
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), m.eval().logits(x))


def test_loading_without_run_json_warns(tmp_path):
    build(tiny("lstm")).save_pretrained(tmp_path)                      # model.run is None: no run.json
    assert not (tmp_path / "run.json").exists()
    with pytest.warns(UserWarning, match=r"run.json not found: this checkpoint does not record its run.*held-out"):
        loaded = PixelByteModel.from_pretrained(tmp_path)
    assert loaded.run is None


def test_edited_or_corrupt_run_json_is_refused(tmp_path):
    m = PixelByteModel.from_run(RunConfig(model=tiny("lstm")))
    m.save_pretrained(tmp_path)
    run_file = tmp_path / "run.json"
    saved = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**saved, "model": {**saved["model"], "hidden": 16}}))
    with pytest.raises(CheckpointError, match=r"config.json and .*run.json disagree: hidden: .* 8, .* 16"):
        PixelByteModel.from_pretrained(tmp_path)
    run_file.write_text("{broken")
    with pytest.raises(CheckpointError, match=r"run.json: not a valid run config"):
        PixelByteModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("field, value", [("n_heads", 3), ("objective", "causal")])
def test_an_edited_config_field_the_weights_cannot_show_is_refused(tmp_path, field, value):
    m = build(tiny("attention", n_heads=2))                            # dim 18: 2 x 9 or 3 x 6, same shapes
    m.save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, field: value}))
    with pytest.raises(CheckpointError) as err:
        PixelByteModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert f"{config} was edited after" in message and "model.safetensors was saved" in message
    assert f"{field}: {config} says {value!r}, the weights were saved with {saved[field]!r}" in message
    config.write_text(json.dumps({**saved, "backend": "auto"}))        # a runtime field may be edited
    assert PixelByteModel.from_pretrained(tmp_path).config.backend == "auto"


def test_runtime_fields_can_be_overridden_at_load(tmp_path):
    cfg = tiny("bysmamba", backend="cuda", objective="causal")
    m = build(cfg)
    m.run = RunConfig(model=cfg)
    m.save_pretrained(tmp_path)
    loaded = PixelByteModel.from_pretrained(tmp_path, backend="torch", scan_impl="reference")
    assert loaded.config == replace(cfg, backend="torch", scan_impl="reference")
    assert loaded.run.model == loaded.config                         # the run follows the override
    reference = PixelByteModel(replace(cfg, backend="torch")).eval()
    reference.load_state_dict(m.state_dict())
    x = windows(1, 9, centre_zero=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(x), reference.logits(x), atol=1e-5, rtol=1e-5)
    as_saved = PixelByteModel.from_pretrained(tmp_path)
    assert as_saved.config.backend == "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cuda'"):
            as_saved.logits(x)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['dim'\]; runtime fields that may be "
                                        r"overridden: \['backend', 'scan_impl'\]"):
        PixelByteModel.from_pretrained(tmp_path, dim=20)
    with pytest.raises(CheckpointError, match="ModelConfig.backend='metal'"):
        PixelByteModel.from_pretrained(tmp_path, backend="metal")


def test_loading_weights_of_another_config_names_file_and_tensor(tmp_path):
    build(tiny("lstm", hidden=8)).save_pretrained(tmp_path / "a")
    build(tiny("lstm", hidden=16)).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        PixelByteModel.from_pretrained(tmp_path / "a")
    message = str(info.value)
    assert str(tmp_path / "a" / "model.safetensors") in message
    # the weights' header names the config they were saved with
    assert "hidden: " in message and "the weights were saved with 16" in message


def test_loading_weights_without_header_config_checks_the_shapes(tmp_path):
    """Weights saved without the config in their header (older files) are still checked tensor by tensor."""
    from safetensors.torch import save_model

    build(tiny("lstm", hidden=8)).save_pretrained(tmp_path)
    save_model(build(tiny("lstm", hidden=16)), str(tmp_path / "model.safetensors"))   # no metadata
    with pytest.raises(CheckpointError) as info:
        PixelByteModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "model.safetensors") in message
    assert "backbone.first.weight_ih_l0: file (64, 18) vs config (32, 18)" in message
    assert "another configuration" in message


def test_loading_a_truncated_file_names_it(tmp_path):
    build(tiny("bysmamba")).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file.*truncated"):
        PixelByteModel.from_pretrained(tmp_path)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        PixelByteModel.from_pretrained(tmp_path)


def test_loading_bad_or_missing_config_names_it(tmp_path):
    build(tiny("lstm")).save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "bidirectional": True, "objective": "causal"}))
    with pytest.raises(CheckpointError, match="config.json: not a valid PixelByteModel config.*bidirectional"):
        PixelByteModel.from_pretrained(tmp_path)
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        PixelByteModel.from_pretrained(tmp_path)
    config.unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        PixelByteModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="is a file; from_pretrained wants the directory"):
        PixelByteModel.from_pretrained(tmp_path / "model.safetensors")


def test_a_config_json_list_and_an_edited_run_split_are_refused_and_weights_get_the_umask_mode(tmp_path):
    import os
    import stat

    run = RunConfig(model=tiny("lstm"))
    PixelByteModel.from_run(run).save_pretrained(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "run.json"):           # not 0600 for the weights
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    run_file, config = tmp_path / "run.json", tmp_path / "config.json"
    saved = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**saved, "data": {**saved["data"], "test_size": 0.3}}))
    with pytest.raises(CheckpointError, match=r"run.json was edited after .*model.safetensors was saved: "
                                              r"data.test_size: the weights were saved with 0.1, run.json says 0.3"):
        PixelByteModel.from_pretrained(tmp_path)
    run_file.write_text(json.dumps(saved))
    config.write_text(json.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="expected a JSON object of ModelConfig fields, got a JSON list"):
        PixelByteModel.from_pretrained(tmp_path)


def test_loading_best_model_while_a_training_swaps_it_waits_for_the_swap(tmp_path):
    import threading

    build(tiny("lstm")).save_pretrained(tmp_path / ".best_model.tmp")
    (tmp_path / ".best_model.old").mkdir()                  # between the swap's two renames: no best_model/
    swap = threading.Timer(0.3, lambda: (tmp_path / ".best_model.tmp").rename(tmp_path / "best_model"))
    swap.start()
    try:
        assert PixelByteModel.from_pretrained(tmp_path / "best_model").config == tiny("lstm")
    finally:
        swap.join()


# ---------------------------------------------------------------------------------------------
# The paper's configurations


def test_paper_configs_cover_the_grid_and_stay_under_100k():
    assert len(PAPER_CONFIGS) == 15 and set(PAPER_BEST) <= set(PAPER_CONFIGS)
    table = parameter_table(PAPER_CONFIGS)
    over = table[table["total_params"] >= PARAMETER_BUDGET]
    assert over.empty, f"over the paper's 100k budget:\n{over}"
    for name, cfg in PAPER_CONFIGS.items():
        assert cfg.name == name and cfg.objective == "next"
    assert set(table["dim"]) == {36, 81, 162} and set(table["hidden"]) == {32, 64, 128}
    assert set(table["depth"]) == {1, 2, 3} and set(table["model"]) == set(MODELS)
    # the parameter table counts what a real model has
    real = PixelByteModel(PAPER_CONFIGS["ssm_bi_pxby_conv_81_64_2"])
    assert table.loc["ssm_bi_pxby_conv_81_64_2", "total_params"] == count_parameters(real)


def test_paper_config_names_and_budget_knobs():
    cfg = paper_config("rnn_bi_pxby_conv_81_64_3")
    assert (cfg.model, cfg.bidirectional, cfg.embedding, cfg.conv, cfg.dim, cfg.hidden, cfg.depth) == \
        ("lstm", True, "pxby", True, 81, 64, 3)
    assert cfg.proj_size == 32                                 # plain: 112k > budget
    assert paper_config("rnn_bi_pxby_conv_81_32_2").proj_size == 0
    assert paper_config("ssm_uni_pxby_conv_81_64_2").expand == 1   # expand 2: 165k
    assert paper_config("att_uni_pxby_conv_81_64_2", objective="causal").objective == "causal"
    with pytest.raises(ValueError, match="family_dir_embedding_conv_dim_hidden_depth"):
        paper_config("lstm_bi_81_32_2")
