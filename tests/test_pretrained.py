"""The shipped model (pixelbyte/pretrained/emoji): it loads by name and still has its skills on
a handful of held-out items, with a margin -- so a change that breaks the encoder, the model,
the positions or generation fails here. Its full skills report is benchmarks/skills.py's."""
import numpy as np
import pytest
import torch

from pixelbyte import data, generate as gen, skills
from pixelbyte.models import PRETRAINED, PixelByteModel


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    model = PixelByteModel.from_pretrained("pretrained")
    seqs = data.load(model.run.data)
    train_idx, test_idx = data.split(seqs, model.run.data)
    items = skills.spread([skills.Item.of(seqs[i]) for i in test_idx], 8)
    return model, [seqs[i] for i in train_idx], [seqs[i] for i in test_idx], items


def test_it_loads_by_name_with_its_run(shipped):
    model, _, test, _ = shipped
    assert PRETRAINED["pretrained"] == PRETRAINED["pixelbyte-emoji"]
    run = model.run
    assert run.data.source == "embedded" and run.samples.unit == "item" and run.samples.orders == "both"
    assert model.config.objective == "causal" and model.config.positions and not model.training
    assert len(test) == round(len(data.load(run.data)) * run.data.test_size)


def test_it_models_held_out_items_far_better_than_token_frequencies(shipped):
    model, train, test, _ = shipped
    bits = skills._bits_rows(model, test[:16], skills._unigram(train))
    overall = next(r for r in bits if r["metric"] == "all" and "(data)" in r["skill"])
    assert overall["value"] < 1.2 and overall["value"] < 0.3 * overall["baseline"], overall


def test_it_draws_images_of_the_declared_size(shipped):
    model, _, _, items = shipped
    outs = gen.generate(model, [gen.shape_prompt(*i.shape) for i in items], [2 * h * (w + 1) for h, w in
                        (i.shape for i in items)], temperature=0.8, seed=0, stop_after_segments=1)
    assert gen.dimension_consistency(outs)["consistent"] >= 6, "fewer than 6 of 8 free images kept their size"
    drawn = [o.images[-1] for o in outs if o.images]
    assert np.mean([len(np.unique(d.reshape(-1, 3), axis=0)) >= 2 for d in drawn]) > 0.7   # not blank


def test_its_captions_follow_the_data_and_beat_the_majority_group(shipped):
    model, train, _, _ = shipped
    _, _, test, _ = shipped
    items = skills.spread([skills.Item.of(s) for s in test], 24)
    outs = gen.generate(model, [i.prompt for i in items], 160, temperature=0.0, stop_after_segments=1)
    written = [o.texts[-1] if o.texts else "" for o in outs]
    assert np.mean([". " in w and "," in w for w in written]) > 0.8, written[:4]   # name. group, subgroup
    rows = skills.caption_rows(written, items, [skills.Item.of(s).caption for s in train])
    assert rows[0]["value"] > rows[0]["baseline"], rows[0]


def test_it_reads_the_other_modality(shipped):
    """Trained with the condition: an item's caption is likelier after its own sprite than after
    another's, and its image after its own caption (swap gains above a model that ignores them)."""
    model, _, _, items = shipped
    rows = skills.cross_rows(model, items, skills.SkillsConfig(retrieval=(8,)),
                             [skills.caption_group(i.caption) for i in items])
    gain = {r["metric"].split(" minus")[0]: r["value"] for r in rows if r["metric"].startswith("swap gain")}
    assert model.config.condition
    assert gain["swap gain: own sprite"] > 0.1 and gain["swap gain: own caption"] > 0.0, gain
