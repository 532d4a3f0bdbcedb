"""Tests of pixelbyte.models: every configuration builds, PxByEmbed shapes (seed-era crash),
step-by-step decoding equal to the full forward, no look-ahead in causal models, training
reduces the loss, config validation, save/load round trip and its error messages, and the
paper's configurations under 100k parameters.

Tiny widths and short sequences throughout (dim 18, hidden 8, L <= 40) so that the file runs in
well under a minute on 2 CPU cores; seeds fixed.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from pixelbyte.models import (
    MODELS,
    PAPER_BEST,
    PAPER_CONFIGS,
    PARAMETER_BUDGET,
    CheckpointError,
    ModelConfig,
    PixelByteModel,
    PxByEmbed,
    count_parameters,
    paper_config,
    parameter_table,
)

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")



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
    return PixelByteModel(cfg).eval()


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("embedding,conv", EMBEDDINGS)
def test_every_configuration_gives_logits(model, bidirectional, embedding, conv):
    m = build(tiny(model, bidirectional=bidirectional, embedding=embedding, conv=conv))
    logits = m(windows(2, 7))
    assert logits.shape == (2, 7, V)
    assert torch.isfinite(logits).all()
    assert m.is_causal is (not bidirectional)


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


# ---------------------------------------------------------------------------------------------
# Decoding and causality


CAUSAL_CASES = {
    "lstm": dict(model="lstm"),
    "lstm_proj": dict(model="lstm", proj_size=4, depth=3),
    "attention_4_heads_odd_head_dim": dict(model="attention", n_heads=4),   # head_dim 5, inner 20
    "attention_auto_heads": dict(model="attention", n_heads="auto"),        # 3 heads of 6
    "bysmamba": dict(model="bysmamba"),
    "bysmamba_center_next": dict(model="bysmamba", embedding="center", conv=False, objective="next"),
}


@pytest.mark.parametrize("case", CAUSAL_CASES)
def test_step_matches_forward(case):
    kw = {"objective": "causal", **CAUSAL_CASES[case]}
    m = build(tiny(**kw))
    x = windows(2, 40, centre_zero=kw["objective"] == "causal")   # 40 > first KV-cache capacity
    with torch.no_grad():
        full = m(x)
        state = m.init_state(2)
        stepped = []
        for t in range(x.shape[1]):
            logits, state = m.step(x[:, t], state)
            stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), full, atol=1e-5, rtol=1e-5)


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
        diff = (m(x2) - m(x)).abs().amax(-1)[0]              # (L,)
    assert diff[t] > 0                                        # the changed position reacts
    if bidirectional:
        assert diff[:t].max() > 1e-6, "a bidirectional model must see the future"
    else:
        assert diff[:t].max() == 0, f"logits before {t} changed: the model looks ahead"


def test_attention_knows_token_order():
    # without positions one causal attention layer is blind to the order of the prefix (the
    # paper blamed its attention results on that); rotary positions make the order count
    m = build(tiny("attention", depth=1))
    x = windows(1, 8)
    swapped = x.clone()
    swapped[0, [2, 5]] = x[0, [5, 2]]
    with torch.no_grad():
        assert (m(x)[0, -1] - m(swapped)[0, -1]).abs().max() > 1e-4


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
    with pytest.raises(ValueError, match="0..112"):
        m(torch.full((1, 2, 3, 3), V))


# ---------------------------------------------------------------------------------------------
# Training


def train_losses(cfg, steps, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    m = PixelByteModel(cfg).train()
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    x = windows(4, 24, seed=seed, centre_zero=cfg.objective == "causal")
    y = torch.randint(0, V, (4, 24), generator=torch.Generator().manual_seed(seed + 1))
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_few_adamw_steps_reduce_the_loss(model, bidirectional):
    losses = train_losses(tiny(model, bidirectional=bidirectional), steps=15)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses


def test_deep_bysmamba_trains_stably():
    cfg = tiny("bysmamba", depth=8, bidirectional=True)
    losses = train_losses(cfg, steps=12, lr=1e-2)
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.3, losses
    assert max(losses) < losses[0] + 0.1, f"loss spiked: {losses}"


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("field,value,message", [
    ("model", "gru", "allowed values are"),
    ("embedding", "patch", "allowed values are"),
    ("objective", "masked", "allowed values are"),
    ("backend", "triton", "allowed values are"),
    ("bidirectional", 1, "True or False"),
    ("conv", "yes", "True or False"),
    ("dim", 0, "integer >= 1"),
    ("hidden", 8.0, "integer >= 1"),
    ("depth", True, "integer >= 1"),
    ("d_conv", -1, "integer >= 1"),
    ("expand", 0, "integer >= 1"),
    ("vocab_size", 1, "integer >= 2"),
    ("dropout", 1.0, r"\[0, 1\)"),
    ("n_heads", 0, "positive integer or 'auto'"),
    ("n_heads", "all", "positive integer or 'auto'"),
    ("proj_size", -2, "integer >= 0"),
])
def test_config_rejects_bad_values_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        ModelConfig(**{field: value})
    assert f"ModelConfig.{field}={value!r}" in str(info.value)


def test_config_rejects_bad_combinations():
    with pytest.raises(ValueError, match="bidirectional.*only legal with objective='next'"):
        ModelConfig(bidirectional=True, objective="causal")
    with pytest.raises(ValueError, match="conv=True needs embedding='pxby'"):
        ModelConfig(embedding="center", conv=True)
    with pytest.raises(ValueError, match="sees nothing"):
        ModelConfig(embedding="center", conv=False, objective="causal")
    with pytest.raises(ValueError, match="proj_size.*LSTM option"):
        ModelConfig(model="bysmamba", proj_size=8)
    with pytest.raises(ValueError, match="smaller than hidden"):
        ModelConfig(model="lstm", hidden=8, proj_size=8)
    with pytest.raises(ValueError, match="ModelConfig.hidden=9.*even"):
        ModelConfig(model="lstm", hidden=9, bidirectional=True)
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(model="attention", dim=4, n_heads=4)


def test_n_heads_auto_and_non_dividing_dims():
    assert ModelConfig(model="attention", dim=81, n_heads="auto").heads == 3
    assert ModelConfig(model="attention", dim=36, n_heads="auto").heads == 4
    assert ModelConfig(model="attention", dim=162, n_heads="auto").heads == 3
    cfg = ModelConfig(model="attention", dim=81)             # 4 heads, the paper's count
    assert (cfg.heads, cfg.head_dim) == (4, 21)              # attention inner width 84
    assert PixelByteModel(cfg)(windows(1, 5)).shape == (1, 5, V)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(model="attention", n_heads="auto", dim=36, objective="causal")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['d_state', 'layers'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "layers": 2, "d_state": 16})
    assert PixelByteModel(cfg.to_dict()).config == cfg


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
        assert torch.equal(loaded(x), m(x))
    loaded.save_pretrained(tmp_path / "again")               # the reloaded model saves its config
    assert PixelByteModel.from_pretrained(str(tmp_path / "again")).config == cfg


def test_loading_weights_of_another_config_names_file_and_tensor(tmp_path):
    build(tiny("lstm", hidden=8)).save_pretrained(tmp_path / "a")
    build(tiny("lstm", hidden=16)).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        PixelByteModel.from_pretrained(tmp_path / "a")
    message = str(info.value)
    assert str(tmp_path / "a" / "model.safetensors") in message
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
