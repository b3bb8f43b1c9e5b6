"""Forward time of the finalized PAT-25 % SmolLM2 (hidden 576 -> 432) vs the dense model, batch 8 x 128.

The finalized model's weights come from PAT with a random 25 % mask (speed does not depend on the values). Dense
and finalized forwards are timed interleaved (the dense one in the untimed ``setup`` of each round) so both see
the same machine load. Linear-layer limit: 576/432 = 1.33x; goal 1.25x.

Run: ``tox -e bench`` or ``pytest tests/benchmarks/test_pat_forward.py --benchmark-only``.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from pat.stage import RunContext
from pat import PATConfig, PATStage, get_mask

BATCH, SEQ, ROUNDS = 8, 128, 5
THREADS = int(os.environ.get("PAT_BENCH_THREADS", "1"))
GOAL, LIMIT = 1.25, 576 / 432


@pytest.mark.slow
def test_finalized_pat25_forward_vs_dense(benchmark, smollm2):
    torch.set_num_threads(THREADS)
    dense = smollm2[0]
    method = PATStage(PATConfig(prune_ratio=0.25, lora_rank=0))
    pat_model = method.prepare(copy.deepcopy(dense), RunContext(total_steps=30))
    with torch.no_grad():
        get_mask(pat_model).proxy.normal_()
    get_mask(pat_model).snap(432)
    small = method.finalize(pat_model, None)
    assert small.config.hidden_size == 432
    ids = torch.randint(0, dense.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    dense_times: list[float] = []

    @torch.inference_mode()
    def fwd(m):
        m(input_ids=ids)

    def time_dense():
        t = time.perf_counter()
        fwd(dense)
        dense_times.append(time.perf_counter() - t)

    fwd(dense), fwd(small)  # warm-up
    benchmark.pedantic(fwd, args=(small,), setup=time_dense, rounds=ROUNDS, iterations=1)
    speedup = min(dense_times) / benchmark.stats.stats.min
    benchmark.extra_info.update(speedup=speedup, goal=GOAL, linear_limit=LIMIT, threads=THREADS, batch=BATCH, seq=SEQ,
                                dense_min_s=min(dense_times), pat25_min_s=benchmark.stats.stats.min,
                                dense_tokens_per_s=BATCH * SEQ / min(dense_times),
                                pat25_tokens_per_s=BATCH * SEQ / benchmark.stats.stats.min)
    print(f"finalized PAT-25% vs dense forward at {BATCH}x{SEQ}: {speedup:.3f}x (limit {LIMIT:.2f}x, goal {GOAL}x)")
    assert speedup > 1.0, f"the finalized model is not faster than the dense one ({speedup:.3f}x)"
