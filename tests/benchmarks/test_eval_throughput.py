"""Throughput of our lm-eval evaluation vs a bare batched forward over the same tokens (goal: >= 0.8x).

Run: ``pytest tests/benchmarks/test_eval_throughput.py --benchmark-only``. Loads SmolLM2-135M.
``extra_info`` holds tokens, tokens/s of both paths and their ratio; the letter protocol is timed separately.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from bench.harness import evaluation as ev

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="PAT_DATA_DIR not set")]
TASK, LIMIT, BATCH, SEED = "piqa", 24, 8, 1234


@pytest.fixture(scope="module")
def smollm2():
    return ev.load_model("smollm2-135m")


def _request_tokens(lm, task: str, limit: int) -> list[list[int]]:
    """The token sequences lm-eval feeds the model for ``task``: context + continuation minus the last token."""
    t = ev.load_tasks([task])[task]
    files = ev.resolve_task_files([task])
    t.build_all_requests(samples=ev.sample_ids(ev.count_docs(files[task]), limit, SEED), rank=0, world_size=1)
    seqs = []
    for inst in t.instances:
        ctx, cont = lm._encode_pair(*inst.args)
        seqs.append((ctx + cont)[:-1])
    return seqs


@torch.no_grad()
def _bare_forward(model, seqs: list[list[int]], pad_id: int, batch: int) -> None:
    """Length-sorted, right-padded batches of ``seqs`` through the model, logits computed, nothing else."""
    order = sorted(seqs, key=len, reverse=True)
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        width = len(chunk[0])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)


def test_loglik_throughput_vs_bare_forward(benchmark, smollm2):
    from lm_eval.models.huggingface import HFLM

    model, tok = smollm2
    seqs = _request_tokens(HFLM(pretrained=model, tokenizer=tok, batch_size=BATCH), TASK, LIMIT)
    n_tokens = sum(len(s) for s in seqs)
    t0 = time.perf_counter()
    _bare_forward(model, seqs, tok.pad_token_id, BATCH)
    bare_s = time.perf_counter() - t0
    result = benchmark.pedantic(ev.evaluate_tasks, args=(model, tok, [TASK]),
                                kwargs=dict(limit=LIMIT, seed=SEED, batch_size=BATCH), rounds=1, iterations=1)
    ours_s = benchmark.stats.stats.mean
    ratio = (n_tokens / ours_s) / (n_tokens / bare_s)
    benchmark.extra_info.update(tokens=n_tokens, requests=len(seqs), bare_tok_s=n_tokens / bare_s,
                                ours_tok_s=n_tokens / ours_s, ratio=ratio, threads=torch.get_num_threads())
    print(f"\n{TASK} n={LIMIT}: {n_tokens} tokens; bare {n_tokens / bare_s:.0f} tok/s, ours {n_tokens / ours_s:.0f} "
          f"tok/s, ratio {ratio:.2f}")
    assert result["tasks"][TASK]["n"] == LIMIT
    assert ratio >= 0.8, f"evaluation runs at {ratio:.2f}x of a bare forward (goal >= 0.8x)"


def test_first_capital_protocol_time(benchmark, smollm2):
    model, tok = smollm2
    limit = 8
    result = benchmark.pedantic(ev.evaluate_tasks, args=(model, tok, ["paper_piqa"]),
                                kwargs=dict(limit=limit, seed=SEED, batch_size=BATCH), rounds=1, iterations=1)
    secs = benchmark.stats.stats.mean
    benchmark.extra_info.update(docs=limit, s_per_doc=secs / limit,
                                invalid_rate=result["tasks"]["paper_piqa"]["invalid_rate"])
    print(f"\npaper_piqa n={limit}: {secs:.1f}s, {secs / limit:.2f} s/doc (5 new tokens each)")
    assert result["tasks"]["paper_piqa"]["n"] == limit
