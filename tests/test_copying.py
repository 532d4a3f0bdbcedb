"""Copy tasks: the makers (the copy part really repeats the pattern, selective copy's answer is
the letters in order, sprite copy reproduces the real sprite), the stream (deterministic per
(seed, i), targets only on the copy part), scoring checked by hand against a perfect and a
constant predictor, the skills-report rows, and a tiny training run that lowers the loss."""
import types

import numpy as np
import pandas as pd
import pytest
import torch

from pixelbyte import copying as C, data, generate as G, skills, tokenizer as tok
from pixelbyte.config import ModelConfig
from pixelbyte.models import PixelByteModel

V = tok.VOCAB_SIZE


class StreamModel(torch.nn.Module):
    """Decodes by ``step``: row b's logits put all their weight on ``pick(b, t)``. Causal: the
    logits at position t predict token t; next: token t + 1."""
    is_causal = True

    def __init__(self, pick, objective="causal"):
        super().__init__()
        self.config = types.SimpleNamespace(objective=objective, positions=False)
        self.pick = pick

    def init_state(self, batch_size, device=None):
        return 0

    def step(self, x_t, t):
        logits = torch.zeros(len(x_t), V)
        for b in range(len(x_t)):
            logits[b, self.pick(b, t)] = 1.0
        return logits, t + 1


def oracle(items, objective="causal"):
    """Knows every item: writes each reference token at its position."""
    shift = 1 if objective == "next" else 0
    return StreamModel(lambda b, t: items[b].ids[min(t + shift, len(items[b].ids) - 1)], objective)


def stream_items(task, n, seed=0):
    """The first ``n`` items of a task's training stream."""
    return C.CopyStream(task, n, seed).items()


def sprites(n=6, seed=0):
    """Real items (tokenizer.encode_item) of random palette sprites of 3..7 px, and the sprites."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, len(tok.PALETTE), size=tuple(rng.integers(3, 8, size=2))) for _ in range(n)]
    return [tok.encode_item(tok.PALETTE[im], f"sprite {k}") for k, im in enumerate(images)], images


# ---------------------------------------------------------------------------------------------
# The makers


def test_image_and_text_copies_repeat_their_pattern():
    for item in stream_items(C.CopyTask("image", 4, width=5), 3):
        assert item.windows.shape == (7 + 4 * 6, 3, 3) and item.windows.dtype == np.uint8
        np.testing.assert_array_equal(tok.windows_from_ids(item.ids), item.windows)
        picture = tok.decode(item.ids)[1].image
        np.testing.assert_array_equal(picture[:2], picture[2:])      # bottom half repeats the top
        assert item.target_ids == item.ids[7 + 12:]                    # rows 3-4: 5 pixels + \t | \n
        assert item.target_ids[:-1] == item.ids[7:7 + 11] and item.target_ids[-1] == tok.SEG_END_ID
    for item in stream_items(C.CopyTask("text", 3), 3):
        phrase, copy = tok.decode(item.ids)[0].text.split("; ")
        assert phrase == copy and len(phrase.split(" ")) == 3
        assert item.target_ids == G.text_ids(copy) + [tok.SEG_END_ID]
        assert item.prompt_ids == G.text_ids(phrase + "; ")
    assert stream_items(C.CopyTask("text", 2), 2, seed=1)[0].ids == C.CopyTask("text", 2).make(
        np.random.default_rng([1, 0])).ids
    with pytest.raises(ValueError, match="kind"):
        C.CopyTask("video", 1)


def test_selective_copy_answer_is_the_letters_in_order():
    for item in stream_items(C.CopyTask("selective", 12, n_recall=3), 5):
        text = tok.decode(item.ids)[0].text
        filler, recall = text.split(":")
        assert len(filler) == 12 and filler.replace(" ", "") == recall and len(recall) == 3
        assert item.prompt_ids == G.text_ids(filler + ":")
        assert item.target_ids == G.text_ids(recall) + [tok.SEG_END_ID]


def test_sprite_copy_reproduces_the_real_sprite():
    seqs, images = sprites()
    pool = C.sprite_images(seqs)
    assert len(pool) == len(images) and all((a == b).all() for a, b in zip(pool, images))
    stream = C.CopyStream(C.CopyTask("sprite", size=7), 20, seed=0, sprites=pool)
    for item in stream.items():
        shape, first, shape_again, copy = tok.decode(item.ids)
        assert shape.text == shape_again.text and tok.parse_shape(shape.text) == first.image.shape[:2]
        np.testing.assert_array_equal(first.image, copy.image)
        assert max(first.image.shape[:2]) == 7                         # resized: longer side = size
        drawn = tok.quantize(first.image)
        assert any(drawn.shape == r.shape and (drawn == r).all() for r in (C.resize_sprite(s, 7) for s in pool))
        assert item.copy_end == len(item.ids) and tok.decode(item.target_ids)[0].kind == "image"
        assert item.ids[:item.copy_start][-len(shape.text) - 1:] == G.text_ids(shape.text) + [tok.SEG_END_ID]
    with pytest.raises(ValueError, match="sprites"):
        C.CopyStream(C.CopyTask("sprite", 8), 4)


def test_embedded_sprites_copy():
    seqs = data.sequences(data.load_pixelbytes("embedded", limit=3))
    pool = C.sprite_images(seqs)
    assert len(pool) == 3
    for seq, sprite in zip(seqs, pool):
        np.testing.assert_array_equal(tok.PALETTE[sprite], tok.decode_item(seq)[0])
    item = C.CopyStream(C.CopyTask("sprite", 8), 1, sprites=pool).item(0)
    np.testing.assert_array_equal(tok.decode(item.ids)[1].image, tok.decode(item.target_ids)[0].image)


def test_resize_keeps_pixel_art():
    sprite = np.arange(24).reshape(4, 6)
    assert C.resize_sprite(sprite, 0) is sprite and C.resize_sprite(sprite, 6) is sprite
    small = C.resize_sprite(sprite, 3)
    assert small.shape == (2, 3) and set(small.reshape(-1)) <= set(sprite.reshape(-1))
    np.testing.assert_array_equal(C.resize_sprite(sprite, 12), np.repeat(np.repeat(sprite, 2, 0), 2, 1))


def test_task_checks_and_scaling():
    assert C.CopyTask("image", 6).scaled(2).size == 12 and C.CopyTask("selective", 8, n_recall=2).scaled(4).size == 32
    for bad, match in ((dict(kind="video", size=4), "kind"), (dict(kind="image", size=5), "even"),
                       (dict(kind="selective", size=3, n_recall=4), "n_recall"), (dict(kind="text", size=0), "size")):
        with pytest.raises(ValueError, match=match):
            C.CopyTask(**bad)


# ---------------------------------------------------------------------------------------------
# The stream


@pytest.mark.parametrize("task", [C.CopyTask("image", 4), C.CopyTask("text", 2), C.CopyTask("selective", 10, n_recall=3)])
def test_stream_is_deterministic_and_targets_only_the_copy(task):
    stream = C.CopyStream(task, 1000, seed=3)
    again = C.CopyStream(task, 1000, seed=3)
    for i in (0, 7, 999):
        item = stream.item(i)
        np.testing.assert_array_equal(item.windows, again.item(i).windows)
        np.testing.assert_array_equal(item.windows, task.make(np.random.default_rng([3, i])).windows)
        x, y = stream[i]
        assert x.shape == (len(item.windows), 3, 3) and (x[:, 1, 1] == 0).all()
        assert (y[:item.copy_start] == 0).all() and (y[item.copy_end:] == 0).all()
        assert y[item.copy_start:item.copy_end].tolist() == item.target_ids and (y[item.copy_start:] != 0).all()
        np.testing.assert_array_equal(x[:, :, :].numpy()[:, 0], item.windows[:, 0])   # context kept
    ids = [tuple(stream.item(i).ids) for i in range(30)]
    assert len(set(ids)) > 25                                          # items differ across i
    held = [tuple(i.ids) for i in C.held_out_items(task, 30, seed=3)]
    other_seed = [tuple(C.CopyStream(task, 30, seed=4).item(i).ids) for i in range(30)]
    assert held != ids and other_seed != ids
    x, y, _ = C.CopyStream.collate([stream[i] for i in range(4)])
    assert x.shape[:2] == y.shape and x.shape[0] == 4
    order = stream.epoch_order(torch.Generator().manual_seed(0), 8)
    assert sorted(order.tolist()) == list(range(1000))
    with pytest.raises(IndexError):
        stream.item(1000)


# ---------------------------------------------------------------------------------------------
# Scoring


def test_scoring_by_hand():
    items = [C.CopyItem("text", tok.windows_from_ids(G.text_ids("ab;ab") + [2]), 3, 6)]   # target a, b, \n
    a, b = G.text_ids("ab")
    cases = {(a, b, 2): (1.0, 1.0), (a, b, a): (2 / 3, 0.0), (b, b, 2): (2 / 3, 0.0), (a,): (1 / 3, 0.0)}
    for generated, (token, exact) in cases.items():
        scored = C.score_copy_predictions(items, [list(generated)])
        assert scored["token_accuracy"] == pytest.approx(token) and scored["sequence_accuracy"] == exact
        assert np.isnan(scored["pixel_accuracy"])
    # the baselines by hand: the prompt "ab;" ends with ";"; its tokens are tied, the lowest id wins
    assert C.baseline_copies(items, "repeat_last") == [[G.text_ids(";")[0]] * 3]
    assert C.baseline_copies(items, "most_frequent_prompt") == [[min(G.text_ids("ab;"))] * 3]
    scored = C.copy_scores(None, items).set_index("method")
    assert scored.loc["repeat_last", "token_accuracy"] == 0 and scored.loc["most_frequent_prompt", "tokens"] == 3


def test_perfect_and_constant_predictors_score_like_the_baselines():
    seqs, _ = sprites(8)
    pool = C.sprite_images(seqs)
    for task in (C.CopyTask("image", 4), C.CopyTask("text", 2), C.CopyTask("selective", 8, n_recall=3),
                 C.CopyTask("sprite", 5)):
        items = C.held_out_items(task, 6, seed=0, sprites=pool)
        perfect = C.copy_scores(oracle(items), items).set_index("method")
        assert (perfect.loc["model", list(C.METRICS[:2])] == 1.0).all()
        assert perfect.loc["model", "tokens"] == sum(len(i.target_ids) for i in items)
        # a model that always repeats the prompt's last token is the repeat-last baseline
        last = StreamModel(lambda b, t: items[b].prompt_ids[-1])
        scored = C.copy_scores(last, items).set_index("method")
        for metric in ("token_accuracy", "sequence_accuracy"):
            assert scored.loc["model", metric] == scored.loc["repeat_last", metric]
        # ... and by hand
        hand = np.mean([t == i.prompt_ids[-1] for i in items for t in i.target_ids])
        assert scored.loc["repeat_last", "token_accuracy"] == pytest.approx(hand)
        frequent = [np.bincount(i.prompt_ids).argmax() for i in items]
        hand = np.mean([t == f for i, f in zip(items, frequent) for t in i.target_ids])
        assert scored.loc["most_frequent_prompt", "token_accuracy"] == pytest.approx(hand)
        if task.kind == "sprite":
            pixels = [t for i in items for t in i.target_ids if t >= tok.FIRST_COLOUR_ID]
            background = np.mean([t == C.BACKGROUND_ID for t in pixels])
            assert scored.loc["background", "pixel_accuracy"] == pytest.approx(background)
            assert perfect.loc["model", "pixel_accuracy"] == 1.0
        else:
            assert "background" not in scored.index
    # the 'next' objective through the same path (what compare.py scores)
    selective = stream_items(C.CopyTask("selective", 10, n_recall=2), 4, seed=1)
    assert C.score_copy(oracle(selective, "next"), selective)["sequence_accuracy"] == 1.0


def test_skill_rows_have_the_report_format():
    seqs, _ = sprites(8)
    pool = C.sprite_images(seqs)
    task = C.CopyTask("sprite", 5)
    items = C.held_out_items(task, 4, sprites=pool)
    rows = C.skill_rows(C.copy_scores(oracle(items), items), task)
    assert list(rows.columns) == list(skills.COLUMNS)
    assert rows["skill"].eq("copy: sprite").all() and rows["items"].eq(4).all()
    assert list(rows["metric"]) == ["token accuracy", "exact-sequence accuracy", "pixel accuracy"]
    assert rows["value"].eq(1.0).all() and (rows["baseline"] < 1).all()
    assert rows["baseline_is"].str.contains("best").all()
    baselines_only = C.skill_rows(C.copy_scores(None, items), task)
    assert baselines_only["value"].isna().all()
    assert (baselines_only["baseline"].to_numpy() == rows["baseline"].to_numpy()).all()
    sweep = C.size_sweep(None, [C.CopyTask("text", 1), C.CopyTask("text", 2)], n_items=4)
    assert set(sweep["size"]) == {1, 2} and set(sweep["method"]) == {"repeat_last", "most_frequent_prompt"}


def test_curve_trend():
    trend = lambda values: C.curve_trend(pd.DataFrame({"sequence_accuracy": values}))   # noqa: E731
    assert trend([0.1, 0.5, 0.995]) == "reached"
    assert trend([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == "still rising"
    assert trend([0.3, 0.31, 0.29, 0.3, 0.31, 0.3]) == "plateaued"


def test_size_below():
    sweep = pd.DataFrame({"method": ["model"] * 3 + ["repeat_last"] * 3, "size": [8, 16, 32] * 2,
                          "token_accuracy": [1.0, 0.95, 0.5, 0.0, 0.0, 0.0]})
    assert C.size_below(sweep) == 32 and C.size_below(sweep, threshold=0.99) == 16
    assert C.size_below(sweep, threshold=0.1) == float("inf")


# ---------------------------------------------------------------------------------------------
# Training


def test_train_copy_runs_and_lowers_the_loss(tmp_path):
    torch.set_num_threads(1)
    cfg = ModelConfig(model="lstm", dim=18, hidden=32, depth=1, objective="causal")
    task = C.CopyTask("selective", 6, n_recall=2)
    held = C.CopyStream(task, 16, seed=0, held_out=True)
    torch.manual_seed(0)
    fresh = PixelByteModel(cfg)
    x, y, _ = C.CopyStream.collate([held[i] for i in range(16)])
    with torch.no_grad():
        loss_before = float(fresh(x, y)[1])
    model, curve = C.train_copy(cfg, task, max_steps=30, batch_size=8, lr=1e-2, eval_every=15, eval_items=16,
                                out_dir=str(tmp_path / "run"))
    assert list(curve["step"]) == [15, 30]
    assert curve["val_loss"].iloc[-1] < loss_before - 0.3
    assert {"token_accuracy", "sequence_accuracy", "teacher_forced_accuracy"} <= set(curve.columns)
    final = curve.attrs["final"]
    assert final["steps"] == 30 and final["tokens_per_s"] > 0 and final["parameters"] == model.num_parameters()
    assert (tmp_path / "run" / "metrics.csv").exists()
    with torch.no_grad():
        assert float(model(x, y)[1]) == pytest.approx(curve["val_loss"].iloc[-1], rel=1e-5)
    with pytest.raises(ValueError, match="causal"):
        C.train_copy(ModelConfig(model="lstm", dim=18, hidden=16, depth=1), task, max_steps=2)


def test_old_window_dataset_route_still_trains():
    """Copy items as plain sequences cut into windows train (next and causal) and score."""
    for objective in ("next", "causal"):
        seqs = [i.windows for i in stream_items(C.CopyTask("selective", 10, n_recall=2), 6)]
        assert all(s.shape == (14, 3, 3) for s in seqs)
        ds = data.WindowDataset(seqs, seq_length=8, stride=2, objective=objective)
        torch.manual_seed(0)
        model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, depth=1, objective=objective))
        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
        _, loss = model(x, y)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
        result = C.score_copy(model, stream_items(C.CopyTask("selective", 10, n_recall=2), 4, seed=1))
        assert 0 <= result["token_accuracy"] <= 1 and result["items"] == 4 and result["tokens"] == 12


def test_jobs_train_and_sweep():
    """run_jobs (here, in order; the notebook's CI run covers workers > 1): each job is trained
    and swept at every factor, reproducibly for a seed."""
    cfg = ModelConfig(model="attention", dim=16, hidden=16, depth=1, n_heads=2, objective="causal")
    jobs = [dict(model_config=cfg, task=C.CopyTask(kind, size), factors=(1, 2), sweep_items=4, max_steps=4,
                 batch_size=4, eval_points=2, eval_items=4, seed=1) for kind, size in (("text", 1), ("image", 2))]
    finished = []
    results = C.run_jobs(jobs, workers=1, report=lambda k, result: finished.append(k))
    assert finished == [0, 1]
    for job, (model, curve, sweep) in zip(jobs, results):
        assert set(zip(sweep["factor"], sweep["size"])) == {(1, job["task"].size), (2, 2 * job["task"].size)}
        assert curve.attrs["final"]["steps"] == 4 and list(curve["step"]) == [2, 4]
    _, again, _ = C.train_and_sweep(**jobs[0])
    np.testing.assert_allclose(again["val_loss"], results[0][1]["val_loss"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Notebook 05's study


def test_copy_config_defaults_are_notebook_05s_and_one_table_of_tasks():
    from dataclasses import asdict
    from pathlib import Path

    from pixelbyte import compare, pipeline

    defaults = pipeline.parameters(Path(__file__).resolve().parent.parent / "notebooks" / "05_copy_task.ipynb")
    assert {k: defaults[k] for k in asdict(C.CopyConfig())} == asdict(C.CopyConfig())
    assert C.CopyConfig().copy_tasks() == C.TASKS                   # 05's sizes are the table's ...
    assert set(compare.COPY_TASKS) < set(C.TASKS)                   # ... and 04's copy columns train on it


BAD_COPY_CONFIGS = [
    (dict(families="lstm,gru"), "families='lstm,gru' is invalid: expected comma-separated values among"),
    (dict(tasks=""), "tasks='' is invalid: expected comma-separated values among"),
    (dict(dim=0), "dim=0 is invalid: expected an integer >= 1"),
    (dict(depth=1.5), "depth=1.5 is invalid"),
    (dict(hidden={"lstm": 0, "attention": 8, "bysmamba": 4}), "expected an integer >= 1 for each, got 0 for 'lstm'"),
    (dict(hidden="big"), "hidden='big' is invalid: expected an integer >= 1, or a dict"),
    (dict(n_heads=True), "n_heads=True is invalid"),
    (dict(expand=0), "expand=0 is invalid"),
    (dict(ssm="mamba3"), "ssm='mamba3' is invalid: allowed values are"),
    (dict(positions="yes"), "positions='yes' is invalid: expected True or False"),
    (dict(image_rows=1), "image_rows=1 is invalid: expected an integer >= 2"),
    (dict(image_width=0), "image_width=0 is invalid"),
    (dict(image_colours=0), "image_colours=0 is invalid"),
    (dict(text_words=0), "text_words=0 is invalid"),
    (dict(selective_length=0), "selective_length=0 is invalid"),
    (dict(selective_recall=0), "selective_recall=0 is invalid"),
    (dict(sprite_side=0), "sprite_side=0 is invalid"),
    (dict(size_factors="2,4"), "size_factors='2,4' is invalid: expected increasing integers starting at 1"),
    (dict(batch_size=0), "batch_size=0 is invalid"),
    (dict(lr="abc"), "lr='abc' is invalid: expected a number > 0"),
    (dict(max_steps={"image": 10}), "max_steps={'image': 10} is invalid: expected one value for each of"),
    (dict(budget_s=-1), "budget_s=-1 is invalid: expected a number >= 0"),
    (dict(eval_points=0), "eval_points=0 is invalid"),
    (dict(eval_items=0), "eval_items=0 is invalid"),
    (dict(sweep_items={"image": 4, "text": 4, "selective": 4, "sprite": 4, "video": 4}), "keys among"),
    (dict(seed=-1), "seed=-1 is invalid"),
    (dict(device="tpu"), "device='tpu' is invalid: allowed values are"),
    (dict(threads=-1), "threads=-1 is invalid"),
    (dict(workers=0), "workers=0 is invalid"),
]


@pytest.mark.parametrize("changes, message", BAD_COPY_CONFIGS, ids=[next(iter(c)) for c, _ in BAD_COPY_CONFIGS])
def test_copy_config_refuses_bad_values_naming_the_field(changes, message):
    with pytest.raises(ValueError) as err:
        C.CopyConfig(**changes)
    assert f"CopyConfig.{next(iter(changes))}=" in str(err.value) and message in str(err.value)


def test_copy_config_checks_every_field_and_hands_sizes_to_the_task_and_model_checks():
    from dataclasses import fields

    assert {f.name for f in fields(C.CopyConfig)} == {next(iter(c)) for c, _ in BAD_COPY_CONFIGS}
    with pytest.raises(ValueError, match="CopyTask.size=7 is invalid: an image copy needs an even number of rows"):
        C.CopyConfig(image_rows=7)
    with pytest.raises(ValueError, match="ModelConfig.n_heads"):
        C.CopyConfig(dim=16, n_heads=16)
    cfg = C.CopyConfig(tasks="text", families="bysmamba", ssm="mamba2", dim=16, expand=2, hidden=4)
    assert cfg.model_config("bysmamba").headdim == 32 and cfg.per_task("max_steps") == {"text": 500}


TINY_STUDY = dict(families="lstm", tasks="text,selective", dim=8, depth=1, hidden=8, text_words=1,
                  selective_length=4, selective_recall=1, size_factors="1,2", batch_size=4, max_steps=2, budget_s=0,
                  eval_points=1, eval_items=2, sweep_items=2, workers=1)


def test_a_study_stopped_after_its_first_run_keeps_that_runs_rows(tmp_path, monkeypatch):
    cfg = C.CopyConfig(**TINY_STUDY)
    first = C.plan(cfg)[0]
    job, calls = C._job, []

    def stopped_after_one(one):
        if calls:
            raise KeyboardInterrupt("the notebook's budget ran out")
        calls.append(one)
        return job(one)

    monkeypatch.setattr(C, "_job", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        C.run_study(cfg, tmp_path, log=lambda line: None)
    table = pd.read_csv(tmp_path / "copy_table.csv")
    assert list(zip(table["family"], table["task"])) == [first]
    for name in ("curves.csv", "sizes.csv", "copy_skills.csv"):
        rows = pd.read_csv(tmp_path / name)
        assert len(rows) and set(rows["family"]) == {first[0]} and set(rows.get("task", [first[1]])) == {first[1]}


def test_study_table_files_goals_and_figures(tmp_path):
    import json

    from matplotlib.figure import Figure

    from pixelbyte import plots

    cfg = C.CopyConfig(**TINY_STUDY)
    lines = []
    study = C.run_study(cfg, tmp_path, log=lines.append)
    runs = C.plan(cfg)
    assert len(lines) == 2 and set(study.models) == set(runs)
    assert list(zip(study.table["family"], study.table["task"])) == runs
    assert {"token_acc_2x", "exact_acc_2x", "size_below_90", "curve_end"} <= set(study.table.columns)
    assert list(pd.read_csv(tmp_path / "copy_table.csv")["task"]) == [t for _, t in runs]   # rewritten in order
    assert json.loads((tmp_path / "copy_table.json").read_text())["size_factors"] == [1, 2]
    assert set(study.sweeps["factor"]) == {1, 2}
    assert list(study.skills["skill"].unique()) == ["copy: text", "copy: selective"]
    goals = C.goals(study.table, study.curves)
    assert list(goals["goal"]) == ["best family text token >= 0.99"] and goals["curve"].str.startswith("lstm: ").all()
    tasks = cfg.copy_tasks()
    for figure in (plots.copy_curves(study.curves, study.sweeps, tasks, cfg.family_list),
                   plots.copy_sizes(study.sweeps, tasks, cfg.family_list)):
        assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert plots.copy_examples({"text": C.held_out_items(tasks["text"], 1)[0]}) is None
    assert isinstance(plots.copy_examples({"image": C.held_out_items(C.TASKS["image"], 1)[0]}), Figure)
