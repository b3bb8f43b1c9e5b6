"""Evaluation precision: fp32 changes nothing, bf16 is autocast with fp32 logits, bad names are clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from bench.harness.perplexity import perplexity
from bench.harness.precision import check_precision, eval_precision
from bench.harness.suites import SuiteError, load_suite
from tests.bench.harness.test_perplexity import byte_tokenizer, tiny_lm

needs_data = pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="PAT_DATA_DIR not set")


def _ids(vocab: int = 260) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_fp32_is_exactly_the_plain_forward():
    model, ids = tiny_lm().eval(), _ids()
    ref = model(input_ids=ids).logits
    with eval_precision(model, "fp32"):
        got = model(input_ids=ids).logits
    assert torch.equal(got, ref)


@torch.no_grad()
def test_bf16_is_autocast_with_fp32_logits_and_leaves_no_hook():
    model, ids = tiny_lm().eval(), _ids()
    head = model.get_output_embeddings()
    fp32 = model(input_ids=ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the reference: plain autocast, logits cast afterwards
        ref = model(input_ids=ids).logits.float()
    with eval_precision(model, "bf16"):
        got = model(input_ids=ids).logits
        assert len(head._forward_hooks) == 1
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    assert not torch.equal(got, fp32)  # the forward really ran in bf16
    assert len(head._forward_hooks) == 0
    assert torch.equal(model(input_ids=ids).logits, fp32)  # and nothing stays changed after the block


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", None])
def test_bad_precision_names_the_field(bad):
    with pytest.raises(ValueError, match="^precision: expected one of fp32, bf16"):
        check_precision(bad)
    with pytest.raises(ValueError, match="^precision: expected"):
        with eval_precision(tiny_lm(), bad):
            pass


@needs_data
def test_perplexity_records_precision_and_bf16_stays_close():
    model, tok = tiny_lm(), byte_tokenizer()
    a = perplexity(model, tok, "wikitext2", seq_len=32, max_tokens=32 * 4, batch_size=2)
    b = perplexity(model, tok, "wikitext2", seq_len=32, max_tokens=32 * 4, batch_size=2, precision="bf16")
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert a["ppl"] != b["ppl"]
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per operand); a near-uniform random model's per-token
    # NLL (~log 260 = 5.6) moves by a few of those roundings over two layers: 5 % of perplexity is a loose bound
    assert b["ppl"] == pytest.approx(a["ppl"], rel=0.05)


def test_suite_eval_precision_is_checked():
    assert load_suite("cpu", ["eval.precision=bf16"]).eval["precision"] == "bf16"
    with pytest.raises(SuiteError, match="eval.precision = 'fp16' is invalid"):
        load_suite("cpu", ["eval.precision=fp16"])


def test_report_header_names_the_precisions():
    from bench.harness.reporting import _precision_line

    recs = [{"spec": {"budget": {"precision": "bf16"}}, "protocol": {"eval": {"precision": "bf16"}}},
            {"spec": {"budget": {}}, "protocol": {"eval": {}}},  # an untrained run of an older record: fp32 eval
            {"spec": {"budget": {"precision": "fp32"}}, "protocol": {"eval": {"precision": "bf16"}}}]
    assert _precision_line(recs) == ["- precision: training bf16, fp32; evaluation bf16, fp32"]


@needs_data
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_lm_eval_forwards_run_at_the_precision(precision, dtype):
    """lm-eval's HFLM wraps each forward in its own autocast context (off unless told): bf16 must reach the model."""
    from bench.harness.evaluation import evaluate_tasks

    model, tok = tiny_lm(), byte_tokenizer()
    seen = []
    layer = model.model.layers[0].mlp.down_proj
    h = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    r = evaluate_tasks(model, tok, ["piqa"], limit=2, seed=7, batch_size=4, precision=precision)
    h.remove()
    assert seen and set(seen) == {dtype}
    assert r["precision"] == precision
