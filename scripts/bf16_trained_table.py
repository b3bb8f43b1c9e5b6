"""bf16 against fp32 on trained models (issue 18; docs/findings/2026-12-05-bf16-trained.md), from records.

    PYTHONPATH=$PWD python scripts/bf16_trained_table.py

Two comparisons, each paired on the `cpu` suite's 420 documents and 128 WikiText-2 windows:
- **evaluation only**: a model trained in fp32 (a finished run of the budget suite) evaluated in bf16
  (``results/speed/bf16-eval-<run>.json``) against its own fp32 evaluation (the run record);
- **end to end**: the same cell trained and evaluated in bf16 (``results/speed/bf16-budget/<run>.json``, the budget
  suite with ``--precision bf16``) against the fp32 run (``results/budget/<run>.json``), with the two loss curves.
Beside each, the pooled seed standard deviation of the same metric (the cpu suite's three-seed cells,
``bench.harness.reporting.pairing.seed_model``): the size of the change a rerun with another seed makes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bf16_paired import compare  # noqa: E402

from bench.harness.reporting.chance import chance_tasks  # noqa: E402
from bench.harness.reporting.pairing import _above_chance, seed_model  # noqa: E402
from bench.harness.results import load_results  # noqa: E402

RUNS = ["smollm2-135m--lora--r0.00--s0_16--s0", "smollm2-135m--pat_taylor--r0.25--s0_16_pat--s0",
        "smollm2-135m--llm_pruner+lora--r0.25--s0_16--s0"]


def pooled_sd() -> dict:
    recs = load_results(ROOT / "results" / "cpu")
    ch = chance_tasks(recs)
    sm = seed_model(recs, {"smollm2-135m": _above_chance(ch, "smollm2-135m")}, "wikitext2")
    return sm.sd


def main() -> int:
    sd = pooled_sd()
    print("| run | comparison | mean acc, 7 tasks: bf16 - fp32 (points) [95 % CI] | answers changed | "
          "WikiText-2 ppl fp32 -> bf16 | ratio [95 % CI] | seed sd: acc (points) / log ppl |")
    print("|---|---|---|---|---|---|---|")
    curves = []
    for run in RUNS:
        fp32 = ROOT / "results" / "budget" / f"{run}.json"
        pruned = "--r0.00--" not in run
        s_acc, s_ppl = (sd.get(("smollm2-135m", m, pruned), (float("nan"), 0))[0] for m in ("acc", "log_ppl"))
        for what, other in (("evaluation only", ROOT / "results" / "speed" / f"bf16-eval-{run}.json"),
                            ("trained + evaluated", ROOT / "results" / "speed" / "bf16-budget" / f"{run}.json")):
            if not (fp32.exists() and other.exists()):
                continue
            c = compare(str(fp32), str(other))
            a = c["acc_diff_bf16_minus_fp32"]
            p = c["ppl_wikitext2"]
            print(f"| {run} | {what} | {100 * a['estimate']:+.2f} [{100 * a['lo']:+.2f}, {100 * a['hi']:+.2f}] | "
                  f"{c['choice_flips']} of {c['documents']} | {p['fp32']:.2f} -> {p['bf16']:.2f} | "
                  f"{p['ratio']:.4f} [{p['ratio_interval'][0]:.4f}, {p['ratio_interval'][1]:.4f}] | "
                  f"{s_acc:.2f} / {s_ppl:.3f} (ratio x{math.exp(s_ppl):.3f}) |")
            if c.get("train_lm_loss"):
                curves.append((run, c["train_lm_loss"]))
    for run, t in curves:
        print(f"\n{run}: training LM loss over {t['steps']} steps, bf16 - fp32: "
              f"mean {t['mean_diff_bf16_minus_fp32']:+.4f}, "
              f"mean |diff| {t['mean_abs_diff']:.4f}, max |diff| {t['max_abs_diff']:.4f}; mean of the last 10 steps "
              f"fp32 {t['last10_fp32']:.4f}, bf16 {t['last10_bf16']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
