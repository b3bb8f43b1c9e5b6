"""Accuracy regression: compare a fresh ``ci`` suite run with the checked-in reference results.

Each compared quantity has a stated tolerance (``TOLERANCES``). With the same code, seeds and data the numbers
are reproducible on one machine; the tolerances absorb float noise across CPUs / thread counts (a one-document
flip on a 20-document subset moves a task's accuracy by 0.05). A difference beyond tolerance is reported as
``run / metric: reference -> current (delta, tolerance)``.

CLI: ``python -m bench.harness.regression --results results/_scratch/ci --reference tests/fixtures/ci_reference``
(exit 1 when something moved beyond tolerance).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from bench.harness.results import load_results

# metric -> (kind, tolerance): "abs" = |cur - ref| <= tol; "rel" = |cur - ref| <= tol * |ref|; "exact" = equal
TOLERANCES: dict[str, tuple[str, float]] = {
    "task_acc": ("abs", 0.10),      # per-task accuracy (fraction); 2 documents of a 20-document subset
    "task_acc_norm": ("abs", 0.10),
    "mean_acc": ("abs", 0.05),      # mean accuracy over the suite's tasks (fraction)
    "ppl": ("rel", 0.02),           # perplexity, relative
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
        bound = self.tol * abs(self.reference) if self.kind == "rel" else self.tol
        return abs(self.delta) <= bound + 1e-12

    def __str__(self) -> str:
        if self.delta is None:
            return f"{self.run_id} / {self.metric}: reference {self.reference!r} -> current {self.current!r}"
        tol = f"±{self.tol:.0%} rel" if self.kind == "rel" else ("exact" if self.kind == "exact" else f"±{self.tol:g}")
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


def compare(current: list[dict[str, Any]], reference: list[dict[str, Any]],
            tolerances: dict[str, tuple[str, float]] = TOLERANCES) -> list[Diff]:
    """Every compared value of every reference run; a missing or failed current run is a ``status`` diff."""
    cur = {r["run_id"]: r for r in current}
    diffs = []
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
            kind, tol = tolerances[key]
            diffs.append(Diff(rid, name, v, cvals.get(name), kind, tol))
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
