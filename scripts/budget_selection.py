"""Who the paper's mask picks at each budget of the sweep (docs/findings/2026-12-05-budget-sweep.md), from records.

    PYTHONPATH=$PWD python scripts/budget_selection.py [--results results/budget] [--out results/budget_selection.json]

1. The massive-activation channels of the dense model: the hidden channels with the largest max |h| over the
   residual stream (the output of every layer but the last, whose HF hidden state is normed) on 8 C4 calibration
   windows of 128 tokens (C4, never WikiText-2 test).
2. Per budget, for each PAT arm: which of those channels it keeps, its perplexity, and how its selection overlaps
   with the mask-LR x1 arm at each probe step (``train.probes[].proxy_topn``) and at the end (kept channels).
   Under Adam the proxies' updates are scale-free in the gradient, and the gate is sigmoid(tau * W) + beta, so a
   mask LR k times larger mostly rescales W (like a k times larger tau) and leaves the ranking (the selection) as
   it is until the gate saturates; these overlaps measure how far that holds.
Prints Markdown tables and writes the numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness.mask_probe import jaccard

ROOT = Path(__file__).resolve().parents[1]


def massive_channels(k: int = 3, n: int = 8) -> list[dict]:
    import torch

    from bench.harness.calibration import load_calibration
    from bench.harness.evaluation import load_model

    model, tok = load_model("smollm2-135m")
    model.eval()
    ids, _ = load_calibration(tok, "c4", n=n, seq_len=128, seed=0)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    # the residual stream after each layer but the last (HF's last hidden state is after the final norm)
    h = torch.stack(out.hidden_states[1:-1]).abs().amax(dim=(0, 1, 2))  # (d,): max over layers, windows, positions
    top = torch.argsort(h, descending=True)[:k]
    return [{"channel": int(c), "max_abs": float(h[c]), "median_channel_max_abs": float(h.median())} for c in top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(ROOT / "results" / "budget"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--k", type=int, default=3, help="massive channels to track")
    args = ap.parse_args(argv)
    recs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*.json"))]
    recs = [r for r in recs if r.get("status") == "success" and r["spec"]["pipeline"]
            and r["spec"]["pipeline"][0].startswith("pat")]
    massive = massive_channels(args.k)
    chans = [m["channel"] for m in massive]
    print("Massive-activation channels (max |h| over layers, 8 C4 windows): "
          + ", ".join(f"{m['channel']} ({m['max_abs']:.0f})" for m in massive)
          + f"; median channel {massive[0]['median_channel_max_abs']:.1f}\n")
    by: dict[int, dict[str, dict]] = {}
    for r in recs:
        by.setdefault(r["spec"]["budget"]["steps"], {})[r["spec"]["pipeline"][0]] = r
    rows, probes = [], []
    keeps = " | keeps ".join(map(str, chans))
    print(f"| steps | arm | ppl | keeps {keeps} | J(final, x1) | J(final, Taylor snap) |")
    print("|---|---|---|" + "---|" * len(chans) + "---|---|")
    for steps in sorted(by):
        arms = by[steps]
        kept = {a: next(iter(r["train"]["stages"].values()))["kept_channels"] for a, r in arms.items()}
        for a in sorted(arms):
            r = arms[a]
            row = {"steps": steps, "arm": a, "ppl": r["metrics"]["perplexity"]["wikitext2"]["ppl"],
                   "keeps": {c: c in kept[a] for c in chans},
                   "jaccard_final_x1": jaccard(kept[a], kept["pat"]) if "pat" in kept else None,
                   "jaccard_final_taylor": jaccard(kept[a], kept["pat_taylor"]) if "pat_taylor" in kept else None}
            rows.append(row)
            def f(v):
                return ("-" if v is None else f"{v:.3f}")
            print(f"| {steps} | {a} | {row['ppl']:.1f} | " + " | ".join("yes" if row["keeps"][c] else "**no**"
                                                                      for c in chans)
                  + f" | {f(row['jaccard_final_x1'])} | {f(row['jaccard_final_taylor'])} |")
        base = {p["step"]: p["proxy_topn"] for p in (arms.get("pat") or {}).get("train", {}).get("probes", [])}
        for a in ("pat_m10", "pat_m100"):
            for p in (arms.get(a) or {}).get("train", {}).get("probes", []):
                if p["step"] in base:
                    probes.append({"steps": steps, "arm": a, "step": p["step"],
                                   "jaccard_topn_vs_x1": jaccard(p["proxy_topn"], base[p["step"]])})
    if probes:
        print("\nOverlap of the current top-N with the x1 arm's at the same probe step:\n")
        print("| steps | arm | " + " | ".join(f"step {s}" for s in sorted({p['step'] for p in probes})) + " |")
        steps_all = sorted({p["step"] for p in probes})
        print("|---|---|" + "---|" * len(steps_all))
        for (st, a) in sorted({(p["steps"], p["arm"]) for p in probes}):
            got = {p["step"]: p["jaccard_topn_vs_x1"] for p in probes if p["steps"] == st and p["arm"] == a}
            print(f"| {st} | {a} | " + " | ".join(f"{got[s]:.3f}" if s in got else "" for s in steps_all) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"massive": massive, "arms": rows, "probes": probes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
