"""Record frames: one row per run (``runs_frame``), per task (``tasks_frame``), per throughput point
(``throughput_frame``); the method labels (``label``) and the size check (``size_check``).

Size check: every row shows its achieved parameters. A ratio's size is PAT's parameter count at that ratio (the mean
of the model's successful PAT runs there), else ``(1 - ratio)`` times the dense run's; a row more than ``SIZE_TOL``
(1 %) off its ratio's size is marked ``OFF_SIZE``.

To add a stage's display name, add it to ``DISPLAY``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

PAPER_TABLE = Path(__file__).resolve().parents[2] / "paper_table1.toml"
DISPLAY = {"pat": "PAT", "lora": "LoRA", "llm_pruner": "LLM-Pruner", "slicegpt": "SliceGPT", "flap": "FLAP",
           "wanda_sp": "Wanda-SP"}
METHOD_ORDER = ["Dense", "LoRA", "LLM-Pruner", "SliceGPT", "FLAP", "Wanda-SP", "PAT"]
MODE_ORDER = ["—", "FT", "P", "P→FT", "FT→P", "PAT"]
SIZE_TOL = 0.01
OFF_SIZE = "†"
LOGLIK = "lm-eval-loglik-0shot"
LETTER = "paper-first-capital-gen"


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
    # a named tuning variant ([stages.lora_kd] stage = "lora") is part of the name, so that it gets its own cell
    if len(pipeline) == 2 and base[1] == "lora":
        name = show(0) if pipeline[1] == "lora" else f"{show(0)} with {show(1)}"
        return DISPLAY.get(base[0], base[0]), name, "P→FT"
    if len(pipeline) == 2 and base[0] == "lora":
        name = show(1) if pipeline[0] == "lora" else f"{show(1)} with {show(0)}"
        return DISPLAY.get(base[1], base[1]), name, "FT→P"
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



def _legend(name: str, mode: str) -> str:
    return name if mode in ("—", "PAT", "FT") else f"{name} {mode}"
