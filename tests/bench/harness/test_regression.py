"""Accuracy regression: the ``ci`` suite vs its checked-in reference results (tests/fixtures/ci_reference).

The unit tests check the comparison itself on fixture records; the integration test runs the ``ci`` suite
(SmolLM2-135M: dense, LoRA, PAT-25 %; a few minutes on 2 quiet cores) and fails naming each metric that moved
beyond its tolerance (``bench.harness.regression.TOLERANCES``) and by how much.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from bench.harness.regression import TOLERANCES, compare, report
from bench.harness.results import load_results

FIX = Path(__file__).resolve().parents[2] / "fixtures"
REFERENCE = FIX / "ci_reference"


def _recs():
    return [r for r in load_results(FIX / "report") if r["status"] == "success"]


def test_identical_results_pass():
    ok, text = report(compare(_recs(), _recs()))
    assert ok and "within tolerance" in text


def test_a_moved_metric_is_named_with_its_delta():
    ref = _recs()
    cur = copy.deepcopy(ref)
    pat = next(r for r in cur if r["run_id"] == "tiny-llama--pat--r0.25--s0")
    pat["metrics"]["tasks"]["piqa"]["acc"] += 0.15    # 4 documents: far inside the binomial bound
    pat["metrics"]["perplexity"]["wikitext2"]["ppl"] *= 1.03  # no per-window NLLs here: the stated 2 % applies
    pat["params"]["total"] += 1                                         # exact
    ok, text = report(compare(cur, ref))
    assert not ok
    assert "piqa.acc" not in text
    assert ("tiny-llama--pat--r0.25--s0 / ppl[wikitext2]: 246.579 -> 253.976 (delta +7.397, +3.00%; "
            "tolerance ±2% rel, stated)") in text
    assert "params.total" in text and "(delta +1" in text
    assert text.startswith("regression: 2 of ")


def test_a_missing_or_failed_run_is_reported():
    ref = _recs()
    cur = [r for r in copy.deepcopy(ref) if "lora" not in r["run_id"]]
    ok, text = report(compare(cur, ref))
    assert not ok and "tiny-llama--lora--r0.00--s0 / status: reference 'success' -> current None" in text


def test_a_changed_suite_spec_is_reported_not_tolerated():
    ref = _recs()
    cur = copy.deepcopy(ref)
    cur[0]["spec"]["budget"] = {**cur[0]["spec"]["budget"], "steps": 99}
    ok, text = report(compare(cur, ref))
    assert not ok and "spec (the suite changed: regenerate tests/fixtures/ci_reference)" in text


def test_every_tolerance_is_stated():
    assert all(kind in ("abs", "rel", "exact") and tol >= 0 for kind, tol in TOLERANCES.values())


@pytest.mark.integration
@pytest.mark.skipif(not REFERENCE.is_dir(), reason="no checked-in ci reference results")
@pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="needs PAT_DATA_DIR")
def test_ci_suite_matches_the_reference(tmp_path):
    from bench.run import main

    rc = main(["--suite", "ci", "--out", str(tmp_path / "ci"), "--work-dir", str(tmp_path / "work"), "--no-progress"])
    assert rc == 0
    ok, text = report(compare(load_results(tmp_path / "ci"), load_results(REFERENCE)))
    print(text)
    assert ok, text
