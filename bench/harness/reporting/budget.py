"""The budget sweep's report (issue 20; suites with ``[suite] budget_in_id``, e.g. ``bench/suites/budget.toml``).

The same pipelines run at several training budgets, so a table cell is (arm, budget) and not (method, ratio) as in
``build``. The report answers one question: at which tuning budget, if any, does PAT's learned selection (the
paper's count snap, at each mask LR) beat the best importance-based arm of the same size?

- ``sweep_frame``: one row per finished run: arm, its kind (``learned``: PAT with the paper's selection;
  ``importance``: P->FT pruners and PAT's Taylor snap; ``reference``: LoRA on the dense model, the dense model),
  steps, pre-freeze steps s0, tuning tokens, perplexity, accuracy above chance;
- ``comparisons``: at every budget, each learned arm against the best importance-based arm there (lowest perplexity;
  picking the best *after* seeing the results makes this comparison exploratory) and against LoRA: the paired
  perplexity ratio (windows in circular blocks) and the paired accuracy difference on the tasks above chance, each
  with the seed variance component of the pooled seed model (``seed_records``: the cpu suite's three-seed cells of
  the same model, evaluation and budget shape; marked ``MODELLED``, as every side here has one seed);
- ``crossover``: the smallest budget at which a learned arm's whole interval is below 1 against the best importance
  arm, or the statement that there is none within the sweep;
- ``probe_frame``: the mask probes inside the PAT runs (``bench.harness.mask_probe``): held-out perplexity of the
  current top-N hard-selected and its Jaccard overlaps with the Taylor and the final selection, per probe step;
- the primary claims of the suite file (``[[claims]]`` with ``steps``), Holm-corrected (``claims.primary_table``);
- plots: perplexity and accuracy against tuning tokens per arm, the probes' learning curves, the training curves.

``python -m bench.harness.reporting.budget results/budget`` (or ``pat-bench report --suite budget``) writes
``TABLES.md``, CSVs and PNGs there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness.reporting.chance import CHANCE_DIR, chance_tasks, recorded_chance
from bench.harness.reporting.claims import ALPHA, primary_table
from bench.harness.reporting.frames import label, runs_frame
from bench.harness.reporting.pairing import (
    MODELLED,
    SeedModel,
    _above_chance,
    _ci,
    paired_acc,
    paired_log_ppl,
    seed_model,
)
from bench.harness.reporting.plots import _plt, save
from bench.harness.reporting.tables import to_markdown
from bench.harness.results import load_results
from pat.io import write_text_atomic

LEARNED, IMPORTANCE, REFERENCE = "learned", "importance", "reference"
DEFAULT_SEED_RECORDS = Path(__file__).resolve().parents[3] / "results" / "cpu"


def _pat_args(rec: dict) -> dict[str, Any] | None:
    """The PAT stage's arguments of a record, or None when the pipeline has no PAT stage."""
    s = rec["spec"]
    for name in s["pipeline"]:
        args = (s.get("method_args") or {}).get(name, {})
        if args.get("stage", name) == "pat":
            return args
    return None


def arm_kind(rec: dict) -> str:
    """``learned`` (PAT whose channels its mask proxies pick: the paper's selection), ``importance`` (a pruner's
    importance score picks them: P->FT, or PAT's Taylor snap) or ``reference`` (no pruning)."""
    if float(rec["spec"]["ratio"]) == 0.0:
        return REFERENCE
    pat = _pat_args(rec)
    if pat is not None:
        return IMPORTANCE if pat.get("snap_by", "proxy") == "taylor" else LEARNED
    return IMPORTANCE


def _shown(path: str | Path) -> str:
    """A path as the report shows it: relative to the repository when inside it (the same text in every checkout)."""
    try:
        return str(Path(path).resolve().relative_to(DEFAULT_SEED_RECORDS.parents[1]))
    except ValueError:
        return str(path)


def _run_seconds(r: dict[str, Any]) -> float | None:
    """A run's seconds over all its processes. Records that carry ``train.resumed_wall_seconds`` already count the
    processes before a resume; older ones count the last process only, so their earlier training time is added
    (``train_seconds`` sums every process's training, ``wall_seconds`` is the last process's): a lower bound."""
    sec, t = r.get("seconds"), r.get("train") or {}
    if sec is None or "resumed_wall_seconds" in t or t.get("train_seconds") is None or t.get("wall_seconds") is None:
        return sec
    return sec + max(0.0, float(t["train_seconds"]) - float(t["wall_seconds"]))


def _milestone(rec: dict) -> int | None:
    for st in ((rec.get("train") or {}).get("stages") or {}).values():
        if isinstance(st, dict) and "milestone_step" in st:
            return int(st["milestone_step"])
    pat = _pat_args(rec)
    return None if pat is None else pat.get("milestone_step")


def sweep_frame(records: list[dict[str, Any]], above: dict[str, list[str] | None], ppl: str) -> pd.DataFrame:
    """One row per successful run: ``arm`` (the pipeline id), ``display``, ``kind``, ``steps``, ``s0`` (PAT's
    milestone, or the budget's s0 read from its name ``s0_N``), ``tokens`` (tuning token slots: steps x global batch x
    sequence length), ``tokens_seen`` (real tokens, the train record's), perplexity and accuracy above chance."""
    rows = []
    for r in records:
        if r["status"] != "success":
            continue
        s = r["spec"]
        b = s.get("budget") or {}
        steps = b.get("steps")
        _, name, mode = label(s["pipeline"], s.get("method_args"))
        bn = str(s.get("budget_name", ""))
        s0 = _milestone(r)
        if s0 is None and bn.startswith("s0_"):
            s0 = int(bn.split("_")[1])
        m = r.get("metrics") or {}
        p = ((m.get("perplexity") or {}).get(ppl) or {}).get("ppl")
        tasks = {k: t for k, t in (m.get("tasks") or {}).items() if k in (above.get(s["model"]) or [])}
        acc = 100 * float(np.mean([t["acc"] for t in tasks.values()])) if tasks else float("nan")
        mlr = (_pat_args(r) or {}).get("mask_lr_scale")
        rows.append({"run_id": r["run_id"], "model": s["model"], "arm": "+".join(s["pipeline"]) or "dense",
                     "display": name if mode in ("PAT", "FT", "—") else f"{name} {mode}", "kind": arm_kind(r),
                     "mask_lr_scale": mlr, "steps": steps, "s0": s0,
                     "tokens": None if steps is None else int(steps) * int(b.get("global_batch", 1))
                     * int(b.get("seq_len", 0)),
                     "tokens_seen": (r.get("train") or {}).get("tokens_seen"), "ppl": p, "acc_above_chance": acc,
                     "params": (r.get("params") or {}).get("total"),
                     "train_seconds": (r.get("train") or {}).get("train_seconds"), "seconds": _run_seconds(r)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in ("steps", "s0", "tokens", "tokens_seen", "params"):
        df[c] = df[c].astype("Int64")
    return df.sort_values(["steps", "kind", "arm"], na_position="first").reset_index(drop=True)


def pivot(frame: pd.DataFrame, metric: str = "ppl") -> pd.DataFrame:
    """``metric`` by arm (rows, with their kind) and budget (columns ``steps (s0 = N)``)."""
    d = frame.dropna(subset=["steps"]) if not frame.empty else frame
    if d.empty:
        return pd.DataFrame()
    d = d.assign(budget=[f"{int(st)} steps (s0 = {int(s0)})" for st, s0 in zip(d["steps"], d["s0"])],
                 arm_=[f"{disp} [{kind}]" for disp, kind in zip(d["display"], d["kind"])])
    order = [f"{int(st)} steps (s0 = {int(s0)})" for st, s0 in sorted(set(zip(d["steps"], d["s0"])))]
    kinds = {LEARNED: 0, IMPORTANCE: 1, REFERENCE: 2}
    rows = sorted(set(zip(d["arm_"], d["kind"], d["arm"])), key=lambda t: (kinds[t[1]], t[2]))
    p = d.pivot_table(index="arm_", columns="budget", values=metric, aggfunc="mean")
    p = p.reindex(index=[r[0] for r in rows], columns=order)
    return p.reset_index().rename(columns={"arm_": "arm [kind]"})


def _by_id(records: list[dict]) -> dict[str, dict]:
    return {r["run_id"]: r for r in records if r["status"] == "success"}


def comparisons(records: list[dict[str, Any]], frame: pd.DataFrame, seeds: SeedModel | None,
                above: dict[str, list[str] | None], ppl: str) -> pd.DataFrame:
    """At every budget (steps), each learned arm against the best importance-based arm (lowest perplexity there)
    and against LoRA on the dense model: paired perplexity ratio A / B and accuracy difference above chance
    (points), 95 % intervals with the seed component. Exploratory (the best arm is chosen on the results)."""
    recs = _by_id(records)
    rows = []
    trained = frame.dropna(subset=["steps"]) if not frame.empty else frame
    for (model, steps), d in (trained.groupby(["model", "steps"]) if not trained.empty else []):
        imp = d[d["kind"] == IMPORTANCE].dropna(subset=["ppl"])
        best = imp.loc[imp["ppl"].idxmin()] if not imp.empty else None
        lora = d[(d["kind"] == REFERENCE) & (d["arm"] != "dense")]
        for _, a in d[d["kind"] == LEARNED].iterrows():
            for what, b in (("best importance arm", best), ("LoRA (dense)", None if lora.empty else lora.iloc[0])):
                if b is None:
                    continue
                ra, rb = [recs[a["run_id"]]], [recs[b["run_id"]]]
                cp = None if seeds is None else seeds.component(model, "log_ppl", ra, rb)
                ca = None if seeds is None else seeds.component(model, "acc_above_chance", ra, rb)
                ivp = paired_log_ppl(ra, rb, ppl, seed=cp)
                tasks = above.get(model)
                iva = paired_acc(ra, rb, tasks=tasks, seed=ca) if tasks else None
                s0 = None if pd.isna(a["s0"]) else int(a["s0"])
                rows.append({"model": model, "steps": int(steps), "s0": s0, "tokens": a["tokens"],
                             "A": a["display"], "B": b["display"], "vs": what, "ppl A": a["ppl"], "ppl B": b["ppl"],
                             "ppl ratio A/B": None if ivp is None else math.exp(ivp.estimate),
                             "95 % CI": _ci(ivp, 3, math.exp) + (f" {MODELLED}" if cp else ""),
                             "Δ acc above chance": None if iva is None else iva.estimate,
                             "95 % CI acc": _ci(iva, 2) + (f" {MODELLED}" if ca and iva else ""),
                             "_lo": None if ivp is None else math.exp(ivp.lo),
                             "_hi": None if ivp is None else math.exp(ivp.hi), "_arm": a["arm"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        for c in ("s0", "tokens"):
            out[c] = out[c].astype("Int64")
    return out


def crossover(cmp: pd.DataFrame) -> str:
    """The sentence: the smallest budget at which a learned arm's perplexity interval against the best importance
    arm lies wholly below 1, or that there is none among the budgets run."""
    if cmp.empty:
        return "No budget has both a learned-selection run and an importance-based run yet."
    best = cmp[cmp["vs"] == "best importance arm"].dropna(subset=["_hi"])
    wins = best[best["_hi"] < 1.0].sort_values("steps")
    done = sorted(best["steps"].unique())
    if not wins.empty:
        w = wins.iloc[0]
        return (f"PAT's learned selection ({w['A']}) first beats the best importance-based arm ({w['B']}) at "
                f"{int(w['steps'])} steps (s0 = {int(w['s0'])}): perplexity ratio {w['ppl ratio A/B']:.3f} "
                f"{w['95 % CI']}.")
    closest = best.loc[best["ppl ratio A/B"].idxmin()] if not best.empty else None
    tail = "" if closest is None else (
        f" Closest: {closest['A']} at {int(closest['steps'])} steps (s0 = {int(closest['s0'])}), perplexity ratio "
        f"{closest['ppl ratio A/B']:.3f} {closest['95 % CI']} against {closest['B']}.")
    return (f"No crossover within the budgets run ({', '.join(str(int(s)) for s in done)} steps): at none of them "
            f"does a learned-selection arm's perplexity interval lie below the best importance-based arm's.{tail}")


def _per_step(records: list[dict[str, Any]], key: str):
    """``(record, entry)`` for every entry of ``train[key]`` (a per-step list: ``probes``, ``curves``) of every
    successful record."""
    for r in records:
        if r["status"] == "success":
            for x in (r.get("train") or {}).get(key) or []:
                yield r, x


def probe_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The mask probes of every PAT run: one row per probe step."""
    keys = ("heldout_ppl", "jaccard_proxy_taylor", "jaccard_proxy_final", "jaccard_taylor_final")
    return pd.DataFrame([{"run_id": r["run_id"], "arm": "+".join(r["spec"]["pipeline"]), "kind": arm_kind(r),
                          "seed": r["spec"].get("seed", 0),
                          "mask_lr_scale": (_pat_args(r) or {}).get("mask_lr_scale"), "s0": _milestone(r),
                          "steps": (r["spec"].get("budget") or {}).get("steps"), "step": p["step"],
                          **{k: p.get(k) for k in keys}} for r, p in _per_step(records, "probes")])


def probe_pivot(probes: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per learned PAT run (arm at its s0), one column per probe step: the learning curve of ``key``."""
    p = probes[probes["kind"] == "learned"] if "kind" in probes else probes.iloc[0:0]
    if p.empty:
        return pd.DataFrame()
    mlr = p["mask_lr_scale"].fillna(1.0).astype(float)  # PATConfig's default
    s0 = p["s0"].astype(float).fillna(-1)
    names = [f"{a} (x{m:g}), s0 = {'?' if s < 0 else int(s)}" + ("" if sd == 0 else f", seed {sd}")
             for a, m, s, sd in zip(p["arm"], mlr, s0, p["seed"])]
    p = p.assign(mlr=mlr, s0n=s0, run=names)
    t = p.pivot_table(index=["s0n", "mlr", "run"], columns="step", values=key, aggfunc="first")
    t = t.reset_index(level=["s0n", "mlr"], drop=True)
    t.columns = [f"step {int(c)}" for c in t.columns]
    t.index.name = "arm, budget"
    return t.reset_index().astype(object).where(t.reset_index().notna(), None)


def _kept(rec: dict) -> list[int] | None:
    for st in ((rec.get("train") or {}).get("stages") or {}).values():
        if isinstance(st, dict) and st.get("kept_channels"):
            return list(st["kept_channels"])
    return None


def overlap_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """At every budget, the Jaccard overlap of the kept hidden channels of each pair of PAT arms (the selections
    differ only in who picked them; two random sets of 432 of 576 overlap with 0.6 on average)."""
    by: dict[tuple, dict[str, list[int]]] = {}
    for r in records:
        kept = _kept(r) if r["status"] == "success" else None
        if kept:
            key = (r["spec"]["model"], (r["spec"].get("budget") or {}).get("steps"))
            by.setdefault(key, {})["+".join(r["spec"]["pipeline"])] = kept
    rows = []
    for (model, steps), arms in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        names = sorted(arms)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                x, y = set(arms[a]), set(arms[b])
                rows.append({"model": model, "steps": steps, "A": a, "B": b, "jaccard": len(x & y) / len(x | y)})
    return pd.DataFrame(rows)


def curves_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The per-step training curves (``train.curves``) of every run."""
    return pd.DataFrame([{"run_id": r["run_id"], "arm": "+".join(r["spec"]["pipeline"]),
                          "steps": (r["spec"].get("budget") or {}).get("steps"), **c}
                         for r, c in _per_step(records, "curves")])


# ---------------------------------------------------------------------------------------------------- plots
def plot_quality(frame: pd.DataFrame, cmp: pd.DataFrame, path: Path, metric: str = "ppl") -> Path | None:
    """Perplexity (log scale) or accuracy above chance against tuning tokens, one line per arm."""
    d = frame.dropna(subset=["steps", metric])
    d = d[d["arm"] != "dense"]
    if d.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = {LEARNED: "-o", IMPORTANCE: "--s", REFERENCE: ":^"}
    for (arm, disp, kind), g in d.groupby(["arm", "display", "kind"]):
        g = g.sort_values("tokens")
        ax.plot(g["tokens"], g[metric], style[kind], label=f"{disp} [{kind}]", ms=5)
    if metric == "ppl":
        ax.set_yscale("log")
        ax.set_ylabel("WikiText-2 perplexity (log)")
    else:
        ax.set_ylabel("mean accuracy, tasks above chance (%)")
    ax.set_xscale("log")
    ax.set_xlabel("tuning tokens (steps x 8 x 128 token slots; log)")
    steps = sorted(d["steps"].unique())
    ax.set_title(f"SmolLM2-135M at 25 %: quality vs tuning budget ({', '.join(str(int(s)) for s in steps)} steps)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save(fig, path, dpi=120)


def plot_ratio(cmp: pd.DataFrame, path: Path) -> Path | None:
    """Each learned arm's perplexity ratio to the best importance arm at each budget, with its 95 % interval."""
    d = cmp[cmp["vs"] == "best importance arm"].dropna(subset=["ppl ratio A/B"]) if not cmp.empty else cmp
    if d.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (arm, g) in enumerate(d.groupby("A")):
        g = g.sort_values("tokens")
        x = g["tokens"] * (1 + 0.04 * (i - 1))
        ax.errorbar(x, g["ppl ratio A/B"], yerr=[g["ppl ratio A/B"] - g["_lo"], g["_hi"] - g["ppl ratio A/B"]],
                    fmt="-o", capsize=3, ms=4, label=arm)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tuning tokens (log)")
    ax.set_ylabel("perplexity ratio to the best importance arm (log)")
    ax.set_title("Below 1: the learned selection beats the best importance-based arm", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path, dpi=120)


def plot_probes(probes: pd.DataFrame, path: Path) -> Path | None:
    """Learning curves from inside the learned-selection PAT runs: held-out perplexity of the current top-N, its
    overlap with the Taylor top-N and with the final selection, against the step; colour: mask LR, line style:
    budget. (A Taylor-snap run's proxies learn the same way, but its final selection is the Taylor one: left out.)"""
    d = probes[~probes["arm"].str.contains("taylor")] if not probes.empty else probes
    if d.empty:
        return None
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 4.0))
    arms = sorted(d["arm"].unique())
    budgets = sorted(d["s0"].unique())
    styles = [":", "--", "-.", "-"][-len(budgets):] if len(budgets) <= 4 else ["-"] * len(budgets)
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    for (arm, s0), g in d.groupby(["arm", "s0"]):
        g = g.sort_values("step")
        kw = {"color": colors[arm], "ls": styles[budgets.index(s0)], "marker": "o", "ms": 3,
              "label": f"{arm} (mask LR x{g['mask_lr_scale'].iloc[0]:g}), s0={s0}"}
        a1.plot(g["step"], g["heldout_ppl"], **kw)
        a2.plot(g["step"], g["jaccard_proxy_taylor"], **kw)
        a3.plot(g["step"], g["jaccard_proxy_final"], **kw)
    a1.set_yscale("log")
    a1.set_ylabel("held-out ppl, current top-N hard-selected (log)")
    a2.set_ylabel("Jaccard(current top-N, Taylor top-N)")
    a3.set_ylabel("Jaccard(current top-N, final selection)")
    for a in (a1, a2, a3):
        a.set_xscale("log")
        a.set_xlabel("optimizer step (log)")
        a.grid(True, which="both", alpha=0.3)
    a2.axhline(0.6, color="gray", lw=0.8, ls=":")  # two random 432-of-576 sets: E[J] = 0.6
    a3.axhline(0.6, color="gray", lw=0.8, ls=":")
    a1.legend(fontsize=6)
    fig.suptitle("PAT's learned mask inside each run, up to the freeze (grey dotted: two random top-N sets)",
                 fontsize=9)
    return save(fig, path)


CURVE_KEYS = (("lm_loss", "LM loss"), ("L_active", "count loss"), ("active", "active channels"),
              ("L_identity", "identity loss"))


def plot_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Training curves of the PAT runs at the largest budget run so far: LM loss, count loss, active channels and
    identity loss against the step."""
    if curves.empty or "lm_loss" not in curves:
        return None
    pat = curves[curves["arm"].str.startswith("pat")]
    if pat.empty:
        return None
    top = pat["steps"].max()
    d = pat[pat["steps"] == top]
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    for arm, g in d.groupby("arm"):
        g = g.sort_values("step")
        for ax, (k, name) in zip(axes, CURVE_KEYS):
            if k in g:
                ax.plot(g["step"], g[k], lw=1, label=arm)
                ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"PAT training curves at {int(top)} steps", fontsize=9)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------------- build
def _seed_model(seed_dir: Path | None, above: dict[str, list[str] | None], ppl: str) -> SeedModel | None:
    if seed_dir is None or not Path(seed_dir).is_dir():
        return None
    recs = load_results(seed_dir)
    return seed_model(recs, above, ppl) if recs else None


def build_budget_report(results_dir: str | Path, suite: str | None = "budget", out_dir: str | Path | None = None,
                        claims: list[dict] | tuple | None = None, chance_dir: Path | None = CHANCE_DIR,
                        seed_records: str | Path | None = DEFAULT_SEED_RECORDS) -> Path:
    """Write the sweep's ``TABLES.md``, CSVs and PNGs; returns the TABLES.md path. ``claims``: the primary claims
    (default: the suite file's ``[[claims]]``); ``seed_records``: records whose three-seed cells give the pooled
    seed model (default ``results/cpu``; None: intervals without a seed component)."""
    from bench.harness.reporting.build import _header, _suite_claims, suite_records  # build: siblings only

    results_dir, out, suite, records = suite_records(results_dir, suite, out_dir)
    ppl = next(iter(((records[0].get("protocol") or {}).get("perplexity") or {}).get("datasets") or ["wikitext2"]))
    chance = chance_tasks(records, chance_dir)
    models = sorted({r["spec"]["model"] for r in records})
    missing = [m for m in models if chance.empty or m not in set(chance["model"])]
    if missing:  # no dense run yet (the sweep runs it last): the model's recorded chance set alone
        chance = pd.concat([chance, pd.DataFrame([row for m in missing for row in recorded_chance(m, chance_dir)])],
                           ignore_index=True)
    above = {m: _above_chance(chance, m) for m in models}
    seeds = _seed_model(Path(seed_records) if seed_records else None, above, ppl)
    frame = sweep_frame(records, above, ppl)
    cmp = comparisons(records, frame, seeds, above, ppl)
    probes, curves, overlap = probe_frame(records), curves_frame(records), overlap_frame(records)
    frame.to_csv(out / "sweep.csv", index=False)
    cmp.drop(columns=[c for c in cmp.columns if c.startswith("_")]).to_csv(out / "comparisons.csv", index=False)
    probes.to_csv(out / "probes.csv", index=False)
    overlap.to_csv(out / "selection_overlap.csv", index=False)
    md = _header(suite, records, results_dir)
    md += ["## The answer so far", "", crossover(cmp), "",
           f"WikiText-2 perplexity ({ppl}, the primary metric) by arm and budget (one seed; intervals below):", "",
           to_markdown(pivot(frame, "ppl"), digits=1, signed=False),
           "Mean accuracy (%) on the tasks above chance for the dense model:", "",
           to_markdown(pivot(frame, "acc_above_chance"), digits=1, signed=False)]
    registered = tuple(_suite_claims(suite) if claims is None else claims)
    runs = runs_frame(records)
    md += ["## Primary claims (pre-registered; Holm-corrected)", ""]
    if registered:
        prim = primary_table(registered, records, runs, chance, seeds)
        prim.drop(columns=[c for c in prim.columns if c.startswith("_")]).to_csv(out / "primary.csv", index=False)
        md += [(f"Pre-registered in the suite file before any run (`[[claims]]`, each at the budget of `steps`). "
                f"Perplexity ratio A / B with its paired 95 % interval (windows in circular blocks) plus the pooled "
                f"seed component ({MODELLED}: each side has one seed; the pooled sd comes from "
                f"`{_shown(seed_records)}`); Holm over all {len(prim)} rows at {ALPHA:.0%}. A claim whose runs are "
                "missing counts with p = 1."), "",
               to_markdown(prim[[c for c in prim.columns if not str(c).startswith("_")]].assign(
                   **{c: prim[c].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}") for c in ("p", "Holm p")}),
                   signed=False)]
    else:
        md += ["_The suite names no primary claims._", ""]
    show = frame.drop(columns=["run_id", "model"]).astype(object) if not frame.empty else frame
    show = show.where(show.notna(), None) if not show.empty else show
    md += ["## Every run", "",
           ("One row per finished run. `kind`: `learned` = PAT with the paper's selection (its mask proxies pick the "
            "channels), `importance` = a pruner's score picks them (P->FT, PAT's Taylor snap), `reference` = "
            "unpruned. `tokens`: token slots of the tuning budget (steps x 8 x 128); `tokens_seen`: real tokens. "
            f"`ppl`: {ppl}; `acc_above_chance`: mean accuracy (%) on the tasks where the dense model is above chance "
            f"({', '.join(next((v for v in above.values() if v), []) or ['none decided'])})."), "",
           to_markdown(show, digits=3, signed=False)]
    md += ["## Cost", "",
           ("Seconds per run (training, evaluation and perplexity; `seconds` of the record), by arm and budget, as "
            "measured on the host that ran it (see the records' `provenance` and `train.torch_threads`). A run "
            "resumed from a checkpoint adds its earlier processes' time up to that checkpoint "
            "(`train.resumed_wall_seconds`); records written before the runner counted it add their earlier "
            "training seconds instead. Either is a lower bound for a resumed run (work after the last checkpoint "
            "is redone and not counted twice):"), "",
           to_markdown(pivot(frame, "seconds"), digits=0, signed=False)]
    md += ["## Learned selection against the best importance arm and LoRA, per budget (exploratory)", "",
           ("The best importance arm is the one with the lowest perplexity at that budget, chosen after seeing the "
            "results: these rows carry no verdict words. Perplexity ratio A / B (< 1: A lower); Δ accuracy A - B "
            "(points, tasks above chance). Intervals: paired bootstrap (windows in circular blocks; documents within "
            f"tasks) plus the pooled seed component ({MODELLED})."), "",
           ]
    for vs, title in (("best importance arm", "Against the best importance arm:"), ("LoRA (dense)", "Against LoRA:")):
        part = cmp[cmp["vs"] == vs] if not cmp.empty else cmp
        cols = [c for c in part.columns if not c.startswith("_") and c not in ("model", "vs")]
        md += [title, "", to_markdown(part[cols], digits=3, signed=False) if not part.empty else "_(none yet)_\n"]
    if not probes.empty:
        last = probes.sort_values("step").groupby("run_id").tail(1)
        md += ["## The mask's learning curve inside each PAT run", "",
               ("At log-spaced steps up to the freeze, the probe hard-selects the current top-N proxies and measures "
                "the held-out perplexity (16 WikiText-2 windows of 128 tokens; measured on, never selected with), "
                "and the overlap of that top-N with the Taylor top-N accumulated so far and with the final selection "
                "(the Taylor score is the run's own, |dL/dM * M| under its gate M: a channel the mask closes loses "
                "score, so this overlap rises as the gate saturates whether or not the selection improves; for a "
                "reference independent of the run see scripts/selection_pruned_only.py) "
                "(two random sets of 432 of 576 channels overlap with Jaccard 0.6 on average). Full table: "
                "`probes.csv`. The last probe of each run:"), "",
               to_markdown(last.drop(columns=["run_id"]), digits=3, signed=False)]
        for key, what, digits in (("heldout_ppl", "Held-out perplexity of the hard-selected current top-N", 0),
                                  ("jaccard_proxy_taylor", "Jaccard of the current top-N with the Taylor top-N", 3),
                                  ("jaccard_proxy_final", "Jaccard of the current top-N with the final selection", 3)):
            md += [f"{what}, by probe step (learned arms):", "", to_markdown(probe_pivot(probes, key), digits=digits,
                                                                            signed=False)]
    if not overlap.empty:
        md += ["## Who picked the same channels", "",
               ("Jaccard overlap of the kept hidden channels between the PAT arms at each budget (two random sets "
                "of 432 of 576 channels: 0.6 on average)."), "",
               to_markdown(overlap.drop(columns=["model"]), digits=3, signed=False)]
    pngs = [p for p in (plot_quality(frame, cmp, out / "ppl_vs_tokens.png"),
                        plot_quality(frame, cmp, out / "acc_vs_tokens.png", "acc_above_chance"),
                        plot_ratio(cmp, out / "ratio_vs_tokens.png"),
                        plot_probes(probes, out / "mask_probes.png"),
                        plot_curves(curves, out / "train_curves.png")) if p is not None]
    if pngs:
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    path = out / "TABLES.md"
    write_text_atomic(path, "\n".join(md) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.harness.reporting.budget", description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default="results/budget", help="the sweep's result directory")
    ap.add_argument("--suite", default="budget", help="suite name of the records (default budget)")
    ap.add_argument("--out", help="output directory (default: the result directory)")
    ap.add_argument("--seed-records", default=str(DEFAULT_SEED_RECORDS),
                    help="records whose three-seed cells give the pooled seed model (default results/cpu; '' = none)")
    args = ap.parse_args(argv)
    path = build_budget_report(args.results, args.suite, args.out, seed_records=args.seed_records or None)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
