"""How good is a selection of hidden channels before any recovery? Pruned-only perplexity of the dense model with
only the kept channels of each selection (docs/findings/2026-12-05-budget-sweep.md; issue 21's diagnostics).

    PYTHONPATH=$PWD python scripts/selection_pruned_only.py [--results results/budget] [--steps 192 544] \
        [--out results/selection_pruned_only.json] [--md results/selection_pruned_only.md]

Selections, each of 432 of SmolLM2-135M's 576 hidden channels (25 %):
- the calibration scores that ``mask_init`` uses: Taylor and FLAP's fluctuation metric (``pat.importance``) on 32 C4
  windows of 128 tokens (seed 0; never WikiText-2);
- random sets (seeds 0, 1, 2: ``--random``);
- the final selection (``kept_channels``) of every PAT run of the sweep at the given budgets.
Each is applied to the *untuned* dense model: PAT attached with the proxy at +1 on the kept channels and -1 on the
rest, hard gate, then ``pat.finalize`` (a plain model with hidden size 432; HIO and LoRA start at zero, so this is
the dense model with those channels removed). Perplexity: WikiText-2 test, 128 windows of 128 tokens, as the sweep.
The gap between this number and the run's own perplexity is what its tuning recovered.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.harness.mask_probe import jaccard

ROOT = Path(__file__).resolve().parents[1]



def _model():
    from bench.harness.evaluation import load_model
    from pat import PATConfig, attach

    model, tok = load_model("smollm2-135m")
    attach(model, PATConfig(prune_ratio=0.25), total_steps=48)
    return model, tok


def pruned_only_ppl(keep: list[int]) -> float:
    import torch

    from bench.harness.perplexity import perplexity
    from pat import finalize, get_mask, set_hard

    model, tok = _model()  # a fresh copy each time: finalize merges into the model it is given
    mask = get_mask(model)
    with torch.no_grad():
        p = torch.full_like(mask.proxy, -1.0)
        p[torch.tensor(sorted(keep))] = 1.0
        mask.proxy.copy_(p)
    set_hard(model, True)
    small = finalize(model)
    return float(perplexity(small, tok, "wikitext2", seq_len=128, stride=128, max_tokens=16384)["ppl"])


def selections(results: Path, steps: set[int] | None, n_random: int = 3) -> dict[str, list[int]]:
    import torch

    from bench.harness.calibration import load_calibration
    from pat import get_mask
    from pat.importance import channel_scores

    model, tok = _model()
    n_keep = get_mask(model).target
    calib, _ = load_calibration(tok, "c4", n=32, seq_len=128, seed=0)
    out = {}
    for by in ("taylor", "flap"):
        scores = channel_scores(model, calib, by)
        out[f"calibration {by} (mask_init)"] = sorted(torch.argsort(scores, descending=True)[:n_keep].tolist())
    for seed in range(n_random):
        out[f"random (seed {seed})"] = sorted(torch.randperm(scores.numel(),
                                                             generator=torch.Generator().manual_seed(seed))
                                              [:n_keep].tolist())
    recs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    recs = [r for r in recs if r.get("status") == "success" and r["spec"]["pipeline"]
            and r["spec"]["pipeline"][0].startswith("pat")
            and (steps is None or r["spec"]["budget"]["steps"] in steps)]
    for r in sorted(recs, key=lambda r: (r["spec"]["budget"]["steps"], r["spec"]["pipeline"][0])):
        st = next(iter(r["train"]["stages"].values()))
        seed = r["spec"].get("seed", 0)
        name = f"{r['spec']['pipeline'][0]} at {r['spec']['budget']['steps']} steps"
        name += f", seed {seed}" if seed else ""
        out[name] = {
            "keep": st["kept_channels"], "tuned_ppl": r["metrics"]["perplexity"]["wikitext2"]["ppl"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results" / "budget"))
    ap.add_argument("--steps", type=int, nargs="*", default=None,
                    help="budgets (total steps) to include; all if absent")
    ap.add_argument("--random", type=int, default=3, help="random selections (seeds 0..n-1)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.manual_seed(0)
    sels = selections(Path(args.results), set(args.steps) if args.steps else None, args.random)
    rows = []
    ref_t, ref_f = sels["calibration taylor (mask_init)"], sels["calibration flap (mask_init)"]
    for name, sel in sels.items():
        keep, tuned = (sel["keep"], sel["tuned_ppl"]) if isinstance(sel, dict) else (sel, None)
        t0 = time.perf_counter()
        rows.append({"selection": name, "pruned_only_ppl": pruned_only_ppl(keep), "tuned_ppl": tuned,
                     "jaccard_calibration_taylor": jaccard(keep, ref_t),
                     "jaccard_calibration_flap": jaccard(keep, ref_f),
                     "keeps": {c: c in keep for c in (507, 247, 17)}, "keep": keep})
        print(f"{name}: {rows[-1]['pruned_only_ppl']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = ["# Pruned-only perplexity of each selection", "",
             "Generated by `scripts/selection_pruned_only.py`: the untuned dense model with only the selected 432 "
             "hidden channels; WikiText-2 ppl@128 (128 windows). `after its run`: the run's own perplexity after its "
             "tuning budget. J: Jaccard overlap with the calibration selections (two random sets of 432 of 576: "
             "0.60 on average).", "",
             "## Selections", "",
             "| selection | pruned-only ppl | after its run | J(calibration Taylor) | J(calibration FLAP metric) | "
             "keeps 507 / 247 / 17 |", "|---|---|---|---|---|---|"]
    for r in rows:
        tuned = "–" if r["tuned_ppl"] is None else f"{r['tuned_ppl']:,.1f}"
        lines.append(f"| {r['selection']} | {r['pruned_only_ppl']:,.1f} | {tuned} | "
                     f"{r['jaccard_calibration_taylor']:.3f} | {r['jaccard_calibration_flap']:.3f} | "
                     + " / ".join("yes" if v else "**no**" for v in r["keeps"].values()) + " |")
    print("\n".join(lines))
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
