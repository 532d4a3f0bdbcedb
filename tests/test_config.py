"""Configs (pixelbyte.config): every bad value is refused naming the field, the value and what is
allowed; combinations a run cannot honour are refused; a RunConfig survives JSON (a file, a
dict, a Trainer's run.json) unchanged; unknown sections, keys and flat names are refused with
the closest valid name; runtime fields are the only ones ``with_runtime`` may change."""
import json
import math
from dataclasses import fields, replace

import pytest
import torch

from pixelbyte.config import (RUN_FORMAT, RUNTIME_FIELDS, SECTIONS, DataConfig, ModelConfig, RunConfig,
                              SampleConfig, TrainConfig, resolve_device)

# ---------------------------------------------------------------------------------------------
# Bad values: "<Config>.<field>=<value!r> is invalid: <what is allowed>"

BAD_VALUES = [
    # DataConfig
    (DataConfig, "source", "", ["non-empty string"]),
    (DataConfig, "source", 3, ["non-empty string"]),
    (DataConfig, "limit", 0, ["None or an integer >= 1"]),
    (DataConfig, "limit", 2.5, ["None or an integer >= 1"]),
    (DataConfig, "test_size", 0, ["(0, 1)"]),
    (DataConfig, "test_size", 1.0, ["(0, 1)"]),
    (DataConfig, "test_size", "0.1", ["(0, 1)"]),
    (DataConfig, "test_size", math.nan, ["(0, 1)"]),
    (DataConfig, "split_seed", -1, ["integer >= 0"]),
    (DataConfig, "resize", "yes", ["True or False"]),
    # SampleConfig
    (SampleConfig, "unit", "token", ["allowed values are", "'window'", "'item'"]),
    (SampleConfig, "orders", "random", ["allowed values are", "'data'", "'caption_first'", "'both'"]),
    (SampleConfig, "seq_length", 0, ["integer >= 1"]),
    (SampleConfig, "stride", 0, ["integer >= 1"]),
    (SampleConfig, "bucket", True, ["integer >= 1"]),
    # ModelConfig
    (ModelConfig, "model", "gru", ["allowed values are", "'lstm'", "'attention'", "'bysmamba'"]),
    (ModelConfig, "embedding", "patch", ["allowed values are", "'pxby'", "'center'"]),
    (ModelConfig, "objective", "masked", ["allowed values are", "'next'", "'causal'"]),
    (ModelConfig, "backend", "triton", ["allowed values are", "'torch'"]),
    (ModelConfig, "scan_impl", "fast", ["allowed values are", "'chunked'"]),
    (ModelConfig, "bidirectional", 1, ["True or False"]),
    (ModelConfig, "conv", "yes", ["True or False"]),
    (ModelConfig, "positions", None, ["True or False"]),
    (ModelConfig, "ssm", "mamba3", ["allowed values are", "'mamba'", "'mamba2'"]),
    (ModelConfig, "headdim", 0, ["integer >= 1"]),
    (ModelConfig, "dim", 0, ["integer >= 1"]),
    (ModelConfig, "hidden", 8.0, ["integer >= 1"]),
    (ModelConfig, "depth", True, ["integer >= 1"]),
    (ModelConfig, "d_conv", -1, ["integer >= 1"]),
    (ModelConfig, "expand", 0, ["integer >= 1"]),
    (ModelConfig, "vocab_size", 1, ["integer >= 2"]),
    (ModelConfig, "dropout", 1.0, ["[0, 1)"]),
    (ModelConfig, "condition", "yes", ["True or False"]),
    (ModelConfig, "condition_dropout", -0.1, ["[0, 1)"]),
    (ModelConfig, "n_heads", 0, ["positive integer or 'auto'"]),
    (ModelConfig, "n_heads", "all", ["positive integer or 'auto'"]),
    (ModelConfig, "proj_size", -2, ["integer >= 0"]),
    # TrainConfig
    (TrainConfig, "device", "tpu", ["allowed values are", "'auto'", "'cpu'", "'cuda'"]),
    (TrainConfig, "epochs", 0, ["integer >= 1"]),
    (TrainConfig, "batch_size", 0, ["integer >= 1"]),
    (TrainConfig, "grad_accum", 1.0, ["integer >= 1"]),
    (TrainConfig, "log_every", 0, ["integer >= 1"]),
    (TrainConfig, "max_steps", 0, ["None or an integer >= 1"]),
    (TrainConfig, "eval_batches", 0, ["None or an integer >= 1"]),
    (TrainConfig, "warmup_steps", -1, ["integer >= 0"]),
    (TrainConfig, "eval_every", 1.5, ["integer >= 0"]),
    (TrainConfig, "num_workers", -1, ["integer >= 0"]),
    (TrainConfig, "seed", -1, ["integer >= 0"]),
    (TrainConfig, "lr", 0, ["> 0"]),
    (TrainConfig, "lr", math.inf, ["> 0"]),
    (TrainConfig, "min_lr", 1.0, ["[0, lr=0.001]"]),
    (TrainConfig, "weight_decay", -0.1, [">= 0"]),
    (TrainConfig, "grad_clip", math.nan, [">= 0"]),
    (TrainConfig, "budget_s", -1, [">= 0"]),
    (TrainConfig, "betas", (0.9, 1.5), ["two numbers in [0, 1)"]),
    (TrainConfig, "betas", (0.9,), ["two numbers in [0, 1)"]),
    (TrainConfig, "amp", "yes", ["True or False"]),
    (TrainConfig, "compile", 1, ["True or False"]),
    (TrainConfig, "progress", None, ["True or False"]),
    (TrainConfig, "out_dir", "", ["non-empty path"]),
]


@pytest.mark.parametrize("cls, field, value, allowed", BAD_VALUES,
                         ids=[f"{c.__name__}.{f}={v!r}" for c, f, v, _ in BAD_VALUES])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(cls, field, value, allowed):
    with pytest.raises(ValueError) as err:
        cls(**{field: value})
    message = str(err.value)
    assert f"{cls.__name__}.{field}={value!r}" in message
    for words in allowed:
        assert words in message, (words, message)


def test_every_field_of_every_config_is_validated():
    """Each field appears in BAD_VALUES (a field added without a check would be caught here)."""
    covered = {(c.__name__, f) for c, f, _, _ in BAD_VALUES}
    unchecked = {(c.__name__, f.name) for c in SECTIONS.values() for f in fields(c)} - covered
    assert unchecked == set(), unchecked


def test_good_values_are_accepted_and_normalised(tmp_path):
    assert TrainConfig(betas=[0.8, 0.95]).betas == (0.8, 0.95)          # JSON gives lists
    assert TrainConfig(out_dir=tmp_path).out_dir == str(tmp_path)          # paths become str
    assert ModelConfig(n_heads="auto").n_heads == "auto"
    assert DataConfig(limit=None, test_size=0.5).limit is None


def test_headdim_none_is_one_head_of_all_inner_channels_and_explicit_ones_still_load(tmp_path):
    assert ModelConfig(model="bysmamba", ssm="mamba2", dim=96, expand=2).headdim == 192   # 02's sizes
    assert ModelConfig(model="bysmamba").headdim is None and ModelConfig(model="lstm", ssm="mamba2").headdim is None
    assert ModelConfig(model="bysmamba", ssm="mamba2", dim=96, headdim=48).headdim == 48
    for model in (dict(model="bysmamba", headdim=81),                                    # saved before: explicit
                  dict(model="bysmamba", ssm="mamba2", dim=18, expand=1, headdim=9)):
        run = RunConfig(model=ModelConfig(**model))
        assert RunConfig.load(run.save(tmp_path / "run.json")) == run and run.model.headdim == model["headdim"]


def test_combinations_a_run_cannot_honour_are_refused():
    with pytest.raises(ValueError, match=r"headdim=64 .*must divide expand \* dim = 162"):
        ModelConfig(model="bysmamba", ssm="mamba2", headdim=64)
    with pytest.raises(ValueError, match="scan_impl='compiled'.*with ssm='mamba2'"):
        ModelConfig(model="bysmamba", ssm="mamba2", scan_impl="compiled")
    ModelConfig(model="lstm", ssm="mamba2", headdim=64)              # only BysMamba reads them
    with pytest.raises(ValueError, match="bidirectional.*only legal with objective='next'"):
        ModelConfig(bidirectional=True, objective="causal")
    with pytest.raises(ValueError, match="conv=True needs embedding='pxby'"):
        ModelConfig(embedding="center", conv=True)
    with pytest.raises(ValueError, match="sees nothing"):
        ModelConfig(embedding="center", conv=False, objective="causal")
    with pytest.raises(ValueError, match="ModelConfig.proj_size=8 .*LSTM option"):
        ModelConfig(model="bysmamba", proj_size=8)
    with pytest.raises(ValueError, match="smaller than hidden"):
        ModelConfig(model="lstm", hidden=8, proj_size=8)
    with pytest.raises(ValueError, match="ModelConfig.hidden=9.*even"):
        ModelConfig(model="lstm", hidden=9, bidirectional=True)
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(model="attention", dim=4, n_heads=4)
    with pytest.raises(ValueError, match="ModelConfig.positions=True.*objective='causal'"):
        ModelConfig(positions=True, objective="next")
    with pytest.raises(ValueError, match="SampleConfig.orders='caption_first'.*unit='item'"):
        SampleConfig(unit="window", orders="caption_first")
    causal = ModelConfig(objective="causal")
    with pytest.raises(ValueError, match=r"samples.unit='item' needs model.objective='causal'"):
        RunConfig(samples=SampleConfig(unit="item"), model=ModelConfig(objective="next"))
    with pytest.raises(ValueError, match=r"model.positions=True needs samples.unit='item'"):
        RunConfig(samples=SampleConfig(unit="window"), model=replace(causal, positions=True))
    with pytest.raises(ValueError, match=r"model.condition=True needs samples.unit='item'"):
        RunConfig(samples=SampleConfig(unit="window"), model=replace(causal, condition=True))
    with pytest.raises(ValueError, match="ModelConfig.condition=True.*objective='causal'"):
        ModelConfig(condition=True, objective="next")
    with pytest.raises(ValueError, match="ModelConfig.condition_dropout=0.1.*condition=True"):
        ModelConfig(objective="causal", condition_dropout=0.1)
    # what is allowed
    RunConfig(samples=SampleConfig(unit="item", orders="both"), model=replace(causal, positions=True))
    RunConfig(samples=SampleConfig(unit="window"), model=causal)
    with pytest.raises(TypeError, match="RunConfig.model must be a ModelConfig or a dict, got str"):
        RunConfig(model="lstm")
    with pytest.raises(TypeError, match="RunConfig.model must be"):
        RunConfig(model=None)                                   # only data and samples may be None


# ---------------------------------------------------------------------------------------------
# JSON round trips


def unusual_run(tmp_path) -> RunConfig:
    """A run with a non-default value in (nearly) every field."""
    return RunConfig(
        data=DataConfig(source=str(tmp_path / "items.parquet"), limit=12, test_size=0.25, split_seed=3),
        samples=SampleConfig(unit="item", seq_length=64, stride=8, orders="both", bucket=4),
        model=ModelConfig(model="attention", embedding="pxby", conv=False, dim=18, hidden=12, depth=1,
                          d_conv=3, expand=1, n_heads="auto", dropout=0.1, backend="torch",
                          scan_impl="reference", objective="causal", positions=True),
        train=TrainConfig(epochs=3, max_steps=None, budget_s=12.5, batch_size=6, grad_accum=2, lr=3e-3,
                          min_lr=1e-5, warmup_steps=4, weight_decay=0.0, betas=(0.8, 0.95), grad_clip=0.5,
                          eval_every=7, eval_batches=3, log_every=2, seed=9, device="cpu", amp=True,
                          compile=False, num_workers=1, out_dir=str(tmp_path / "out"), progress=False))


def test_run_config_json_round_trip(tmp_path):
    run = unusual_run(tmp_path)
    path = run.save(tmp_path / "run.json")
    text = json.loads(path.read_text())
    assert text["format"] == RUN_FORMAT and set(text) == {"format", *SECTIONS}
    assert text["train"]["betas"] == [0.8, 0.95]                  # JSON has no tuples ...
    loaded = RunConfig.load(path)
    assert loaded == run
    assert isinstance(loaded.train.betas, tuple)                   # ... the config gets its tuple back
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]   # the atomic write left nothing
    hand_made = RunConfig(data=None, samples=None, model=ModelConfig(dim=18), train=TrainConfig(lr=1e-2))
    assert RunConfig.load(hand_made.save(tmp_path / "hand.json")) == hand_made
    assert RunConfig.from_dict({"model": {"dim": 18}}) == RunConfig(model=ModelConfig(dim=18))  # defaults


def test_from_dict_refuses_unknown_sections_keys_and_formats():
    good = RunConfig().to_dict()
    with pytest.raises(ValueError, match=r"RunConfig: unknown key\(s\) \['modle'\]; did you mean 'model'\?"):
        RunConfig.from_dict({**good, "modle": {}})
    with pytest.raises(ValueError, match=r"RunConfig.model: unknown key\(s\) \['hiden'\]; did you mean 'hidden'\?"):
        RunConfig.from_dict({**good, "model": {**good["model"], "hiden": 3}})
    with pytest.raises(ValueError, match=r"RunConfig.train: unknown key\(s\) \['objective'\]"):
        RunConfig.from_dict({**good, "train": {**good["train"], "objective": "next"}})   # moved to model
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['zzz'\]; valid names are \['data', 'model'"):
        RunConfig.from_dict({"zzz": 1})
    with pytest.raises(ValueError, match=r"format 'pixelbyte-run-v0' is not 'pixelbyte-run-v1'"):
        RunConfig.from_dict({**good, "format": "pixelbyte-run-v0"})
    with pytest.raises(TypeError, match="RunConfig.model must be a ModelConfig or a dict, got list"):
        RunConfig.from_dict({**good, "model": [1, 2]})
    with pytest.raises(TypeError, match="expects a dict, got list"):
        RunConfig.from_dict([])
    with pytest.raises(ValueError, match=r"ModelConfig.dim=0"):                  # values still validated
        RunConfig.from_dict({**good, "model": {**good["model"], "dim": 0}})


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'none.json'}: no such run config file"):
        RunConfig.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{bad}: not a valid run config"):
        RunConfig.load(bad)
    bad.write_text(json.dumps({"train": {"lrr": 1e-3}}))
    with pytest.raises(ValueError, match=rf"{bad}: not a valid run config: .*'lrr'.*did you mean 'lr'"):
        RunConfig.load(bad)


def test_a_trainers_run_json_loads_as_its_run_config(tmp_path):
    from _train_worker import synthetic_datasets, synthetic_run

    from pixelbyte.models import PixelByteModel
    from pixelbyte.train import Trainer

    run = synthetic_run(out_dir=str(tmp_path / "run"), batch_size=8, max_steps=2)
    train_ds, val_ds = synthetic_datasets(run=run)
    Trainer(PixelByteModel.from_run(run), train_ds, val_ds, run).fit()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {"versions", "datasets", "final", "n_parameters"} <= set(info)        # more than the run ...
    assert RunConfig.load(tmp_path / "run" / "run.json") == run                # ... which loads back
    # datasets built by hand (a TrainConfig only): the run records no data / sample settings
    model = PixelByteModel.from_run(run)
    Trainer(model, train_ds, val_ds, replace(run.train, out_dir=str(tmp_path / "hand"))).fit()
    hand = RunConfig.load(tmp_path / "hand" / "run.json")
    assert hand.data is None and hand.samples is None and hand.model == run.model
    assert hand.train == replace(run.train, out_dir=str(tmp_path / "hand"))


# ---------------------------------------------------------------------------------------------
# Flat parameters (notebooks), diffs, runtime fields


def test_from_flat_sends_each_name_to_its_section():
    run = RunConfig.from_flat(source="embedded", limit=5, unit="item", orders="both", model="attention",
                              objective="causal", dim=18, lr=3e-3, betas=[0.8, 0.9], seed=4)
    assert run.data == DataConfig(source="embedded", limit=5)
    assert run.samples == SampleConfig(unit="item", orders="both")
    assert run.model == ModelConfig(model="attention", objective="causal", dim=18)
    assert run.train == TrainConfig(lr=3e-3, betas=(0.8, 0.9), seed=4)
    assert RunConfig.from_flat() == RunConfig()
    with pytest.raises(ValueError, match=r"unknown run parameter 'dimm'; did you mean 'dim'\?"):
        RunConfig.from_flat(dimm=64)
    with pytest.raises(ValueError, match=r"unknown run parameter 'test_split'; did you mean 'test_size'"):
        RunConfig.from_flat(test_split=0.2)
    with pytest.raises(ValueError, match=r"unknown run parameter 'zzzzzz'; valid names are \['amp',"):
        RunConfig.from_flat(zzzzzz=1)
    with pytest.raises(ValueError, match="ModelConfig.dim=0 is invalid"):
        RunConfig.from_flat(dim=0)
    with pytest.raises(ValueError, match="samples.unit='item' needs model.objective='causal'"):
        RunConfig.from_flat(unit="item")                           # combinations still checked


def test_no_field_name_is_shared_by_two_sections():
    """from_flat (and the notebooks' flat parameters) rely on each name having one owner."""
    names = [f.name for cls in SECTIONS.values() for f in fields(cls)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_diff_names_every_differing_field():
    a = RunConfig()
    b = replace(a, samples=replace(a.samples, seq_length=128),
                model=replace(a.model, hidden=32, backend="torch"),
                train=replace(a.train, betas=[0.9, 0.999], lr=2e-3, device="cpu"))
    assert a.diff(b, labels=("checkpoint", "now")) == [
        "samples.seq_length: checkpoint 256, now 128", "model.hidden: checkpoint 64, now 32",
        "train.lr: checkpoint 0.001, now 0.002"]                   # betas: a list equals the tuple
    assert set(a.diff(b, skip_runtime=False)) >= {"model.backend: was 'auto', now 'torch'",
                                                  "train.device: was 'auto', now 'cpu'"}
    assert a.diff(a) == []
    assert any(line.startswith("samples:") for line in a.diff(replace(a, samples=None)))


def test_with_runtime_changes_runtime_fields_only():
    run = RunConfig(model=ModelConfig(model="bysmamba", backend="cuda"))
    moved = run.with_runtime(backend="torch", scan_impl="reference", device="cpu", out_dir="elsewhere")
    assert (moved.model.backend, moved.model.scan_impl) == ("torch", "reference")
    assert (moved.train.device, moved.train.out_dir) == ("cpu", "elsewhere")
    assert run.model.backend == "cuda"                             # a copy
    assert run.diff(moved) == []                                   # nothing that is computed changed
    with pytest.raises(ValueError, match=r"'dim' is not a runtime field; those are \['backend',"):
        run.with_runtime(dim=18)
    with pytest.raises(ValueError, match="ModelConfig.backend='metal'"):
        run.with_runtime(backend="metal")                          # still validated
    for section, names in RUNTIME_FIELDS.items():                  # they are real fields
        assert set(names) <= {f.name for f in fields(SECTIONS[section])}


def test_context_length_is_what_the_model_was_trained_to_see():
    assert RunConfig(samples=SampleConfig(seq_length=64)).context_length == 64
    assert RunConfig(samples=SampleConfig(unit="item"), model=ModelConfig(objective="causal")).context_length is None
    assert RunConfig(data=None, samples=None).context_length is None


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"device='tpu': allowed values are \['auto', 'cpu', 'cuda'\]"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            resolve_device("cuda")
