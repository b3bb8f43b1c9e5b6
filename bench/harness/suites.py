"""Benchmark suites: declarative TOML files expanded by a pure function into runs.

A suite file (``bench/suites/<name>.toml``) names, once, the training budget(s), the evaluation tasks and limits,
the perplexity and throughput settings, the models and the stage arguments; its ``[[grid]]`` tables list
models x ratios x pipelines x seeds. ``expand(suite)`` turns that into ``RunSpec`` objects with stable run ids
(``smollm2-135m--pat--r0.25--s0``, ``llama2-7b--llm_pruner+lora--r0.20--s42``). A pipeline is a list of stage
names (``["pat"]``, ``["lora"]``, ``["llm_pruner", "lora"]`` = prune then tune, ``["lora", "llm_pruner"]`` = tune
then prune); the empty pipeline ``[]`` is the untouched dense model.

Seeds: a run's seed is its training seed (initialisation, dropout, calibration sample) and shifts the data seed
(``data_seed + seed``: the training subset and its order); seed 0 keeps the budget's ``data_seed`` as written.

This module imports neither torch nor transformers, so ``bench.run --list`` / ``--dry-run`` stay fast.

To add a suite: drop a TOML file in ``bench/suites/``; ``tests/bench/harness/test_suites.py`` loads and validates
every file.
"""

from __future__ import annotations

import fnmatch
import os
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (same API)
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.harness.budget import TrainBudget
from bench.harness.evaluation import VALID_TASKS
from bench.harness.precision import EVAL_PRECISIONS
from bench.harness.registry import STAGES

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"

SUITE_KEYS = {"name", "description", "seeds", "train_data", "prompt_format", "reuse_prefix", "main_metric",
              "runs_here", "mask_probe", "budget_in_id"}
EVAL_KEYS = {"tasks", "limit", "seed", "batch_size", "precision"}  # precision: bench.harness.precision
PPL_KEYS = {"datasets", "seq_len", "stride", "max_tokens"}
THROUGHPUT_KEYS = {"enabled", "batch_sizes", "context", "decode_tokens", "repeats", "warmup", "threads"}
MODEL_KEYS = {"registered", "hub", "path", "env", "random", "size"}
GRID_KEYS = {"models", "ratios", "pipelines", "seeds", "budget", "stage_args"}
# [[claims]]: the suite's pre-registered primary claims (bench.harness.reporting.claims; docs/statistics.md)
CLAIM_KEYS = {"name", "a", "b", "ratio", "b_ratio", "metric", "direction", "steps"}
# steps (optional; budget sweeps, [suite] budget_in_id): compare the two sides' runs whose budget has this many steps
# (a dense side, which trains nothing, has no budget and is taken as it is)
CLAIM_METRICS = ("ppl", "acc_above_chance", "acc")  # ppl: the suite's first [perplexity] dataset
CLAIM_DIRECTIONS = ("a_better", "b_better")
# keys of earlier suite files, with their new names
RENAMED = {"methods": "[methods.X] was renamed to [stages.X]", "method_args": "method_args was renamed to stage_args"}


DEFAULT_DATA_SEED = 42  # bench.harness.budget.TrainBudget.data_seed (this module stays torch-free)
# pat.prompts.PROMPT_FORMATS (importing pat imports torch). A suite without [suite].prompt_format trains in the
# paper's Alpaca format, the format of every result recorded before the field existed.
PROMPT_FORMATS = ("auto", "chat", "alpaca")
DEFAULT_PROMPT_FORMAT = "alpaca"
VARIANT_KEYS = ("stage", "display")  # in [stages.NAME]: NAME is a variant of stage `stage`, shown as `display`


def resolve_stage(name: str, stage_args: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """``(registered stage, constructor args)`` of a pipeline name.

    A suite may define a named variant of a stage: ``[stages.pat_taylor]`` with ``stage = "pat"`` runs the ``pat``
    stage with that table's other keys (``display`` only labels it in reports), under its own name, so the variant
    gets its own run ids and table rows beside the plain stage.
    """
    args = dict((stage_args or {}).get(name, {}))
    base = args.get("stage", name)
    for k in VARIANT_KEYS:
        args.pop(k, None)
    return base, args


class SuiteError(ValueError):
    """A suite file that does not validate; the message names the file, the field and the expected form."""


@dataclass(frozen=True)
class ModelSource:
    """Where a suite's model comes from; resolved to a local directory by the runner, never here.

    Attributes:
        name: the suite-local model name (used in run ids).
        registered: a name in ``pat.models.REGISTRY`` (e.g. ``smollm2-135m``).
        hub: a hub id, used only when online.
        path: a local Hugging Face directory (``~`` and ``$VARS`` expanded).
        env: an environment variable that, when set, holds a local directory and overrides everything else.
        random: a config dict for a tiny random model built on first use (smoke tests).
        size: a human label for error messages ("7B").
    """

    name: str
    registered: str | None = None
    hub: str | None = None
    path: str | None = None
    env: str | None = None
    random: dict[str, Any] | None = None
    size: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite: model x ratio x pipeline x seed, with everything it needs resolved."""

    suite: str
    model: str
    ratio: float
    pipeline: tuple[str, ...]
    seed: int
    budget_name: str
    budget: dict[str, Any]
    stage_args: dict[str, dict[str, Any]]
    train_data: str
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    budget_in_id: bool = False  # [suite] budget_in_id: the same pipeline at several budgets (a budget sweep)

    @property
    def pipeline_id(self) -> str:
        return "+".join(self.pipeline) if self.pipeline else "dense"

    @property
    def run_id(self) -> str:
        """``model--pipeline--rRATIO--sSEED``; in a suite with ``budget_in_id`` a trained run also names its budget
        (``model--pipeline--rRATIO--BUDGET--sSEED``), so one pipeline can run at several budgets."""
        if self.budget_in_id and self.pipeline:
            return f"{self.model}--{self.pipeline_id}--r{self.ratio:.2f}--{self.budget_name}--s{self.seed}"
        return f"{self.model}--{self.pipeline_id}--r{self.ratio:.2f}--s{self.seed}"

    @property
    def trains(self) -> bool:
        return bool(self.pipeline)

    def to_dict(self) -> dict[str, Any]:
        """The run's ``spec`` in its record. The stage arguments keep the record key ``method_args``: finished
        records (and the CI reference under tests/fixtures) are compared by spec, so the key is part of the format.
        For the same reason ``prompt_format`` is written only when it is not ``"alpaca"``: a spec without it means the
        Alpaca format, which every record written before the field existed used (the run's train record states the
        format in every case)."""
        d = {
            "run_id": self.run_id, "suite": self.suite, "model": self.model, "ratio": self.ratio,
            "pipeline": list(self.pipeline), "seed": self.seed, "budget_name": self.budget_name,
            "budget": dict(self.budget), "method_args": {k: dict(v) for k, v in self.stage_args.items()},
            "train_data": self.train_data,
        }
        if self.prompt_format != DEFAULT_PROMPT_FORMAT:
            d["prompt_format"] = self.prompt_format
        return d


@dataclass(frozen=True)
class Suite:
    """A parsed suite file. ``grid`` keeps the raw grid tables; ``expand`` produces the runs."""

    name: str
    path: Path | None
    description: str
    train_data: str
    seeds: tuple[int, ...]
    eval: dict[str, Any]
    perplexity: dict[str, Any]
    throughput: dict[str, Any]
    budgets: dict[str, dict[str, Any]]
    models: dict[str, ModelSource]
    stage_args: dict[str, dict[str, Any]]
    grid: tuple[dict[str, Any], ...]
    main_metric: str = "acc"
    reuse_prefix: bool = False
    runs_here: str = "cpu"
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    claims: tuple[dict[str, Any], ...] = ()
    budget_in_id: bool = False


def _where(path: Path | None, name: str) -> str:
    return f"suite '{name}'" + (f" ({path})" if path else "")


def _check_renamed(table: dict, what: str, where: str) -> None:
    for old, why in RENAMED.items():
        if old in table:
            raise SuiteError(f"{where}: {what}: {why}")


def _check_keys(table: dict, allowed: set[str], what: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown} in {what}; allowed: {sorted(allowed)}")


def parse_suite(data: dict[str, Any], path: Path | None = None) -> Suite:
    """Build a ``Suite`` from a TOML mapping, checking the structure (not the names; see ``validate``)."""
    head = data.get("suite")
    if not isinstance(head, dict) or "name" not in head:
        raise SuiteError(f"suite file {path}: missing [suite] table with a 'name' key")
    name = head["name"]
    where = _where(path, name)
    _check_renamed(data, "the top level", where)
    _check_keys(data, {"suite", "eval", "perplexity", "throughput", "budget", "models", "stages", "grid", "claims"},
                "the top level", where)
    _check_keys(head, SUITE_KEYS, "[suite]", where)
    for key in ("mask_probe", "budget_in_id"):
        if not isinstance(head.get(key, False), bool):
            raise SuiteError(f"{where}: [suite].{key} = {head[key]!r}: expected true or false")
    for key, allowed in (("eval", EVAL_KEYS), ("perplexity", PPL_KEYS), ("throughput", THROUGHPUT_KEYS)):
        _check_keys(data.get(key, {}), allowed, f"[{key}]", where)
    prec = data.get("eval", {}).get("precision", "fp32")
    if prec not in EVAL_PRECISIONS:
        raise SuiteError(f"{where}: eval.precision = {prec!r} is invalid; expected one of {EVAL_PRECISIONS}")
    models = {}
    for mname, spec in data.get("models", {}).items():
        if isinstance(spec, str):
            spec = {"registered": spec}
        if not isinstance(spec, dict):
            raise SuiteError(f"{where}: models.{mname} must be a table or a registered name, got {spec!r}")
        _check_keys(spec, MODEL_KEYS, f"[models.{mname}]", where)
        if not any(spec.get(k) for k in ("registered", "hub", "path", "env", "random")):
            raise SuiteError(f"{where}: models.{mname} needs one of registered/hub/path/env/random")
        models[mname] = ModelSource(name=mname, **spec)
    grid = data.get("grid", [])
    if not isinstance(grid, list) or not grid:
        raise SuiteError(f"{where}: needs at least one [[grid]] table")
    for i, g in enumerate(grid):
        _check_renamed(g, f"grid[{i}]", where)
        _check_keys(g, GRID_KEYS, f"grid[{i}]", where)
        for req in ("models", "ratios", "pipelines"):
            if req not in g:
                raise SuiteError(f"{where}: grid[{i}].{req} is missing")
    prompt_format = head.get("prompt_format", DEFAULT_PROMPT_FORMAT)
    if prompt_format not in PROMPT_FORMATS:
        raise SuiteError(f"{where}: [suite].prompt_format = {prompt_format!r}: expected one of "
                         f"{', '.join(repr(f) for f in PROMPT_FORMATS)} (alpaca: the paper's template; chat: the "
                         "tokenizer's chat template; auto: chat when the tokenizer has one)")
    return Suite(
        name=name, path=path, description=head.get("description", ""), train_data=head.get("train_data", "alpaca"),
        seeds=tuple(head.get("seeds", [0])), eval=dict(data.get("eval", {})),
        perplexity=dict(data.get("perplexity", {})), throughput=dict(data.get("throughput", {})),
        budgets={k: dict(v) for k, v in data.get("budget", {}).items()}, models=models,
        stage_args={k: dict(v) for k, v in data.get("stages", {}).items()}, grid=tuple(grid),
        main_metric=head.get("main_metric", "acc"), reuse_prefix=bool(head.get("reuse_prefix", False)),
        runs_here=head.get("runs_here", "cpu"), prompt_format=prompt_format, raw=data,
        claims=parse_claims(data.get("claims", []), where), budget_in_id=bool(head.get("budget_in_id", False)),
    )


def parse_claims(items: Any, where: str) -> tuple[dict[str, Any], ...]:
    """The ``[[claims]]`` tables: each names a pair (``a``, ``b``: pipelines, as in ``[[grid]]``; ``ratio`` and, for
    ``b`` when it differs, ``b_ratio``), a ``metric`` (one of ``CLAIM_METRICS``) and a ``direction`` (the hypothesis:
    ``a_better`` or ``b_better``); ``name`` is optional. Returns them with ``b_ratio`` and ``name`` filled in."""
    if not isinstance(items, list):
        raise SuiteError(f"{where}: claims must be an array of tables ([[claims]]), got {type(items).__name__}")
    out = []
    for i, c in enumerate(items):
        if not isinstance(c, dict):
            raise SuiteError(f"{where}: claims[{i}] must be a table, got {c!r}")
        _check_keys(c, CLAIM_KEYS, f"claims[{i}]", where)
        for req in ("a", "b", "ratio", "metric", "direction"):
            if req not in c:
                raise SuiteError(f"{where}: claims[{i}].{req} is missing")
        for side in ("a", "b"):
            if not isinstance(c[side], list) or not all(isinstance(x, str) for x in c[side]):
                raise SuiteError(f"{where}: claims[{i}].{side}: expected a pipeline (a list of stage names, [] for "
                                 f"the dense model), got {c[side]!r}")
        for key in ("ratio", "b_ratio"):
            v = c.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise SuiteError(f"{where}: claims[{i}].{key}: {v!r} is not a prune ratio in [0, 1)")
        if c["metric"] not in CLAIM_METRICS:
            raise SuiteError(f"{where}: claims[{i}].metric: {c['metric']!r}; expected one of {list(CLAIM_METRICS)}")
        if c["direction"] not in CLAIM_DIRECTIONS:
            raise SuiteError(f"{where}: claims[{i}].direction: {c['direction']!r}; expected one of "
                             f"{list(CLAIM_DIRECTIONS)}")
        if "steps" in c and (isinstance(c["steps"], bool) or not isinstance(c["steps"], int) or c["steps"] < 1):
            raise SuiteError(f"{where}: claims[{i}].steps: {c['steps']!r}; expected a positive number of training "
                             "steps (a budget's `steps`)")
        if "name" in c and not isinstance(c["name"], str):
            raise SuiteError(f"{where}: claims[{i}].name: expected a string, got {c['name']!r}")
        c = {**c, "ratio": float(c["ratio"]), "b_ratio": float(c.get("b_ratio", c["ratio"]))}
        out.append(c)
    return tuple(out)


def suite_path(name_or_path: str | os.PathLike) -> Path:
    """``bench/suites/<name>.toml`` for a suite name, or the given path if it is a file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    cand = SUITES_DIR / f"{name_or_path}.toml"
    if not cand.exists():
        known = ", ".join(sorted(q.stem for q in SUITES_DIR.glob("*.toml")))
        raise SuiteError(f"--suite {name_or_path!r}: no such suite; known suites: {known} (or a path to a .toml file)")
    return cand


def load_suite(name_or_path: str | os.PathLike, overrides: Iterable[str] = ()) -> Suite:
    """Read and parse a suite by name or path (structure only; call ``validate`` for names).

    ``overrides``: ``KEY=VALUE`` items applied to the TOML mapping before parsing (``apply_overrides``).
    """
    path = suite_path(name_or_path)
    with open(path, "rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise SuiteError(f"suite file {path}: invalid TOML: {e}") from e
    return parse_suite(apply_overrides(data, overrides), path)


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set values of a suite's TOML mapping from ``KEY=VALUE`` items (``bench.run --set``); returns a new mapping.

    ``KEY`` is a dotted path of tables, e.g. ``budget.gpu.steps``, ``eval.limit``, ``methods.slicegpt.target``; a
    ``*`` segment means every table at that level (``budget.*.steps=2``). ``VALUE`` is a TOML value (``2``,
    ``"fp32"``, ``[1, 2]``, ``{ random = { ... } }``); a bare word is a string. Missing tables are created; the
    result is then validated like any suite file.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not sep or not all(parts):
            raise SuiteError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. budget.gpu.steps=2")
        value = _toml_value(raw.strip())
        tables = [out]
        for depth, part in enumerate(parts[:-1]):
            nxt = []
            for t in tables:
                keys = list(t) if part == "*" else [part]
                for k in keys:
                    sub = t.setdefault(k, {})
                    if not isinstance(sub, dict):
                        where = ".".join(parts[:depth] + [k])
                        raise SuiteError(f"--set {item!r}: {where} is a value, not a table")
                    nxt.append(sub)
            tables = nxt
        if not tables:
            raise SuiteError(f"--set {item!r}: no table matches {'.'.join(parts[:-1])}")
        for t in tables:
            t[parts[-1]] = copy.deepcopy(value)
    return out


def _as_list(value: Any, field_name: str, where: str, kind: type) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise SuiteError(f"{where}: {field_name} must be a list of {kind.__name__}, got {value!r}")
    return value


def expand(suite: Suite) -> list[RunSpec]:
    """All runs of a suite, in grid order; pure (no I/O). Duplicate run ids are an error.

    Args:
        suite: a parsed suite.
    Returns:
        ``RunSpec`` list; each grid table contributes models x ratios x pipelines x seeds.
    """
    where = _where(suite.path, suite.name)
    runs: list[RunSpec] = []
    seen: dict[str, int] = {}
    for i, g in enumerate(suite.grid):
        models = _as_list(g["models"], f"grid[{i}].models", where, str)
        ratios = [float(r) for r in _as_list(g["ratios"], f"grid[{i}].ratios", where, (int, float))]
        pipes = g["pipelines"]
        if not isinstance(pipes, list) or not all(
                isinstance(p, list) and all(isinstance(s, str) for s in p) for p in pipes):
            raise SuiteError(f"{where}: grid[{i}].pipelines must be a list of lists of stage names, e.g. [[\"pat\"], "
                             f"[\"llm_pruner\", \"lora\"]]")
        seeds = [int(s) for s in _as_list(g.get("seeds", list(suite.seeds)), f"grid[{i}].seeds", where, int)]
        budget_name = g.get("budget", "default")
        budget = suite.budgets.get(budget_name, {})
        args = {k: dict(v) for k, v in suite.stage_args.items()}
        for stage, over in g.get("stage_args", {}).items():  # per-grid deltas over the suite's [stages.*]
            args[stage] = {**args.get(stage, {}), **over}
        for model in models:
            for ratio in ratios:
                for pipe in pipes:
                    for seed in seeds:
                        used = {s: args[s] for s in pipe if s in args}
                        # the run's seed drives training init/dropout ...
                        resolved = {**budget, "seed": seed} if pipe else {}
                        if pipe and seed:  # ... and the data: seed s draws subset and order with data_seed + s
                            resolved["data_seed"] = int(budget.get("data_seed", DEFAULT_DATA_SEED)) + seed
                        spec = RunSpec(suite.name, model, ratio, tuple(pipe), seed, budget_name, resolved, used,
                                       suite.train_data, suite.prompt_format, suite.budget_in_id)
                        if spec.run_id in seen:
                            raise SuiteError(f"{where}: run {spec.run_id} appears twice (grid[{seen[spec.run_id]}] "
                                             f"and grid[{i}])")
                        seen[spec.run_id] = i
                        runs.append(spec)
    return runs


def known_tasks(tasks_dir: Path = TASKS_DIR) -> set[str]:
    """Task names the evaluation accepts (``bench.harness.evaluation.VALID_TASKS``, torch-free), plus any task or
    group names declared in the lm-eval YAMLs of ``bench/tasks`` (read as text)."""
    names: set[str] = set(VALID_TASKS)
    pat = re.compile(r"^(task|group|tag):\s*['\"]?([A-Za-z0-9_.-]+)['\"]?\s*$")
    for y in sorted(tasks_dir.rglob("*.yaml")):
        for line in y.read_text().splitlines():
            m = pat.match(line)
            if m:
                names.add(m.group(2))
    return names


def known_stages() -> set[str]:
    """Stage names of the registry (``bench.harness.registry.STAGES``)."""
    return set(STAGES)


def validate(suite: Suite, runs: Iterable[RunSpec] | None = None, *, stages: set[str] | None = None,
             tasks: set[str] | None = None) -> list[RunSpec]:
    """Check every name a suite uses before any work: models, stages, tasks, budgets, ratios.

    Args:
        suite: the parsed suite.
        runs: its expanded runs (``expand(suite)`` when omitted).
        stages: known stage names (default: the registry's).
        tasks: known task names (default: the task YAMLs' names).
    Returns:
        The runs, for chaining.
    Raises:
        SuiteError: naming the suite, the field, the bad value and the known values.
    """
    where = _where(suite.path, suite.name)
    runs = list(expand(suite) if runs is None else runs)
    stages = set(known_stages() if stages is None else stages)
    tasks = known_tasks() if tasks is None else tasks
    for s, table in suite.stage_args.items():  # named variants: [stages.X] with stage = "<registered stage>"
        if "stage" in table:
            if not isinstance(table["stage"], str) or table["stage"] not in stages:
                raise SuiteError(f"{where}: [stages.{s}].stage: {table['stage']!r} is not a registered stage; "
                                 f"known stages: {sorted(stages)}")
            if s in stages:
                raise SuiteError(f"{where}: [stages.{s}] has stage = {table['stage']!r} but {s!r} is itself a "
                                 "registered stage; give the variant another name, e.g. pat_taylor")
    stages |= {s for s, t in suite.stage_args.items() if "stage" in t}
    for i, g in enumerate(suite.grid):
        for m in g["models"]:
            if m not in suite.models:
                raise SuiteError(f"{where}: grid[{i}].models: unknown model {m!r}; models defined in [models]: "
                                 f"{sorted(suite.models)}")
        for j, pipe in enumerate(g["pipelines"]):
            for s in pipe:
                if s not in stages:
                    raise SuiteError(f"{where}: grid[{i}].pipelines[{j}]: unknown stage {s!r}; known stages: "
                                     f"{sorted(stages)}")
        b = g.get("budget", "default")
        if any(g["pipelines"]) and b not in suite.budgets:
            raise SuiteError(f"{where}: grid[{i}].budget: unknown budget {b!r}; budgets defined: "
                             f"{sorted(suite.budgets)}")
        for r in g["ratios"]:
            if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise SuiteError(f"{where}: grid[{i}].ratios: {r!r} is not a prune ratio in [0, 1)")
        for s in g.get("stage_args", {}):
            if s not in stages:
                raise SuiteError(f"{where}: grid[{i}].stage_args: unknown stage {s!r}; known stages: {sorted(stages)}")
    _validate_budgets(suite, where)
    for s in suite.stage_args:
        if s not in stages:
            raise SuiteError(f"{where}: [stages.{s}]: unknown stage {s!r}; known stages: {sorted(stages)}")
    for t in suite.eval.get("tasks", []):
        if t not in tasks:
            raise SuiteError(f"{where}: eval.tasks: unknown task {t!r}; known tasks (bench/tasks/*.yaml): "
                             f"{sorted(tasks)}")
    for r in runs:
        if r.ratio > 0 and not any(s != "lora" for s in r.pipeline):
            raise SuiteError(f"{where}: run {r.run_id}: ratio {r.ratio} needs a pruning stage in its pipeline")
    ran = {(r.pipeline, round(r.ratio, 6)) for r in runs}
    ran_steps = {(r.pipeline, round(r.ratio, 6), r.budget.get("steps")) for r in runs}
    for i, c in enumerate(suite.claims):
        for side, ratio in (("a", c["ratio"]), ("b", c["b_ratio"])):
            if (tuple(c[side]), round(ratio, 6)) not in ran:
                raise SuiteError(f"{where}: claims[{i}].{side}: the suite runs no pipeline {c[side]} at ratio "
                                 f"{ratio}; a primary claim must compare runs of its grid")
            if "steps" in c and c[side] and (tuple(c[side]), round(ratio, 6), c["steps"]) not in ran_steps:
                raise SuiteError(f"{where}: claims[{i}].steps: the suite runs {c[side]} at ratio {ratio} with no "
                                 f"budget of {c['steps']} steps")
    return runs


def _validate_budgets(suite: Suite, where: str) -> None:
    for name, table in suite.budgets.items():
        try:
            TrainBudget.from_dict(table)
        except ValueError as e:
            raise SuiteError(f"{where}: [budget.{name}]: {e}") from e


def select(runs: list[RunSpec], *, models: list[str] | None = None, ratios: list[float] | None = None,
           only: str | None = None, shard: tuple[int, int] | None = None) -> list[RunSpec]:
    """Filter runs: by model, by ratio, by a glob on the run id, then every n-th run for shard ``(i, n)``."""
    out = [r for r in runs if (not models or r.model in models)
           and (not ratios or any(abs(r.ratio - x) < 1e-9 for x in ratios))
           and (not only or fnmatch.fnmatch(r.run_id, only) or only in r.run_id)]
    if shard is not None:
        i, n = shard
        out = out[i::n]
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with ``0 <= i < n`` -> ``(i, n)``; a clear error otherwise."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise SuiteError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4 (Slurm: $SLURM_ARRAY_TASK_ID/4)")
    return int(m.group(1)), int(m.group(2))
