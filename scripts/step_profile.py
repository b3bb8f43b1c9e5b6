"""Where a harness training step goes: torch.profiler over a few steps of the `cpu` suite's LoRA or PAT run.

The step is the harness's own (``bench.harness.train.train_step``: collate, forward, LM loss, the stages' extra
losses, ``accelerator.backward``, clipping, AdamW, ``on_optimizer_step``, the loss ``reduce``) on the `cpu` suite's
budget and data (Alpaca, 8 x 128, data_seed 42), with the suite's stage arguments (``lora`` = LoRA-16;
``pat`` = the ``pat_taylor`` row at 25 %: HIO-48 + LoRA-5, Taylor snap). ``--bare`` times the bare peft LoRA-16
forward + backward + AdamW on the same batches instead (no accelerate, no stages' hooks).

Usage (from the repository root, offline environment of docs/testing.md)::

    PYTHONPATH=$PWD python scripts/step_profile.py --pipeline lora --precision bf16 --steps 3 --out FILE.json

Prints the profiler table (self CPU time, top 30) and writes ``{"step_seconds": [...], "ops": [...]}`` to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.harness import registry
from bench.harness.budget import TrainBudget
from bench.harness.data import load_instruction_data
from bench.harness.suites import expand, load_suite, resolve_stage
from bench.harness.train import collect_trainable, make_accelerator, setup_run, train_step
from pat.models import load
from pat.stage import RunContext


def suite_run(pipeline: str, precision: str):
    """``(stages, budget)`` of the cpu suite's seed-0 run of ``pipeline`` (``lora`` or ``pat`` = pat_taylor 25 %)."""
    suite = load_suite("cpu")
    name, ratio = ("lora", 0.0) if pipeline == "lora" else ("pat_taylor", 0.25)
    spec = next(r for r in expand(suite) if r.pipeline == (name,) and r.ratio == ratio and r.seed == 0)
    from bench.harness.runner import stage_args

    base = resolve_stage(name, spec.stage_args)[0]
    stages = [registry.make_stage(base, **stage_args(spec, name, registry.stage_class(base)))]
    budget = TrainBudget.from_dict({**spec.budget, "precision": precision})
    return stages, budget, spec


class Harness:
    """The harness's prepared run; ``step(i)`` is ``train_step`` of optimizer step ``i``."""

    def __init__(self, pipeline: str, precision: str):
        self.stages, self.budget, spec = suite_run(pipeline, precision)
        model, tok = load("smollm2-135m")
        ctx = RunContext(tokenizer=tok, total_steps=self.budget.total_steps, seed=self.budget.seed,
                         extra={"pipeline": list(spec.pipeline), "stage_index": 0})
        for st in self.stages:
            model = st.prepare(model, ctx)
        self.data = load_instruction_data(spec.train_data, tok, self.budget.seq_len, self.budget.subset_size,
                                          self.budget.data_seed)
        acc = make_accelerator(self.budget)
        self.run = setup_run(model, self.stages, self.budget, acc, collect_trainable(model, self.stages,
                                                                                     self.budget.lr))
        self.run.engine_model.train()

    def step(self, i: int) -> None:
        train_step(self.run, self.data, i)


class Bare:
    """peft LoRA-16 (the suite's args) forward + LM loss + backward + AdamW on the harness's batches."""

    def __init__(self, precision: str):
        from pat.lora import apply_lora  # peft's get_peft_model with the suite's LoRA-16 arguments

        self.stages, self.budget, spec = suite_run("lora", precision)
        model, tok = load("smollm2-135m")
        self.model = apply_lora(model, self.stages[0].cfg).train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.budget.lr)
        self.data = load_instruction_data(spec.train_data, tok, self.budget.seq_len, self.budget.subset_size,
                                          self.budget.data_seed)
        self.bf16 = precision == "bf16"

    def step(self, i: int) -> None:
        from bench.harness.data import global_batch_indices

        idx = global_batch_indices(len(self.data), i, self.budget.global_batch, self.budget.data_seed)
        b = self.data.collate(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", choices=["lora", "pat"], default="lora")
    ap.add_argument("--bare", action="store_true", help="bare peft LoRA step instead of the harness step")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runner = Bare(args.precision) if args.bare else Harness(args.pipeline, args.precision)
    for i in range(args.warmup):
        runner.step(i)
    times = []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.warmup, args.warmup + args.steps):
            t = time.perf_counter()
            runner.step(i)
            times.append(time.perf_counter() - t)
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=30))
    total = sum(e.self_cpu_time_total for e in ka)
    ops = sorted(({"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6 / args.steps, "calls": e.count / args.steps,
                   "share": e.self_cpu_time_total / total} for e in ka), key=lambda d: -d["self_cpu_s"])
    rec = {"pipeline": "bare-peft-lora" if args.bare else args.pipeline, "precision": args.precision,
           "threads": args.threads, "steps": args.steps, "step_seconds": times,
           "profiled_self_cpu_s_per_step": total / 1e6 / args.steps, "ops": ops[:60]}
    print(json.dumps({k: v for k, v in rec.items() if k != "ops"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
