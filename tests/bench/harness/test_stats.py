"""The bootstrap (known answers, coverage on simulated paired data), verdicts, the chance test, regression bounds."""

from __future__ import annotations

import json
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
    block_length,
    bootstrap,
    holm,
    log_ppl_bound,
    seed_component,
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
    assert row["CI from"].startswith("paired bootstrap, 240 docs, seed sd") and row["seeds"] == "seeds 3/3"
    pat = [r for r in recs if r["spec"]["pipeline"] == ["pat"]]
    lp = [r for r in recs if r["spec"]["pipeline"] == ["llm_pruner", "lora"]]
    want = np.mean([np.mean([100 * r["metrics"]["tasks"][t]["acc"] for r in pat])
                    - np.mean([100 * r["metrics"]["tasks"][t]["acc"] for r in lp]) for t in TASKS])
    assert row["ours"] == pytest.approx(want)
    # the interval: documents within tasks plus the pooled seed component (both sides 3 seeds: sd^2 (1/3 + 1/3))
    sm = REP.seed_model(recs, {"syn": ["piqa", "arc_easy"]}, "wikitext2")
    iv = REP.paired_acc(pat, lp, seed=sm.component("syn", "acc", pat, lp))
    assert iv.estimate == pytest.approx(want) and row["95 % CI"] == f"[{iv.lo:.2f}, {iv.hi:.2f}]"
    assert row["_phi"] < 1 and row["wikitext2 ppl ratio"] == pytest.approx(np.exp(-1.0), rel=0.15)
    assert "ppl verdict" not in claims and "acc verdict" not in claims  # exploratory: no verdict words
    assert "## Paired comparisons at equal size (exploratory)" in md and "## Tasks at chance for the dense model" in md
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


# ------------------------------------------------------------------------------------------ block bootstrap, seeds
def _ar1(rng, n: int, phi: float) -> np.ndarray:
    from scipy.signal import lfilter

    e = rng.standard_normal(n + 100)
    return lfilter([1.0], [1.0, -phi], e)[100:]  # x_t = phi x_{t-1} + e_t; 100 burn-in steps: stationary


def test_block_bootstrap_reaches_nominal_coverage_on_ar1():
    """AR(1), phi = 0.5, n = 1000, true mean 0: the 90 % circular-block interval (Politis-White block length b)
    covers 0 at its nominal rate, less the block bootstrap's own O(1/b) bias, within 3 Monte-Carlo sigmas of 300
    series (sqrt(0.9 * 0.1 / 300) = 1.7 %). The bias, derived: the block variance keeps sum_k (1 - |k| / b) R(k) of
    the long-run variance sum_k R(k); for AR(1) the missing part sum_k |k| R(k) / b = 2 phi / (1 - phi)^2 / b = 4 / b
    of (1 + phi) / (1 - phi) = 3 (units of var(x)), so the interval's s.d. is sqrt(1 - 4 / (3 b)) of the truth and
    the expected coverage 2 Phi(z_0.95 sqrt(1 - 4 / (3 b))) - 1 (88 % at b = 13). The independent bootstrap misses
    the factor 3 of the variance and covers 2 Phi(z_0.95 / sqrt(3)) - 1 = 66 %: it must fail the same check."""
    from statistics import NormalDist

    rng = np.random.default_rng(11)
    n_sets, level = 300, 0.90
    cov_block = cov_iid = 0
    blocks = []
    for _ in range(n_sets):
        x = _ar1(rng, 1000, 0.5)
        s = int(rng.integers(1 << 30))
        ivb = bootstrap(x, n_boot=200, level=level, seed=s, block="auto")
        ivi = bootstrap(x, n_boot=200, level=level, seed=s)
        blocks.append(ivb.block)
        cov_block += ivb.lo <= 0 <= ivb.hi
        cov_iid += ivi.lo <= 0 <= ivi.hi
    nd, b = NormalDist(), float(np.median(blocks))
    expected = 2 * nd.cdf(nd.inv_cdf(1 - (1 - level) / 2) * math.sqrt(1 - 4 / (3 * b))) - 1
    sigma = math.sqrt(level * (1 - level) / n_sets)
    assert abs(cov_block / n_sets - expected) <= 3 * sigma, (cov_block, b, expected)
    assert cov_iid / n_sets < expected - 3 * sigma, cov_iid


def test_block_length_rule_known_answers():
    # AR(1) with phi = 0.5: the rule's target is (2 G^2 / D n)^(1/3) with G = 4, D = 4/3 * 3^2 (units of var(x)),
    # i.e. (8/3 n)^(1/3) = 13.9 at n = 1000; the estimate is noisy (PW 2004): the median of 30 series within 40 %.
    rng = np.random.default_rng(12)
    med = np.median([block_length(_ar1(rng, 1000, 0.5)) for _ in range(30)])
    assert abs(med / (8 / 3 * 1000) ** (1 / 3) - 1) < 0.4, med
    # white noise: no dependence, blocks of (almost) one item
    assert np.median([block_length(rng.standard_normal(1000)) for _ in range(30)]) <= 3
    assert block_length(np.ones(50)) == 1


def test_blocks_keep_a_constant_series_exact_and_bad_block_is_named():
    iv = bootstrap(np.full(40, 0.3), block=5, n_boot=100)
    assert iv.lo == pytest.approx(0.3) and iv.hi == pytest.approx(0.3) and iv.block == 5
    with pytest.raises(ValueError, match="block"):
        bootstrap([1.0, 0.0], block=0)
    with pytest.raises(ValueError, match="seed_sd"):
        bootstrap([1.0, 0.0], seed_sd=-1.0)


def test_a_stated_seed_component_adds_its_normal_quantiles():
    # no item variance (constant difference 0.5), seed_sd 1, normal: the interval is 0.5 +- 1.96 within the
    # Monte-Carlo error of the 2.5 % quantile of 20,000 draws (s.e. sqrt(q (1-q) / B) / phi(z) = 0.0214; 4 s.e.)
    iv = bootstrap(np.ones(30), np.full(30, 0.5), seed_sd=1.0, n_boot=20000, seed=2)
    assert iv.lo == pytest.approx(0.5 - 1.959964, abs=0.09) and iv.hi == pytest.approx(0.5 + 1.959964, abs=0.09)
    assert iv.seed_sd == 1.0 and 0 < iv.p <= 1


def test_three_seeds_do_not_collapse_to_ten_resamples():
    # constant items, three seeds that differ by a run-level offset: resampling seeds would give at most 10 distinct
    # replicate values (multisets of 3 of 3); the seed component gives a continuous one with the seeds' spread
    x = np.stack([np.full(50, v) for v in (0.40, 0.45, 0.50)])
    iv = bootstrap(x, np.full(50, 0.3), n_boot=2000, seed=4)
    assert len(np.unique(np.round(iv.reps, 12))) > 1000
    sd, df = seed_component(x)
    assert sd == pytest.approx(0.05 / math.sqrt(3)) and df == pytest.approx(2)
    assert iv.lo < 0.15 - sd and iv.hi > 0.15 + sd


def test_holm_known_answer():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    adj = holm([0.03, 0.01, 0.5, 0.02])
    assert adj == pytest.approx([0.06, 0.04, 0.5, 0.06])
    with pytest.raises(ValueError, match="p:"):
        holm([0.1, 1.5])


def test_bootstrap_p_value_is_small_when_the_interval_excludes_zero():
    rng = np.random.default_rng(8)
    iv = bootstrap(rng.normal(1.0, 1.0, 200), n_boot=2000)
    assert iv.lo > 0 and iv.p == pytest.approx(2 / 2001)
    iv0 = bootstrap(rng.normal(0.0, 1.0, 200), n_boot=2000)
    assert iv0.p > 0.05 or not (iv0.lo <= 0 <= iv0.hi)


# ------------------------------------------------------------------------------ pooling, primary claims, zip check
def _with_variant(seed: int = 0) -> list[dict]:
    """The synthetic records plus a second LLM-Pruner variant (``lp_pct``: another family member, much better) at
    25 %, one seed: the family "LLM-Pruner" P->FT then holds two cells."""
    rng = np.random.default_rng(seed + 100)
    recs = synthetic_records(seed)
    v = _record("syn", 0.25, ["lp_pct", "lora"], 0, {"piqa": 0.95, "arc_easy": 0.9, "boolq": 0.9}, 3.0, 900_000,
                rng)
    v["spec"]["method_args"] = {"lp_pct": {"stage": "llm_pruner", "display": "LLM-Pruner, pct"}}
    return recs + [v]


def test_claims_point_estimates_equal_the_pairs_estimates_when_variants_share_a_family():
    """The mis-pooling bug: the claim's point estimate pooled every cell of the other side's family (here the 3
    LLM-Pruner seeds and the variant's better run) while its interval used one cell. Now both come from one cell and
    equal the pairs table's paired estimate."""
    from bench.harness import reporting as REP

    recs = _with_variant()
    runs, chance = REP.runs_frame(recs), REP.chance_tasks(recs, None)
    claims = REP.claims_table(runs, pd.DataFrame(), "acc", recs, chance)
    pairs = REP.pairs_table(recs, runs, chance)
    row = claims[claims["claim"] == "PAT > LLM-Pruner P→FT at 25 %"].iloc[0]
    pair = pairs[(pairs["A"] == "LLM-Pruner P→FT") & (pairs["B"] == "PAT")].iloc[0]
    assert row["ours"] == pytest.approx(-pair["Δ acc"])
    pat = [r for r in recs if r["spec"]["pipeline"] == ["pat"]]
    lp = [r for r in recs if r["spec"]["pipeline"] == ["llm_pruner", "lora"]]
    assert row["ours"] == pytest.approx(REP.paired_acc(pat, lp).estimate)
    pooled = np.mean([r["metrics"]["means"]["lm-eval-loglik-0shot"]["acc"] for r in lp + recs[-1:]])
    assert abs(row["ours"] - (np.mean([100 * r["metrics"]["means"]["lm-eval-loglik-0shot"]["acc"] for r in pat])
                              - 100 * pooled)) > 1.0  # the old, pooled number differs: the test can fail


def test_primary_claims_get_holm_verdicts_and_the_rest_none(tmp_path):
    from bench.harness import reporting as REP
    from pat.io import write_json_atomic

    recs = _with_variant()
    for r in recs:
        write_json_atomic(tmp_path / "in" / f"{r['run_id']}.json", r)
    claims = [{"a": ["pat"], "b": ["llm_pruner", "lora"], "ratio": 0.25, "b_ratio": 0.25, "metric": m,
               "direction": "a_better"} for m in ("ppl", "acc_above_chance")]
    claims.append({"a": ["pat"], "b": ["lora"], "ratio": 0.25, "b_ratio": 0.0, "metric": "ppl",
                   "direction": "a_better", "name": "PAT vs LoRA"})
    md = REP.build_report(tmp_path / "in", "syn", tmp_path / "out", claims=claims, chance_dir=None).read_text()
    prim = pd.read_csv(tmp_path / "out" / "primary.csv")
    assert len(prim) == 3 and "## Primary claims (pre-registered; Holm-corrected)" in md
    assert list(prim["Holm p"]) == pytest.approx(list(holm(prim["p"].to_numpy())))
    ppl = prim.iloc[0]  # PAT's perplexity is exp(-1) of LLM-Pruner's with 3 seeds each: resolved, as hypothesised
    assert ppl["verdict"] == "ahead" and ppl["as hypothesised"] == "yes" and ppl["estimate"] < 1
    lora = prim.iloc[2]  # PAT's mean NLL 4.0 against LoRA's 3.4: behind, against the hypothesis
    assert lora["claim"] == "PAT vs LoRA" and lora["verdict"] == "behind" and lora["as hypothesised"] == "no"
    assert lora["seeds"] == "seeds 3/1 ‡"  # LoRA ran one seed: its seed variance is the pooled model's
    # the simultaneous interval is wider than the marginal one
    assert prim["_slo"].iloc[1] <= prim["_lo"].iloc[1] and prim["_shi"].iloc[1] >= prim["_hi"].iloc[1]
    claims_csv = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert claims_csv.loc[claims_csv["claim"] == "PAT > LLM-Pruner P→FT at 25 %", "status"].iloc[0] == "primary"
    assert claims_csv.loc[claims_csv["claim"] == "PAT > LoRA FT at 25 %", "status"].iloc[0] == "primary"
    pairs = pd.read_csv(tmp_path / "out" / "pairs.csv")  # exploratory: intervals, no verdict words
    assert not [c for c in pairs.columns if "verdict" in c] and len(pairs) == 4
    assert (tmp_path / "out" / "primary_claims.png").read_bytes()[:4] == b"\x89PNG"


def test_a_claim_side_without_runs_is_named_by_its_stage_display():
    """A pre-registered side that has no run yet (a suite part-way) is named as its runs will be, from the stage
    arguments the suite's other records carry, and gets no estimate."""
    from bench.harness import reporting as REP

    recs = _with_variant()
    runs, chance = REP.runs_frame(recs), REP.chance_tasks(recs, None)
    claims = [{"a": ["pat"], "b": ["lp_pct", "lora"], "ratio": 0.25, "b_ratio": 0.5, "metric": "ppl",
               "direction": "a_better"}]
    prim = REP.primary_table(claims, recs, runs, chance)
    row = prim.iloc[0]
    assert row["claim"] == "A: PAT at 25 %, B: LLM-Pruner, pct P→FT at 50 %"
    assert row["95 % CI"] == "runs missing" and row["verdict"] == "–"


def test_the_seed_model_pools_the_three_seed_cells():
    from bench.harness import reporting as REP

    recs = synthetic_records()
    sm = REP.seed_model(recs, {"syn": ["piqa", "arc_easy"]}, "wikitext2")
    by_cell = [[r for r in recs if r["spec"]["pipeline"] == p] for p in (["pat"], ["llm_pruner", "lora"])]
    accs = [np.array([100 * r["metrics"]["means"]["lm-eval-loglik-0shot"]["acc"] for r in c]) for c in by_cell]
    pooled = math.sqrt(sum(((a - a.mean()) ** 2).sum() for a in accs) / 4)
    assert sm.sd[("syn", "acc", True)] == (pytest.approx(pooled), 4)
    # 3-seed sides bring their own variance / 3 (Welch df), a 1-seed trained side the pooled sd^2 (the only pooled
    # cells are pruned: the unpruned LoRA falls back to them), the untrained dense model nothing
    v0, v1 = (a.var(ddof=1) / 3 for a in accs)
    sd, df = sm.component("syn", "acc", *by_cell)
    assert sd == pytest.approx(math.sqrt(v0 + v1))
    assert df == pytest.approx((v0 + v1) ** 2 / (v0 ** 2 / 2 + v1 ** 2 / 2))
    assert sm.component("syn", "acc", by_cell[0], recs[:1]) == (pytest.approx(math.sqrt(v0)), pytest.approx(2))
    sd, _ = sm.component("syn", "acc", by_cell[0], recs[1:2])
    assert sd == pytest.approx(math.sqrt(v0 + pooled ** 2))


def test_doc_ids_and_outcomes_of_different_lengths_name_the_record():
    from bench.harness import reporting as REP

    recs = synthetic_records()[:2]
    recs[1]["metrics"]["tasks"]["piqa"]["items"]["acc"] = recs[1]["metrics"]["tasks"]["piqa"]["items"]["acc"][:-1]
    with pytest.raises(ValueError, match=r"record 'syn--lora--r0.00--s0': metrics.tasks.piqa.items: 80 doc_ids "
                                         r"but 79 'acc' outcomes"):
        REP.paired_acc(recs[1:], recs[:1])


def test_recorded_chance_set_decides_over_the_suite_dense_run(tmp_path):
    from bench.harness import reporting as REP

    recs = synthetic_records()
    # the recorded evaluation: boolq clearly above chance on 400 documents (the suite's 80 say otherwise)
    rec = {"tasks": {"boolq": {"acc": 0.6, "n": 400, "protocol": "lm-eval-loglik-0shot", "chance": 0.5}},
           "config": {"limit": 400, "seed": 4321}}
    (tmp_path / "syn--dense.json").write_text(json.dumps(rec))
    got = REP.chance_tasks(recs, tmp_path).set_index("task")
    assert list(got.index) == ["boolq"] and not got.loc["boolq", "at chance"]
    assert got.loc["boolq", "decided on"] == "syn--dense.json (400 docs, seed 4321)"
    # a pointer to a record elsewhere in the repository (the path is relative to chance_dir's grandparent)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "dense.json").write_text(json.dumps(rec))
    ptr = tmp_path / "results" / "chance"
    ptr.mkdir(parents=True)
    (ptr / "syn--ptr.json").write_text(json.dumps({"source": "rec/dense.json"}))
    got = REP.chance_tasks(recs, ptr).set_index("task")
    assert got.loc["boolq", "decided on"] == "syn--ptr.json -> rec/dense.json (400 docs, seed 4321)"
    (ptr / "syn--ptr.json").write_text(json.dumps({"source": "rec/missing.json"}))
    with pytest.raises(ValueError, match="source: 'rec/missing.json' is not a file"):
        REP.chance_tasks(recs, ptr)
    fallback = REP.chance_tasks(recs, None)
    assert set(fallback["task"]) == set(TASKS) and fallback["decided on"].iloc[0].startswith("the suite's dense run")
