"""torch.optim.AdamW on CPU, single-tensor loop (torch's CPU default) vs foreach vs fused, on LoRA-16's 420 tensors
of SmolLM2-135M (4,884,480 parameters): seconds per step (median of interleaved rounds) and the largest difference
of the parameters after the steps. The optimizer settings are the harness's (betas 0.9/0.999, eps 1e-8, wd 0).

Usage: ``PYTHONPATH=$PWD python scripts/adamw_impls.py --out results/speed/adamw.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

D, FF, KV = 576, 1536, 192  # SmolLM2-135M: hidden, MLP, k/v width; 30 layers, 7 LoRA targets each
SHAPES = [s for _ in range(30) for i, o in [(D, D), (D, KV), (D, KV), (D, D), (D, FF), (D, FF), (FF, D)]
          for s in ((16, i), (o, 16))]
KINDS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params, opts = {}, {}
    for k, kw in KINDS.items():
        g = torch.Generator().manual_seed(0)
        params[k] = [torch.nn.Parameter(0.01 * torch.randn(s, generator=g)) for s in SHAPES]
        opts[k] = torch.optim.AdamW(params[k], lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **kw)
    times = {k: [] for k in KINDS}
    g = torch.Generator().manual_seed(1)
    for _ in range(args.steps):
        grads = [1e-3 * torch.randn(s, generator=g) for s in SHAPES]
        for k in KINDS:  # interleaved: the same gradients, the same load
            for p, gr in zip(params[k], grads):
                p.grad = gr.clone()
            t = time.perf_counter()
            opts[k].step()
            times[k].append(time.perf_counter() - t)
    flat = {k: torch.cat([p.detach().flatten() for p in ps]) for k, ps in params.items()}
    out = {"n_tensors": len(SHAPES), "n_params": sum(a * b for a, b in SHAPES), "threads": args.threads,
           "steps": args.steps, "median_step_s": {k: statistics.median(v) for k, v in times.items()},
           "max_abs_diff_vs_single": {k: float((flat[k] - flat["single"]).abs().max()) for k in KINDS},
           "max_abs_param": float(flat["single"].abs().max()), "torch": torch.__version__}
    print(json.dumps(out, indent=1))
    if args.out:
        open(args.out, "w").write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
