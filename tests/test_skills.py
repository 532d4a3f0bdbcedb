"""skills: the report's metrics on hand-made cases (a perfect model's outputs, a constant
model's), the sprite classifier, the baselines, and the report of a real (tiny) model."""
import dataclasses
import math

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
    assert skills.caption_name("no group here") == "" and skills.name_similarity("abc", "abc") == 1.0
    run_on = "smiling face. smileys and emotion, face concerned face. smiley"       # cut by the budget
    assert skills.caption_group(run_on) == "smiley"
    assert skills.caption_group(run_on, known={"smileys and emotion", "flags"}) == "smileys and emotion"
    assert skills.caption_group("st. kitts. flags, country flag", known={"flags"}) == "flags"


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
    generation = table[~table["skill"].str.startswith("bits")]
    assert generation["value"].between(0, 1).all() and (generation["items"] == 3).all()
    bits = table[table["skill"].str.startswith("bits")].set_index(["skill", "metric"])
    assert (bits["value"] > 0).all() and (bits["baseline"] > 0).all()
    assert bits.loc[("bits per token (data)", "all"), "value"] > 5      # untrained: near log2(113) = 6.8
    assert len(report.examples["drawn"]) == 3 and report.examples["drawn"][0].shape[:2] == report.examples["shapes"][0]
    again = skills.measure(model, train, test, cfg, classifier=skills.fit_classifier(train))
    pd.testing.assert_frame_equal(table, again.table)
    assert report.value("dimensions", "data order: shape -> image") == table["value"].iloc[0]
    assert math.isnan(report.value("nope", "nope")) and "| dimensions |" in report.markdown()
