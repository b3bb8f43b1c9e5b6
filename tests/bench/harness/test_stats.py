"""The bootstrap (known answers, coverage on simulated paired data), verdicts, the chance test, regression bounds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.harness.stats import (
    AHEAD,
    BEHIND,
    UNRESOLVED,
    Interval,
    acc_diff_bound,
    at_chance,
    binom_sf,
    bootstrap,
    log_ppl_bound,
    verdict,
)


def test_constant_difference_gives_a_degenerate_interval():
    x = np.array([1, 1, 0, 1, 0, 1.0])
    iv = bootstrap(x, x - 0.25, n_boot=200)
    assert iv.estimate == pytest.approx(0.25) and iv.lo == pytest.approx(0.25) and iv.hi == pytest.approx(0.25)


def test_identical_runs_give_zero():
    x = np.random.default_rng(1).integers(0, 2, 50)
    iv = bootstrap(x, x, strata=np.arange(50) % 3, n_boot=200)
    assert (iv.estimate, iv.lo, iv.hi) == (0.0, 0.0, 0.0)
    assert verdict(iv) == UNRESOLVED


def test_bootstrap_spread_matches_the_analytic_standard_error():
    # resampling n items of a fixed sample: the replicate mean has variance var_pop(d) / n exactly
    d = np.random.default_rng(2).normal(size=400)
    iv = bootstrap(d, n_boot=20000, level=0.6826894921370859, seed=3)
    se = d.std() / math.sqrt(d.size)
    assert iv.estimate == pytest.approx(d.mean())
    assert (iv.hi - iv.lo) / 2 == pytest.approx(se, rel=0.05)


def test_stratified_estimate_is_the_mean_over_strata():
    # task 0: 2 of 2 correct vs 0 of 2; task 1: 1 of 4 vs 1 of 4 -> (1.0 + 0.0) / 2, not the pooled 2/6
    x = np.array([1, 1, 1, 0, 0, 0.0])
    y = np.array([0, 0, 1, 0, 0, 0.0])
    iv = bootstrap(x, y, strata=np.array([0, 0, 1, 1, 1, 1]), n_boot=500)
    assert iv.estimate == pytest.approx(0.5)
    assert iv.lo == pytest.approx(0.5) and iv.hi == pytest.approx(0.5)  # every task-0 resample keeps d = 1


def test_weights_give_the_log_perplexity_ratio():
    nll_x, nll_y, tok = np.array([300.0, 420.0]), np.array([280.0, 400.0]), np.array([100.0, 140.0])
    iv = bootstrap(nll_x / tok, nll_y / tok, weights=tok, n_boot=200)
    assert iv.estimate == pytest.approx(math.log(math.exp(720 / 240) / math.exp(680 / 240)))


def test_seed_variance_widens_the_interval():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 2, 300).astype(float)
    one = bootstrap(base, n_boot=2000, seed=5)
    # three seeds whose runs differ by a whole-run offset: the seed level adds that spread
    seeds = np.stack([base, np.clip(base + (rng.random(300) < 0.3), 0, 1), base * (rng.random(300) < 0.7)])
    many = bootstrap(seeds, n_boot=2000, seed=5)
    assert many.n_seeds == (3, 0)
    assert many.hi - many.lo > 1.3 * (one.hi - one.lo)


def test_coverage_on_simulated_paired_data():
    """200 simulated paired data sets (3 tasks x 80 docs, correlated outcomes, true difference known): the 95 %
    interval covers the truth in 95 % of them, within a 3-sigma binomial band."""
    rng = np.random.default_rng(6)
    p_y = np.array([0.3, 0.5, 0.7])
    delta = 0.08
    strata = np.repeat(np.arange(3), 80)
    n_sets, covered = 200, 0
    for _ in range(n_sets):
        u = rng.random(strata.size)                      # shared latent: the two runs agree on most documents
        y = (u < p_y[strata]).astype(float)
        x = (u < p_y[strata] + delta).astype(float)
        flip = rng.random(strata.size) < 0.1             # some independent disagreement
        x[flip] = (rng.random(flip.sum()) < p_y[strata][flip] + delta)
        iv = bootstrap(x, y, strata=strata, n_boot=1000, seed=int(rng.integers(1 << 30)))
        covered += iv.lo <= delta <= iv.hi
    sd = math.sqrt(n_sets * 0.95 * 0.05)
    assert abs(covered - 0.95 * n_sets) <= 3 * sd, covered


def test_verdicts():
    iv = Interval(0.1, 0.02, 0.2, 0.95, 100, 10, (1, 1))
    assert verdict(iv) == AHEAD and verdict(iv, higher_is_better=False) == BEHIND
    assert verdict(iv.scaled(-1)) == BEHIND
    assert verdict(Interval(0.0, -0.1, 0.1, 0.95, 100, 10, (1, 1))) == UNRESOLVED
    assert verdict(None) == "–"


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="y: 3 items"):
        bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="strata"):
        bootstrap([1, 0], strata=[0])
    with pytest.raises(ValueError, match="weights"):
        bootstrap([1, 0], weights=[1, 0])
    with pytest.raises(ValueError, match="level"):
        bootstrap([1, 0], level=95)


def test_binomial_tail_and_chance_rule():
    assert binom_sf(2, 2, 0.5) == pytest.approx(0.25)
    assert binom_sf(0, 5, 0.3) == 1.0
    exact = sum(math.comb(10, i) * 0.25 ** i * 0.75 ** (10 - i) for i in range(4, 11))
    assert exact == pytest.approx(binom_sf(4, 10, 0.25))
    assert at_chance(27, 100, 0.25)          # P(X >= 27) ~ 0.37
    assert not at_chance(35, 100, 0.25)      # P(X >= 35) ~ 0.015
    assert at_chance(58, 100, 0.5) and not at_chance(59, 100, 0.5)  # the one-sided 5 % edge for n = 100


def test_regression_bounds():
    assert acc_diff_bound(0.5, 100, 0.05) == pytest.approx(1.96 * math.sqrt(2 * 0.25 / 100), rel=0.01)
    assert acc_diff_bound(1.0, 20, 0.01) > 0
    nll = np.array([2.0, 3.0, 4.0, 3.0]) * 127
    b = log_ppl_bound(nll, np.full(4, 127), 0.05)
    assert b == pytest.approx(1.96 * math.sqrt(2) * np.std([2, 3, 4, 3], ddof=1) / 2, rel=1e-3)


# ------------------------------------------------------------------------------ the report on synthetic records
TASKS = {"piqa": 2, "arc_easy": 4, "boolq": 2}   # choices per document


def _record(model, ratio, pipeline, seed, p_correct, nll_per_tok, params, rng):
    """A run record with per-document outcomes (accuracy ``p_correct[task]``) and 16 perplexity windows."""
    from bench.harness.evaluation import bits

    tasks = {}
    for t, nc in TASKS.items():
        ids = list(range(0, 800, 10))
        ok = rng.random(80) < p_correct[t]
        acc = ok.mean()
        tasks[t] = {"acc": float(acc), "acc_stderr": float(np.sqrt(acc * (1 - acc) / 79)), "acc_norm": float(acc),
                    "n": 80, "protocol": "lm-eval-loglik-0shot", "doc_ids": ids, "chance": 1 / nc,
                    "items": {"doc_ids": ids, "acc": bits(ok), "acc_norm": bits(ok), "choice": "0" * 80,
                              "n_choices": str(nc) * 80}}
    nll = (nll_per_tok + 0.3 * rng.standard_normal(16)) * 127
    mean = sum(m["acc"] for m in tasks.values()) / 3
    run_id = f"{model}--{'+'.join(pipeline) or 'dense'}--r{ratio:.2f}--s{seed}"
    return {"schema": 1, "run_id": run_id, "suite": "syn", "status": "success",
            "spec": {"model": model, "ratio": ratio, "pipeline": pipeline, "seed": seed, "method_args": {}},
            "metrics": {"main_metric": "acc", "tasks": tasks,
                        "means": {"lm-eval-loglik-0shot": {"acc": mean, "acc_norm": mean, "n_tasks": 3}},
                        "perplexity": {"wikitext2": {"ppl": float(np.exp(nll.sum() / (16 * 127))),
                                                     "windows": {"nll": nll.tolist(), "tokens": [127] * 16}}}},
            "params": {"total": params, "achieved_ratio": ratio, "widths": {"hidden_size": 64}},
            "train": {"final_loss": 2.0} if pipeline else None, "seconds": 1.0,
            "provenance": {"git": {"sha": "0" * 40, "dirty": False}, "device": {"kind": "cpu", "name": "cpu"}}}


def synthetic_records(seed: int = 0) -> list[dict]:
    """Dense (boolq at chance), LoRA, and at 25 % PAT (3 seeds, much lower perplexity) and LLM-Pruner P->FT
    (3 seeds); accuracies close."""
    rng = np.random.default_rng(seed)
    good = {"piqa": 0.7, "arc_easy": 0.55, "boolq": 0.5}
    recs = [_record("syn", 0.0, [], 0, good, 3.5, 1_000_000, rng),
            _record("syn", 0.0, ["lora"], 0, good, 3.4, 1_000_000, rng)]
    for s in range(3):
        recs.append(_record("syn", 0.25, ["pat"], s, {"piqa": 0.65, "arc_easy": 0.5, "boolq": 0.5}, 4.0, 750_000, rng))
        recs.append(_record("syn", 0.25, ["llm_pruner", "lora"], s, {"piqa": 0.62, "arc_easy": 0.48, "boolq": 0.5},
                            5.0, 752_000, rng))
    return recs


def test_report_on_synthetic_records_uses_paired_intervals(tmp_path):
    from bench.harness import reporting as REP
    from pat.io import write_json_atomic

    recs = synthetic_records()
    for r in recs:
        write_json_atomic(tmp_path / "in" / f"{r['run_id']}.json", r)
    md = REP.build_report(tmp_path / "in", "syn", tmp_path / "out").read_text()
    chance = REP.chance_tasks(recs).set_index("task")
    dense = recs[0]["metrics"]["tasks"]
    k = dense["boolq"]["items"]["acc"].count("1")
    assert bool(chance.loc["boolq", "at chance"]) == at_chance(k, 80, 0.5)
    assert not chance.loc["piqa", "at chance"]      # 0.7 of 80 documents: far above 0.5
    runs = REP.runs_frame(recs)
    claims = REP.claims_table(runs, pd.DataFrame(), "acc", recs, REP.chance_tasks(recs))
    row = claims[claims["claim"] == "PAT > LLM-Pruner P→FT at 25 %"].iloc[0]
    assert row["CI from"] == "paired bootstrap, 240 docs, seeds 3/3"
    pat = [r for r in recs if r["spec"]["pipeline"] == ["pat"]]
    lp = [r for r in recs if r["spec"]["pipeline"] == ["llm_pruner", "lora"]]
    want = np.mean([np.mean([100 * r["metrics"]["tasks"][t]["acc"] for r in pat])
                    - np.mean([100 * r["metrics"]["tasks"][t]["acc"] for r in lp]) for t in TASKS])
    assert row["ours"] == pytest.approx(want)
    iv = REP.paired_acc(pat, lp)
    assert iv.estimate == pytest.approx(want) and row["95 % CI"] == f"[{iv.lo:.2f}, {iv.hi:.2f}]"
    assert row["ppl verdict"] == "ahead" and row["wikitext2 ppl ratio"] == pytest.approx(np.exp(-1.0), rel=0.15)
    assert "## Paired comparisons at equal size" in md and "## Tasks at chance for the dense model" in md
    pairs = pd.read_csv(tmp_path / "out" / "pairs.csv")
    assert len(pairs) == 2                          # Dense vs LoRA at 0 %, PAT vs LLM-Pruner at 25 %
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert (cells["acc_ci"] == "bootstrap").all() and (cells["ppl_ci"] == "bootstrap").all()
    assert (cells["acc_lo"] < cells["acc"]).all() and (cells["acc"] < cells["acc_hi"]).all()
    for name in ("acc_vs_params_syn.png", "ppl_vs_params_syn.png", "claims_forest.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in md


def test_old_records_without_items_say_what_cannot_be_computed():
    from bench.harness import reporting as REP

    recs = synthetic_records()
    for r in recs:
        for t in r["metrics"]["tasks"].values():
            del t["items"]
        del r["metrics"]["perplexity"]["wikitext2"]["windows"]
    assert REP.paired_acc(recs[2:4]) is None and REP.paired_log_ppl(recs[2:3]) is None
    claims = REP.claims_table(REP.runs_frame(recs), pd.DataFrame(), "acc", recs,
                              REP.chance_tasks(recs))
    row = claims[claims["claim"] == "PAT > LLM-Pruner P→FT at 25 %"].iloc[0]
    assert row["CI from"].startswith("no per-item data") and row["ppl 95 % CI"] == "no per-window data"
    assert row["95 % CI (above chance)"] == "no per-item data"


def test_method_colours_are_distinct():
    from bench.harness.reporting import method_colours

    methods = [("Dense", "Dense"), ("LoRA", "LoRA-16"), ("PAT", "PAT"), ("PAT", "PAT (Taylor snap)"),
               ("LLM-Pruner", "LLM-Pruner"), ("SliceGPT", "SliceGPT"), ("FLAP", "FLAP"), ("Wanda-SP", "Wanda-SP"),
               ("PAT", "PAT (x)"), ("LLM-Pruner", "LLM-Pruner (lp2)")]
    c = method_colours(methods)
    assert len(c) == 10 and len(set(c.values())) == 10


# ------------------------------------------------------------------------------- seeds vary what they should
def test_a_suite_seed_sets_training_seed_and_data_order():
    from bench.harness.suites import expand, load_suite

    runs = [r for r in expand(load_suite("cpu")) if r.pipeline == ("pat_taylor",) and r.ratio == 0.25]
    assert sorted(r.seed for r in runs) >= [0, 1, 2]
    by_seed = {r.seed: r.budget for r in runs}
    assert by_seed[0]["data_seed"] == 42 and by_seed[0]["seed"] == 0        # seed 0: the budget as written
    assert {by_seed[s]["data_seed"] for s in by_seed} == {42 + s for s in by_seed}
    assert {by_seed[s]["seed"] for s in by_seed} == set(by_seed)


@pytest.mark.usefixtures("one_thread")
def test_the_trainer_honours_seed_for_init_and_data_seed_for_order(tmp_path):
    from tests.bench.harness.test_train import budget, run

    def losses(name, **kw):
        return run(tmp_path, b=budget(steps=2, warmup_steps=0, **kw), name=name, checkpoint_every=0)["losses"]

    base = losses("a", seed=0, data_seed=3)
    assert losses("b", seed=0, data_seed=3) == base                     # reproducible
    other_init = losses("c", seed=1, data_seed=3)
    other_data = losses("d", seed=0, data_seed=4)
    assert other_init != base and other_data[0] != base[0]  # a new seed changes init, a new data seed the batches
