"""The regression's statistical tolerances: bounds from n documents and per-window NLLs at a stated false-alarm
rate (Bonferroni over the checks), and a deliberately damaged SmolLM2 that the check flags while the intact model
matches the checked-in ci reference."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest

from bench.harness import stats
from bench.harness.regression import FALSE_ALARM, compare, report
from bench.harness.results import load_results

REFERENCE = Path(__file__).resolve().parents[2] / "fixtures" / "ci_reference"


def _with_windows(rec: dict, rng: np.random.Generator, sd: float = 0.3) -> dict:
    rec = copy.deepcopy(rec)
    for p in rec["metrics"]["perplexity"].values():
        w = p["n_windows"]
        nll = (math.log(p["ppl"]) + sd * rng.standard_normal(w)) * 127
        p["windows"] = {"nll": nll.tolist(), "tokens": [127] * w}
        p["ppl"] = math.exp(nll.sum() / (127 * w))
    return rec


def test_bounds_follow_from_n_and_windows_at_the_stated_rate():
    ref = [_with_windows(r, np.random.default_rng(0)) for r in load_results(REFERENCE)]
    diffs = compare(copy.deepcopy(ref), ref)
    stat = [d for d in diffs if d.basis]
    m = len(stat)
    assert m == 3 * (3 * 2 + 1 + 1)                      # 3 runs x (3 tasks x acc/acc_norm + mean + ppl)
    alpha = FALSE_ALARM / m
    piqa = next(d for d in diffs if d.run_id.endswith("dense--r0.00--s0") and d.metric == "piqa.acc")
    assert piqa.tol == pytest.approx(stats.acc_diff_bound(piqa.reference, 20, alpha))
    assert piqa.basis == f"binomial n=20, alpha={alpha:.2g}"
    dense = next(r for r in ref if r["run_id"].endswith("dense--r0.00--s0"))
    w = dense["metrics"]["perplexity"]["wikitext2"]["windows"]
    ppl = next(d for d in diffs if d.run_id == dense["run_id"] and d.metric == "ppl[wikitext2]")
    assert ppl.kind == "log" and ppl.tol == pytest.approx(stats.log_ppl_bound(w["nll"], w["tokens"], alpha))
    assert all(d.ok for d in diffs)


def test_a_perplexity_shift_beyond_its_bound_is_flagged_and_one_inside_is_not():
    ref = [_with_windows(r, np.random.default_rng(1)) for r in load_results(REFERENCE)]
    tol = next(d for d in compare(ref, ref) if d.metric == "ppl[wikitext2]").tol
    for factor, flagged in ((math.exp(0.5 * tol), False), (math.exp(1.5 * tol), True)):
        cur = copy.deepcopy(ref)
        cur[0]["metrics"]["perplexity"]["wikitext2"]["ppl"] *= factor
        ok, text = report(compare(cur, ref))
        assert ok is not flagged, text
        assert ("ppl[wikitext2]" in text) is flagged


def _ci_metrics(model, tok) -> dict:
    """The ci suite's evaluation of a model: 3 tasks x 20 documents, wikitext2 on 2,048 tokens."""
    from bench.harness.evaluation import evaluate_tasks
    from bench.harness.perplexity import perplexity
    from bench.harness.suites import load_suite

    suite = load_suite("ci")
    ev, pp = suite.eval, suite.perplexity
    out = evaluate_tasks(model, tok, list(ev["tasks"]), limit=ev["limit"], seed=ev["seed"],
                         batch_size=ev["batch_size"])
    return {"tasks": out["tasks"], "means": out["means"], "mean": out["mean"],
            "perplexity": {d: perplexity(model, tok, d, seq_len=pp["seq_len"], stride=pp["stride"],
                                         max_tokens=pp["max_tokens"]) for d in pp["datasets"]}}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="needs PAT_DATA_DIR")
@pytest.mark.usefixtures("one_thread")
def test_a_damaged_smollm2_fails_the_regression_and_the_intact_one_passes():
    import torch

    from bench.harness.evaluation import load_model

    ref = next(r for r in load_results(REFERENCE) if r["run_id"] == "smollm2-135m--dense--r0.00--s0")
    model, tok = load_model("smollm2-135m")
    intact = copy.deepcopy(ref)
    intact["metrics"].update(_ci_metrics(model, tok))
    ok, text = report(compare([intact], [ref]))
    assert ok, text
    with torch.no_grad():                                   # damage: zero every weight of two decoder layers
        for i in (0, 1):
            for p in model.model.layers[i].parameters():
                p.zero_()
    damaged = copy.deepcopy(ref)
    damaged["metrics"].update(_ci_metrics(model, tok))
    ok, text = report(compare([damaged], [ref]))
    print(text)
    assert not ok
    assert "smollm2-135m--dense--r0.00--s0 / ppl[wikitext2]" in text
