"""Pairing and intervals: records grouped into table cells, per-document and per-window matrices, paired
bootstrap intervals (``paired_acc``, ``paired_log_ppl``), the pooled seed-variance model (``SeedModel``), the pairs
table and the per-cell intervals.

Every interval carries seed variance. Documents and windows are resampled by ``stats.bootstrap`` (windows in circular
blocks, ``block="auto"``: consecutive windows of one text are correlated); the seed level is an explicit variance
component (``SeedModel``): a side with at least ``MIN_SEEDS`` trained seeds brings its own seed variance, a trained
side with fewer the pooled variance of the model's cells of the same kind (pruned or unpruned) that ran
``MIN_SEEDS``, the untrained dense model none. Assumption of the pooled part: at a model, the seed variance of a
metric is the same for every pruned method and ratio. A comparison that uses it is marked ``MODELLED``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import stats
from bench.harness.reporting.frames import LOGLIK, METHOD_ORDER, _legend, label

N_BOOT = 4000
LEVEL = 0.95
NO_ITEMS = "no per-item data"
MIN_SEEDS = 3
MODELLED = "‡"  # marks a comparison whose seed variance is the pooled model's alone (a trained side with 1 seed)
METRICS = ("acc", "acc_above_chance", "log_ppl")


def _cells(records: list[dict[str, Any]]) -> dict[tuple, list[dict]]:
    """Successful records by (model, ratio, family, method, mode): one list of seeds per table cell."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r["status"] != "success":
            continue
        s = r["spec"]
        fam, name, mode = label(s["pipeline"], s.get("method_args"))
        out.setdefault((s["model"], round(float(s["ratio"]), 6), fam, name, mode), []).append(r)
    return out


def _outcomes(r: dict, task: str, it: dict, key: str) -> dict:
    """``{(task, doc_id): 0/1}`` of one record's task; the doc ids and the outcome string must have one entry each."""
    ids, out = it["doc_ids"], it[key]
    if len(ids) != len(out):
        raise ValueError(f"record {r.get('run_id')!r}: metrics.tasks.{task}.items: {len(ids)} doc_ids but "
                         f"{len(out)} {key!r} outcomes; they must pair one to one")
    return {(task, d): int(o) for d, o in zip(ids, out)}


def _acc_items(recs: list[dict], tasks: list[str] | None = None, key: str = "acc"):
    """``(items, {run_id: {item: 0/1}})`` of log-likelihood documents every record has, or None when a record has no
    per-item data. ``items`` are ``(task, doc_id)``, sorted."""
    per: dict[str, dict] = {}
    for r in recs:
        got = {}
        for task, t in ((r.get("metrics") or {}).get("tasks") or {}).items():
            if t.get("protocol") != LOGLIK or (tasks is not None and task not in tasks):
                continue
            it = t.get("items")
            if not it or not it.get(key):
                return None
            got.update(_outcomes(r, task, it, key))
        per[r["run_id"]] = got
    common = sorted(set.intersection(*(set(g) for g in per.values()))) if per else []
    return (common, per) if common else None


def _acc_matrix(recs, items, per) -> np.ndarray:
    return np.array([[per[r["run_id"]][i] for i in items] for r in recs], dtype=float)


def _trained(recs: list[dict]) -> bool:
    """False for the untrained dense model (no seed enters it), else True."""
    return any(r["spec"]["pipeline"] for r in recs)


def _pruned(recs: list[dict]) -> bool:
    return float(recs[0]["spec"]["ratio"]) > 0


@dataclass(frozen=True)
class SeedModel:
    """The seed-level variance of every comparison, per model and metric (``METRICS``).

    A side (one table cell, ``k`` seeds) contributes ``var / k`` to the seed variance of a difference:

    - ``k >= MIN_SEEDS`` trained seeds: ``var`` is the sample variance of its own per-seed statistic (df ``k - 1``);
    - fewer trained seeds: ``var = sd^2`` of the pooled model, ``sd^2 = sum_cells sum_seeds (s - s_cell)^2 /
      sum_cells (k_cell - 1)`` over the model's cells with at least ``MIN_SEEDS`` trained seeds **of the same kind**
      (pruned, ratio > 0, or unpruned; the other kind when none), df the pooled one; such a comparison is marked
      ``MODELLED``;
    - the untrained dense model: 0.

    The two sides' parts are summed and their df combined by Welch-Satterthwaite. ``s`` is a seed's statistic: mean
    accuracy (points, mean over tasks), the same on the tasks above chance, or log perplexity."""

    sd: dict[tuple[str, str, bool], tuple[float, int]]  # (model, metric, pruned) -> pooled (sd, df)
    cells: dict[str, list[str]]
    above: dict[str, list[str] | None]
    ppl: str | None

    def _side(self, model: str, metric: str, recs: list[dict]) -> tuple[float, float | None] | None:
        if not recs or not _trained(recs):
            return 0.0, None
        k = len(recs)
        if k >= MIN_SEEDS:
            vals = [_seed_stat(r, metric, self.above.get(model), self.ppl) for r in recs]
            if all(v is not None for v in vals):
                return float(np.var(vals, ddof=1)) / k, k - 1
        got = self.sd.get((model, metric, _pruned(recs))) or self.sd.get((model, metric, not _pruned(recs)))
        return None if got is None else (got[0] ** 2 / k, got[1])

    def component(self, model: str, metric: str, a: list[dict], b: list[dict] | None) -> tuple[float, float] | None:
        """``(sd, df)`` of the seed noise of ``stat(a) - stat(b)`` (or of ``stat(a)``); None without a model."""
        parts = [self._side(model, metric, s) for s in (a, b) if s]
        if not parts or any(p is None for p in parts):
            return None
        var = sum(v for v, _ in parts)
        if var == 0:
            return 0.0, None
        return math.sqrt(var), var ** 2 / sum(v ** 2 / d for v, d in parts if d)


def _seed_stat(r: dict, metric: str, above: list[str] | None, ppl: str | None) -> float | None:
    m = r.get("metrics") or {}
    if metric == "log_ppl":
        v = ((m.get("perplexity") or {}).get(ppl or "") or {}).get("ppl")
        return math.log(v) if isinstance(v, (int, float)) and v > 0 else None
    ts = {k: t for k, t in (m.get("tasks") or {}).items() if t.get("protocol") == LOGLIK}
    if metric == "acc_above_chance":
        if not above:
            return None
        ts = {k: t for k, t in ts.items() if k in above}
    accs = [t.get("acc") for t in ts.values()]
    if not accs or any(not isinstance(a, (int, float)) for a in accs):
        return None
    return 100.0 * sum(accs) / len(accs)


def seed_model(records: list[dict[str, Any]], above: dict[str, list[str] | None], ppl: str | None) -> SeedModel:
    """Estimate the ``SeedModel`` of ``records`` (``above``: per model, the tasks above chance)."""
    sums: dict[tuple[str, str, bool], list[float]] = {}
    used: dict[str, list[str]] = {}
    for key, recs in _cells(records).items():
        if len(recs) < MIN_SEEDS or not _trained(recs):
            continue
        used.setdefault(key[0], []).append(f"{_legend(key[3], key[4])} at {100 * key[1]:.0f} %")
        for metric in METRICS:
            vals = [_seed_stat(r, metric, above.get(key[0]), ppl) for r in recs]
            if any(v is None for v in vals):
                continue
            v = np.array(vals)
            acc = sums.setdefault((key[0], metric, key[1] > 0), [0.0, 0])
            acc[0] += float(((v - v.mean()) ** 2).sum())
            acc[1] += len(v) - 1
    sd = {k: (math.sqrt(ss / df), int(df)) for k, (ss, df) in sums.items() if df > 0}
    return SeedModel(sd, used, dict(above), ppl)


def paired_acc(a: list[dict], b: list[dict] | None = None, tasks: list[str] | None = None,
               key: str = "acc", seed: tuple[float, int] | None = None) -> stats.Interval | None:
    """Mean accuracy (points; mean over tasks of per-task accuracy) of the seeds ``a``, or the paired difference
    ``a - b`` on the documents both evaluated, with its bootstrap interval (``stats.bootstrap``: documents within
    tasks, plus the seed component ``seed = (sd, df)`` in points, else the one estimated from the seeds of ``a`` and
    ``b``); None without per-item data."""
    got = _acc_items(a + (b or []), tasks, key)
    if got is None:
        return None
    items, per = got
    strata = np.array([t for t, _ in items])
    x = _acc_matrix(a, items, per)
    y = None if b is None else _acc_matrix(b, items, per)
    sd, df = (None, None) if seed is None else (seed[0] / 100.0, seed[1])
    return stats.bootstrap(x, y, strata=strata, n_boot=N_BOOT, level=LEVEL, seed_sd=sd,
                           seed_df=df).scaled(100.0)


def _windows(recs: list[dict], dataset: str):
    ws = [((r.get("metrics") or {}).get("perplexity") or {}).get(dataset, {}).get("windows") for r in recs]
    if not ws or any(not w for w in ws) or len({tuple(w["tokens"]) for w in ws}) != 1:
        return None
    tok = np.array(ws[0]["tokens"], dtype=float)
    return np.array([w["nll"] for w in ws], dtype=float) / tok, tok


def paired_log_ppl(a: list[dict], b: list[dict] | None = None, dataset: str = "wikitext2",
                   seed: tuple[float, int] | None = None) -> stats.Interval | None:
    """Mean NLL per token (log perplexity) of ``a``, or the paired difference ``a - b`` (log of the perplexity ratio):
    windows resampled in circular blocks (``block="auto"``, the Politis-White length of the per-window differences),
    plus the seed component (``seed``, else estimated from the seeds); None without per-window data or when the
    windows differ."""
    wa = _windows(a, dataset)
    wb = None if b is None else _windows(b, dataset)
    if wa is None or (b is not None and (wb is None or not np.array_equal(wa[1], wb[1]))):
        return None
    sd, df = (None, None) if seed is None else seed
    return stats.bootstrap(wa[0], None if wb is None else wb[0], weights=wa[1], n_boot=N_BOOT, level=LEVEL,
                           block="auto", seed_sd=sd, seed_df=df)


def _normal_acc(runs: pd.DataFrame, key: tuple, value: str = "acc") -> tuple[float, float] | None:
    """Mean accuracy (points) and its standard error from the per-task standard errors (no per-item data)."""
    model, ratio, fam, name, mode = key
    d = runs[(runs["status"] == "success") & (runs["model"] == model) & ((runs["ratio"] - ratio).abs() < 1e-9)
             & (runs["family"] == fam) & (runs["method"] == name) & (runs["mode"] == mode)].dropna(subset=[value])
    se = f"{value}_se"
    if d.empty or se not in d or d[se].isna().any():
        return None
    return float(d[value].mean()), float(d[se].mean() / math.sqrt(len(d)))


def _ci(iv: stats.Interval | None, digits: int = 2, fn=None) -> str:
    if iv is None:
        return "–"
    f = fn or (lambda v: v)
    return f"[{f(iv.lo):.{digits}f}, {f(iv.hi):.{digits}f}]"


def _seeds_note(a: list[dict], b: list[dict] | None, seeds: SeedModel | None) -> str:
    """``"seeds 3/1 ‡"``: each side's seeds, marked ``MODELLED`` when a trained side has fewer than ``MIN_SEEDS``."""
    ks = [len(s) for s in (a, b) if s is not None]
    few = seeds is not None and any(s and _trained(s) and len(s) < MIN_SEEDS for s in (a, b) if s is not None)
    return "seeds " + "/".join(map(str, ks)) + (f" {MODELLED}" if few else "")


def _compare(a: list[dict], b: list[dict], runs: pd.DataFrame, ka: tuple, kb: tuple, above: list[str] | None,
             ppl: str | None, value: str = "acc", seeds: SeedModel | None = None) -> dict[str, Any]:
    """Columns of one paired comparison ``a`` vs ``b``: accuracy on all tasks and on the tasks above chance, and the
    perplexity ratio; each with its 95 % interval (documents / windows and the seed component of ``seeds``, else the
    seeds' own). No verdict: verdicts belong to the pre-registered primary claims (``claims.primary_table``).
    Hidden ``_``-columns keep the intervals and two-sided p-values for the plots and the Holm correction."""
    model = ka[0]
    comp = (lambda metric: None) if seeds is None else (lambda metric: seeds.component(model, metric, a, b))
    row: dict[str, Any] = {"seeds": _seeds_note(a, b, seeds)}
    iv = paired_acc(a, b, seed=comp("acc")) if value == "acc" else None
    if iv is not None:
        row.update({"Δ acc": iv.estimate, "95 % CI": _ci(iv), "_lo": iv.lo, "_hi": iv.hi, "_p_acc": iv.p,
                    "CI from": f"paired bootstrap, {iv.n_items} docs, seed sd {iv.seed_sd:.2f}"})
    else:
        na, nb = _normal_acc(runs, ka, value), _normal_acc(runs, kb, value)
        if na and nb:
            d, se = na[0] - nb[0], math.hypot(na[1], nb[1])
            z = stats.z_two_sided(1 - LEVEL)
            iv = stats.Interval(d, d - z * se, d + z * se, LEVEL, 0, 0, (1, 1))
            row.update({"Δ acc": d, "95 % CI": _ci(iv), "_lo": iv.lo, "_hi": iv.hi,
                        "CI from": f"{NO_ITEMS}: independent per-task s.e. (normal), no seed variance"})
    if above is not None and value == "acc":
        iv2 = paired_acc(a, b, tasks=above, seed=comp("acc_above_chance"))
        row.update({"Δ acc (above chance)": None if iv2 is None else iv2.estimate,
                    "95 % CI (above chance)": _ci(iv2) if iv2 else NO_ITEMS})
        if iv2 is not None:
            row.update(_p_above=iv2.p, _alo=iv2.lo, _ahi=iv2.hi)
    if ppl:
        ivp = paired_log_ppl(a, b, ppl, seed=comp("log_ppl"))
        row.update({f"{ppl} ppl ratio": None if ivp is None else math.exp(ivp.estimate),
                    "ppl 95 % CI": _ci(ivp, 3, math.exp) if ivp else "no per-window data",
                    "ppl blocks": None if ivp is None else ivp.block})
        if ivp is not None:
            row.update(_p=math.exp(ivp.estimate), _plo=math.exp(ivp.lo), _phi=math.exp(ivp.hi), _p_ppl=ivp.p)
    return row


def _above_chance(chance: pd.DataFrame, model: str) -> list[str] | None:
    if chance.empty:
        return None
    d = chance[chance["model"] == model]
    return None if d.empty or not d["at chance"].any() else d[~d["at chance"]]["task"].tolist()


def _ppl(runs: pd.DataFrame) -> str | None:
    return next((c.removeprefix("ppl_") for c in runs.columns if c.startswith("ppl_")), None)


def report_seed_model(records: list[dict[str, Any]], runs: pd.DataFrame, chance: pd.DataFrame | None) -> SeedModel:
    """The ``SeedModel`` of a report's records (tasks above chance from ``chance``)."""
    chance = pd.DataFrame() if chance is None else chance
    return seed_model(records, {m: _above_chance(chance, m) for m in runs["model"].unique()}, _ppl(runs))


def pairs_table(records: list[dict[str, Any]], runs: pd.DataFrame, chance: pd.DataFrame | None = None,
                seeds: SeedModel | None = None) -> pd.DataFrame:
    """Every pair of methods at the same model and ratio (unpruned runs: ratio 0): paired differences (row minus
    column method) with 95 % intervals that carry seed variance (``seeds``, default the records' pooled
    ``SeedModel``). Exploratory: no verdicts."""
    cells = _cells(records)
    ppl = _ppl(runs)
    chance = pd.DataFrame() if chance is None else chance
    seeds = seeds if seeds is not None else report_seed_model(records, runs, chance)
    rows = []
    keys = sorted(cells, key=lambda k: (k[0], k[1], METHOD_ORDER.index(k[2]) if k[2] in METHOD_ORDER else 50, k[3],
                                        k[4]))
    for i, ka in enumerate(keys):
        for kb in keys[i + 1:]:
            if ka[:2] != kb[:2]:
                continue
            rows.append({"model": ka[0], "ratio": f"{100 * ka[1]:.0f} %", "A": _legend(ka[3], ka[4]),
                         "B": _legend(kb[3], kb[4]),
                         **_compare(cells[ka], cells[kb], runs, ka, kb, _above_chance(chance, ka[0]), ppl,
                                    seeds=seeds)})
    return pd.DataFrame(rows)


def cell_intervals(records: list[dict[str, Any]], runs: pd.DataFrame, ppl: str | None,
                   seeds: SeedModel | None = None) -> pd.DataFrame:
    """Per table cell (model, ratio, method, mode): mean achieved parameters, mean accuracy (points) and perplexity
    with 95 % intervals. Accuracy: the bootstrap over documents plus the seed component (``seeds``: the pooled
    model; else the cell's own seeds), else (no per-item data) a normal interval from the per-task standard errors;
    perplexity: the block bootstrap over windows plus the seed component, else no interval."""
    rows = []
    z = stats.z_two_sided(1 - LEVEL)
    for key, recs in _cells(records).items():
        model, ratio, fam, name, mode = key
        params = [r.get("params", {}).get("total") for r in recs if (r.get("params") or {}).get("total")]
        row = {"model": model, "ratio": ratio, "family": fam, "method": name, "mode": mode, "seeds": len(recs),
               "params": float(np.mean(params)) if params else None}
        comp = (lambda metric: None) if seeds is None else (lambda metric: seeds.component(model, metric, recs, None))
        iv = paired_acc(recs, seed=comp("acc"))
        if iv is not None:
            row.update(acc=iv.estimate, acc_lo=iv.lo, acc_hi=iv.hi, acc_ci="bootstrap")
        elif (na := _normal_acc(runs, key)) is not None:
            row.update(acc=na[0], acc_lo=na[0] - z * na[1], acc_hi=na[0] + z * na[1], acc_ci="normal (per-task s.e.)")
        if ppl:
            ivp = paired_log_ppl(recs, None, ppl, seed=comp("log_ppl"))
            vals = [((r.get("metrics") or {}).get("perplexity") or {}).get(ppl, {}).get("ppl") for r in recs]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if ivp is not None:
                row.update(ppl=math.exp(ivp.estimate), ppl_lo=math.exp(ivp.lo), ppl_hi=math.exp(ivp.hi),
                           ppl_ci="bootstrap")
            elif vals:
                row.update(ppl=float(np.exp(np.mean(np.log(vals)))), ppl_ci=None)
        rows.append(row)
    return pd.DataFrame(rows)
