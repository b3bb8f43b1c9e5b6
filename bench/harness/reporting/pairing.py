"""Pairing and intervals: records grouped into table cells, per-document and per-window matrices, paired
bootstrap intervals (``paired_acc``, ``paired_log_ppl``), the pairs table and the per-cell intervals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import stats
from bench.harness.reporting.frames import LOGLIK, METHOD_ORDER, _legend, label

N_BOOT = 2000
LEVEL = 0.95
NO_ITEMS = "no per-item data"


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
            got.update({(task, d): int(b) for d, b in zip(it["doc_ids"], it[key])})
        per[r["run_id"]] = got
    common = sorted(set.intersection(*(set(g) for g in per.values()))) if per else []
    return (common, per) if common else None


def _acc_matrix(recs, items, per) -> np.ndarray:
    return np.array([[per[r["run_id"]][i] for i in items] for r in recs], dtype=float)


def paired_acc(a: list[dict], b: list[dict] | None = None, tasks: list[str] | None = None,
               key: str = "acc") -> stats.Interval | None:
    """Mean accuracy (points; mean over tasks of per-task accuracy) of the seeds ``a``, or the paired difference
    ``a - b`` on the documents both evaluated, with its bootstrap interval (``stats.bootstrap``: seeds, then
    documents within tasks); None without per-item data."""
    got = _acc_items(a + (b or []), tasks, key)
    if got is None:
        return None
    items, per = got
    strata = np.array([t for t, _ in items])
    x = _acc_matrix(a, items, per)
    y = None if b is None else _acc_matrix(b, items, per)
    return stats.bootstrap(x, y, strata=strata, n_boot=N_BOOT, level=LEVEL).scaled(100.0)


def _windows(recs: list[dict], dataset: str):
    ws = [((r.get("metrics") or {}).get("perplexity") or {}).get(dataset, {}).get("windows") for r in recs]
    if not ws or any(not w for w in ws) or len({tuple(w["tokens"]) for w in ws}) != 1:
        return None
    tok = np.array(ws[0]["tokens"], dtype=float)
    return np.array([w["nll"] for w in ws], dtype=float) / tok, tok


def paired_log_ppl(a: list[dict], b: list[dict] | None = None, dataset: str = "wikitext2") -> stats.Interval | None:
    """Mean NLL per token (log perplexity) of ``a``, or the paired difference ``a - b`` (log of the perplexity ratio),
    resampling windows (and seeds); None without per-window data or when the windows differ."""
    wa = _windows(a, dataset)
    wb = None if b is None else _windows(b, dataset)
    if wa is None or (b is not None and (wb is None or not np.array_equal(wa[1], wb[1]))):
        return None
    return stats.bootstrap(wa[0], None if wb is None else wb[0], weights=wa[1], n_boot=N_BOOT, level=LEVEL)


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


def _compare(a: list[dict], b: list[dict], runs: pd.DataFrame, ka: tuple, kb: tuple, above: list[str] | None,
             ppl: str | None, value: str = "acc") -> dict[str, Any]:
    """Columns of one paired comparison ``a`` vs ``b``: accuracy on all tasks and on the tasks above chance, and the
    perplexity ratio; each with its 95 % interval and verdict."""
    row: dict[str, Any] = {}
    iv = paired_acc(a, b) if value == "acc" else None
    if iv is not None:
        row.update({"Δ acc": iv.estimate, "95 % CI": _ci(iv), "acc verdict": stats.verdict(iv), "_lo": iv.lo,
                    "_hi": iv.hi,
                    "CI from": f"paired bootstrap, {iv.n_items} docs, seeds {iv.n_seeds[0]}/{iv.n_seeds[1]}"})
    else:
        na, nb = _normal_acc(runs, ka, value), _normal_acc(runs, kb, value)
        if na and nb:
            d, se = na[0] - nb[0], math.hypot(na[1], nb[1])
            z = stats.z_two_sided(1 - LEVEL)
            iv = stats.Interval(d, d - z * se, d + z * se, LEVEL, 0, 0, (1, 1))
            row.update({"Δ acc": d, "95 % CI": _ci(iv), "acc verdict": stats.verdict(iv), "_lo": iv.lo, "_hi": iv.hi,
                        "CI from": f"{NO_ITEMS}: independent per-task s.e. (normal)"})
    if above is not None and value == "acc":
        iv2 = paired_acc(a, b, tasks=above)
        row.update({"Δ acc (above chance)": None if iv2 is None else iv2.estimate,
                    "95 % CI (above chance)": _ci(iv2) if iv2 else NO_ITEMS,
                    "verdict (above chance)": stats.verdict(iv2)})
    if ppl:
        ivp = paired_log_ppl(a, b, ppl)
        row.update({f"{ppl} ppl ratio": None if ivp is None else math.exp(ivp.estimate),
                    "ppl 95 % CI": _ci(ivp, 3, math.exp) if ivp else "no per-window data",
                    "ppl verdict": stats.verdict(ivp, higher_is_better=False)})
        if ivp is not None:
            row.update(_p=math.exp(ivp.estimate), _plo=math.exp(ivp.lo), _phi=math.exp(ivp.hi))
    return row


def _above_chance(chance: pd.DataFrame, model: str) -> list[str] | None:
    if chance.empty:
        return None
    d = chance[chance["model"] == model]
    return None if d.empty or not d["at chance"].any() else d[~d["at chance"]]["task"].tolist()


def pairs_table(records: list[dict[str, Any]], runs: pd.DataFrame, chance: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every pair of methods at the same model and ratio (unpruned runs: ratio 0): paired differences (row minus
    column method) with 95 % bootstrap intervals and verdicts (``stats.verdict``)."""
    cells = _cells(records)
    ppl = next((c.removeprefix("ppl_") for c in runs.columns if c.startswith("ppl_")), None)
    chance = pd.DataFrame() if chance is None else chance
    rows = []
    keys = sorted(cells, key=lambda k: (k[0], k[1], METHOD_ORDER.index(k[2]) if k[2] in METHOD_ORDER else 50, k[3],
                                        k[4]))
    for i, ka in enumerate(keys):
        for kb in keys[i + 1:]:
            if ka[:2] != kb[:2]:
                continue
            rows.append({"model": ka[0], "ratio": f"{100 * ka[1]:.0f} %", "A": _legend(ka[3], ka[4]),
                         "B": _legend(kb[3], kb[4]),
                         **_compare(cells[ka], cells[kb], runs, ka, kb, _above_chance(chance, ka[0]), ppl)})
    return pd.DataFrame(rows)


def cell_intervals(records: list[dict[str, Any]], runs: pd.DataFrame, ppl: str | None) -> pd.DataFrame:
    """Per table cell (model, ratio, method, mode): mean achieved parameters, mean accuracy (points) and perplexity
    with 95 % intervals. Accuracy: the bootstrap over seeds and documents, else (no per-item data) a normal interval
    from the per-task standard errors; perplexity: the bootstrap over seeds and windows, else no interval."""
    rows = []
    z = stats.z_two_sided(1 - LEVEL)
    for key, recs in _cells(records).items():
        model, ratio, fam, name, mode = key
        params = [r.get("params", {}).get("total") for r in recs if (r.get("params") or {}).get("total")]
        row = {"model": model, "ratio": ratio, "family": fam, "method": name, "mode": mode, "seeds": len(recs),
               "params": float(np.mean(params)) if params else None}
        iv = paired_acc(recs)
        if iv is not None:
            row.update(acc=iv.estimate, acc_lo=iv.lo, acc_hi=iv.hi, acc_ci="bootstrap")
        elif (na := _normal_acc(runs, key)) is not None:
            row.update(acc=na[0], acc_lo=na[0] - z * na[1], acc_hi=na[0] + z * na[1], acc_ci="normal (per-task s.e.)")
        if ppl:
            ivp = paired_log_ppl(recs, None, ppl)
            vals = [((r.get("metrics") or {}).get("perplexity") or {}).get(ppl, {}).get("ppl") for r in recs]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if ivp is not None:
                row.update(ppl=math.exp(ivp.estimate), ppl_lo=math.exp(ivp.lo), ppl_hi=math.exp(ivp.hi),
                           ppl_ci="bootstrap")
            elif vals:
                row.update(ppl=float(np.exp(np.mean(np.log(vals)))), ppl_ci=None)
        rows.append(row)
    return pd.DataFrame(rows)

