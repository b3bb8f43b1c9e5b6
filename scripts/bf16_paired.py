"""fp32 vs bf16: the same model evaluated both ways on the `cpu` suite's documents and perplexity windows, paired.

``eval`` mode: evaluates ``--model`` (a registered name or a finalized run's ``model/`` directory) with the `cpu`
suite's ``[eval]`` and ``[perplexity]`` settings at ``--precision``; writes the record to ``--out``.
``compare`` mode (either file may be an ``eval`` record or a suite's run record): paired bootstrap intervals
(``bench.harness.stats.bootstrap``) of bf16 - fp32 from two records:
accuracy (strata = tasks, per-document 0/1), and log perplexity (per-window mean NLL, token weights); plus the
count of documents whose predicted choice differs.

Usage::

    PYTHONPATH=$PWD python scripts/bf16_paired.py eval --model smollm2-135m --precision fp32 --out A.json
    PYTHONPATH=$PWD python scripts/bf16_paired.py eval --model smollm2-135m --precision bf16 --out B.json
    PYTHONPATH=$PWD python scripts/bf16_paired.py compare A.json B.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np


def run_eval(model: str, precision: str, out: str, threads: int) -> None:
    import torch

    from bench.harness.evaluation import evaluate
    from bench.harness.suites import load_suite

    torch.set_num_threads(threads)
    s = load_suite("cpu")
    ev, pp = s.eval, s.perplexity
    evaluate(model, list(ev["tasks"]), ev["limit"], ppl=list(pp["datasets"]), seq_len=pp["seq_len"],
             stride=pp.get("stride"), max_tokens=pp.get("max_tokens"), out=out, batch_size=ev["batch_size"],
             seed=ev["seed"], precision=precision)


def _results(path: str) -> dict:
    """``{"tasks", "perplexity", "seconds"}`` of an ``evaluate`` record or of a suite's run record (``metrics``)."""
    with open(path) as fh:
        r = json.load(fh)
    if "metrics" in r:  # a run record of `pat-bench run`
        m = r["metrics"]
        return {"tasks": m["tasks"], "perplexity": m.get("perplexity") or {}, "seconds": m.get("eval_seconds"),
                "curves": (r.get("train") or {}).get("curves")}
    return r


def _iv(iv) -> dict:
    """An interval's fields without its bootstrap replicates."""
    return {k: v for k, v in iv.__dict__.items() if k != "reps"}


def compare(fp32_path: str, bf16_path: str) -> dict:
    from bench.harness.stats import bootstrap

    a, b = _results(fp32_path), _results(bf16_path)
    xs, ys, strata, flips, n = [], [], [], 0, 0
    per_task = {}
    for t, ma in a["tasks"].items():
        ia, ib = ma["items"], b["tasks"][t]["items"]
        assert ia["doc_ids"] == ib["doc_ids"], t
        xa, xb = [int(c) for c in ia["acc"]], [int(c) for c in ib["acc"]]
        ys += xa
        xs += xb
        strata += [t] * len(xa)
        f = sum(p != q for p, q in zip(ia["choice"], ib["choice"]))
        flips += f
        n += len(xa)
        per_task[t] = {"acc_fp32": ma["acc"], "acc_bf16": b["tasks"][t]["acc"], "choice_flips": f, "n": len(xa)}
    acc = bootstrap(xs, ys, strata=strata, n_boot=2000, seed=0)
    out = {"acc_diff_bf16_minus_fp32": _iv(acc), "choice_flips": flips, "documents": n, "per_task": per_task,
           "eval_seconds": {"fp32": a.get("seconds"), "bf16": b.get("seconds")}}
    for d, pa in a["perplexity"].items():
        pb = b["perplexity"][d]
        wa, wb = pa["windows"], pb["windows"]
        tok = np.asarray(wa["tokens"], float)
        mean_a, mean_b = np.asarray(wa["nll"]) / tok, np.asarray(wb["nll"]) / tok
        # log(ppl_bf16 / ppl_fp32); windows in circular blocks as in the reports (consecutive windows correlate)
        iv = bootstrap(mean_b, mean_a, weights=tok, n_boot=2000, seed=0, block="auto")
        out[f"log_ppl_ratio_{d}"] = _iv(iv)
        out[f"ppl_{d}"] = {"fp32": pa["ppl"], "bf16": pb["ppl"], "ratio": pb["ppl"] / pa["ppl"],
                           "ratio_interval": [math.exp(iv.lo), math.exp(iv.hi)],
                           "max_abs_window_mean_nll_diff": float(np.abs(mean_b - mean_a).max()),
                           "seconds": {"fp32": pa["seconds"], "bf16": pb["seconds"]}}
    ca, cb = a.get("curves"), b.get("curves")
    if ca and cb:  # two trainings of the same cell (fp32 and bf16 budgets): their per-step LM loss
        la = np.array([c["lm_loss"] for c in ca], float)
        lb = np.array([c["lm_loss"] for c in cb], float)
        k = min(len(la), len(lb))
        d = lb[:k] - la[:k]
        out["train_lm_loss"] = {"steps": k, "mean_diff_bf16_minus_fp32": float(d.mean()),
                                "mean_abs_diff": float(np.abs(d).mean()), "max_abs_diff": float(np.abs(d).max()),
                                "last10_fp32": float(la[k - 10:k].mean()), "last10_bf16": float(lb[k - 10:k].mean()),
                                "fp32": la[:k].tolist(), "bf16": lb[:k].tolist()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", default="smollm2-135m")
    e.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("fp32")
    c.add_argument("bf16")
    c.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "eval":
        run_eval(args.model, args.precision, args.out, args.threads)
        return 0
    res = compare(args.fp32, args.bf16)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
