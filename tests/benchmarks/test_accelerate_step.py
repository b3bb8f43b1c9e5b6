"""One optimizer step under the accelerate trainer vs the plain torch step it replaced (same work, same batches).

``train_step`` of ``bench.harness.train`` (``Accelerator.accumulate`` / ``backward`` / ``clip_grad_norm_``, the
prepared optimizer and scheduler, the stage hooks) against ``plain_step`` below: the loop body of the hand-written
trainer that ``train_step`` replaced, single process (no all-reduce), kept here only for this comparison. Both
train LoRA-8 on the same model, budget and global batches (micro-batch 4, accumulation 2); each benchmark round
runs one step of each on the same global batch, in alternating order, so both are measured interleaved under the
same load (pytest-benchmark's own figure is the time of the pair). The figure is the median over rounds of
(accelerate step / plain step) of the same round (robust to the load of a shared machine); the ratio of the
minima is reported beside it.
Goal: median ratio <= 1.05.

Run: ``pytest tests/benchmarks/test_accelerate_step.py --benchmark-only -m slow -s`` (or ``tox -e bench``).
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time

import pytest
import torch

from baselines.lora import LoRAStage
from pat.lora import LoRAConfig
from bench.harness.budget import TrainBudget
from bench.harness.data import IGNORE_INDEX, global_batch_indices, load_instruction_data
from pat.stage import RunContext
from bench.harness.train import _lm_loss_sum, collect_trainable, make_optimizer, setup_run, train_step

THREADS = int(os.environ.get("PAT_BENCH_THREADS", "1"))
GOAL = 1.05


def _old_lr_lambda(b: TrainBudget):
    def f(s: int) -> float:
        if s < b.warmup_steps:
            return (s + 1) / b.warmup_steps
        frac = (s - b.warmup_steps) / max(1, b.total_steps - b.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return f


class PlainStep:
    """The replaced loop body: accumulate, clip, AdamW, LambdaLR, hooks; no engine."""

    def __init__(self, model, stages, b: TrainBudget, data):
        self.model, self.stages, self.b, self.data = model, stages, b, data
        groups, named = collect_trainable(model, stages, b.lr)
        self.params = [p for _, p in named]
        self.opt = make_optimizer(groups, b)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _old_lr_lambda(b))
        self.step_no = 0

    def __call__(self) -> None:
        b, data, accum = self.b, self.data, self.b.global_batch // self.b.micro_batch
        idx = global_batch_indices(len(data), self.step_no, b.global_batch, b.data_seed)
        n_resp = sum(sum(v != IGNORE_INDEX for v in data.labels[i][1:]) for i in idx)
        for k in range(accum):
            batch = data.collate(idx[k * b.micro_batch:(k + 1) * b.micro_batch])
            lm = _lm_loss_sum(self.model, batch) / max(1, n_resp)
            extras = [e for e in (st.extra_loss(self.model) for st in self.stages) if e is not None]
            extra = torch.stack([e.float() for e in extras]).sum() if extras else torch.zeros(())
            (lm + extra / accum).backward()
        torch.nn.utils.clip_grad_norm_(self.params, b.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_no += 1
        for st in self.stages:
            st.on_optimizer_step(self.model, self.step_no)


def _prepared(model, tok):
    st = LoRAStage(LoRAConfig(rank=8, alpha=16, dropout=0.0))
    model = st.prepare(model, RunContext(tokenizer=tok, extra={"pipeline": ["lora"], "stage_index": 0,
                                                                "phase": "prepare"}))
    return model.train(), [st]


def _compare(benchmark, model, tok, data_name: str, seq_len: int, rounds: int) -> float:
    torch.set_num_threads(THREADS)
    b = TrainBudget(steps=1000, global_batch=8, micro_batch=4, seq_len=seq_len, lr=1e-4, warmup_steps=10,
                    subset_size=256)
    data = load_instruction_data(data_name, tok, b.seq_len, b.subset_size, b.data_seed, None)
    old_model, old_stages = _prepared(copy.deepcopy(model), tok)
    new_model, new_stages = _prepared(copy.deepcopy(model), tok)
    plain = PlainStep(old_model, old_stages, b, data)
    run = setup_run(new_model, new_stages, b)
    step = [0]

    def accelerate_step():
        train_step(run, data, step[0])
        step[0] += 1

    plain(), accelerate_step()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "accelerate": []}

    def timed(name, fn):
        t = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t)

    def pair():  # both steps on the same global batch, in alternating order (no first/second bias)
        first_plain = len(times["plain"]) % 2 == 0
        for name, fn in ([("plain", plain), ("accelerate", accelerate_step)] if first_plain
                         else [("accelerate", accelerate_step), ("plain", plain)]):
            timed(name, fn)

    benchmark.pedantic(pair, rounds=rounds, iterations=1)
    acc_times, plain_times = times["accelerate"], times["plain"]
    ratio = statistics.median(a / p for a, p in zip(acc_times, plain_times))
    min_ratio = min(acc_times) / min(plain_times)
    benchmark.extra_info.update(median_paired_ratio=ratio, min_ratio=min_ratio, goal=GOAL,
                                plain_step_times=plain_times,
                                accelerate_step_times=acc_times, threads=torch.get_num_threads())
    print(f"\naccelerate step median {statistics.median(acc_times):.4f} s, plain step median "
          f"{statistics.median(plain_times):.4f} s; median paired ratio {ratio:.3f}, ratio of minima {min_ratio:.3f} "
          f"(goal <= {GOAL})")
    run.accelerator.free_memory()
    return ratio


@pytest.mark.slow
def test_accelerate_step_vs_plain_tiny(benchmark):
    from tests.bench.harness.test_train import CharTokenizer
    from tests.tiny import tiny_model

    data = os.path.join(os.environ.get("PAT_DATA_DIR", ""), "alpaca")
    if not os.path.exists(data):
        pytest.skip(f"no alpaca data at {data}")
    ratio = _compare(benchmark, tiny_model("llama-gqa-tied"), CharTokenizer(), "alpaca", 256, rounds=30)
    assert ratio <= GOAL, f"accelerate step is {ratio:.3f} x the plain step (goal {GOAL})"


@pytest.mark.slow
def test_accelerate_step_vs_plain_smollm2(benchmark, smollm2):
    model, tok = smollm2
    ratio = _compare(benchmark, model, tok, "alpaca", 128, rounds=3)
    assert ratio <= GOAL, f"accelerate step is {ratio:.3f} x the plain step (goal {GOAL})"
