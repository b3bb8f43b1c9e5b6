"""Tasks at chance: which log-likelihood tasks the dense model answers no better than chance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.harness import stats
from bench.harness.reporting.frames import LOGLIK

CHANCE_ALPHA = 0.05
# the recorded chance sets: dense evaluations on more documents than a suite's (results/chance/README.md)
CHANCE_DIR = Path(__file__).resolve().parents[3] / "results" / "chance"


def _task_chance(t: dict, task: str) -> float:
    """A task's chance rate: the mean of 1 / (number of choices) over its documents when recorded, else the task's
    uniform-guess rate (``t["chance"]``, else ``evaluation.CHANCE``)."""
    nc = (t.get("items") or {}).get("n_choices")
    if nc:
        return sum(1 / int(c) for c in nc) / len(nc)
    base = task.removeprefix("paper_")
    return t.get("chance") or {"boolq": 0.5, "piqa": 0.5, "winogrande": 0.5}.get(base, 0.25)


def _rows(model: str, tasks: dict, source: str) -> list[dict]:
    rows = []
    for task, t in sorted(tasks.items()):
        if t.get("protocol") != LOGLIK or not isinstance(t.get("acc"), (int, float)) or not t.get("n"):
            continue
        n = int(t["n"])
        k = (t.get("items") or {}).get("acc", "").count("1") if t.get("items") else round(t["acc"] * n)
        p = _task_chance(t, task)
        rows.append({"model": model, "task": task, "dense acc": 100 * k / n, "n": n, "chance": 100 * p,
                     "p (acc <= chance)": stats.binom_sf(k, n, p), "at chance": stats.at_chance(k, n, p, CHANCE_ALPHA),
                     "decided on": source})
    return rows


def recorded_chance(model: str, chance_dir: Path | None = CHANCE_DIR) -> list[dict]:
    """Rows of the model's recorded chance set: the dense evaluations ``<chance_dir>/<model>--*.json`` (written by
    ``pat-bench evaluate``, or a pointer ``{"source": "<path of such a record, relative to the repository>"}``; a
    task in several files is taken from the first, by name); [] when none."""
    if chance_dir is None:
        return []
    rows: list[dict] = []
    for f in sorted(Path(chance_dir).glob(f"{model}--*.json")):
        with open(f) as fh:
            rec = json.load(fh)
        name = f.name
        if isinstance(rec.get("source"), str):
            src = Path(chance_dir).resolve().parents[1] / rec["source"]
            if not src.is_file():
                raise ValueError(f"{f}: source: {rec['source']!r} is not a file (a path relative to the repository)")
            with open(src) as fh:
                rec = json.load(fh)
            name = f"{f.name} -> {src.relative_to(Path(chance_dir).resolve().parents[1])}"
        tasks = rec.get("tasks") or (rec.get("metrics") or {}).get("tasks") or {}
        if not isinstance(tasks, dict) or not tasks:
            raise ValueError(f"{f}: tasks: expected the per-task results of `pat-bench evaluate`, found none")
        done = {r["task"] for r in rows}
        limit = (rec.get("config") or {}).get("limit")
        seed = (rec.get("config") or {}).get("seed")
        rows += [r for r in _rows(model, tasks, f"{name} ({limit} docs, seed {seed})") if r["task"] not in done]
    return rows


def chance_tasks(records: list[dict[str, Any]], chance_dir: Path | None = CHANCE_DIR) -> pd.DataFrame:
    """Per model and log-likelihood task, the dense (untuned, unpruned) model's accuracy against the task's chance
    rate; ``decided on`` says from which evaluation.

    The set is decided once per model: from the model's recorded dense evaluation on enough documents to be stable
    (``recorded_chance``: ``results/chance/<model>--*.json``) when there is one, else from the suite's own dense run
    (with several dense seeds the first; the untuned model does not depend on the seed).

    Rule: a task sits at chance when a one-sided exact binomial test cannot reject ``acc <= chance`` at
    ``CHANCE_ALPHA`` (5 %): ``P(X >= k | n, chance) >= 0.05`` (``stats.at_chance``).
    """
    rows, seen = [], set()
    for r in records:
        model = r["spec"]["model"]
        if r["status"] != "success" or r["spec"]["pipeline"] or model in seen:
            continue
        seen.add(model)
        got = recorded_chance(model, chance_dir)
        if got:
            rows += got
            continue
        tasks = (r.get("metrics") or {}).get("tasks") or {}
        n = {t.get("n") for t in tasks.values()}
        rows += _rows(model, tasks, f"the suite's dense run ({'/'.join(map(str, sorted(n, key=str)))} docs)")
    return pd.DataFrame(rows)
