"""Tables and plots from a suite's result JSONs: ``results/<suite>/TABLES.md``, CSVs (pandas), PNGs (matplotlib).

Nothing here is typed by hand: every number comes from a run record (``bench.harness.results``), except the
paper's own Table 1, which is read from ``bench/paper_table1.toml`` (with its citation) and printed as a separate
reference table beside ours.

Sections of ``TABLES.md``: the main table laid out like the paper's Table 1 (rows: ratio x method x mode; columns:
models; cells: mean accuracy in %; beside each model its parameters), the paper's reference table, delta vs LoRA,
per-task accuracy, perplexity and parameters, throughput (speedup vs batch size against the dense model), failed
runs, and the plots.

Size check: every row shows its achieved parameters. A ratio's size is PAT's parameter count at that ratio (the mean
of the model's successful PAT runs there), else ``(1 - ratio)`` times the dense run's; a row more than ``SIZE_TOL``
(1 %) off its ratio's size is marked ``OFF_SIZE``.

To add a stage's display name, add it to ``DISPLAY``.
"""

from __future__ import annotations

import logging
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (same API)
    import tomli as tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import stats
from bench.harness.results import load_results
from pat.io import write_text_atomic

log = logging.getLogger(__name__)

PAPER_TABLE = Path(__file__).resolve().parents[1] / "paper_table1.toml"
DISPLAY = {"pat": "PAT", "lora": "LoRA", "llm_pruner": "LLM-Pruner", "slicegpt": "SliceGPT", "flap": "FLAP",
           "wanda_sp": "Wanda-SP"}
METHOD_ORDER = ["Dense", "LoRA", "LLM-Pruner", "SliceGPT", "FLAP", "Wanda-SP", "PAT"]
MODE_ORDER = ["—", "FT", "P", "P→FT", "FT→P", "PAT"]
SIZE_TOL = 0.01
OFF_SIZE = "†"
LOGLIK = "lm-eval-loglik-0shot"
LETTER = "paper-first-capital-gen"


# ---------------------------------------------------------------------------------------------- frames
def label(pipeline: list[str], stage_args: dict[str, dict] | None = None) -> tuple[str, str, str]:
    """``(method family, display name, mode)`` of a pipeline: ``[]`` Dense, ``["lora"]`` LoRA-r FT, ``["pat"]``
    PAT, ``[X, "lora"]`` X P→FT, ``["lora", X]`` X FT→P, ``[X]`` X P (no tuning)."""
    args = stage_args or {}
    if not pipeline:
        return "Dense", "Dense", "—"
    # a suite's named variant ([stages.pat_taylor] stage = "pat") is labelled by its `display` or "PAT (pat_taylor)"
    base = [args.get(s, {}).get("stage", s) for s in pipeline]

    def show(i: int) -> str:
        s, b = pipeline[i], base[i]
        return args.get(s, {}).get("display") or (DISPLAY.get(b, b) if s == b else f"{DISPLAY.get(b, b)} ({s})")

    if base == ["lora"]:
        rank = args.get(pipeline[0], {}).get("rank")
        return "LoRA", show(0) if pipeline[0] != "lora" else (f"LoRA-{rank}" if rank else "LoRA"), "FT"
    if base == ["pat"]:
        return "PAT", show(0), "PAT"
    if len(pipeline) == 2 and base[1] == "lora":
        return DISPLAY.get(base[0], base[0]), show(0), "P→FT"
    if len(pipeline) == 2 and base[0] == "lora":
        return DISPLAY.get(base[1], base[1]), show(1), "FT→P"
    name = "+".join(show(i) for i in range(len(pipeline)))
    return name, name, "P" if len(pipeline) == 1 else "+".join(pipeline)


def _mean_acc(metrics: dict, protocol: str, key: str = "acc") -> float | None:
    m = (metrics.get("means") or {}).get(protocol) or {}
    v = m.get(key)
    return 100.0 * v if isinstance(v, (int, float)) else None


def _mean_se(metrics: dict, protocol: str) -> float | None:
    """Standard error (%) of the plain mean over tasks: sqrt(sum se_t^2) / n_tasks (tasks independent)."""
    se = [t.get("acc_stderr") for t in (metrics.get("tasks") or {}).values() if t.get("protocol") == protocol]
    if not se or any(not isinstance(x, (int, float)) for x in se):
        return None
    return 100.0 * math.sqrt(sum(x * x for x in se)) / len(se)


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run record: ids, labels, status, mean accuracies (%), perplexities, params, timings."""
    rows = []
    for r in records:
        s = r["spec"]
        fam, name, mode = label(s["pipeline"], s.get("method_args"))
        m = r.get("metrics") or {}
        p = r.get("params") or {}
        row = {"run_id": r["run_id"], "model": s["model"], "ratio": float(s["ratio"]),
               "pipeline": "+".join(s["pipeline"]) or "dense",
               "seed": s["seed"], "family": fam, "method": name, "mode": mode, "status": r["status"],
               "main_metric": m.get("main_metric", "acc"),
               "acc": _mean_acc(m, LOGLIK), "acc_se": _mean_se(m, LOGLIK), "acc_norm": _mean_acc(m, LOGLIK,
                                                                                                 "acc_norm"),
               "letter_acc": _mean_acc(m, LETTER), "letter_acc_se": _mean_se(m, LETTER),
               "params": p.get("total"), "achieved_ratio": p.get("achieved_ratio"), "trainable": p.get("trainable"),
               "hidden_size": (p.get("widths") or {}).get("hidden_size"),
               "final_loss": (r.get("train") or {}).get("final_loss"), "seconds": r.get("seconds"),
               "error": (r.get("error") or {}).get("message")}
        for d, pp in (m.get("perplexity") or {}).items():
            row[f"ppl_{d}"] = pp.get("ppl")
        rows.append(row)
    return size_check(pd.DataFrame(rows))


def size_check(runs: pd.DataFrame) -> pd.DataFrame:
    """Adds ``size_ref`` (the parameters of the row's ratio: PAT's mean count at that model and ratio, else
    ``(1 - ratio)`` x the dense run's) and ``size_off`` (``params / size_ref - 1``)."""
    runs = runs.copy()
    if runs.empty or "params" not in runs:
        return runs.assign(size_ref=float("nan"), size_off=float("nan"))
    ok = runs[(runs["status"] == "success") & runs["params"].notna()]
    pat = ok[ok["family"] == "PAT"].groupby(["model", "ratio"])["params"].mean()
    dense = ok[ok["family"] == "Dense"].groupby("model")["params"].mean()
    refs = []
    for model, ratio in zip(runs["model"], runs["ratio"]):
        if (model, ratio) in pat.index:
            refs.append(float(pat[(model, ratio)]))
        elif model in dense.index:
            refs.append(float(dense[model]) * (1 - ratio))
        else:
            refs.append(float("nan"))
    runs["size_ref"] = refs
    runs["size_off"] = pd.to_numeric(runs["params"], errors="coerce") / runs["size_ref"] - 1
    return runs


def _params_cell(params: Any, off: Any) -> str:
    """``"100.9M"``, plus ``" † +2.3 %"`` when more than ``SIZE_TOL`` off its ratio's size; ``""`` when unknown."""
    if params is None or pd.isna(params):
        return ""
    cell = (f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6
            else f"{params / 1e3:.1f}k")
    if off is not None and not pd.isna(off) and abs(off) > SIZE_TOL:
        cell += f" {OFF_SIZE} {100 * off:+.1f} %"
    return cell


def tasks_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        if r["status"] != "success":
            continue
        s = r["spec"]
        fam, name, mode = label(s["pipeline"], s.get("method_args"))
        for t, m in ((r.get("metrics") or {}).get("tasks") or {}).items():
            rows.append({"run_id": r["run_id"], "model": s["model"], "ratio": float(s["ratio"]), "seed": s["seed"],
                         "family": fam, "method": name, "mode": mode, "task": t, "protocol": m.get("protocol"),
                         "acc": None if m.get("acc") is None else 100 * m["acc"],
                         "acc_stderr": None if m.get("acc_stderr") is None else 100 * m["acc_stderr"],
                         "acc_norm": None if m.get("acc_norm") is None else 100 * m["acc_norm"], "n": m.get("n")})
    return pd.DataFrame(rows)


def _loaded(tp: dict[str, Any]) -> bool:
    """True when the host's 1-min load average exceeded its core count while timing (timings unreliable)."""
    h = tp.get("host_load") or {}
    n = h.get("cpu_count") or 0
    return bool(n) and max(h.get("loadavg_1min_before", 0), h.get("loadavg_1min_after", 0)) > n


def throughput_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        tp = r.get("throughput")
        if r["status"] != "success" or not tp:
            continue
        s = r["spec"]
        fam, name, mode = label(s["pipeline"], s.get("method_args"))
        for p in tp.get("prefill", []):
            rows.append({"run_id": r["run_id"], "model": s["model"], "ratio": float(s["ratio"]), "family": fam,
                         "method": name, "mode": mode, "batch_size": p["batch_size"], "context": p.get("context"),
                         "prefill_s": p.get("median_s"),
                         "oom": bool(p.get("oom")), "device": tp["device"].get("kind"),
                         "device_name": tp["device"].get("name"),
                         "comparable": tp["device"].get("comparable"),
                         "weights_mb": tp["memory"]["weights_bytes"] / 2**20,
                         "cuda_mb": (tp["memory"].get("cuda_allocated_bytes") or 0) / 2**20 or None,
                         "decode_tok_s": (tp.get("decode") or {}).get("decode_tokens_per_s"),
                         "params": tp.get("params"),
                         "loaded": _loaded(tp)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    dense = df[df["family"].isin(["Dense"])]
    if dense.empty:
        dense = df[(df["family"] == "LoRA") & (df["ratio"] == 0)]
    base = dense.groupby(["model", "batch_size"])["prefill_s"].median().rename("dense_prefill_s")
    df = df.join(base, on=["model", "batch_size"])
    df["speedup"] = df["dense_prefill_s"] / df["prefill_s"]
    df["bound"] = 1.0 / (1.0 - df["ratio"])  # linear-dominated prefill upper bound (pat-spec.md §11)
    return df


def _order(df: pd.DataFrame) -> pd.DataFrame:
    key_m = {m: i for i, m in enumerate(METHOD_ORDER)}
    key_o = {m: i for i, m in enumerate(MODE_ORDER)}
    return df.assign(_m=df["family"].map(lambda x: key_m.get(x, 50)), _o=df["mode"].map(lambda x: key_o.get(x, 50))) \
             .sort_values(["ratio", "_m", "_o", "method"]).drop(columns=["_m", "_o"])


# ---------------------------------------------------------------------------------------------- tables
def _model_cols(t: pd.DataFrame) -> pd.DataFrame:
    """Model columns in the paper's order (Gemma-2B, Gemma-7B, Llama2-7B, Llama2-13B, Yi), others alphabetical
    after."""
    with open(PAPER_TABLE, "rb") as fh:
        paper = tomllib.load(fh)["meta"]["models"]
    fixed = [c for c in t.columns if c in ("Ratio", "Method", "Mode")]
    models = sorted((c for c in t.columns if c not in fixed), key=lambda c: (paper.index(c) if c in paper else 99,
                                                                             str(c)))
    return t[fixed + models]


def main_table(runs: pd.DataFrame, value: str = "acc") -> pd.DataFrame:
    """Table 1 layout: rows (ratio %, method, mode), columns models, cells the seed-mean of ``value``."""
    ok = runs[runs["status"] == "success"].dropna(subset=[value])
    if ok.empty:
        return pd.DataFrame()
    g = ok.groupby(["ratio", "family", "method", "mode", "model"], dropna=False)[value].mean().reset_index()
    t = g.pivot_table(index=["ratio", "family", "method", "mode"], columns="model", values=value,
                      aggfunc="mean").reset_index()
    t = _order(t)
    models = [c for c in t.columns if c not in ("ratio", "family", "method", "mode")]
    if "params" in ok:
        key = ["ratio", "family", "method", "mode", "model"]
        p = ok.groupby(key, dropna=False)[["params", "size_off"]].mean()
        for model in models:
            t[f"params {model}"] = [
                _params_cell(*(p.loc[k].tolist() if k in p.index else (None, None)))
                for k in zip(t["ratio"], t["family"], t["method"], t["mode"], [model] * len(t))]
    t.insert(0, "Ratio", t.pop("ratio").map(lambda r: f"{100 * r:.0f} %"))
    t = t.drop(columns=["family"]).rename(columns={"method": "Method", "mode": "Mode"}).reset_index(drop=True)
    cols = list(_model_cols(t[[c for c in t.columns if not str(c).startswith("params ")]]).columns)
    return t[cols + [c for c in t.columns if str(c).startswith("params ")]]


def ratio_table(runs: pd.DataFrame, model: str, value: str = "acc") -> pd.DataFrame:
    """One model at a glance: rows method x mode, columns prune ratios, cells ``"acc / ppl (params)"`` (the first
    perplexity dataset; parameters marked when off their ratio's size, see ``size_check``), seed means; the unpruned
    runs (dense, LoRA) in the 0 % column."""
    ok = runs[(runs["status"] == "success") & (runs["model"] == model)].dropna(subset=[value])
    if ok.empty:
        return pd.DataFrame()
    ppl = next((c for c in ok.columns if c.startswith("ppl_")), None)
    g = ok.groupby(["ratio", "family", "method", "mode"], dropna=False)
    cells = g[value].mean().to_frame("v")
    cells["p"] = g[ppl].mean() if ppl else float("nan")
    cells["n"] = g["params"].mean() if "params" in ok else float("nan")
    cells["off"] = g["size_off"].mean() if "size_off" in ok else float("nan")
    cells["cell"] = [f"{v:.2f}" + ("" if pd.isna(q) else f" / {q:.1f}")
                     + (f" ({pc})" if (pc := _params_cell(n, o)) else "")
                     for v, q, n, o in zip(cells["v"], cells["p"], cells["n"], cells["off"])]
    t = cells.reset_index().pivot_table(index=["family", "method", "mode"], columns="ratio", values="cell",
                                        aggfunc="first")
    t = t.reset_index().assign(ratio=0.0)
    t = _order(t).drop(columns=["ratio", "family"]).fillna("")
    t.columns = ["Method", "Mode"] + [f"{100 * r:.0f} %" for r in t.columns[2:]]
    return t.reset_index(drop=True)


def delta_vs_lora(runs: pd.DataFrame, value: str = "acc") -> pd.DataFrame:
    """Each run's ``value`` minus the unpruned LoRA run's of the same model and seed, in points."""
    ok = runs[runs["status"] == "success"].dropna(subset=[value])
    ref = ok[(ok["family"] == "LoRA") & (ok["ratio"] == 0)].groupby(["model", "seed"])[value].mean().rename("lora")
    if ref.empty:
        return pd.DataFrame()
    d = ok.join(ref, on=["model", "seed"]).dropna(subset=["lora"])
    d = d.assign(delta=d[value] - d["lora"])
    d = d[~((d["family"] == "LoRA") & (d["ratio"] == 0))]
    t = d.pivot_table(index=["ratio", "family", "method", "mode"], columns="model", values="delta",
                      aggfunc="mean").reset_index()
    t = _order(t)
    t.insert(0, "Ratio", t.pop("ratio").map(lambda r: f"{100 * r:.0f} %"))
    return _model_cols(t.drop(columns=["family"]).rename(columns={"method": "Method",
                                                                  "mode": "Mode"}).reset_index(drop=True))


def per_task_table(tasks: pd.DataFrame, model: str) -> pd.DataFrame:
    d = tasks[tasks["model"] == model]
    if d.empty:
        return pd.DataFrame()
    t = d.pivot_table(index=["ratio", "family", "method", "mode"], columns="task", values="acc",
                      aggfunc="mean").reset_index()
    t = _order(t)
    t.insert(0, "Ratio", t.pop("ratio").map(lambda r: f"{100 * r:.0f} %"))
    return t.drop(columns=["family"]).rename(columns={"method": "Method", "mode": "Mode"}).reset_index(drop=True)


def paper_table(path: Path = PAPER_TABLE) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The paper's Table 1 (values in %) and its ``[meta]`` (citation, metric, model labels)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    meta = data["meta"]
    rows = [{"Ratio": f"{100 * r['ratio']:.0f} %", "Method": r["method"], "Mode": r["mode"],
             **dict(zip(meta["model_labels"], r["values"]))} for r in data["row"]]
    return pd.DataFrame(rows), meta


def _fmt(v: Any, digits: int = 2, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return str(v)


def to_markdown(df: pd.DataFrame, digits: int = 2, signed: bool = False, bold_max_by: str | None = None) -> str:
    """A GitHub markdown table; with ``bold_max_by="Ratio"`` the best value per ratio and column is bold."""
    if df.empty:
        return "_(no data)_\n"
    cols = list(df.columns)
    best: dict[tuple, float] = {}
    if bold_max_by:
        num = [c for c in cols if pd.api.types.is_numeric_dtype(df[c])]
        for (grp, sub) in df.groupby(bold_max_by):
            for c in num:
                if sub[c].notna().sum() > 1:
                    best[(grp, c)] = sub[c].max()
    def cell(row, c) -> str:
        s = _fmt(row[c], digits, signed)
        if bold_max_by and (row[bold_max_by], c) in best and row[c] == best[(row[bold_max_by], c)]:
            s = f"**{s}**"
        return s

    cells = pd.DataFrame([[cell(row, c) for c in cols] for _, row in df.iterrows()], columns=[str(c) for c in cols])
    return cells.to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


# ---------------------------------------------------------------------------------------------- paired statistics
N_BOOT = 2000
LEVEL = 0.95
CHANCE_ALPHA = 0.05
NO_ITEMS = "no per-item data"


def _task_chance(t: dict, task: str) -> float:
    """A task's chance rate: the mean of 1 / (number of choices) over its documents when recorded, else the task's
    uniform-guess rate (``t["chance"]``, else ``evaluation.CHANCE``)."""
    nc = (t.get("items") or {}).get("n_choices")
    if nc:
        return sum(1 / int(c) for c in nc) / len(nc)
    base = task.removeprefix("paper_")
    return t.get("chance") or {"boolq": 0.5, "piqa": 0.5, "winogrande": 0.5}.get(base, 0.25)


def chance_tasks(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per model and log-likelihood task, the dense (untuned, unpruned) model's accuracy against the task's chance
    rate.

    Rule: a task sits at chance when a one-sided exact binomial test cannot reject ``acc <= chance`` at
    ``CHANCE_ALPHA`` (5 %): ``P(X >= k | n, chance) >= 0.05`` (``stats.at_chance``). With several dense seeds the
    first is used (the untuned model does not depend on the seed).
    """
    rows, seen = [], set()
    for r in records:
        if r["status"] != "success" or r["spec"]["pipeline"] or r["spec"]["model"] in seen:
            continue
        seen.add(r["spec"]["model"])
        for task, t in sorted(((r.get("metrics") or {}).get("tasks") or {}).items()):
            if t.get("protocol") != LOGLIK or not isinstance(t.get("acc"), (int, float)) or not t.get("n"):
                continue
            n = int(t["n"])
            k = (t.get("items") or {}).get("acc", "").count("1") if t.get("items") else round(t["acc"] * n)
            p = _task_chance(t, task)
            rows.append({"model": r["spec"]["model"], "task": task, "dense acc": 100 * k / n, "n": n,
                         "chance": 100 * p, "p (acc <= chance)": stats.binom_sf(k, n, p),
                         "at chance": stats.at_chance(k, n, p, CHANCE_ALPHA)})
    return pd.DataFrame(rows)


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


# ---------------------------------------------------------------------------------------------- claims
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


# ---------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedup(tp: pd.DataFrame, model: str, path: Path) -> Path | None:
    """Prefill speedup vs batch size (median over seeds), one panel per ratio (its bound 1/(1-r) dotted); colour by
    method and marker / line style by mode, as in the other plots, so no colour stands for two methods."""
    d = tp[(tp["model"] == model) & (tp["ratio"] > 0) & ~tp["oom"]].dropna(subset=["speedup"])
    if d.empty:
        return None
    plt = _plt()
    ratios = sorted(d["ratio"].unique())
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.2 * len(ratios) + 2.6, 4), sharey=True, squeeze=False)
    d, colours = _plot_order(d, "batch_size")
    handles = {}
    for ax, ratio in zip(axes[0], ratios):
        for (name, mode), sub in d[d["ratio"] == ratio].groupby(["method", "mode"], sort=False):
            marker, ls = MODE_STYLE.get(mode, ("x", "-"))
            med = sub.groupby("batch_size")["speedup"].median()  # median over seeds
            (h,) = ax.plot(med.index, med.values, marker=marker, ls=ls or "-", color=colours[name])
            handles.setdefault(_legend(name, mode), h)
        ax.axhline(1 / (1 - ratio), ls=":", color="grey", lw=0.8)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{100 * ratio:.0f} % (dotted: 1/(1-r) = {1 / (1 - ratio):.2f})", fontsize=8)
        ax.set_xlabel(f"batch size (context {int(d['context'].iloc[0])})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("prefill speedup vs dense")
    dev = d["device"].iloc[0]
    fig.suptitle(f"{model}: prefill speedup vs batch size "
                 f"({dev}{'' if dev == 'cuda' else ', not comparable with the paper'})", fontsize=9)
    fig.legend(list(handles.values()), list(handles.keys()), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.5 / (3.2 * len(ratios) + 2.6), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# one colour per method (never reused for another method in a figure), one marker and line style per mode
COLOURS = {"Dense": "#000000", "LoRA": "#7f7f7f", "PAT": "#d62728", "PAT (Taylor snap)": "#ff7f0e",
           "LLM-Pruner": "#1f77b4", "SliceGPT": "#2ca02c", "FLAP": "#9467bd", "Wanda-SP": "#8c564b"}
SPARE_COLOURS = ["#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                 "#31a354", "#756bb1", "#636363"]
MODE_STYLE = {"—": ("*", ""), "FT": ("^", ""), "PAT": ("D", "-"), "P→FT": ("o", "-"), "FT→P": ("s", "--"),
              "P": ("v", ":")}


def method_colours(methods: list[tuple[str, str]]) -> dict[str, str]:
    """``{method: colour}`` for ``(family, method)`` pairs: the fixed ``COLOURS`` by name, else by family (LoRA-r,
    a size-matched variant), else the next unused spare; distinct methods never share a colour."""
    out: dict[str, str] = {}
    spare = iter(c for c in SPARE_COLOURS)
    for fam, name in methods:
        if name in out:
            continue
        c = COLOURS.get(name) or COLOURS.get(fam)  # e.g. "FLAP (size-matched)" takes FLAP's unless FLAP is there
        out[name] = c if c and c not in out.values() else next(spare)
    return out


def _plot_order(d: pd.DataFrame, then: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows in the plots' method order (``METHOD_ORDER`` by family, then method, mode and ``then``) and
    ``method_colours`` for them."""
    key_m = {m: i for i, m in enumerate(METHOD_ORDER)}
    d = d.assign(_o=d["family"].map(lambda f: key_m.get(f, 50))).sort_values(["_o", "method", "mode", then])
    return d, method_colours(list(zip(d["family"], d["method"])))


def _log_axis(axis, set_scale) -> None:
    """A log axis labelled in plain numbers at 1, 2, 5 x 10^k (at 10^k only when the data span over 3 decades)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    lo, hi = axis.get_data_interval()
    wide = lo > 0 and hi / lo > 1e3
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(name: str, mode: str) -> str:
    return name if mode in ("—", "PAT", "FT") else f"{name} {mode}"


def plot_vs_params(cells: pd.DataFrame, model: str, path: Path, metric: str = "acc") -> Path | None:
    """Accuracy (or perplexity, log axis) against achieved parameters, one line per method and mode, 95 % bars.
    Each series is shifted sideways by a small fixed step (0.6 % of the parameter range; stated on the x label) so
    that size-matched rows at one parameter count do not hide each other."""
    d = cells[cells["model"] == model].dropna(subset=["params"]) if not cells.empty else cells
    if d.empty or metric not in d or d[metric].isna().all():
        return None
    d = d.dropna(subset=[metric])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    d, colours = _plot_order(d, "params")
    missing = 0
    groups = list(d.groupby(["method", "mode"], sort=False))
    # size-matched rows share one parameter count: shift each series sideways a little so no bar hides another
    step = 0.006 * max(d["params"].max() - d["params"].min(), 1e6) / 1e6
    for i, ((name, mode), sub) in enumerate(groups):
        marker, ls = MODE_STYLE.get(mode, ("x", "-"))
        dx = (i - (len(groups) - 1) / 2) * step
        lo, hi = sub.get(f"{metric}_lo"), sub.get(f"{metric}_hi")
        has = lo is not None and hi is not None and lo.notna().all() and hi.notna().all()
        missing += int(not has)
        yerr = [sub[metric] - lo, hi - sub[metric]] if has else None
        ax.errorbar(sub["params"] / 1e6 + dx, sub[metric], yerr=yerr, marker=marker, ls=ls or "none",
                    color=colours[name], capsize=3, ms=6, lw=1.3,
                    label=_legend(name, mode) + ("" if has else " (no CI)"))
    if metric == "ppl":
        _log_axis(ax.yaxis, ax.set_yscale)
    ax.set_xlabel(f"achieved parameters (M; series shifted apart by {step:.2g} M each, so equal sizes stay visible)")
    what = "mean accuracy (%)" if metric == "acc" else "perplexity (log scale)"
    ax.set_ylabel(what)
    why = {"acc": "records without per-document outcomes or s.e.", "ppl": "records without per-window NLLs"}[metric]
    note = f"\n(no CI): {why}" if missing else ""
    ax.set_title(f"{model}: {what} vs achieved parameters, bars: 95 % CI{note}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forest(claims: pd.DataFrame, path: Path) -> Path | None:
    """The claims' paired differences with their 95 % intervals: accuracy (points) and, when recorded, the
    perplexity ratio (log axis). Hollow markers: intervals from independent standard errors (no per-item data).
    Rows without an interval (the speedup claim) are left out; no interval at all (e.g. no PAT run yet): no plot."""
    d = claims.dropna(subset=["_lo"]) if "_lo" in claims else pd.DataFrame()
    if d.empty:
        return None
    has_ppl = "_p" in d and d["_p"].notna().any()
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if has_ppl else 1, figsize=(11 if has_ppl else 7, max(2.6, 0.32 * len(d) + 1.4)),
                             sharey=True, squeeze=False)
    y = np.arange(len(d))[::-1]
    labels = [f"{c} [{m}]" if d["model"].nunique() > 1 else c for c, m in zip(d["claim"], d["model"])]
    ax = axes[0][0]
    for yi, (_, r) in zip(y, d.iterrows()):
        paired = str(r.get("CI from", "")).startswith("paired")
        ax.errorbar(r["ours"], yi, xerr=[[r["ours"] - r["_lo"]], [r["_hi"] - r["ours"]]], fmt="o", capsize=3,
                    color="#1f77b4", mfc="#1f77b4" if paired else "white")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("Δ mean accuracy, PAT minus other (points)")
    ax.grid(alpha=0.3, axis="x")
    if has_ppl:
        ax2 = axes[0][1]
        p = d.dropna(subset=["_p"])
        yp = y[[d.index.get_loc(i) for i in p.index]]
        ax2.errorbar(p["_p"], yp, xerr=[p["_p"] - p["_plo"], p["_phi"] - p["_p"]], fmt="s", capsize=3, color="#d62728")
        ax2.axvline(1, color="black", lw=0.8)
        _log_axis(ax2.xaxis, ax2.set_xscale)
        ax2.set_xlabel("perplexity ratio, PAT / other (log; < 1: PAT better)")
        ax2.grid(alpha=0.3, axis="x", which="both")
    fig.suptitle("Claims: paired differences with 95 % CI (hollow: independent s.e., no per-item data)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the report
def _header(suite: str, records: list[dict], results_dir: Path) -> list[str]:
    ok = sum(r["status"] == "success" for r in records)
    shas = sorted({(r["provenance"].get("git") or {}).get("sha") or "?" for r in records})
    dirty = any((r["provenance"].get("git") or {}).get("dirty") for r in records)
    devs = sorted({f"{(r['provenance'].get('device') or {}).get('kind')} "
                   f"{(r['provenance'].get('device') or {}).get('name')}" for r in records})
    md = [f"# Results of suite `{suite}`", "",
          f"Generated by `python -m bench.report --suite {suite}` from {len(records)} run records in "
          f"`{results_dir}` "
          f"({ok} succeeded, {len(records) - ok} failed). Do not edit by hand.", "",
          f"- git: {', '.join(s[:10] for s in shas)}{' (dirty tree)' if dirty else ''}",
          f"- device: {', '.join(devs)}", *_precision_line(records), ""]
    return md + _mask_budget_note(records)


def _precision_line(records: list[dict]) -> list[str]:
    """Header line (issue 18, speed branch): the training precision(s) of the budgets and the evaluation's."""
    train = sorted({str(r["spec"]["budget"].get("precision", "fp32")) for r in records
                    if (r.get("spec") or {}).get("budget")})
    ev = sorted({str(((r.get("protocol") or {}).get("eval") or {}).get("precision", "fp32")) for r in records})
    return [f"- precision: training {', '.join(train) or '-'}; evaluation {', '.join(ev) or '-'}"]


FEW_MASK_STEPS = 1000  # milestone s0 below this: the paper's mask has not been shown to learn (the paper: ~10 k)


def _mask_budget_note(records: list[dict]) -> list[str]:
    """A plain warning when the PAT runs' masks trained far fewer steps before their freeze than the paper's."""
    steps = [st["milestone_step"] for r in records if r.get("status") == "success"
             for st in ((r.get("train") or {}).get("stages") or {}).values()
             if isinstance(st, dict) and "milestone_step" in st]
    if not steps or max(steps) >= FEW_MASK_STEPS:
        return []
    return [f"**PAT's budget here:** its mask schedule's milestone s0 is at most step {max(steps)} (the paper's: "
            "~10,000 of ~30,000 steps). At such budgets the paper's mask cannot learn which channels to keep (the "
            "count loss outweighs the task gradient; docs/findings/2026-11-30-mask-at-cpu-budgets.md). The PAT rows "
            "name what picked the channels; none of them measures PAT at the paper's budget.", ""]


CLAIMS_NOTE = (
    "`ours`: PAT minus the other method, points of mean accuracy (mean over tasks); the paper column is computed "
    "from its Table 1 (Llama2-7B). `95 % CI`: paired bootstrap (both runs answered the same documents: documents "
    "resampled within each task, seeds resampled first when there are several; `bench.harness.stats.bootstrap`), or, "
    "for records without per-document outcomes, a normal interval from the independent per-task standard errors "
    "(`CI from` says which). Verdict: `ahead` / `behind` when the interval excludes 0, else `not resolved`. "
    "`above chance`: the same on the tasks where the dense model is above chance. Perplexity ratio PAT / other with "
    "its paired bootstrap over windows (log scale): the primary metric where accuracy sits near chance; "
    "`ppl verdict` `ahead` means PAT's perplexity is lower.")


def _md_public(df: pd.DataFrame) -> str:
    """Markdown of ``df`` without its ``_``-prefixed (plotting) columns."""
    return to_markdown(df[[c for c in df.columns if not str(c).startswith("_")]], signed=False)


def _with_above_chance(runs: pd.DataFrame, records: list[dict], chance: pd.DataFrame) -> pd.DataFrame:
    """Adds ``acc_above_chance``: each run's mean accuracy (%) over the tasks where its model's dense run is above
    chance (``chance_tasks``); NaN where no dense run decides it."""
    runs = runs.copy()
    vals = {}
    for r in records:
        above = (None if chance.empty
                 else chance[(chance["model"] == r["spec"]["model"]) & ~chance["at chance"]]["task"])
        ts = ((r.get("metrics") or {}).get("tasks") or {})
        accs = [ts[t]["acc"] for t in (above if above is not None else [])
                if isinstance(ts.get(t, {}).get("acc"), (int, float))]
        vals[r["run_id"]] = 100 * sum(accs) / len(accs) if accs else float("nan")
    runs["acc_above_chance"] = runs["run_id"].map(vals)
    return runs


def _chance_section(runs: pd.DataFrame, chance: pd.DataFrame, value: str) -> list[str]:
    if chance.empty:
        return ["## Tasks at chance", "", "_(no dense run: the chance check needs the untuned model)_", ""]
    md = ["## Tasks at chance for the dense model", "",
          (f"Rule: a task sits at chance when a one-sided exact binomial test cannot reject accuracy <= chance at "
           f"{CHANCE_ALPHA:.0%} (`P(X >= k | n, chance) >= {CHANCE_ALPHA}`; chance = mean of 1 / number of choices, "
           "or the task's uniform-guess rate for records without per-document choices). Such tasks carry no "
           "signal about pruning damage; the table below repeats the main table without them. Where accuracy sits "
           "near chance, perplexity with its interval is the primary metric."), "",
          to_markdown(chance.assign(**{"p (acc <= chance)": chance["p (acc <= chance)"].map(lambda v: f"{v:.3g}")}),
                      digits=1)]
    if value == "acc" and chance["at chance"].any() and runs["acc_above_chance"].notna().any():
        t = main_table(runs, "acc_above_chance")
        md += ["Main table on the tasks above chance only (mean accuracy %, same layout):", "",
               to_markdown(t, bold_max_by="Ratio")]
    return md


def build_report(results_dir: str | Path, suite: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Write ``TABLES.md``, CSVs and PNGs for the run records in ``results_dir``; returns the TABLES.md path."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir else results_dir
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in load_results(results_dir) if suite is None or r.get("suite") == suite]
    if not records:
        raise FileNotFoundError(f"no run records (*.json) for suite {suite!r} in {results_dir}; run python -m "
                                f"bench.run --suite {suite} first")
    suite = suite or records[0]["suite"]
    runs, tasks, tp = runs_frame(records), tasks_frame(records), throughput_frame(records)
    runs.to_csv(out / "runs.csv", index=False)
    tasks.to_csv(out / "per_task.csv", index=False)
    tp.to_csv(out / "throughput.csv", index=False)
    md = _header(suite, records, results_dir)
    value = "acc" if runs["acc"].notna().any() else "letter_acc"
    proto = LOGLIK if value == "acc" else LETTER
    chance = chance_tasks(records)
    chance.to_csv(out / "chance.csv", index=False)
    runs = _with_above_chance(runs, records, chance)
    main = main_table(runs, value)
    main.to_csv(out / "main_table.csv", index=False)
    md += ["## Main table (layout of the paper's Table 1)", "",
           (f"Mean zero-shot accuracy (%) over the suite's tasks, protocol `{proto}`; mean over seeds. Bold: best per "
            f"ratio. `params <model>`: achieved parameters; {OFF_SIZE} marks a row more than {100 * SIZE_TOL:.0f} % "
            "off its ratio's size (PAT's parameter count at that ratio, else (1 - ratio) x dense)."), "",
           to_markdown(main, bold_max_by="Ratio")]
    if value == "acc" and runs["letter_acc"].notna().any():
        md += [f"Same layout, the paper's letter protocol (`{LETTER}`):", "",
               to_markdown(main_table(runs, "letter_acc"), bold_max_by="Ratio")]
    md += _chance_section(runs, chance, value)
    ref, meta = paper_table()
    md += ["## Reference: the paper's Table 1 (not produced by this code)", "",
           f"{meta['metric']}. Source: {meta['citation']}. Different models, data scale and protocol than ours: "
           "compare orderings, not values.", "", to_markdown(ref, bold_max_by="Ratio")]
    claims = claims_table(runs, tp, value, records, chance)
    claims.to_csv(out / "claims.csv", index=False)
    md += ["## The paper's claims beside ours", "", CLAIMS_NOTE, "", _md_public(claims)]
    pairs = pairs_table(records, runs, chance)
    pairs.to_csv(out / "pairs.csv", index=False)
    md += ["## Paired comparisons at equal size", "",
           ("Every pair of methods at the same model and ratio (unpruned runs: 0 %): `Δ acc` is A minus B in points, "
            "the perplexity ratio A / B; intervals and verdicts as in the claims table."), "", _md_public(pairs)]
    for model in sorted(runs["model"].unique()):
        rt = ratio_table(runs, model, value)
        ppl = next((c.removeprefix("ppl_") for c in runs.columns if c.startswith("ppl_")), None)
        rt.to_csv(out / f"by_ratio_{model}.csv", index=False)
        md += [f"## Accuracy and perplexity by ratio: {model}", "",
               "Cells: mean accuracy (%)" + (f" / {ppl} perplexity" if ppl else "")
               + f" (parameters; {OFF_SIZE}: more than {100 * SIZE_TOL:.0f} % off the ratio's size); "
               "unpruned runs under 0 %.",
               "",
               to_markdown(rt)]
    dl = delta_vs_lora(runs, value)
    md += ["## Delta vs LoRA (points of mean accuracy vs the unpruned LoRA run)", "", to_markdown(dl, signed=True)]
    for model in sorted(runs["model"].unique()):
        pt = per_task_table(tasks, model)
        md += [f"## Per-task accuracy (%): {model}", "", to_markdown(pt, digits=1)]
    ppl_cols = [c for c in runs.columns if c.startswith("ppl_")]
    info = _order(runs[runs["status"] == "success"].copy())[["run_id", "achieved_ratio", "params", "size_off",
                                                             "hidden_size", "trainable", "final_loss", *ppl_cols,
                                                             "seconds"]]
    md += ["## Parameters, perplexity and cost per run", "", to_markdown(info.reset_index(drop=True), digits=3)]
    md += _throughput_section(tp)
    failed = runs[runs["status"] != "success"]
    if not failed.empty:
        md += ["## Failed runs", "", to_markdown(failed[["run_id", "error"]].reset_index(drop=True))]
    plots = [plot_forest(claims, out / "claims_forest.png")]
    ppl = next((c.removeprefix("ppl_") for c in runs.columns if c.startswith("ppl_")), None)
    cells = cell_intervals(records, runs, ppl)
    cells.to_csv(out / "cells.csv", index=False)
    for model in sorted(runs["model"].unique()):
        plots.append(plot_vs_params(cells, model, out / f"acc_vs_params_{model}.png", "acc"))
        plots.append(plot_vs_params(cells, model, out / f"ppl_vs_params_{model}.png", "ppl"))
        if not tp.empty:
            plots.append(plot_speedup(tp, model, out / f"speedup_vs_batch_{model}.png"))
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p] + [""]
    path = out / "TABLES.md"
    write_text_atomic(path, "\n".join(md))
    return path


def _throughput_section(tp: pd.DataFrame) -> list[str]:
    if tp.empty:
        return []
    dev = tp["device"].iloc[0]
    note = "" if dev == "cuda" else " CPU figures (`comparable=false`): not comparable with the paper's A100 numbers."
    t = tp.pivot_table(index=["model", "ratio", "method", "mode"], columns="batch_size", values="speedup",
                       aggfunc="median").reset_index()
    t.columns = [f"speedup @ bs {c}" if isinstance(c, (int, float)) else c for c in t.columns]
    mem = tp.groupby(["model", "ratio", "method", "mode"])[["weights_mb", "decode_tok_s"]].first().reset_index()
    t = t.merge(mem, on=["model", "ratio", "method", "mode"])
    t["bound 1/(1-r)"] = 1 / (1 - t["ratio"])
    ctx = ", ".join(str(int(c)) for c in sorted(tp["context"].dropna().unique()))
    if tp["loaded"].any():
        note += (f" **Warning:** {tp[tp['loaded']]['run_id'].nunique()} run(s) were timed while the host's load "
                 "average exceeded its core count; their speedups are not reliable (rerun `python -m "
                 "bench.harness.throughput` on a quiet machine).")
    return [f"## Throughput: prefill speedup vs the dense model (context {ctx}, median of repeats)", "",
            f"Device: {tp['device_name'].iloc[0]} ({dev}).{note} The bound 1/(1-r) is the linear-dominated limit.", "",
            to_markdown(t, digits=2)]
