"""Finding 2026-12-04-statistics.md: the cpu suite's perplexity interval of the three primary pairs under (a)
independent windows with seeds resampled (the method before issue 19, reconstructed), (b) circular blocks without
seed variance, (c) blocks plus the seed component (the report's). Run from the repository root:
``PYTHONPATH=. python scripts/ppl_interval_decomposition.py``."""
import math

import numpy as np
import pandas as pd

from bench.harness import stats
from bench.harness.reporting import pairing as P
from bench.harness.reporting.chance import chance_tasks
from bench.harness.results import load_results


recs = [r for r in load_results("results/cpu") if r.get("suite") == "cpu"]


def cell(pipe, ratio):
    return [r for r in recs if r["status"] == "success" and r["spec"]["pipeline"] == pipe
            and abs(r["spec"]["ratio"] - ratio) < 1e-9]


pat = cell(["pat_taylor"], 0.25)
runs = pd.DataFrame({"model": ["smollm2-135m"], "ppl_wikitext2": [1.0]})
sm = P.report_seed_model(recs, runs, chance_tasks(recs))
for name, other in (("LLM-Pruner P->FT", cell(["llm_pruner", "lora"], 0.25)),
                    ("SliceGPT P->FT", cell(["slicegpt", "lora"], 0.25)), ("LoRA", cell(["lora"], 0.0))):
    wa, tok = P._windows(pat, "wikitext2")
    wb, _ = P._windows(other, "wikitext2")
    d = wa.mean(0) - wb.mean(0)
    rho = np.corrcoef(d[:-1], d[1:])[0, 1]
    # (a) old: seeds resampled (multinomial), windows independent
    rng = np.random.default_rng(0)
    B = 4000

    def sw(k):
        return rng.multinomial(k, np.full(k, 1 / k), size=B) / k
    dd = sw(wa.shape[0]) @ wa - sw(wb.shape[0]) @ wb
    idx = rng.integers(0, len(tok), size=(B, len(tok)))
    reps = (np.take_along_axis(dd, idx, 1) * tok[idx]).sum(1) / tok[idx].sum(1)
    a = np.quantile(reps, [0.025, 0.975])
    b = stats.bootstrap(wa, wb, weights=tok, n_boot=B, block="auto", seed_sd=0.0)
    comp = sm.component("smollm2-135m", "log_ppl", pat, other)
    c = stats.bootstrap(wa, wb, weights=tok, n_boot=B, block="auto", seed_sd=comp[0], seed_df=comp[1])

    def f(lo, hi):
        return f"[{math.exp(lo):.3f}, {math.exp(hi):.3f}] (log width {hi - lo:.3f})"

    print(f"PAT vs {name}: ratio {math.exp(c.estimate):.3f}; lag-1 autocorr of window differences {rho:.2f}; "
          f"block {b.block}; seed sd {comp[0]:.4f} (df {comp[1]:.1f})")
    print("   old (independent windows, seeds resampled):", f(*a))
    print("   blocks, no seed component:                 ", f(b.lo, b.hi))
    print("   blocks + seed component (the report):      ", f(c.lo, c.hi))
