"""Accuracy regression: compare a fresh ``ci`` suite run with the checked-in reference results.

Accuracy and perplexity tolerances come from the same statistics as the report (``bench.harness.stats``), at a
stated false-alarm rate ``FALSE_ALARM`` (1 %) for the whole comparison, split over its statistical checks
(Bonferroni: each check at ``FALSE_ALARM / m``, two-sided):

- per-task accuracy (``acc``, ``acc_norm``): ``|cur - ref| <= z * sqrt(2 p (1 - p) / n)``, the bound on the
  difference of two independent ``n``-document accuracy estimates of the same quality ``p`` (the reference's,
  shrunk to ``(k + 1) / (n + 2)``; ``stats.acc_diff_bound``). Both runs answer the same documents, so the real
  noise is smaller (paired) and the false-alarm rate at most the stated one; with 20 documents per task only large
  drops are detectable, which is why perplexity carries most of the detection;
- mean accuracy over a protocol's ``T`` tasks: ``z * sqrt(sum_t 2 p_t (1 - p_t) / n_t) / T``;
- perplexity: ``|log cur - log ref| <= z * sqrt(2) * se``, ``se`` the standard error of the mean NLL per token over
  the reference's windows (``stats.log_ppl_bound``; the current run's windows when the reference has none). Without
  per-window NLLs on either side the stated relative tolerance of ``TOLERANCES["ppl"]`` applies.

The rest are not sampled quantities: parameters exact, the last training loss within ``TOLERANCES`` (float noise
across CPUs / thread counts). A difference beyond tolerance is reported as ``run / metric: reference -> current
(delta, tolerance)``.

CLI: ``python -m bench.harness.regression --results results/_scratch/ci --reference tests/fixtures/ci_reference``
(exit 1 when something moved beyond tolerance).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from bench.harness import stats
from bench.harness.results import load_results

FALSE_ALARM = 0.01      # the whole comparison's false-alarm rate, Bonferroni-split over its statistical checks
STATISTICAL = ("task_acc", "task_acc_norm", "mean_acc", "ppl")

# metric -> (kind, tolerance): "abs" = |cur - ref| <= tol; "rel" = |cur - ref| <= tol * |ref|; "exact" = equal;
# "log" = |log cur - log ref| <= tol. The accuracy and perplexity entries are replaced per comparison by the
# statistical bounds (module docstring); "ppl" stays the fallback for records without per-window NLLs.
TOLERANCES: dict[str, tuple[str, float]] = {
    "task_acc": ("abs", 0.10),      # per-task accuracy (fraction); replaced by stats.acc_diff_bound
    "task_acc_norm": ("abs", 0.10),
    "mean_acc": ("abs", 0.05),      # mean accuracy over the suite's tasks (fraction); replaced by the bound
    "ppl": ("rel", 0.02),           # perplexity, relative: only without per-window NLLs
    "final_loss": ("rel", 0.02),    # last training-step loss, relative
    "params": ("exact", 0.0),       # total parameters of the finalized model
    "hidden_size": ("exact", 0.0),
    "trainable": ("exact", 0.0),
}


@dataclass(frozen=True)
class Diff:
    run_id: str
    metric: str
    reference: Any
    current: Any
    kind: str
    tol: float
    basis: str = ""

    @property
    def delta(self) -> float | None:
        if isinstance(self.reference, (int, float)) and isinstance(self.current, (int, float)):
            return self.current - self.reference
        return None

    @property
    def ok(self) -> bool:
        if self.reference is None and self.current is None:
            return True
        if self.delta is None:
            return self.reference == self.current
        if self.kind == "exact":
            return self.delta == 0
        if self.kind == "log":
            return (self.reference > 0 and self.current > 0
                    and abs(math.log(self.current / self.reference)) <= self.tol + 1e-12)
        bound = self.tol * abs(self.reference) if self.kind == "rel" else self.tol
        return abs(self.delta) <= bound + 1e-12

    def __str__(self) -> str:
        if self.delta is None:
            return f"{self.run_id} / {self.metric}: reference {self.reference!r} -> current {self.current!r}"
        tol = {"rel": f"±{self.tol:.0%} rel", "exact": "exact",
               "log": f"±{self.tol:.3g} in log, x/÷ {math.exp(self.tol):.3g}"}.get(self.kind, f"±{self.tol:.3g}")
        tol += f", {self.basis}" if self.basis else ""
        rel = f", {self.delta / self.reference:+.2%}" if self.reference else ""
        return (f"{self.run_id} / {self.metric}: {self.reference:.6g} -> {self.current:.6g} "
                f"(delta {self.delta:+.4g}{rel}; tolerance {tol})")


def _values(rec: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """``(metric name, tolerance key, value)`` of one run record."""
    m = rec.get("metrics") or {}
    for task, t in sorted((m.get("tasks") or {}).items()):
        yield f"{task}.acc", "task_acc", t.get("acc")
        if t.get("acc_norm") is not None:
            yield f"{task}.acc_norm", "task_acc_norm", t.get("acc_norm")
    for proto, mm in sorted((m.get("means") or {}).items()):
        yield f"mean[{proto}].acc", "mean_acc", mm.get("acc")
    for d, p in sorted((m.get("perplexity") or {}).items()):
        yield f"ppl[{d}]", "ppl", p.get("ppl")
    p = rec.get("params") or {}
    yield "params.total", "params", p.get("total")
    yield "params.hidden_size", "hidden_size", (p.get("widths") or {}).get("hidden_size")
    yield "params.trainable", "trainable", p.get("trainable")
    if rec.get("train"):
        yield "train.final_loss", "final_loss", rec["train"].get("final_loss")


def _shrunk(acc: float, n: int) -> float:
    return (acc * n + 1) / (n + 2)


def _stat_bound(key: str, name: str, ref: dict[str, Any], cur: dict[str, Any], alpha: float):
    """``(kind, tolerance, basis)`` of a statistical check at per-check false-alarm rate ``alpha``; None when the
    records lack what it needs (then the stated ``TOLERANCES`` entry applies)."""
    m = ref.get("metrics") or {}
    tasks = m.get("tasks") or {}
    if key in ("task_acc", "task_acc_norm"):
        t = tasks.get(name.split(".")[0]) or {}
        v, n = t.get("acc" if key == "task_acc" else "acc_norm"), t.get("n")
        if not isinstance(v, (int, float)) or not n:
            return None
        return "abs", stats.acc_diff_bound(v, int(n), alpha), f"binomial n={n}, alpha={alpha:.2g}"
    if key == "mean_acc":
        proto = name[len("mean["):name.index("]")]
        ts = [t for t in tasks.values() if t.get("protocol") == proto and isinstance(t.get("acc"), (int, float))
              and t.get("n")]
        if not ts:
            return None
        var = sum(2 * _shrunk(t["acc"], t["n"]) * (1 - _shrunk(t["acc"], t["n"])) / t["n"] for t in ts)
        return ("abs", stats.z_two_sided(alpha) * math.sqrt(var) / len(ts),
                f"binomial, {len(ts)} tasks, alpha={alpha:.2g}")
    if key == "ppl":
        d = name[len("ppl["):-1]
        for side, rec in (("reference", ref), ("current", cur)):
            w = (((rec.get("metrics") or {}).get("perplexity") or {}).get(d) or {}).get("windows")
            if w and len(w.get("nll", [])) >= 2:
                return ("log", stats.log_ppl_bound(w["nll"], w["tokens"], alpha),
                        f"{side}'s {len(w['nll'])} window NLLs, alpha={alpha:.2g}")
    return None


def compare(current: list[dict[str, Any]], reference: list[dict[str, Any]],
            tolerances: dict[str, tuple[str, float]] = TOLERANCES, false_alarm: float = FALSE_ALARM) -> list[Diff]:
    """Every compared value of every reference run; a missing or failed current run is a ``status`` diff.

    Accuracy and perplexity get the statistical bounds of the module docstring, each at ``false_alarm / m`` for the
    ``m`` statistical checks of the whole comparison; other values (and statistics whose records lack ``n`` or
    per-window NLLs) the stated ``tolerances``."""
    cur = {r["run_id"]: r for r in current}
    diffs: list[Diff | None] = []
    pending = []
    for ref in reference:
        rid = ref["run_id"]
        c = cur.get(rid)
        if c is None or c.get("status") != "success":
            diffs.append(Diff(rid, "status", "success", None if c is None else c.get("status"), "exact", 0.0))
            continue
        if c.get("spec") != ref.get("spec"):  # a changed suite file needs a new reference, not a tolerance
            diffs.append(Diff(rid, "spec (the suite changed: regenerate tests/fixtures/ci_reference)",
                              json.dumps(ref.get("spec"), sort_keys=True), json.dumps(c.get("spec"), sort_keys=True),
                              "exact", 0.0))
            continue
        cvals = {name: v for name, _, v in _values(c)}
        for name, key, v in _values(ref):
            pending.append((len(diffs), rid, name, key, v, cvals.get(name), ref, c))
            diffs.append(None)
    n_stat = sum(1 for _, _, _, key, v, *_ in pending if key in STATISTICAL and v is not None)
    alpha = false_alarm / max(n_stat, 1)
    for i, rid, name, key, v, cv, ref, c in pending:
        b = _stat_bound(key, name, ref, c, alpha) if key in STATISTICAL and v is not None else None
        if b is None:
            kind, tol = tolerances[key]
            diffs[i] = Diff(rid, name, v, cv, kind, tol, "stated" if key in STATISTICAL else "")
        else:
            diffs[i] = Diff(rid, name, v, cv, *b)
    return diffs


def report(diffs: list[Diff]) -> tuple[bool, str]:
    bad = [d for d in diffs if not d.ok]
    if not bad:
        return True, f"regression: all {len(diffs)} compared values within tolerance"
    return False, (f"regression: {len(bad)} of {len(diffs)} values moved beyond tolerance:\n"
                   + "\n".join(f"  {d}" for d in bad))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.harness.regression", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="directory of the fresh run JSONs")
    ap.add_argument("--reference", default="tests/fixtures/ci_reference",
                    help="reference run JSONs (default: %(default)s)")
    args = ap.parse_args(argv)
    ok, text = report(compare(load_results(args.results), load_results(args.reference)))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
