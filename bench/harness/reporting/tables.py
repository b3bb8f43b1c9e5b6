"""Tables: the main table (the paper's Table 1 layout), by ratio, delta vs LoRA, per task, the paper's own Table 1,
and the Markdown rendering (``to_markdown``)."""

from __future__ import annotations

import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (same API)
    import tomli as tomllib
from pathlib import Path
from typing import Any

import pandas as pd

from bench.harness.reporting.frames import PAPER_TABLE, _order, _params_cell

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

