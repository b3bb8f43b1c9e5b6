"""Plots (matplotlib, Agg): speedup vs batch size, accuracy / perplexity vs achieved parameters, the claims' forest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.harness.reporting.frames import METHOD_ORDER, _legend

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110, rect: tuple | None = None) -> Path:
    """Lay ``fig`` out (``rect``: the area left to the axes), write it to ``path`` as a PNG, close it; returns path."""
    plt = _plt()
    fig.tight_layout(**({"rect": rect} if rect is not None else {}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
    return save(fig, path, rect=(0, 0, 1 - 2.5 / (3.2 * len(ratios) + 2.6), 1))


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
    ax.set_title(f"{model}: {what} vs achieved parameters, bars: 95 % CI incl. seed variance{note}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    return save(fig, path)


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
    fig.suptitle("The paper's claims, exploratory (no verdicts): paired differences, 95 % CI with seed variance "
                 "(hollow: independent s.e., no per-item data)", fontsize=9)
    return save(fig, path)



def plot_primary(primary: pd.DataFrame, path: Path) -> Path | None:
    """The primary claims, one panel per metric, one row per pair (shared across panels): the estimate with its
    marginal 95 % interval (thick) and its simultaneous (Bonferroni) interval (thin); filled marker: resolved after
    Holm, hollow: not resolved."""
    d = primary.dropna(subset=["_est"]) if "_est" in primary else pd.DataFrame()
    if d.empty:
        return None
    metrics = [m for m in ("ppl", "acc_above_chance", "acc") if (d["_metric"] == m).any()]
    d = d.assign(_row=[(f"{c} [{m}]" if d["model"].nunique() > 1 else c).replace(", B: ", "\nB: ")
                       for c, m in zip(d["claim"], d["model"])])
    rows = list(dict.fromkeys(d["_row"]))
    ypos = {r: len(rows) - 1 - i for i, r in enumerate(rows)}
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 3.5, max(2.4, 0.5 * len(rows) + 1.6)),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        colour = "#d62728" if metric == "ppl" else "#1f77b4"
        for _, r in d[d["_metric"] == metric].iterrows():
            yi = ypos[r["_row"]]
            if pd.notna(r["_slo"]):
                ax.plot([r["_slo"], r["_shi"]], [yi, yi], color=colour, lw=0.9)
            ax.plot([r["_lo"], r["_hi"]], [yi, yi], color=colour, lw=3.2, solid_capstyle="butt")
            ax.plot([r["_est"]], [yi], "s" if metric == "ppl" else "o", ms=7, color=colour,
                    mfc=colour if r["verdict"] in ("ahead", "behind") else "white")
        ax.axvline(1 if metric == "ppl" else 0, color="black", lw=0.8)
        if metric == "ppl":
            _log_axis(ax.xaxis, ax.set_xscale)
            ax.set_xlabel("perplexity ratio A / B (log; < 1: A better)", fontsize=8)
        else:
            what = "all tasks" if metric == "acc" else "tasks above chance"
            ax.set_xlabel(f"Δ mean accuracy, {what}: A minus B (points)", fontsize=8)
        ax.grid(alpha=0.3, axis="x", which="both")
    axes[0][0].set_yticks(list(ypos.values()), list(ypos.keys()), fontsize=7)
    axes[0][0].set_ylim(-0.6, len(rows) - 0.4)
    fig.suptitle("Primary claims: thick 95 % CI, thin simultaneous CI (Bonferroni); filled: resolved after Holm",
                 fontsize=9)
    return save(fig, path)
