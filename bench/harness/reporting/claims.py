"""Claims: the paper's comparisons beside ours."""

from __future__ import annotations

import pandas as pd

from bench.harness.reporting.pairing import _above_chance, _cells, _compare
from bench.harness.reporting.tables import paper_table

def _cell(runs: pd.DataFrame, model: str, ratio: float, family: str, mode: str, value: str, method: str | None = None):
    d = runs[(runs["status"] == "success") & (runs["model"] == model) & (runs["family"] == family)
             & (runs["mode"] == mode) & ((runs["ratio"] - ratio).abs() < 1e-9)].dropna(subset=[value])
    if method is not None:
        d = d[d["method"] == method]
    if d.empty:
        return None, None
    se = d[f"{value}_se"].mean() if f"{value}_se" in d else None
    return d[value].mean(), se


def _key(runs: pd.DataFrame, model: str, ratio: float, family: str, mode: str, method: str | None = None):
    """The (model, ratio, family, method, mode) cell of ``runs`` (the family's default name first), or None."""
    d = runs[(runs["status"] == "success") & (runs["model"] == model) & (runs["family"] == family)
             & (runs["mode"] == mode) & ((runs["ratio"] - ratio).abs() < 1e-9)]
    names = [method] if method is not None else sorted(d["method"].unique(), key=lambda m: (m != family, m))
    names = [n for n in names if n in set(d["method"])]
    return (model, round(float(ratio), 6), family, names[0], mode) if names else None


def claims_table(runs: pd.DataFrame, tp: pd.DataFrame, value: str = "acc", records: list[dict] | None = None,
                 chance: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's comparisons (its Llama2-7B column) beside ours, per model: PAT vs LLM-Pruner / SliceGPT P->FT at
    each ratio, PAT vs LoRA at 20/25 %, and the 25 % model's best prefill speedup vs the 1.33x limit. A PAT variant
    makes claims only at the ratios where it ran.

    ``ours``: PAT's mean accuracy minus the other's (points). With ``records`` that hold per-item outcomes the
    interval is the paired bootstrap (``paired_acc``; also on the tasks above chance, ``chance_tasks``, and the
    perplexity ratio, ``paired_log_ppl``); without them a normal interval from independent per-task standard
    errors. ``acc verdict``: ``ahead`` / ``behind`` when the 95 % interval excludes 0, else ``not resolved``.
    """
    ref, meta = paper_table()
    col = meta["model_labels"][meta["models"].index("llama2-7b")]
    paper = {(r["Ratio"], r["Method"], r["Mode"]): r[col] for _, r in ref.iterrows()}
    cells = _cells(records or [])
    ppl = next((c.removeprefix("ppl_") for c in runs.columns if c.startswith("ppl_")), None)
    chance = pd.DataFrame() if chance is None else chance
    rows = []
    variants = sorted(runs[runs["family"] == "PAT"]["method"].unique(), key=lambda m: (m != "PAT", m)) or ["PAT"]
    for model, ratio, pm in ((m, r, pm) for m in sorted(runs["model"].unique())
                             for r in sorted(r for r in runs["ratio"].unique() if r > 0) for pm in variants):
        # one block of claims per model, ratio and PAT variant (the paper's PAT, or a suite's named variant)
        rl = f"{100 * ratio:.0f} %"
        pat, _ = _cell(runs, model, ratio, "PAT", "PAT", value, method=pm)
        if pat is None:  # this PAT variant was not run at this ratio: no claim to make
            continue
        kp = _key(runs, model, ratio, "PAT", "PAT", pm)
        others = [(b, "P→FT", ratio) for b in ("LLM-Pruner", "SliceGPT")]
        if ratio in (0.20, 0.25):
            others.append(("LoRA", "FT", 0.0))
        for name, mode, r_other in others:
            v, _ = _cell(runs, model, r_other, name, mode, value)
            ko = _key(runs, model, r_other, name, mode)
            p_other = paper.get((rl, name, mode)) if name != "LoRA" else paper.get(("0 %", "LoRA-64", "FT"))
            p_pat = paper.get((rl, "PAT", "PAT"))
            diff = None if pat is None or v is None else pat - v
            row = {"claim": f"{pm} > {name} {mode} at {rl}",
                   "paper (Llama2-7B)": None if p_pat is None or p_other is None else p_pat - p_other,
                   "model": model, "ours": diff, "95 % CI": "–", "acc verdict": "–"}
            if diff is not None and kp and ko:
                comp = _compare(cells.get(kp, []), cells.get(ko, []), runs, kp, ko, _above_chance(chance, model), ppl,
                                value)
                comp.pop("Δ acc", None)
                row.update(comp)
            rows.append(row)
    for model in sorted(runs["model"].unique()):
        if not tp.empty:
            d = tp[(tp["model"] == model) & (tp["family"] == "PAT") & ((tp["ratio"] - 0.25).abs() < 1e-9)
                   & ~tp["oom"]].dropna(subset=["speedup"])
            if not d.empty:
                best = d.loc[d["speedup"].idxmax()]
                sel = (tp["model"] == model) & ((tp["run_id"] == best["run_id"]) | (tp["family"] == "Dense"))
                loaded = bool(tp[sel]["loaded"].any())
                rows.append({"claim": "25 % model: prefill speedup (paper: 1.33x; bound 1/(1-r) = 1.33x)",
                             "paper (Llama2-7B)": 1.33,
                             "model": model, "ours": best["speedup"], "95 % CI": "–",
                             "acc verdict": f"best at batch {int(best['batch_size'])} on {best['device']}"
                             + (" (UNRELIABLE: timed on a loaded host)" if loaded else "")})
    return pd.DataFrame(rows)

