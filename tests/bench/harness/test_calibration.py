"""Calibration text for the one-shot pruners: seeded, sha256-recorded, errors that name the dataset."""

from __future__ import annotations

import pytest
import torch

from bench.harness.calibration import load_calibration
from bench.harness.datadir import DataError


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from pat.models import ModelNotFoundError, resolve

    try:
        return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    except ModelNotFoundError as e:  # pragma: no cover
        pytest.skip(str(e))


def test_calibration_loader(smollm2_tokenizer):
    a, rec = load_calibration(smollm2_tokenizer, "c4", n=10, seq_len=64, seed=0)
    b, _ = load_calibration(smollm2_tokenizer, "c4", n=10, seq_len=64, seed=0)
    c, _ = load_calibration(smollm2_tokenizer, "c4", n=10, seq_len=64, seed=1)
    assert a.shape == (10, 64) and a.dtype == torch.long and torch.equal(a, b) and not torch.equal(a, c)
    assert rec["n"] == 10 and rec["seq_len"] == 64 and len(rec["sha256"]) == 64
    with pytest.raises(DataError, match="wikitext-2-raw-v1_train"):
        load_calibration(smollm2_tokenizer, "wikitext2_train")
    with pytest.raises(ValueError, match="seq_len"):
        load_calibration(smollm2_tokenizer, "c4", seq_len=0)
