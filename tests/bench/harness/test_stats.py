"""The bootstrap (known answers, coverage on simulated paired data), verdicts, the chance test, regression bounds."""

from __future__ import annotations

import math

import numpy as np
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
    assert sum(math.comb(10, i) * 0.25 ** i * 0.75 ** (10 - i) for i in range(4, 11)) == pytest.approx(binom_sf(4, 10, 0.25))
    assert at_chance(27, 100, 0.25)          # P(X >= 27) ~ 0.37
    assert not at_chance(35, 100, 0.25)      # P(X >= 35) ~ 0.015
    assert at_chance(58, 100, 0.5) and not at_chance(59, 100, 0.5)  # the one-sided 5 % edge for n = 100


def test_regression_bounds():
    assert acc_diff_bound(0.5, 100, 0.05) == pytest.approx(1.96 * math.sqrt(2 * 0.25 / 100), rel=0.01)
    assert acc_diff_bound(1.0, 20, 0.01) > 0
    nll = np.array([2.0, 3.0, 4.0, 3.0]) * 127
    b = log_ppl_bound(nll, np.full(4, 127), 0.05)
    assert b == pytest.approx(1.96 * math.sqrt(2) * np.std([2, 3, 4, 3], ddof=1) / 2, rel=1e-3)
