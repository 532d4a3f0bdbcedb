"""compare: the run plan, one table per comparison (deterministic for a seed), the budget cap,
the paper's published numbers, and the comparison plots. Tiny: 2 configs, 3 steps, 12 items."""
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from pixelbyte import compare, data, plots
from pixelbyte.config import DataConfig
from pixelbyte.models import PAPER_BEST, PAPER_CONFIGS, PAPER_RESULTS, PixelByteModel, paper_config

CONFIGS = "rnn_bi_pxby_conv_81_32_2,att_uni_pxby_conv_36_32_1"
TINY = dict(seq_length=16, stride=8, batch_size=8, max_steps=3, max_chunks=2, metric_batches=2,
            eval_batches=2, skill_items=2, copy_tasks="selective,text", copy_items=4, copy_steps=2, device="cpu")
DATA = DataConfig(limit=12, test_size=0.25)


@pytest.fixture(scope="module")
def seqs():
    return data.load(DATA)


@pytest.fixture(scope="module")
def result(seqs, tmp_path_factory):
    return compare.compare(seqs, CONFIGS, "next,causal", compare.CompareConfig(**TINY),
                           out_dir=tmp_path_factory.mktemp("first"), log=lambda *_: None, data_cfg=DATA)


def test_plan_expands_sets_and_skips_impossible_causal_runs():
    runs, skipped = compare.plan("paper", "next")
    assert [name for name, _ in runs] == list(PAPER_CONFIGS) and skipped.empty
    assert [name for name, _ in compare.plan("best", "next")[0]] == list(PAPER_BEST)
    runs, skipped = compare.plan("paper", "next,causal")
    causal = [name for name, objective in runs if objective == "causal"]
    assert len(runs) == 15 + len(causal) and len(causal) + len(skipped) == 15
    assert all(not PAPER_CONFIGS[n].bidirectional and PAPER_CONFIGS[n].embedding == "pxby" for n in causal)
    assert set(skipped["reason"].str.split(":").str[0]) == {"bidirectional", "centre-only embedding"}
    with pytest.raises(ValueError, match="configs"):
        compare.plan("rnn_bi_pxby_conv_81_32", "next")
    with pytest.raises(ValueError, match="objectives='last'"):
        compare.plan("best", "last")
    with pytest.raises(ValueError, match="CompareConfig.max_steps"):
        compare.CompareConfig(max_steps=-1)
    with pytest.raises(ValueError, match="copy_tasks='selective,sprites' is invalid: expected comma-separated values"):
        compare.CompareConfig(copy_tasks="selective,sprites")
    with pytest.raises(ValueError, match="no run is possible.*bidirectional"):
        compare.plan("rnn_bi_pxby_conv_81_32_2", "causal")
    with pytest.raises(ValueError, match=r"CompareConfig.unit='token' is invalid: allowed values are \['window'"):
        compare.CompareConfig(unit="token")
    with pytest.raises(ValueError, match="CompareConfig.budget_s=-1 is invalid: expected a number >= 0"):
        compare.CompareConfig(budget_s=-1)


def test_the_mixer_is_one_choice():
    """ssm="mamba2" alone gives BysMamba one head of all its inner channels (headdim None)."""
    cfg = compare.CompareConfig(ssm="mamba2")
    paper = cfg.model("ssm_uni_pxby_conv_81_64_2", objective="causal")
    assert (paper.ssm, paper.expand, paper.headdim) == ("mamba2", 1, 81)
    assert cfg.model("rnn_bi_pxby_conv_81_32_2") == paper_config("rnn_bi_pxby_conv_81_32_2")
    small = cfg.model("ssm_uni_pxby_conv_36_16_1")                   # under the budget: expand 2
    assert (small.expand, small.headdim) == (2, 72)
    assert small == paper_config("ssm_uni_pxby_conv_36_16_1", ssm="mamba2")   # nothing re-derived here


def test_compare_gives_one_row_per_run_with_every_column(result):
    table = result.table
    assert list(table.columns) == list(compare.COLUMNS)
    assert list(table["run"]) == ["rnn_bi_pxby_conv_81_32_2/next", "att_uni_pxby_conv_36_32_1/next",
                                  "att_uni_pxby_conv_36_32_1/causal"]
    assert list(result.skipped["config"]) == ["rnn_bi_pxby_conv_81_32_2"]
    assert (table["steps"] == 3).all()
    assert list(table["samples"]) == ["window", "window", "item"]         # causal runs: whole items
    assert table.loc[table["samples"] == "window", "train_tokens"].round().eq(3 * 8 * 16).all()
    for run, params in zip(table["run"], table["params"]):
        name, objective = run.split("/")
        positions = objective == "causal"                                # whole items get positions
        assert params == PixelByteModel(paper_config(name, objective=objective, positions=positions)).num_parameters()
    cross = ["swap_caption_to_image", "swap_image_to_caption", "retrieval8_sprite", "retrieval8_caption",
             "channel8_sprite", "channel8_caption"]
    numeric = table.drop(columns=["run", "config", "family", "objective", "samples", "mixer",
                                  "copy_selective", "copy_image", "copy_text", *cross]).astype(float)
    assert np.isfinite(numeric.to_numpy()).all()
    causal = table["objective"] == "causal"                      # the cross-modal rows need a causal model
    assert table.loc[causal, cross].notna().all().all() and table.loc[~causal, cross].isna().all().all()
    assert ((table["hamming_mean"] >= 0) & (table["hamming_mean"] <= 1)).all()
    for column in compare.SKILL_COLUMNS:                         # swap gains are bits, the rest shares
        if column not in cross:
            assert table[column].between(0, 1).all(), column
    assert table.loc[causal, cross[2:]].stack().between(0, 1).all()
    for column in ("copy_selective", "copy_text"):
        assert table[column].dropna().between(0, 1).all() and table[column].notna().sum() == 2, column
    rows = table.set_index("run")                                # bidirectional: no copy skill measured
    assert rows.loc["rnn_bi_pxby_conv_81_32_2/next", ["copy_selective", "copy_text"]].isna().all()
    assert rows.loc["att_uni_pxby_conv_36_32_1/next", "copy_text"] == rows.loc["att_uni_pxby_conv_36_32_1/causal", "copy_text"]
    assert table["copy_image"].isna().all()                      # not asked for
    assert set(result.reports) == set(table["run"])
    for run, report in result.reports.items():                     # the columns are the report's numbers
        assert table.set_index("run").loc[run, "dims_data"] == report.value("dimensions", "data order: shape -> image")
    assert {"dimensions", "sprite -> caption", "caption -> sprite"} <= set(result.skill_baselines["skill"])
    val = result.histories[result.histories["split"] == "val"]
    assert set(val["run"]) == set(table["run"]) and (val.groupby("run")["step"].max() == 3).all()
    assert list(result.baselines["method"]) == ["repeat_last", "most_frequent_train",
                                                "most_frequent_prompt", "random"]
    assert set(result.models) == set(table["run"])


def test_same_seed_gives_the_same_table_in_one_process_or_two(result, seqs, tmp_path):
    again = compare.compare(seqs, CONFIGS, "next,causal", compare.CompareConfig(**TINY), out_dir=tmp_path,
                            log=lambda *_: None, data_cfg=DATA, workers=2)
    timing = list(compare.TIMING_COLUMNS)
    pd.testing.assert_frame_equal(result.table.drop(columns=timing), again.table.drop(columns=timing))
    assert list(again.models) == list(result.models)              # the plan's order, models loaded back
    assert list(pd.read_csv(tmp_path / "comparison.csv")["run"]) == list(result.table["run"])   # files too
    for run, model in result.models.items():
        for (name, a), b in zip(model.state_dict().items(), again.models[run].state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), (run, name)
    assert list(again.reports) == list(result.reports)
    with pytest.raises(ValueError, match="CompareConfig.workers=0 is invalid: expected an integer >= 1"):
        compare.compare(seqs, CONFIGS, "next", compare.CompareConfig(**TINY), out_dir=tmp_path, workers=0)


def test_budget_caps_the_steps_from_a_timing_probe(seqs, tmp_path):
    from pixelbyte.train import PROBE_STEPS

    cheap = dict(TINY, skill_items=0, copy_steps=0, max_chunks=1, max_steps=PROBE_STEPS + 4)
    for budget, steps in ((1e-6, PROBE_STEPS), (1e6, PROBE_STEPS + 4)):
        splits = compare.Splits.make(seqs, DATA, compare.CompareConfig(**cheap, budget_s=budget))
        row, _, _, report = compare.run_config("att_uni_pxby_conv_36_32_1", "next", splits, tmp_path / str(steps),
                                               log=lambda *_: None)
        assert row["steps"] == steps                  # a tiny budget stops right after the probe
        assert np.isnan(row["copy_text"]) and np.isnan(row["dims_data"]) and report is None


def test_a_comparison_stopped_after_its_first_config_keeps_that_configs_rows(seqs, tmp_path, monkeypatch):
    run_config, calls = compare.run_config, []

    def stopped_after_one(name, *args, **kwargs):
        if calls and name != calls[0]:
            raise KeyboardInterrupt("the notebook's budget ran out")
        calls.append(name)
        return run_config(name, *args, **kwargs)

    monkeypatch.setattr(compare, "run_config", stopped_after_one)
    cheap = compare.CompareConfig(**dict(TINY, skill_items=0, copy_steps=0, max_chunks=1))
    with pytest.raises(KeyboardInterrupt):
        compare.compare(seqs, CONFIGS, "next", cheap, out_dir=tmp_path, log=lambda *_: None, data_cfg=DATA)
    table, histories = pd.read_csv(tmp_path / "comparison.csv"), pd.read_csv(tmp_path / "histories.csv")
    assert list(table["run"]) == ["rnn_bi_pxby_conv_81_32_2/next"] and list(table.columns) == list(compare.COLUMNS)
    assert set(histories["run"]) == {"rnn_bi_pxby_conv_81_32_2/next"} and (histories["split"] == "val").any()


def test_paper_results_are_the_six_best_rows_and_are_labelled(result):
    assert list(PAPER_RESULTS) == list(PAPER_BEST)
    assert PAPER_RESULTS["rnn_bi_pxby_conv_81_32_2"]["hamming"] == (0.149, 0.062)
    table = compare.paper_comparison(result.table, "embedded")
    assert list(table.index) == list(PAPER_BEST)
    assert any("a different dataset" in c for c in table.columns)
    assert table.loc["rnn_bi_pxby_conv_81_32_2"].str.contains(r"\+-").all()
    assert (table.loc["ssm_bi_pxby_conv_81_64_2"].str.contains("not run")).sum() == 3
    same = compare.paper_comparison(result.table, "ffurfaro/PixelBytes-Pokemon")
    assert not any("a different dataset" in c for c in same.columns)


def test_views_and_plots(result):
    shown = compare.display_table(result.table)
    assert shown.loc["att_uni_pxby_conv_36_32_1/next", "hamming"].count("+-") == 1
    best = compare.winners(result.table)
    assert set(best["objective"]) == {"next", "causal"}
    assert set(best["family"].str.split(", ").sum()) <= {"rnn", "att"}
    assert set(compare.best_per_family(result.table)) == {"rnn", "att"}
    assert isinstance(plots.validation_curves(result.histories), Figure)
    assert isinstance(plots.metric_bars(compare.bar_summary(result)), Figure)
    references, captions, sprites = compare.family_sprites(result)
    assert len(sprites) == 2 and len(references) == len(captions) == TINY["skill_items"]
    for images in sprites.values():                    # drawn with the references' declared shapes
        assert [im.shape for im in images] == [r.shape for r in references]
    assert isinstance(plots.sprite_rows(sprites, references, captions), Figure)
