"""SDPA forward + backward of one SmolLM2-135M attention layer at 8 x 128 (9 heads of 64, causal), flash vs math
backend, fp32 vs bf16, 1 thread: median of 5 after 2 warm-up calls.

Usage: ``python scripts/sdpa_bf16.py --out results/speed/sdpa-bf16.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    b, h, t, d = 8, 9, 128, 64
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, h, t, d, generator=g).to(dt).requires_grad_() for _ in range(3))
        go = torch.randn(b, h, t, d, generator=g).to(dt)
        for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                with sdpa_kernel(be):
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                o.backward(go)
                ts.append(time.perf_counter() - t0)
            out[f"{str(dt).split('.')[-1]} {be.name.lower()}"] = statistics.median(ts[2:])
    print(json.dumps(out, indent=1))
    if args.out:
        open(args.out, "w").write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
