"""Which way does the task gradient push PAT's mask proxy at the start, and is that related to importance?

    PYTHONPATH=$PWD python scripts/mask_gradient_sign.py [--n 48] [--out results/mask_gradient_sign.json]

On the dense SmolLM2-135M with PAT attached (proxy 0, gate 1), per C4 window of 128 tokens (seed 1, never
WikiText-2), the gradient of the LM loss w.r.t. the proxy, g (n, d). Under Adam a proxy moves against the sign of
its mean gradient at about the LR a step, whatever the gradient's size, and the count loss pushes every proxy alike,
so the channels the mask keeps first are those with the most negative mean/sd (the loss wants them larger). Taylor
importance is sum |g| (the gate is 1). Prints how the two rankings relate (budget-sweep finding).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness.mask_probe import jaccard



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48, help="C4 windows (one gradient each)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from bench.harness.calibration import load_calibration
    from bench.harness.evaluation import load_model
    from pat import PATConfig, attach, get_mask

    model, tok = load_model("smollm2-135m")
    attach(model, PATConfig(prune_ratio=0.25), total_steps=48)
    mask = get_mask(model)
    model.eval()
    calib, _ = load_calibration(tok, "c4", n=args.n, seq_len=128, seed=1)
    grads = []
    for ids in calib:
        loss = model(input_ids=ids[None], labels=ids[None], use_cache=False).loss
        grads.append(torch.autograd.grad(loss, [mask.proxy])[0].detach().flatten().float())
        mask.clear()
    g = torch.stack(grads)
    n_keep = mask.target
    imp, mean, sd = g.abs().sum(0), g.mean(0), g.std(0)
    snr = mean / (sd / len(g) ** 0.5).clamp_min(torch.finfo(torch.float32).tiny)
    taylor = torch.argsort(imp, descending=True)[:n_keep].tolist()
    follows_sign = torch.argsort(snr)[:n_keep].tolist()  # most negative mean/sd first: the loss wants them larger
    def spearman(a, b) -> float:
        return float(torch.corrcoef(torch.stack([a.argsort().argsort().float(), b.argsort().argsort().float()]))[0, 1])

    out = {"windows": len(g), "keep": n_keep,
           "spearman_importance_vs_mean_gradient": spearman(imp, mean),
           "spearman_importance_vs_mean_over_se": spearman(imp, snr),
           "share_pushed_down_in_taylor_top": float((mean[taylor] > 0).float().mean()),
           "share_pushed_down_in_taylor_rest": float((mean[torch.argsort(imp, descending=True)[n_keep:]] > 0)
                                                     .float().mean()),
           "jaccard_sign_following_vs_taylor": jaccard(follows_sign, taylor),
           "median_abs_snr": float(snr.abs().median()),
           "massive": {c: {"mean": float(mean[c]), "sd": float(sd[c]), "snr": float(snr[c]),
                           "importance_rank": int((imp > imp[c]).sum())} for c in (507, 247, 17)}}
    print(f"{len(g)} C4 windows: Spearman(Taylor importance, mean proxy gradient) = "
          f"{out['spearman_importance_vs_mean_gradient']:+.3f}, (importance, mean/se) = "
          f"{out['spearman_importance_vs_mean_over_se']:+.3f}; mean gradient > 0 (pushed down) for "
          f"{out['share_pushed_down_in_taylor_top']:.0%} of the Taylor top-{n_keep} and "
          f"{out['share_pushed_down_in_taylor_rest']:.0%} of the rest; the {n_keep} channels the gradient's sign "
          f"favours "
          f"overlap the Taylor top-{n_keep} with Jaccard {out['jaccard_sign_following_vs_taylor']:.3f} (two random "
          f"sets: 0.60); median |mean/se| {out['median_abs_snr']:.2f}")
    for c, v in out["massive"].items():
        print(f"channel {c}: mean gradient {v['mean']:+.3g} (mean/se {v['snr']:+.1f}), importance rank "
              f"{v['importance_rank']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
