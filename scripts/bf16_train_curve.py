"""One short training run in fp32 and in bf16: the `cpu` suite's LoRA-16 run (seed 0), the first ``--steps`` steps
of its 48-step schedule (``stop_after``), loss per step, in one JSON.

Usage::

    PYTHONPATH=$PWD python scripts/bf16_train_curve.py --steps 16 --out results/speed/train-curve.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from bench.harness.train import run_pipeline
from pat.models import load


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--pipeline", choices=["lora", "pat"], default="lora")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "benchmarks"))
    from test_step_ratios import suite_run  # the suite's stages and budget, as the benchmark builds them

    out = {}
    for precision in ("fp32", "bf16"):
        stages, budget, spec = suite_run(args.pipeline, precision)
        model, tok = load("smollm2-135m")
        tmp = Path(tempfile.mkdtemp(prefix="bf16-curve-"))
        torch.manual_seed(spec.seed)
        rec = run_pipeline(model, stages, budget, spec.train_data, tmp, tokenizer=tok, checkpoint_every=None,
                           stop_after=args.steps, progress=False, save_finalized=False)
        shutil.rmtree(tmp, ignore_errors=True)
        out[precision] = {k: rec.get(k) for k in ("losses", "extra_losses", "train_seconds", "mixed_precision",
                                                  "steps_done", "peak_memory")}
        print(precision, rec["losses"], flush=True)
    a, b = out["fp32"]["losses"], out["bf16"]["losses"]
    out["diff_bf16_minus_fp32"] = [y - x for x, y in zip(a, b)]
    out["mean_abs_diff"] = sum(abs(d) for d in out["diff_bf16_minus_fp32"]) / len(a)
    out["config"] = {"pipeline": args.pipeline, "steps": args.steps, "suite": "cpu", "threads": args.threads}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("mean_abs_diff", "diff_bf16_minus_fp32")}))


if __name__ == "__main__":
    main()
