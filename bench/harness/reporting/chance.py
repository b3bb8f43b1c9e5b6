"""Tasks at chance: which log-likelihood tasks the dense model answers no better than chance."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.harness import stats
from bench.harness.reporting.frames import LOGLIK

CHANCE_ALPHA = 0.05


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

