"""``pat-tune`` on every tiny architecture at 6 steps: the report's train-gate check equals the finalized model."""

from __future__ import annotations

import json

import pytest

from bench.cli.tune import main
from tests.tiny import TINY, tiny_model


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2[1]


@pytest.mark.parametrize("name", list(TINY))
def test_cli_report_train_gate_equals_finalized_model_at_six_steps(name, tokenizer, tmp_path):
    d = tmp_path / "model"
    tiny_model(name, vocab_size=len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    out = tmp_path / "pat"
    rc = main(["--model", str(d), "--ratio", "0.25", "--train-data", "alpaca", "--max-steps", "6",
               "--global-batch", "2", "--micro-batch", "2", "--seq-len", "128", "--hio-rank", "4", "--lora-rank", "2",
               "--lr", "1e-2", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "pat_report.json").read_text())
    print(name, rep["train_gate_max_abs_logit_diff"], rep["merge_max_abs_logit_diff"], rep["selection"])
    assert rep["train_gate_max_abs_logit_diff"] <= 1e-4
    assert rep["merge_max_abs_logit_diff"] <= 1e-4
    assert rep["selection"]["freeze_step"] == 2 and rep["selection"]["by"] in ("proxy", "count_snap")
    assert rep["hidden_size_after"] == 36
