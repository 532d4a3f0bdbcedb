"""skills: the report's metrics on hand-made cases (a perfect model's outputs, a constant
model's), the sprite classifier, the baselines, and the report of a real (tiny) model."""
import dataclasses
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pixelbyte import data, generate as gen, skills, tokenizer as tok
from pixelbyte.models import ModelConfig, PixelByteModel


@pytest.fixture(scope="module")
def split():
    seqs = data.sequences(data.load_pixelbytes("embedded", limit=400))
    train_idx, test_idx = data.split_items(len(seqs), 0.1, 0)
    return [seqs[i] for i in train_idx], [seqs[i] for i in test_idx]


@pytest.fixture(scope="module")
def items(split):
    return [skills.Item.of(s) for s in split[1][:12]]


def test_caption_group_and_name():
    assert skills.caption_group("grinning face. smileys and emotion, face smiling") == "smileys and emotion"
    assert skills.caption_name("grinning face. smileys and emotion, face smiling") == "grinning face"
    assert skills.caption_group("flag: st. kitts and nevis. flags, country flag") == "flags"       # last ". "
    assert skills.caption_name("flag: st. kitts and nevis. flags, country flag") == "flag: st. kitts and nevis"
    assert skills.caption_name("no group here") == "no group here" and skills.name_similarity("abc", "abc") == 1.0
    run_on = "smiling face. smileys and emotion, face concerned face. smiley"       # cut by the budget
    assert skills.caption_group(run_on) == "smiley"
    assert skills.caption_group(run_on, known={"smileys and emotion", "flags"}) == "smileys and emotion"
    assert skills.caption_group("st. kitts. flags, country flag", known={"flags"}) == "flags"


def test_name_similarity_of_captions_without_a_period_compares_the_captions(items):
    """Captions without ". " have no name part: the whole caption is compared, so two different
    captions are not a perfect 1.0 ("" against "")."""
    refs = [dataclasses.replace(items[0], caption="red apple"), dataclasses.replace(items[1], caption="blue car")]
    rows = skills.caption_rows(["zzzz qqq", "blue car"], refs, ["green tree", "yellow sun"])
    names = next(r for r in rows if r["metric"] == "name similarity")
    assert names["value"] == pytest.approx((skills.name_similarity("zzzz qqq", "red apple") + 1) / 2)
    assert names["value"] < 0.75 and names["baseline"] < 0.5


def skills_benchmark():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "skills.py"
    spec = importlib.util.spec_from_file_location("benchmarks_skills", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_skills_benchmark_counts_scored_items_keeps_reports_apart_and_names_lost_data(tmp_path, monkeypatch,
                                                                                          capsys):
    from pixelbyte.config import DataConfig, RunConfig, SampleConfig

    bench = skills_benchmark()
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=8, hidden=8, depth=1, objective="causal"))
    model.run = RunConfig(data=DataConfig(limit=16, test_size=0.125), samples=SampleConfig(unit="item"),
                          model=model.config)
    for name in ("a", "b"):                                           # two runs, same folder name
        model.save_pretrained(tmp_path / name / "02_training" / "best_model")
        bench.main(["--checkpoint", str(tmp_path / name / "02_training" / "best_model"), "--items", "3"])
        assert "\n2 of 2 held-out items" in capsys.readouterr().out      # not "3 of 2"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "skills_a_02_training_best_model.json", "skills_b_02_training_best_model.json"]
    model.run = RunConfig(data=DataConfig(source=str(tmp_path / "gone.parquet")), model=model.config)
    model.save_pretrained(tmp_path / "gone")
    gone = tmp_path / "gone.parquet"
    with pytest.raises(SystemExit, match=f"cannot load the data of its run .*no such file or folder {gone}"):
        bench.main(["--checkpoint", str(tmp_path / "gone")])


def test_items_decode_their_segments(split):
    seq = split[1][0]
    item = skills.Item.of(seq)
    image, caption = tok.decode_item(seq)
    assert item.caption == caption and item.shape == image.shape[:2]
    assert (tok.PALETTE[item.image] == image).all()
    assert item.prompt == [int(t) for t in tok.centre_ids(seq)[:len(item.prompt)]]
    assert item.prompt[-1] == tok.SEG_END_ID and tok.decode(item.prompt)[-1].kind == "image"
    assert skills.Item.of(seq[:10]) is None                                 # not three segments


def test_caption_scores_of_a_perfect_and_a_constant_model(items, split):
    train_captions = [skills.Item.of(s).caption for s in split[0]]
    perfect = skills.caption_rows([i.caption for i in items], items, train_captions)
    assert [r["value"] for r in perfect] == [1.0, 1.0]
    groups = [skills.caption_group(c) for c in train_captions]
    majority = max(sorted(set(groups)), key=groups.count)
    constant = skills.caption_rows([f"thing. {majority}, x"] * len(items), items, train_captions)
    assert constant[0]["value"] == constant[0]["baseline"] and majority in constant[0]["baseline_is"]
    nonsense = skills.caption_rows(["qqq"] * len(items), items, train_captions)
    assert nonsense[0]["value"] == 0.0 and nonsense[1]["value"] == 0.0      # "qqq" has no ". ": no name
    expected = np.mean([skills.caption_group(i.caption) == majority for i in items])
    assert constant[0]["baseline"] == pytest.approx(expected)


def _stream(prompt, image_rows):
    """A Generation whose new tokens are the given rows of colour ids, then \\n."""
    new = []
    for r, row in enumerate(image_rows):
        new += list(row) + [tok.ROW_END_ID if r < len(image_rows) - 1 else tok.SEG_END_ID]
    return gen.Generation(prompt=prompt, new=new, stop_reason="segments")


def test_dimension_scores_of_perfect_wrong_and_unfinished_images(items, split):
    unigram = skills._unigram(split[0])
    perfect = [_stream(gen.shape_prompt(*i.shape), i.image + tok.FIRST_COLOUR_ID) for i in items]
    wrong = [_stream(gen.shape_prompt(*i.shape), (i.image + tok.FIRST_COLOUR_ID)[:, :-1]) for i in items]
    unfinished = [gen.Generation(g.prompt, g.new[:-1], "max_new_tokens") for g in perfect]
    rows = skills.dimension_rows({"data": perfect, "caption_first": wrong}, items, unigram)
    assert [r["value"] for r in rows] == [1.0, 0.0]
    assert skills.dimension_rows({"data": unfinished}, items, unigram)[0]["value"] == 0.0   # a failure
    assert 0 < rows[0]["baseline"] < 1e-20


def test_exact_image_probability_by_hand():
    p = np.zeros(tok.VOCAB_SIZE)
    p[tok.FIRST_COLOUR_ID:] = 0.5 / (tok.VOCAB_SIZE - tok.FIRST_COLOUR_ID)   # colours 0.5 in all
    p[tok.ROW_END_ID], p[tok.SEG_END_ID], p[tok.SPACE_ID] = 0.2, 0.1, 0.2
    # (2, 3): 6 colours, one \t, one \n
    assert skills._exact_image_probability(p, (2, 3)) == pytest.approx(0.5 ** 6 * 0.2 * 0.1)


def test_sprite_classifier_tells_groups_apart_and_bounds_the_sprite_score(items, split):
    rng = np.random.default_rng(0)
    red, blue = 27, 8                                                # palette indices
    images = [np.where(rng.random((12, 12)) < 0.7, c, 1) for c in (red, blue) for _ in range(20)]
    clf = skills.SpriteClassifier().fit(images, ["red"] * 20 + ["blue"] * 20)
    assert list(clf.predict([np.full((10, 10), red), np.full((10, 10), blue)])) == ["red", "blue"]
    assert list(skills.SpriteClassifier().fit(images[:3], ["one"] * 3).predict(images)) == ["one"] * 40
    assert skills.SpriteClassifier.features([np.zeros((30, 5), int)]).shape == (1, 17 * len(tok.PALETTE))
    classifier = skills.fit_classifier(split[0])
    real = skills.sprite_rows([i.image for i in items], items, classifier)
    assert real[0]["value"] == real[1]["value"]                      # drawing the real sprites = the ceiling
    truth = np.array([skills.caption_group(i.caption) for i in items])
    assert real[0]["baseline"] == pytest.approx(max(1 / len(classifier.groups), np.mean(truth == classifier.majority)))
    # a subset of one group mostly: the floor is the constant answer, not chance
    faces = skills.SpriteClassifier().fit(images, ["face"] * 30 + ["flag"] * 10)
    assert faces.majority == "face"
    lopsided = [dataclasses.replace(i, caption=f"x. {g}, y") for i, g in zip(items, ["face"] * 3 + ["flag"])]
    floor = skills.sprite_rows([i.image for i in lopsided], lopsided, faces)[0]
    assert floor["baseline"] == 0.75 and "always the majority group ('face')" in floor["baseline_is"]
    blank = skills.sprite_rows([np.full(i.shape, 1) for i in items], items, classifier)
    assert blank[0]["value"] == np.mean(classifier.predict([np.full(i.shape, 1) for i in items])
                                        == np.array([skills.caption_group(i.caption) for i in items]))


def test_report_of_a_tiny_model_has_every_skill_and_is_seeded(split):
    train, test = split[0][:60], split[1][:6]
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, objective="causal", positions=True))
    cfg = skills.SkillsConfig(items=3, seed=0)
    report = skills.measure(model, train, test, cfg)
    table = report.table
    assert list(table.columns) == list(skills.COLUMNS)
    assert {"dimensions", "sprite -> caption", "caption -> sprite", "bits per token (data)",
            "bits per token (caption-first)"} == set(table["skill"])
    generation = table[~table["skill"].str.startswith("bits") & ~table["metric"].str.startswith(("swap", "retrieval"))]
    assert generation["value"].between(0, 1).all() and (generation["items"] == 3).all()
    cross = table[table["metric"].str.startswith(("swap", "retrieval"))]
    assert len(cross) == 8 and cross["value"].notna().all()          # 2 directions x gain, share, 2 top-1 among 3 (asked 8)
    assert set(cross.loc[cross["metric"].str.startswith("retrieval"), "baseline"]) == {1 / 3}
    bits = table[table["skill"].str.startswith("bits")].set_index(["skill", "metric"])
    assert (bits["value"] > 0).all() and (bits["baseline"] > 0).all()
    assert bits.loc[("bits per token (data)", "all"), "value"] > 5      # untrained: near log2(113) = 6.8
    assert len(report.examples["drawn"]) == 3 and report.examples["drawn"][0].shape[:2] == report.examples["shapes"][0]
    again = skills.measure(model, train, test, cfg, classifier=skills.fit_classifier(train))
    pd.testing.assert_frame_equal(table, again.table)
    assert report.value("dimensions", "data order: shape -> image") == table["value"].iloc[0]
    assert math.isnan(report.value("nope", "nope")) and "| dimensions |" in report.markdown()
    cells = [line.replace("\\|", "").split("|") for line in report.markdown().splitlines()]
    assert all(len(row) == 8 for row in cells)                        # "p(a | b)" does not split a cell


# ---------------------------------------------------------------------------------------------
# Cross-modal swap gain and retrieval, on hand-made models


class Blind(torch.nn.Module):
    """PixelByteModel's calling convention; logits from the token's own causal window only (the
    row above and the left neighbour, inside its segment): it never reads an earlier segment."""
    config = SimpleNamespace(objective="causal")

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cells = torch.nn.Embedding(tok.VOCAB_SIZE, tok.VOCAB_SIZE)

    def forward(self, x, targets=None, positions=None):                 # x : (B, L, 3, 3)
        return self.cells(x.flatten(2)).sum(2), None                     # (B, L, V)


class Linked(torch.nn.Module):
    """Reads every earlier token of the stream: each token seen so far (any cell of the causal
    windows up to here) raises the logit of the token ``link`` pairs it with (a letter with a
    colour), so it predicts an item's caption from its sprite's colour and back."""
    config = SimpleNamespace(objective="causal")

    def __init__(self, link: torch.Tensor):                              # (V, V)
        super().__init__()
        self.link = link

    def forward(self, x, targets=None, positions=None):
        seen = torch.nn.functional.one_hot(x.flatten(2), tok.VOCAB_SIZE).amax(2).cummax(1).values   # (B, L, V)
        seen[..., tok.PAD_ID] = 0
        return 8.0 * seen.double() @ self.link, None


@pytest.fixture(scope="module")
def toy():
    """8 solid sprites of 8 colours, each captioned with the letter of its colour: (items, link)."""
    items, link = [], torch.zeros(tok.VOCAB_SIZE, tok.VOCAB_SIZE, dtype=torch.float64)
    for k, colour in enumerate((8, 27, 13, 40, 45, 3, 20, 33)):
        letter = "abcdefgh"[k]
        item = skills.Item.of(tok.encode_item(np.full((3, 4, 3), tok.PALETTE[colour], np.uint8), letter * 5))
        ids = (tok.FIRST_COLOUR_ID + int(item.image[0, 0]), int(tok.text_to_ids(letter)[0]))
        link[ids[0], ids[1]] = link[ids[1], ids[0]] = 1
        items.append(item)
    assert len({int(i.image[0, 0]) for i in items}) == 8
    return items, link


def test_stream_bits_match_teacher_forced_log_likelihood(items):
    """The batched, padded fast path against ``generate.log_likelihood`` (token by token)."""
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, objective="causal", positions=True)).eval()
    pairs = [(0, 0), (1, 0), (2, 3), (3, 1)]
    for direction in skills.CROSS:
        streams, starts = zip(*(skills.pair_stream(items[a], items[b], direction) for a, b in pairs))
        with torch.no_grad():
            fast = skills.stream_bits(model, list(streams), list(starts), batch_size=3)
            ids = [tok.centre_ids(s).tolist() for s in streams]
            slow = gen.log_likelihood(model, [i[:k] for i, k in zip(ids, starts)], [i[k:] for i, k in zip(ids, starts)])
        assert [len(f) for f in fast] == [len(s) - k for s, k in zip(streams, starts)]
        np.testing.assert_allclose([-f.sum() * math.log(2) for f in fast], slow, rtol=1e-4)
        b = items[pairs[1][1]]
        scored = b.segments[:2] if direction == "caption -> sprite" else b.segments[2:]
        assert (streams[1][starts[1]:] == np.concatenate(scored)).all()   # b's own segments, after a's


def test_guided_stream_bits_are_the_unconditional_and_conditional_streams_at_0_and_1(items):
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, objective="causal", positions=True,
                                       condition=True)).eval()
    torch.nn.init.normal_(model.memory.into.weight, std=0.5)         # a condition that changes the logits
    streams, starts = zip(*(skills.pair_stream(items[a], items[b], "caption -> sprite") for a, b in [(0, 1), (2, 2)]))
    streams, starts = list(streams), list(starts)
    blind = PixelByteModel(model.config).eval()
    blind.load_state_dict(model.state_dict())
    torch.nn.init.zeros_(blind.memory.into.weight)                   # the same model, its condition read as nothing
    with torch.no_grad():
        plain, cond, uncond, two = (skills.stream_bits(m, streams, starts, guidance=g)
                                    for m, g in ((model, None), (model, 1.0), (model, 0.0), (model, 2.0)))
        reference = skills.stream_bits(blind, streams, starts)
        one = data.ItemDataset(streams[:1])
        x, y, positions = one.collate([one[0]])
        c, u = model(x, None, positions)[0], model(x, None, positions, unconditional=torch.tensor([True]))[0]
        by_hand = -torch.log_softmax((u + 2 * (c - u)).double(), -1)[0].gather(-1, y[0, :, None])[:, 0]
    for a, b in zip(plain, cond):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(uncond, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(plain[0], uncond[0])                       # the condition matters, so the check can fail
    np.testing.assert_allclose(two[0], by_hand.numpy()[starts[0]:len(streams[0])] / math.log(2), rtol=1e-5)


def test_a_model_blind_to_the_partner_scores_no_gain_and_exact_chance(items):
    groups = [skills.caption_group(i.caption) for i in items]
    rows = skills.cross_rows(Blind(), items, skills.SkillsConfig(retrieval=(4, 8, 32)), groups)
    assert {r["metric"].split(" among ")[-1].split(" ")[0] for r in rows if "among" in r["metric"]} == {"4", "8", "32"}
    for r in rows:
        assert r["value"] == r["baseline"], r                        # gain 0, share 0.5, top-1 exactly 1 / k
    squeezed = [r for r in rows if "among 32" in r["metric"]]                   # named as asked, scored among 12
    assert len(squeezed) == 4 and all("chance (1 / 12); only 12 items, not 32" in r["baseline_is"]
                                      and r["baseline"] == 1 / 12 and r["items"] == 12 for r in squeezed)
    assert [r["items"] for r in rows if "among 4" in r["metric"] or "among 8" in r["metric"]] == [12, 8] * 4
    assert sum(r["metric"].endswith(") / p(sprite)") for r in rows) == 3          # noisy channel, each K
    constant = Blind()
    torch.nn.init.zeros_(constant.cells.weight)                       # constant logits: every candidate ties
    assert all(r["value"] == r["baseline"] for r in skills.cross_rows(constant, items, skills.SkillsConfig(), groups))


def test_a_model_that_reads_the_partner_scores_high(toy):
    items, link = toy
    rows = skills.cross_rows(Linked(link), items, skills.SkillsConfig(retrieval=(4, 8)))
    for r in rows:
        if r["metric"].startswith("swap gain"):
            assert r["value"] > 1.0 and r["baseline"] == 0.0           # bits per token
        else:
            assert r["value"] == 1.0, r                                # every share and top-1
    swapped = skills.cross_rows(Blind(), items, skills.SkillsConfig(retrieval=(8,)))
    assert [r["value"] for r in swapped] == [r["baseline"] for r in swapped]
    next_model = SimpleNamespace(config=SimpleNamespace(objective="next"))
    left_out = skills.cross_rows(next_model, items, skills.SkillsConfig())
    assert all(math.isnan(r["value"]) and "causal" in r["baseline_is"] for r in left_out)
    alone = skills.cross_rows(Blind(), items[:1], skills.SkillsConfig())       # one held-out item: no partner
    assert all(math.isnan(r["value"]) and "2 held-out items" in r["baseline_is"] for r in alone)


def test_one_per_group_shows_each_group_first_then_the_rest_in_order():
    captions = ["a. x, s", "b. x, s", "c. y, s", "d. x, t", "e. z, s"]
    assert skills.one_per_group(captions, 4) == [0, 2, 4, 1]
    assert skills.one_per_group(captions, 9) == [0, 2, 4, 1, 3]
    assert skills.one_per_group(["free text one", "free text two"], 2) == [0, 1]      # no groups: as given


def test_partners_are_other_items_of_other_groups():
    groups = ["a", "a", "a", "b", "c", "c"]
    partner = skills.partners(6, groups, seed=1)
    assert all(p != i and groups[p] != groups[i] for i, p in enumerate(partner))
    assert partner == skills.partners(6, groups, seed=1)
    assert all(p != i for i, p in enumerate(skills.partners(3, ["a"] * 3)))        # one group: any other item
    with pytest.raises(ValueError, match="retrieval"):
        skills.SkillsConfig(retrieval=(1,))


def test_report_on_free_text_paragraphs_leaves_the_group_metrics_out(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_free_text_dataset.py"
    spec = importlib.util.spec_from_file_location("make_free_text_dataset", script)
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    seqs = data.sequences(data.load_pixelbytes(maker.make(tmp_path / "paragraphs.parquet", items=40)))
    train_idx, test_idx = data.split_items(len(seqs), 0.15, 0)
    train, test = [seqs[i] for i in train_idx], [seqs[i] for i in test_idx]
    captions = [skills.Item.of(s).caption for s in train]
    assert min(map(len, captions)) > 300 and "no groups" in skills.no_groups_reason(captions)
    assert skills.fit_classifier(train) is None
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, objective="causal", positions=True))
    table = skills.measure(model, train, test, skills.SkillsConfig(items=4, retrieval=(4,))).table
    grouped = table[table["metric"].str.contains("group accuracy|ceiling")]
    assert len(grouped) == 3 and grouped["value"].isna().all() and grouped["baseline"].isna().all()
    assert grouped["baseline_is"].str.startswith("left out: the captions have no groups").all()
    cross = table[table["metric"].str.startswith(("swap", "retrieval"))]
    assert len(cross) == 8 and cross["value"].notna().all() and (cross["items"] == 4).all()


def test_the_cross_modal_benchmark_sweeps_guidance_and_counts_bits_per_item(tmp_path, monkeypatch, capsys):
    from pixelbyte.config import DataConfig, RunConfig, SampleConfig

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_modal.py"
    spec = importlib.util.spec_from_file_location("benchmarks_cross_modal", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)               # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    assert bench.entropy_bits(["a", "a", "b", "b"]) == 1.0 and bench.entropy_bits(["a"] * 3) == 0.0
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    results = {}
    for condition in (True, False):
        torch.manual_seed(0)
        model = PixelByteModel(ModelConfig(model="lstm", dim=8, hidden=8, depth=1, objective="causal",
                                           condition=condition, condition_dropout=0.1 * condition))
        if condition:
            torch.nn.init.normal_(model.memory.into.weight, std=0.5)
        model.run = RunConfig(data=DataConfig(limit=24, test_size=0.25), samples=SampleConfig(unit="item"),
                              model=model.config)
        model.save_pretrained(tmp_path / f"c{condition}" / "best_model")
        results[condition] = bench.main(bench.Args(checkpoint=str(tmp_path / f"c{condition}" / "best_model"),
                                                   items=4, scales=(0.0, 1.0, 2.0)))
    assert "| caption -> sprite | 2 |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        f"cross_modal_{tmp_path.name}_c{c}_best_model.json" for c in (False, True)]   # the last three folders
    rows = results[True]["rows"]
    assert [(r["direction"], r["guidance"]) for r in rows] == [(d, g) for g in (0.0, 1.0, 2.0) for d in skills.CROSS]
    side = results[True]["dataset"]
    assert side["category_bits"] > side["group_bits"] >= 0          # the first items: one group, several subgroups
    for r in rows:
        tokens = side["image_tokens_per_item" if r["direction"] == "caption -> sprite" else "caption_tokens_per_item"]
        assert r["gain_bits_per_item"] == pytest.approx(r["gain_bits_per_token"] * tokens)
    assert rows[0]["own_bits_per_token"] != rows[2]["own_bits_per_token"]      # guidance 0 reads no condition
    assert [r["guidance"] for r in results[False]["rows"]] == [1.0, 1.0]        # no condition: the model itself


def test_the_report_samples_with_guidance_when_asked(split):
    train, test = split[0][:60], split[1][:6]
    torch.manual_seed(0)
    model = PixelByteModel(ModelConfig(model="lstm", dim=18, hidden=16, objective="causal", positions=True,
                                       condition=True, condition_dropout=0.1))
    torch.nn.init.normal_(model.memory.into.weight, std=0.5)         # a condition that changes the samples
    reports = {g: skills.measure(model, train, test, skills.SkillsConfig(items=3, seed=0, guidance=g))
               for g in (None, 1.0, 4.0)}
    pd.testing.assert_frame_equal(reports[None].table, reports[1.0].table)        # scale 1 is the model itself
    assert reports[None].examples["captions"] == reports[1.0].examples["captions"]
    guided, plain = reports[4.0].examples, reports[None].examples
    assert guided["captions"] != plain["captions"] or any(
        a.shape != b.shape or (a != b).any() for a, b in zip(guided["drawn"], plain["drawn"]))
    likelihood = ~reports[None].table["metric"].str.startswith(("swap", "retrieval")) & \
        ~reports[None].table["skill"].str.startswith("bits")
    pd.testing.assert_frame_equal(reports[None].table[~likelihood], reports[4.0].table[~likelihood])  # not sampled
