"""Training step time and peak memory: PAT + LoRA vs LoRA alone at matched trainable parameters, SmolLM2-135M.

One optimizer step (forward, LM loss, the stages' extra losses, backward, clipping, AdamW, ``on_optimizer_step``)
on a batch of 8 x 128 tokens, with the hooks of the one training loop. LoRA-64 is the reference; PAT's
(HIO rank, LoRA rank) come from ``solve_pat_ranks(config, "lora-64")``. The LoRA step is timed in the untimed
``setup`` of each PAT round, so both are measured interleaved under the same machine load.

Run: ``pytest tests/benchmarks/test_train_step.py --benchmark-only -m slow`` (or ``tox -e bench``).
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from baselines.lora import LoRAStage
from pat.lora import LoRAConfig
from bench.harness.budget import TrainBudget, solve_pat_ranks
from pat.stage import RunContext
from bench.harness.train import _lm_loss_sum, collect_trainable, make_optimizer

BATCH, SEQ, ROUNDS = 8, 128, 3
THREADS = int(os.environ.get("PAT_BENCH_THREADS", "1"))  # one thread: fastest and steadiest on a shared CPU
GOAL = 0.87  # PAT tokens/s / LoRA tokens/s
ROOT = Path(__file__).resolve().parents[2]


def _stages(config, which: str) -> list:
    if which == "lora":
        return [LoRAStage(LoRAConfig(rank=64, alpha=16, dropout=0.05))]
    from pat.config import PATConfig
    from pat.method import PATStage

    sol = solve_pat_ranks(config, "lora-64", tol=0.05)
    return [PATStage(PATConfig(prune_ratio=0.25, hio_rank=sol["hio_rank"], lora_rank=sol["lora_rank"]))]


class Stepper:
    """A prepared model with its optimizer; ``step()`` runs one training step of the loop on a fixed batch."""

    def __init__(self, model, tok, which: str, device: torch.device):
        self.stages = _stages(model.config, which)
        ctx = RunContext(tokenizer=tok, total_steps=300, extra={"pipeline": [which], "stage_index": 0})
        for st in self.stages:
            model = st.prepare(model, ctx)
        self.model = model.to(device).train()
        groups, named = collect_trainable(model, self.stages, 1e-4)
        self.params = [p for _, p in named]
        self.opt = make_optimizer(groups, TrainBudget(steps=300, lr=1e-4))
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=g).to(device)
        self.batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
        self.n = 0

    def step(self) -> None:
        lm = _lm_loss_sum(self.model, self.batch) / (BATCH * (SEQ - 1))
        extras = [e for e in (st.extra_loss(self.model) for st in self.stages) if e is not None]
        (lm + sum(extras)).backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.3)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.n += 1
        for st in self.stages:
            st.on_optimizer_step(self.model, self.n)
        if self.params[0].device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _peak_memory(which: str) -> dict:
    """Peak memory of two training steps, measured in a fresh process (CPU max RSS is per process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, __file__, which], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pat_vs_lora_train_step(benchmark, smollm2):
    model, tok = smollm2
    dev = _device()
    torch.set_num_threads(THREADS)
    lora = Stepper(copy.deepcopy(model), tok, "lora", dev)
    pat = Stepper(copy.deepcopy(model), tok, "pat", dev)
    assert abs(pat.trainable / lora.trainable - 1) < 0.05  # matched trainable parameters
    lora.step(), pat.step()  # warm-up
    lora_times: list[float] = []

    def time_lora():
        t = time.perf_counter()
        lora.step()
        lora_times.append(time.perf_counter() - t)

    benchmark.pedantic(pat.step, setup=time_lora, rounds=ROUNDS, iterations=1)
    pat_s, lora_s = benchmark.stats.stats.min, min(lora_times)
    ratio = lora_s / pat_s  # = PAT tokens/s / LoRA tokens/s
    mem = {w: _peak_memory(w) for w in ("lora", "pat")}
    benchmark.extra_info.update(
        tokens_per_step=BATCH * SEQ, device=str(dev), threads=torch.get_num_threads(),
        pat_trainable=pat.trainable, lora_trainable=lora.trainable,
        pat_tokens_per_s=BATCH * SEQ / pat_s, lora_tokens_per_s=BATCH * SEQ / lora_s,
        lora_step_times=lora_times, tokens_per_s_ratio=ratio, goal=GOAL, peak_memory=mem,
    )
    assert ratio >= GOAL, f"PAT+LoRA reaches {ratio:.3f} of LoRA-64's tokens/s (goal {GOAL})"


def _rss_mib() -> float:
    """Current resident set size of this process (Linux ``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


if __name__ == "__main__":  # peak-memory child: python tests/benchmarks/test_train_step.py {lora|pat}
    import threading

    from pat.models import load

    dev = _device()
    torch.set_num_threads(THREADS)
    model, tok = load("smollm2-135m")
    s = Stepper(model, tok, sys.argv[1], dev)
    before = _rss_mib()
    peak, running = [before], [True]

    def sample():  # max RSS over the training steps (ru_maxrss would report the model-loading peak instead)
        while running[0]:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    s.step(), s.step()
    running[0] = False
    th.join()
    out = {"cpu_rss_before_steps_mib": round(before, 1), "cpu_rss_peak_during_steps_mib": round(peak[0], 1),
           "cpu_step_increment_mib": round(peak[0] - before, 1), "trainable": s.trainable,
           "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if dev.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        out["cuda_step_increment_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
    print(json.dumps(out))
