"""Zero-shot evaluation through lm-eval, from the local data directory, under two protocols.

- ``lm-eval-loglik-0shot`` (task names ``boolq piqa hellaswag winogrande arc_easy arc_challenge openbookqa``): the
  stock lm-eval tasks. At run time a task YAML is written per task into a temporary directory; it ``include:``s the
  stock YAML shipped inside the installed lm-eval package and overrides only the task name, ``dataset_path: json``,
  ``dataset_kwargs.data_files`` (the sha256-checked local file), the unused splits and the metric list (``acc`` and
  ``acc_norm`` for every task). Prompts, choices, targets and preprocessing (hellaswag's ``process_docs``,
  winogrande's partial scoring) therefore come from lm-eval itself; ``tests/bench/harness/test_evaluation.py`` proves
  it.
- ``paper-first-capital-gen`` (task names ``paper_<task>``): PAT's own letter protocol (spec §10) as lm-eval
  ``generate_until`` tasks: lettered question in the Alpaca template, greedy decoding, 5 new tokens, scored by the
  first capital letter that is a valid choice (a regex filter). See ``bench/tasks/paper_letter.py``. Its numbers
  are not comparable with log-likelihood numbers.

The model is passed in memory (``HFLM(pretrained=model, tokenizer=tokenizer)``) and run by ``simple_evaluate``.
Data: every task reads its sha256-checked file from the data directory (``data_dir``, else ``$PAT_DATA_DIR``).
Only when neither is set and the hub is online (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` unset) do the tasks
fall back, with a warning, to the stock tasks' Hugging Face hub datasets (recorded as ``hub:<dataset>``).

``limit`` takes a seeded random subset of doc ids (``random.Random(seed).sample``, then sorted) that is recorded
in the result; ``None`` evaluates every document. Every task also keeps its per-document outcomes (``items``, see
``item_outcomes``), so two runs can be compared on the same documents afterwards (``bench.harness.stats``).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path

import yaml

from bench.harness.datadir import dataset_path, dataset_sha256
from bench.harness.precision import check_precision, eval_precision
from bench.harness.results import package_versions

log = logging.getLogger(__name__)

LOGLIK_PROTOCOL = "lm-eval-loglik-0shot"
LETTER_PROTOCOL = "paper-first-capital-gen"
STD_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
PAPER_TASKS = tuple(f"paper_{t}" for t in STD_TASKS)
VALID_TASKS = STD_TASKS + PAPER_TASKS

# stock task YAML inside lm_eval/tasks, and the split our local file stands for
STOCK_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
SPLIT = {"boolq": "validation", "piqa": "validation", "hellaswag": "validation", "winogrande": "validation",
         "arc_easy": "test", "arc_challenge": "test", "openbookqa": "test"}
# letters a valid answer may take under the letter protocol (ARC keeps its few 5-choice items)
N_LETTERS = {"boolq": 2, "piqa": 2, "winogrande": 2, "hellaswag": 4, "openbookqa": 4, "arc_easy": 5,
             "arc_challenge": 5}
# accuracy of uniform guessing (ARC: most items have 4 choices), for the sanity check "every acc above chance"
CHANCE = {"boolq": 0.5, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "openbookqa": 0.25, "arc_easy": 0.25,
          "arc_challenge": 0.25}
ACC_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]
PAPER_BASE_YAML = Path(__file__).resolve().parent.parent / "tasks" / "paper_letter.yaml"


def protocol_of(task: str) -> str:
    """The protocol name of a task name."""
    return LETTER_PROTOCOL if task.startswith("paper_") else LOGLIK_PROTOCOL


def base_task(task: str) -> str:
    """``paper_piqa`` -> ``piqa``; standard names map to themselves."""
    return task[len("paper_"):] if task.startswith("paper_") else task


def validate_tasks(tasks: list[str] | str) -> list[str]:
    """Check task names (a list or a comma-separated string); raises ``ValueError`` listing the valid names."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(tasks)
    bad = [t for t in tasks if t not in VALID_TASKS]
    if bad or not tasks:
        what = f"unknown task(s) {', '.join(repr(t) for t in bad)}" if bad else "no tasks given"
        raise ValueError(f"tasks: {what}; valid names: {' '.join(VALID_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: duplicate names in {','.join(tasks)}")
    return tasks


def stock_yaml_path(task: str) -> Path:
    """Absolute path of the stock lm-eval YAML of a standard task inside the installed package."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).resolve().parent / STOCK_YAML[task]
    if not path.exists():
        raise FileNotFoundError(f"stock lm-eval task file {path} not found; lm-eval "
                                f"{package_versions(('lm_eval',))['lm_eval']} is not supported")
    return path


def count_docs(path: Path) -> int:
    """Number of JSONL rows (documents) in a local dataset file."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def sample_ids(n_docs: int, limit: int | None, seed: int) -> list[int]:
    """Deterministic seeded subset of ``limit`` doc ids out of ``n_docs`` (sorted); all ids when ``limit`` is None."""
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    return sorted(random.Random(seed).sample(range(n_docs), limit))


def _stock_dataset(name: str) -> tuple[str, str | None]:
    """``(dataset_path, dataset_name)`` of the stock task: its Hugging Face hub dataset."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(stock_yaml_path(name), resolve_func=False)
    return cfg["dataset_path"], cfg.get("dataset_name")


class _Function(str):
    """A ``!function module.name`` scalar of an lm-eval task YAML."""


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_Function, lambda dumper, v: dumper.represent_scalar("!function", str(v)))


def task_yaml_text(task: str, data_file: Path | None) -> str:
    """YAML text of one task over ``data_file`` (standard: includes the stock YAML; paper: the letter base).

    ``data_file=None`` keeps the stock task's hub dataset (the online fallback).
    """
    name = base_task(task)
    split = SPLIT[name]
    loglik = protocol_of(task) == LOGLIK_PROTOCOL
    doc: dict = {"include": str(stock_yaml_path(name)) if loglik else str(PAPER_BASE_YAML), "task": task,
                 "training_split": None, "fewshot_split": None,
                 "validation_split": split if split == "validation" else None,
                 "test_split": split if split == "test" else None}
    if data_file is not None:
        doc.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {split: str(data_file)}})
    elif not loglik:
        path, ds_name = _stock_dataset(name)
        doc.update(dataset_path=str(path), dataset_name=str(ds_name) if ds_name else None)
    if loglik:
        doc.update(metric_list=ACC_METRICS, metadata={"version": 1.0, "protocol": LOGLIK_PROTOCOL})
    else:
        letters = "ABCDEFGH"[:N_LETTERS[name]]
        doc["process_docs"] = _Function(f"bench.tasks.paper_letter.process_{name}")
        doc["filter_list"] = [{"name": "first_capital", "filter": [
            {"function": "regex", "regex_pattern": f"[{letters}]", "group_select": 0, "fallback": "[invalid]"},
            {"function": "take_first"}]}]
    return yaml.dump(doc, Dumper=_TaskDumper, sort_keys=False)


def resolve_task_files(tasks: list[str], data_dir=None) -> dict[str, Path | None]:
    """sha256-checked local file of each task (raises ``DataError`` naming the dataset, path and fix).

    Only when no data directory is configured at all (no argument, no ``$PAT_DATA_DIR``) and the hub is online
    (neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE`` set) each task maps to None: the stock hub dataset.
    """
    from pat.offline import online  # lazy, as every pat import here: importing pat imports torch

    if data_dir is None and not os.environ.get("PAT_DATA_DIR") and online():
        log.warning("no data directory (--data-dir / PAT_DATA_DIR): falling back to the stock tasks' hub datasets")
        return {t: None for t in tasks}
    return {t: dataset_path(base_task(t), data_dir) for t in tasks}


def write_task_dir(tasks: list[str], data_dir=None, dest: str | os.PathLike | None = None,
                   files: dict[str, Path | None] | None = None) -> Path:
    """Write one YAML per task into ``dest`` (a new temporary directory if None); returns the directory."""
    files = resolve_task_files(tasks, data_dir) if files is None else files
    out = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="pat-bench-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (out / f"{t}.yaml").write_text(task_yaml_text(t, files[t]))
    return out


def task_manager(task_dir: Path):
    """An lm-eval ``TaskManager`` that sees only our generated tasks (no scan of the 10k stock YAMLs)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def load_tasks(tasks: list[str], data_dir=None, dest=None, files: dict | None = None) -> dict:
    """Build lm-eval ``Task`` objects for our task names: ``{name: Task}`` (datasets loaded)."""
    tm = task_manager(write_task_dir(tasks, data_dir, dest, files))
    return tm.load(tasks)["tasks"]


def _metrics(task: str, res: dict, n: int) -> dict:
    """Per-task metrics from lm-eval's result entry: acc, acc_norm (loglik only), stderr and n."""
    if protocol_of(task) == LETTER_PROTOCOL:
        acc, se = res.get("exact_match,first_capital"), res.get("exact_match_stderr,first_capital")
        return {"acc": acc, "acc_stderr": se, "acc_norm": None, "acc_norm_stderr": None, "n": n}
    return {"acc": res.get("acc,none"), "acc_stderr": res.get("acc_stderr,none"),
            "acc_norm": res.get("acc_norm,none"), "acc_norm_stderr": res.get("acc_norm_stderr,none"), "n": n}


def _num(x):
    return x if isinstance(x, (int, float)) else None


def means(per_task: dict) -> dict:
    """Plain mean of acc and acc_norm over tasks, per protocol: ``{protocol: {"acc", "acc_norm", "n_tasks"}}``."""
    out: dict[str, dict] = {}
    for proto in (LOGLIK_PROTOCOL, LETTER_PROTOCOL):
        rows = [m for t, m in per_task.items() if protocol_of(t) == proto]
        if not rows:
            continue
        accs = [m["acc"] for m in rows if _num(m["acc"]) is not None]
        norms = [m["acc_norm"] for m in rows if _num(m["acc_norm"]) is not None]
        out[proto] = {"acc": sum(accs) / len(accs) if accs else None,
                      "acc_norm": sum(norms) / len(norms) if norms else None, "n_tasks": len(rows)}
    return out


def bits(values) -> str:
    """``[1, 0, 1.0]`` -> ``"101"``: per-document correctness, one character a document."""
    return "".join("1" if v else "0" for v in values)


def item_outcomes(task: str, samples: list[dict]) -> dict:
    """Per-document outcomes of one task from lm-eval's logged samples, in ``doc_ids`` order (the dataset's ids).

    Log-likelihood tasks: ``{"doc_ids": [int], "acc": "0110..", "acc_norm": "..", "choice": "1030..", "n_choices":
    "2244.."}``: one character per document, ``choice`` the index of the highest log-likelihood (every task here has
    at most 5 choices). Letter tasks: ``acc`` and ``choice``, the first valid capital or ``-`` when invalid.
    """
    samples = sorted(samples, key=lambda s: int(s["doc_id"]))
    out: dict = {"doc_ids": [int(s["doc_id"]) for s in samples]}
    if protocol_of(task) == LETTER_PROTOCOL:
        out["acc"] = bits(s["exact_match"] for s in samples)
        out["choice"] = "".join("-" if s["filtered_resps"][0] == "[invalid]" else s["filtered_resps"][0]
                                for s in samples)
        return out
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    out["acc"] = bits(s["acc"] for s in samples)
    out["acc_norm"] = bits(s["acc_norm"] for s in samples)
    if max(len(ll) for ll in lls) > 9:
        raise ValueError(f"{task}: a document has more than 9 choices; items store one digit per document")
    out["choice"] = "".join(str(max(range(len(ll)), key=ll.__getitem__)) for ll in lls)
    out["n_choices"] = "".join(str(len(ll)) for ll in lls)
    return out


def evaluate_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, seed: int = 1234,
                   batch_size: int = 8, data_dir=None, precision: str = "fp32") -> dict:
    """Evaluate an in-memory causal LM on our zero-shot tasks.

    Args:
        model: a ``transformers`` causal LM (any supported architecture, dense or pruned).
        tokenizer: its tokenizer.
        tasks: names from ``VALID_TASKS`` (standard names: log-likelihood protocol; ``paper_*``: letter protocol).
        limit: documents per task (a seeded random subset); None for all.
        seed: seed of the subset.
        batch_size: lm-eval batch size (requests are sorted by length, so padding stays small).
        data_dir: data directory (default ``$PAT_DATA_DIR``).
        precision: ``fp32`` (stock lm-eval, exact) or ``bf16`` (autocast forwards, fp32 logits;
            ``bench.harness.precision``).
    Returns:
        ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "protocol", "doc_ids",
        "sha256", "items", ...}}, "mean": {...}, "means": {protocol: {...}}, "protocols": [...], "data_sha256": {...},
        "limit", "seed", "batch_size", "seconds"}``. ``mean`` is the mean of the single protocol present, or of
        the log-likelihood tasks when both are present (never a mix of the two).
    """
    tasks = validate_tasks(tasks)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a positive integer or None, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    check_precision(precision)
    files = resolve_task_files(tasks, data_dir)
    shas = {base_task(t): dataset_sha256(base_task(t), data_dir) if files[t] else None for t in tasks}
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory(prefix="pat-bench-tasks-") as tmp:
        tm = task_manager(write_task_dir(tasks, data_dir, tmp, files))
        task_objs = tm.load(tasks)["tasks"]
        n_docs = {t: len(task_objs[t].eval_docs) for t in tasks}
        doc_ids = {t: sample_ids(n_docs[t], limit, seed) for t in tasks}
        # HFLM wraps every forward in its own autocast context, disabled unless mixed_precision_dtype is given (it
        # would switch an outer autocast off): bf16 passes it; fp32 keeps HFLM's stock arguments
        amp = {"mixed_precision_dtype": torch.bfloat16, "softmax_dtype": torch.float32} if precision == "bf16" else {}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **amp)
        t0 = time.perf_counter()
        with eval_precision(model, precision):
            res = lm_eval.simple_evaluate(
                # pass our TaskManager: without one lm-eval indexes all ~14k stock YAMLs (9 s of every call)
                model=lm, tasks=[task_objs[t] for t in tasks], num_fewshot=0, task_manager=tm, samples=doc_ids,
                log_samples=True,
                bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        seconds = time.perf_counter() - t0
    per_task = {}
    for t in tasks:
        samples = res["samples"][t]
        n = len(samples)
        m = _metrics(t, res["results"][t], n)
        source = str(files[t]) if files[t] else f"hub:{_stock_dataset(base_task(t))[0]}"
        m.update(protocol=protocol_of(t), doc_ids=sorted(int(s["doc_id"]) for s in samples),
                 n_docs_total=n_docs[t], sha256=shas[base_task(t)], data_file=source, chance=CHANCE[base_task(t)])
        if m["protocol"] == LETTER_PROTOCOL:
            m["invalid_rate"] = sum(s["filtered_resps"][0] == "[invalid]" for s in samples) / max(n, 1)
        m["items"] = item_outcomes(t, samples)
        per_task[t] = m
    by_proto = means(per_task)
    mean = by_proto.get(LOGLIK_PROTOCOL) or by_proto.get(LETTER_PROTOCOL)
    return {
        "tasks": per_task, "mean": mean, "means": by_proto,
        "protocols": sorted({protocol_of(t) for t in tasks}),
        "data_sha256": shas, "limit": limit, "seed": seed, "batch_size": batch_size, "precision": precision,
        "seconds": round(seconds, 2),
    }


def load_model(name_or_path: str):
    """``(model, tokenizer)`` for a registered name, an HF directory or a pruned checkpoint.

    The model goes to the GPU when one is present (HFLM evaluates an in-memory model where it lies).
    """
    import torch  # lazy: this module stays torch-free for ``bench.run --list``

    from baselines.pruned_io import load_model as load_any

    return load_any(name_or_path, device="cuda" if torch.cuda.is_available() else None)


def check_inputs(tasks, ppl, data_dir=None) -> tuple[list[str], list[str]]:
    """Validate task and perplexity dataset names and their local files before any model work."""
    from bench.harness.perplexity import PPL_DATASETS

    ppl = [p.strip() for p in ppl.split(",") if p.strip()] if isinstance(ppl, str) else list(ppl or [])
    bad = [p for p in ppl if p not in PPL_DATASETS]
    if bad:
        raise ValueError(f"ppl: unknown dataset(s) {', '.join(bad)}; valid names: {' '.join(PPL_DATASETS)}")
    tasks = validate_tasks(tasks) if (tasks or not ppl) else []
    resolve_task_files(tasks, data_dir)
    for p in ppl:
        dataset_path(p, data_dir)
    return tasks, ppl


def evaluate(model_or_name, tasks, limit: int | None = None, *, ppl=None, seq_len: int = 2048,
             stride: int | None = None, max_tokens: int | None = None, out=None, data_dir=None,
             batch_size: int = 8, seed: int = 1234, tokenizer=None, precision: str = "fp32") -> dict:
    """Evaluate a model on zero-shot tasks and perplexity and (optionally) write the full JSON record.

    Args:
        model_or_name: a registered name, an HF directory (e.g. a finalized PAT model), or an in-memory model
            (then pass ``tokenizer``).
        tasks: task names (list or comma-separated); may be empty when ``ppl`` is given.
        limit: documents per task (seeded subset), None for all.
        ppl: perplexity datasets (``wikitext2``, ``ptb``; list or comma-separated), or None.
        seq_len, stride, max_tokens: perplexity windowing, see ``bench.harness.perplexity``.
        out: JSON file to write atomically, or None.
        precision: ``fp32`` or ``bf16`` forwards (``bench.harness.precision``), tasks and perplexity alike.
    Returns:
        ``{"model", "n_params", "tasks", "mean", "means", "protocols", "perplexity", "data_sha256", "versions",
        "config", ...}``.
    """
    import torch  # lazy, as the imports below: this module stays torch-free for ``bench.run --list``

    from bench.harness.perplexity import perplexity
    from pat.arch import count_params
    from pat.io import write_json_atomic

    tasks, ppl = check_inputs(tasks, ppl, data_dir)
    check_precision(precision)
    if isinstance(model_or_name, (str, os.PathLike)):
        name = str(model_or_name)
        model, tokenizer = load_model(name)
    else:
        if tokenizer is None:
            raise ValueError("tokenizer: required when model_or_name is an in-memory model")
        model, name = model_or_name, type(model_or_name).__name__
    t0 = time.perf_counter()
    record: dict = {"model": name, "n_params": count_params(model)}
    if tasks:
        record.update(evaluate_tasks(model, tokenizer, tasks, limit=limit, seed=seed, batch_size=batch_size,
                                     data_dir=data_dir, precision=precision))
    record["perplexity"] = {
        p: perplexity(model, tokenizer, p, seq_len=seq_len, stride=stride, max_tokens=max_tokens, data_dir=data_dir,
                      precision=precision)
        for p in ppl
    }
    sha = dict(record.get("data_sha256", {}))
    sha.update({p: r["sha256"] for p, r in record["perplexity"].items()})
    record["data_sha256"] = sha
    versions = package_versions(("transformers", "lm_eval", "datasets", "pat-bench"))
    record["versions"] = {"torch": torch.__version__, "transformers": versions["transformers"],
                          "lm_eval": versions["lm_eval"], "datasets": versions["datasets"],
                          "pat_bench": versions["pat-bench"]}
    record["config"] = {"tasks": tasks, "limit": limit, "seed": seed, "batch_size": batch_size, "ppl": ppl,
                        "seq_len": seq_len, "stride": stride, "max_tokens": max_tokens,
                        "torch_threads": torch.get_num_threads(), "dtype": str(next(model.parameters()).dtype),
                        "precision": precision}
    record["total_seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        write_json_atomic(out, record, indent=1)
        log.info("wrote %s", out)
    return record
