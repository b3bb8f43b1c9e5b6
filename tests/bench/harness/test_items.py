"""Per-item outcomes in evaluation and perplexity results: documents by the dataset's doc id, windows in order;
they reproduce the aggregate numbers, agree with an independent computation and are stable across runs."""

from __future__ import annotations

import math
import os

import pytest
import torch

from bench.harness import evaluation as ev
from bench.harness.perplexity import load_text, perplexity
from tests.bench.harness.test_perplexity import byte_tokenizer, tiny_lm

needs_data = pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="PAT_DATA_DIR not set")


def _piqa_lls(model, tok, doc_ids):
    """Independent per-choice log-likelihoods of piqa documents (lm-eval's prompt 'Question: ..\\nAnswer:')."""
    import json

    with open(os.path.join(os.environ["PAT_DATA_DIR"], "piqa/validation.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    out = []
    for i in doc_ids:
        d = rows[i]
        ctx = tok(f"Question: {d['goal']}\nAnswer:").input_ids
        lls = []
        for sol in (d["sol1"], d["sol2"]):
            cont = tok(" " + sol).input_ids
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            lls.append(float(sum(logp[len(ctx) - 1 + j, c] for j, c in enumerate(cont))))
        out.append((lls, int(d["label"])))
    return out


@needs_data
def test_task_items_reproduce_the_metrics_and_the_choices():
    model, tok = tiny_lm(), byte_tokenizer()
    r = ev.evaluate_tasks(model, tok, ["piqa", "paper_boolq"], limit=10, seed=7, batch_size=4)
    p = r["tasks"]["piqa"]
    it = p["items"]
    assert it["doc_ids"] == p["doc_ids"] == ev.sample_ids(1838, 10, 7)   # the dataset's ids, the seeded subset
    assert set(it["acc"]) <= {"0", "1"} and len(it["acc"]) == 10
    assert it["acc"].count("1") / 10 == pytest.approx(p["acc"])
    assert it["acc_norm"].count("1") / 10 == pytest.approx(p["acc_norm"])
    assert it["n_choices"] == "2" * 10
    manual = _piqa_lls(model, tok, it["doc_ids"])
    assert it["choice"] == "".join(str(ll.index(max(ll))) for ll, _ in manual)
    assert it["acc"] == "".join(str(int(ll.index(max(ll)) == y)) for ll, y in manual)
    b = r["tasks"]["paper_boolq"]["items"]
    assert b["doc_ids"] == r["tasks"]["paper_boolq"]["doc_ids"] and len(b["acc"]) == len(b["choice"]) == 10
    assert b["acc"].count("1") / 10 == pytest.approx(r["tasks"]["paper_boolq"]["acc"])
    assert set(b["choice"]) <= set("AB-")
    again = ev.evaluate_tasks(model, tok, ["piqa"], limit=10, seed=7, batch_size=2)["tasks"]["piqa"]["items"]
    assert again == it   # stable across runs and batch sizes


@needs_data
def test_perplexity_windows_reproduce_the_number():
    model, tok = tiny_lm(), byte_tokenizer()
    r = perplexity(model, tok, "wikitext2", seq_len=64, max_tokens=64 * 4, batch_size=3)
    w = r["windows"]
    assert w["tokens"] == [63] * 4 and len(w["nll"]) == r["n_windows"] == 4
    assert math.exp(sum(w["nll"]) / sum(w["tokens"])) == pytest.approx(r["ppl"], rel=1e-7)  # NLLs kept to 6 decimals
    ids = tok(load_text("wikitext2")[:8000], return_tensors="pt").input_ids[0][64:128][None]
    with torch.no_grad():
        second = model(input_ids=ids, labels=ids).loss.item() * 63   # HF's mean loss over the 63 targets
    assert w["nll"][1] == pytest.approx(second, rel=1e-5)
