"""Where a harness training step goes: torch.profiler over a few steps of the `cpu` suite's LoRA or PAT run.

The step is the harness's own (``bench.harness.train.train_step``: collate, forward, LM loss, the stages' extra
losses, ``accelerator.backward``, clipping, AdamW, ``on_optimizer_step``, the loss ``reduce``) on the `cpu` suite's
budget and data (Alpaca, 8 x 128, data_seed 42), with the suite's stage arguments (``lora`` = LoRA-16;
``pat`` = the ``pat_taylor`` row at 25 %: HIO-48 + LoRA-5, Taylor snap). ``--arm bare`` times the bare peft
LoRA-16 forward + backward + AdamW on the same batches instead (no accelerate, no stages' hooks); ``loraprev`` /
``patprev`` the harness step before issue 18. The arms are tests/benchmarks/test_step_ratios.py's.

Usage (from the repository root, offline environment of docs/testing.md)::

    PYTHONPATH=$PWD python scripts/step_profile.py --arm lora --precision bf16 --steps 3 --out FILE.json

Prints the profiler table (self CPU time, top 30) and writes ``{"step_seconds": [...], "ops": [...]}`` to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "benchmarks"))
from test_step_ratios import make_arm  # noqa: E402  (the benchmark's arms: the same steps as the ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", default="lora", help="bare | lora | pat | loraprev | patprev (the step before issue 18)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runner = make_arm(f"{args.arm}-{args.precision}")
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
    rec = {"pipeline": args.arm, "precision": args.precision,
           "threads": args.threads, "steps": args.steps, "step_seconds": times,
           "profiled_self_cpu_s_per_step": total / 1e6 / args.steps, "ops": ops[:60]}
    print(json.dumps({k: v for k, v in rec.items() if k != "ops"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
