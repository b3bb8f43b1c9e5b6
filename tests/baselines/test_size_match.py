"""Size matching: ``target="params"`` gives every pruner PAT's parameter count at the ratio."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines import flap, llm_pruner, slicegpt, wanda_sp
from baselines.common import count_params, pat_params, target_params
from pat.stage import RunContext
from bench.harness.registry import make_stage
from pat import PATConfig, attach, finalize
from tests.tiny import TINY, randomize_pat, tiny_batch, tiny_model

CALIB = tiny_batch(8, 16, seed=3)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_pat_params_is_the_count_of_the_model_pat_finalizes(name, ratio):
    model = tiny_model(name)
    want = pat_params(model, ratio)
    attach(model, PATConfig(prune_ratio=ratio, lora_rank=0), total_steps=30)
    randomize_pat(model, torch.Generator().manual_seed(0))
    small = finalize(model)
    assert count_params(small) == want
    assert small.config.hidden_size == PATConfig(prune_ratio=ratio).target_keep(48, 4)


def test_target_names_the_field():
    m = tiny_model("llama-mha")
    assert target_params(m, 0.25, "ratio") == round(0.75 * count_params(m))
    with pytest.raises(ValueError, match="target"):
        target_params(m, 0.25, "size")


@pytest.mark.parametrize("slice_head", [False, True])
def test_slicegpt_params_target_picks_the_width_closest_to_pats_count(slice_head):
    m = tiny_model("llama-gqa-tied", num_hidden_layers=3)
    goal = pat_params(m, 0.5)
    widths = range(8, 49, 8)
    best = min(widths, key=lambda w: abs(slicegpt.sliced_params(m, w, slice_head) - goal))
    assert slicegpt.hidden_for_params(m, goal, 8, slice_head) == best
    pruned, rep = slicegpt.prune(m, 0.5, CALIB, target="params", slice_head=slice_head)
    assert rep["hidden_after"] == best and rep["params_target"] == goal and rep["params_after"] == count_params(pruned)


def test_stage_records_target_params_and_calibration_source():
    from bench.harness.calibration import calibration_sampler

    class Tok:  # the sampler is only called through the stage here; a fake draw avoids the data directory
        pass

    sampler = calibration_sampler(Tok(), seed=0, source="c4")
    assert sampler.source == "c4"

    def draw(n=128, seq_len=128):
        return tiny_batch(n, seq_len, seed=5)

    draw.source = "c4"
    stage = make_stage("wanda_sp", ratio=0.25, target="params", calib_n=4, calib_len=16)
    model = tiny_model("llama-mha", num_hidden_layers=3)
    goal = pat_params(model, 0.25)
    stage.prepare(model, RunContext(calibration=draw, extra={"stage_index": 0}))
    rep = stage.report()
    assert rep["calibration"] == {"source": "c4", "n": 4, "seq_len": 16}
    assert rep["target"] == "params" and rep["params_target"] == goal


# ------------------------------------------------------------------------------------------------- slow: SmolLM2
@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.2, 0.25, 0.3])
def test_smollm2_every_pruner_lands_within_one_percent_of_pats_count(smollm2, ratio):
    model, _ = smollm2
    goal = pat_params(model, ratio)
    assert goal == pytest.approx(count_params(model) * PATConfig(prune_ratio=ratio).target_keep(576, 9) / 576,
                                 rel=1e-3)  # every SmolLM2 weight has one hidden-size side
    calib = tiny_batch(2, 32, seed=11) + 1000
    runs = {
        "llm_pruner": lambda m: llm_pruner.prune(m, ratio, calib, target="params"),
        "llm_pruner_nearest": lambda m: llm_pruner.prune(m, ratio, calib, target="params", rounding="nearest"),
        "wanda_sp": lambda m: wanda_sp.prune(m, ratio, calib, target="params"),
        "flap": lambda m: flap.prune(m, ratio, calib, target="params"),
        "slicegpt": lambda m: slicegpt.prune(m, ratio, calib, target="params"),
    }
    for name, run in runs.items():
        pruned, rep = run(copy.deepcopy(model))
        got = count_params(pruned)
        assert rep["params_after"] == got and rep["params_target"] == goal
        assert abs(got / goal - 1) <= 0.01, (name, got, goal)
        del pruned


# ------------------------------------------------------------------------------------------------------ reporting
def _runs():
    import pandas as pd

    from bench.harness import reporting as REP

    rows = [("Dense", "Dense", "—", 0.0, 1_000_000), ("PAT", "PAT", "PAT", 0.25, 750_000),
            ("SliceGPT", "SliceGPT", "P→FT", 0.25, 755_000), ("LLM-Pruner", "LLM-Pruner", "P→FT", 0.25, 800_000),
            ("LLM-Pruner", "LLM-Pruner", "P→FT", 0.3, 690_000)]
    runs = pd.DataFrame([{"run_id": f"r{i}", "model": "m", "status": "success", "family": f, "method": n, "mode": mo,
                          "ratio": r, "acc": 30.0 + i, "ppl_wikitext2": 100.0, "params": p}
                         for i, (f, n, mo, r, p) in enumerate(rows)])
    return REP, REP.size_check(runs)


def test_report_rows_show_params_and_mark_rows_off_their_ratios_size():
    REP, runs = _runs()
    off = dict(zip(runs["run_id"], runs["size_off"]))
    assert off["r2"] == pytest.approx(755 / 750 - 1) and off["r3"] == pytest.approx(800 / 750 - 1)
    assert off["r4"] == pytest.approx(690 / 700 - 1)  # no PAT run at 30 %: (1 - 0.3) x dense
    t = REP.ratio_table(runs, "m").set_index("Method")
    assert t.loc["SliceGPT", "25 %"] == "32.00 / 100.0 (755.0k)"  # +0.7 %: within 1 %, not marked
    assert t.loc["LLM-Pruner", "25 %"] == "33.00 / 100.0 (800.0k † +6.7 %)"
    assert t.loc["LLM-Pruner", "30 %"] == "34.00 / 100.0 (690.0k † -1.4 %)"
    main = REP.main_table(runs)
    assert list(main.columns) == ["Ratio", "Method", "Mode", "m", "params m"]
    cells = dict(zip(zip(main["Ratio"], main["Method"]), main["params m"]))
    assert cells[("25 %", "PAT")] == "750.0k" and cells[("25 %", "LLM-Pruner")] == "800.0k † +6.7 %"
    assert cells[("0 %", "Dense")] == "1.0M"
