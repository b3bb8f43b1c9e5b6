"""Measure, on this CPU, the numbers the gpu suite's time estimate is built from; print them as JSON.

    python scripts/gpu/estimate.py [--out results/gpu_estimate.json]

Measured here:
* ``ops_per_step``: aten operators per optimizer step (profiler leaf events) of LoRA and PAT on a 30-layer model with
  SmolLM2-135M's structure (9 heads, 3 KV heads, tied embeddings) but hidden size 72: the same operator sequence as
  SmolLM2, with negligible arithmetic; on a GPU each is at least one kernel launch.
* ``host_cpu_seconds_per_op``: that model's CPU time per step / its operator count on this CPU: the eager-mode
  dispatch cost per operator, arithmetic included (an upper bound of the host time per operator). CPU time
  (``time.process_time``, one thread), not wall time, so other load on the machine does not inflate it.
* ``tiny30_*_b1``: the same at micro-batch 1; with micro-batch 8, the CPU time per step is split into a part per
  token and a fixed part per step (the host floor, where the GPU's time would go to dispatch and launches).
* ``smollm2_step``: seconds and tokens per optimizer step of LoRA and PAT on SmolLM2-135M itself (fp32, this CPU),
  giving this CPU's sustained FLOP/s for the record.
* ``eval``: log-likelihood requests of the 7 tasks' full sets, and lm-eval's host CPU time on a one-layer model of
  hidden size 16 (arithmetic negligible), split into a fixed part (task loading) and a part per request from two
  limits.

The arithmetic that turns these into an H200 estimate is in ``bench/suites/gpu.toml`` and ``docs/scale.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench / pat

EVAL_TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": True, "seed": 0}
SMOL_LIKE = {"model_type": "llama", "hidden_size": 72, "intermediate_size": 192, "num_hidden_layers": 30,
             "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True, "seed": 0}


def _stages(kind: str, total_steps: int):
    from bench.harness.registry import make_stage

    if kind == "lora":
        return [make_stage("lora", rank=16, alpha=16.0, dropout=0.05)]
    return [make_stage("pat", prune_ratio=0.25, hio_rank=48, lora_rank=5, lora_alpha=1.0)]


def _train_steps(model_dir: str, kind: str, steps: int, micro: int, seq_len: int, profile: bool = False) -> dict:
    from bench.harness.budget import TrainBudget
    from bench.harness.data import load_instruction_data
    from pat.stage import RunContext
    from bench.harness.train import train
    from pat.models import load

    model, tok = load(model_dir)
    stages = _stages(kind, steps)
    ctx = RunContext(tokenizer=tok, total_steps=steps + 1, extra={"pipeline": [kind], "stage_index": 0})
    for st in stages:
        model = st.prepare(model, ctx)
    b = TrainBudget(steps=steps + 1, global_batch=micro, micro_batch=micro, seq_len=seq_len, lr=2e-4,
                    schedule="constant", subset_size=micro * (steps + 1), data_seed=42)
    data = load_instruction_data("alpaca", tok, seq_len, b.subset_size, 42)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"estimate-{kind}-{os.getpid()}"
    b1 = TrainBudget.from_dict({**b.to_dict(), "steps": 1})
    train(model, stages, b1, data, out, progress=False, resume=False)  # warm-up step
    t0, c0 = time.perf_counter(), time.process_time()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            rec = train(model, stages, b, data, out, progress=False, resume=False, stop_after=steps)
        events = [e for e in p.events() if e.name.startswith("aten::") and not any(
            c.name.startswith("aten::") for c in e.cpu_children)]
        n_ops = len(events) / steps
    else:
        rec = train(model, stages, b, data, out, progress=False, resume=False, stop_after=steps)
        n_ops = None
    sec, cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    tokens = rec["tokens_seen"] / steps
    return {"wall_seconds_per_step": round(sec, 4), "cpu_seconds_per_step": round(cpu, 4), "tokens_per_step": tokens,
            "ops_per_step": n_ops, "trainable": rec["trainable_params"]}


def _eval_requests(data_dir: str | None) -> dict:
    from bench.harness.datadir import dataset_path

    choices = {"boolq": lambda r: 2, "piqa": lambda r: 2, "winogrande": lambda r: 2,
               "hellaswag": lambda r: len(r["endings"]), "arc_easy": lambda r: len(r["choices"]["text"]),
               "arc_challenge": lambda r: len(r["choices"]["text"]), "openbookqa": lambda r: len(r["choices"]["text"])}
    out = {}
    for task, n_choices in choices.items():
        rows = [json.loads(line) for line in dataset_path(task, data_dir).read_text().splitlines() if line.strip()]
        chars = sum(len(json.dumps(r)) for r in rows)
        out[task] = {"docs": len(rows), "requests": sum(n_choices(r) for r in rows), "json_chars": chars}
    return out


def _eval_overhead(model_dir: str, limit: int) -> dict:
    from bench.harness.evaluation import evaluate_tasks
    from pat.models import load

    model, tok = load(model_dir)
    tasks = ["piqa", "arc_easy", "hellaswag"]
    res = {}
    for n in (limit // 5, limit):  # CPU seconds = fixed (task loading) + per request x requests
        c0 = time.process_time()
        evaluate_tasks(model, tok, tasks, limit=n, batch_size=32)
        res[n] = (time.process_time() - c0, n * (2 + 4 + 4))
    (c1, r1), (c2, r2) = res[limit // 5], res[limit]
    per = (c2 - c1) / (r2 - r1)
    return {"tasks": tasks, "cpu_seconds": {str(k): round(v[0], 2) for k, v in res.items()},
            "requests": {str(k): v[1] for k, v in res.items()}, "cpu_seconds_per_request": round(per, 5),
            "cpu_seconds_fixed": round(c1 - per * r1, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--smol-steps", type=int, default=2)
    ap.add_argument("--tiny-steps", type=int, default=4)
    ap.add_argument("--only", choices=["all", "floor", "eval"], default="all",
                    help="floor: only the micro-batch-1 step times; eval: only lm-eval's host time")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from bench.harness.modelsrc import build_random_model
    from pat.models import resolve

    tiny = str(build_random_model(SMOL_LIKE))
    res: dict = {"host": os.uname().nodename, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.only == "eval":
        res["eval_overhead_tiny"] = _eval_overhead(str(build_random_model(EVAL_TINY)), 25)
        print(json.dumps(res, indent=2))
        return 0
    for kind in ("lora", "pat"):  # the same model at micro-batch 1: with the micro-batch-8 time, the per-step floor
        res[f"tiny30_{kind}_b1"] = _train_steps(tiny, kind, args.tiny_steps, 1, 256)
    if args.only == "floor":
        print(json.dumps(res, indent=2))
        return 0
    for kind in ("lora", "pat"):
        ops = _train_steps(tiny, kind, 1, 8, 256, profile=True)["ops_per_step"]
        t = res[f"tiny30_{kind}"] = _train_steps(tiny, kind, args.tiny_steps, 8, 256)
        t["ops_per_step"] = ops
        t["host_cpu_seconds_per_op"] = t["cpu_seconds_per_step"] / ops
    smol = resolve("smollm2-135m")
    for kind in ("lora", "pat"):
        res[f"smollm2_{kind}"] = _train_steps(smol, kind, args.smol_steps, 8, 128)
    res["eval_requests"] = _eval_requests(None)
    res["eval_overhead_tiny"] = _eval_overhead(str(build_random_model(EVAL_TINY)), 25)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
