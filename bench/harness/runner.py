"""The grid loop: for each run of a suite, load the model, run its pipeline through the trainer, evaluate, time
the finalized model and write one result JSON.

It composes the other parts by name and never branches on a stage's type:

* stages: ``bench.harness.registry`` (``name -> "module:Class"``), built with the suite's ``[stages.<name>]`` args;
  the run's prune ratio goes to each stage that takes one (a ``ratio`` / ``prune_ratio`` constructor or config
  field);
* training: ``bench.harness.train.run_pipeline`` under the suite's ``TrainBudget`` (checkpoints in the run's work
  directory, so a killed run resumes mid-training);
* evaluation: ``bench.harness.evaluation.evaluate_tasks`` and ``bench.harness.perplexity.perplexity``;
* throughput: ``bench.harness.throughput.measure`` on the finalized model.

``preflight`` checks everything a suite needs (stage classes and their arguments, models, data) before the first
run. A run that raises is recorded as ``failed`` with its error, and the grid goes on. ``reuse_prefix``: a
tune-then-prune run (``["lora", "llm_pruner"]``) starts from the finalized model of the suite's plain ``["lora"]``
run of the same model, seed and budget when that run has finished, and then applies only the pruning stage (the
same ``prepare``/``finalize`` calls the trainer would make after training; no second identical fine-tuning).
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from baselines.pruned_io import load_model
from bench.harness import registry
from bench.harness import results as R
from bench.harness.budget import TrainBudget
from bench.harness.calibration import calibration_sampler
from bench.harness.datadir import DATASETS, DataError, dataset_path
from bench.harness.evaluation import evaluate_tasks, validate_tasks
from bench.harness.locks import claim, holder
from bench.harness.modelsrc import resolve_models
from bench.harness.perplexity import perplexity
from bench.harness.suites import RunSpec, Suite, resolve_stage
from bench.harness.throughput import measure
from bench.harness.train import run_pipeline, save_model
from pat.arch import count_params, decoder_layers, get_arch, get_module
from pat.io import write_json_atomic
from pat.offline import datasets_offline
from pat.stage import RunContext

log = logging.getLogger(__name__)


class MissingPieceError(RuntimeError):
    """A stage of the suite whose module cannot be imported (e.g. an optional dependency is missing)."""


def work_dir_default() -> Path:
    """Checkpoints and finalized models: ``$PAT_WORK_DIR`` or ``runs/bench`` under the working directory
    (gitignored)."""
    return Path(os.environ.get("PAT_WORK_DIR", Path("runs") / "bench")).expanduser()


@dataclass
class RunnerOptions:
    out_dir: Path
    work_dir: Path = field(default_factory=work_dir_default)
    model_paths: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None
    retry_failed: bool = True
    progress: bool = True
    checkpoint_every: int | None = 10
    device: str | None = None

    def run_dir(self, spec: RunSpec) -> Path:
        """A run's checkpoints and finalized model (``model/``): ``WORK_DIR/<suite>/<run_id>``."""
        return self.work_dir / spec.suite / spec.run_id


# ---------------------------------------------------------------------------------------------- preflight
def ratio_kwarg(cls: type) -> str | None:
    """The constructor keyword through which a stage class takes the prune ratio, or ``None`` (e.g. LoRA)."""
    params = inspect.signature(cls.__init__).parameters
    for k in ("ratio", "prune_ratio"):
        if k in params:
            return k
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: no config dataclass to inspect
        hints = {}
    for t in hints.values():
        for c in typing.get_args(t) or (t,):
            fields = getattr(c, "__dataclass_fields__", {})
            for k in ("ratio", "prune_ratio"):
                if k in fields:
                    return k
    return None


def stage_args(spec: RunSpec, name: str, cls: type) -> dict[str, Any]:
    """Constructor args of pipeline stage ``name`` (a registered stage or a suite's named variant), with the ratio."""
    args = resolve_stage(name, spec.stage_args)[1]
    key = ratio_kwarg(cls)
    if key and spec.ratio > 0:
        args[key] = spec.ratio
    return args


def preflight(suite: Suite, runs: list[RunSpec], opts: RunnerOptions) -> dict[str, str]:
    """Check every stage, model and dataset the runs need; returns ``{model name: local dir}``.

    Raises:
        MissingPieceError, MissingModelsError, DataError, ValueError: before any run starts.
    """
    if any(r.trains for r in runs):
        for r in (r for r in runs if r.trains):
            TrainBudget.from_dict(r.budget)
            for s in r.pipeline:
                base = resolve_stage(s, r.stage_args)[0]
                try:
                    cls = registry.stage_class(base)
                except ImportError as e:
                    raise MissingPieceError(f"bench runner: stage {base!r} cannot be imported ({e}); "
                                            "nothing was run") from e
                try:  # constructing a stage validates its arguments (unknown options, bad ratios) before any work
                    registry.make_stage(base, **stage_args(r, s, cls))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"suite '{suite.name}', run {r.run_id}: stage {s!r} rejects its arguments "
                                     f"{stage_args(r, s, cls)}: {e}") from e
    if suite.eval.get("tasks"):
        validate_tasks(list(suite.eval["tasks"]))
    models = resolve_models(suite.models, sorted({r.model for r in runs}), opts.model_paths, suite.name,
                            suite.runs_here)
    td = suite.train_data
    if (any(r.trains for r in runs) and td not in DATASETS and not Path(td).expanduser().exists()
            and datasets_offline()):
        raise DataError(f"suite '{suite.name}': train_data {td!r} is neither a dataset of the data directory "
                        f"({', '.join(sorted(DATASETS))}) nor a local file, and the hub is offline "
                        f"(HF_DATASETS_OFFLINE=1); "
                        "fix: --train-data FILE.jsonl (LaMini/Alpaca-style rows), or go online")

    needed = set(suite.perplexity.get("datasets", []))
    needed |= {t.removeprefix("paper_") for t in suite.eval.get("tasks", [])}
    if any(r.trains for r in runs) and suite.train_data in DATASETS:
        needed.add(suite.train_data)
    if any(r.trains for r in runs):
        needed.add("c4")  # the trainer's calibration text (used by one-shot pruners)
    for d in sorted(needed & set(DATASETS)):
        dataset_path(d, opts.data_dir)
    return models


# ---------------------------------------------------------------------------------------------- one run
def kept_widths(model) -> dict[str, Any]:
    """Hidden size and per-layer kept widths (query/key/value outputs, MLP intermediate) of a finalized model."""
    arch = get_arch(model)
    layers = []
    for layer in decoder_layers(model, arch):
        q, k, v = (get_module(layer, p).out_features for p in arch.attn_in)
        layers.append({"q": q, "k": k, "v": v, "mlp": get_module(layer, arch.mlp_in[0]).out_features})
    uniform = all(x == layers[0] for x in layers)
    return {"hidden_size": int(model.config.hidden_size), "uniform": uniform,
            "layers": layers[:1] if uniform else layers, "n_layers": len(layers)}


def _prefix_run(spec: RunSpec, all_runs: list[RunSpec]) -> RunSpec | None:
    """The finished-able run whose whole pipeline is a strict prefix of ``spec``'s (same model, seed, budget, args)."""
    for r in all_runs:
        n = len(r.pipeline)
        if (0 < n < len(spec.pipeline) and spec.pipeline[:n] == r.pipeline and r.model == spec.model
                and r.seed == spec.seed and r.budget == spec.budget and r.ratio == 0.0
                and all(r.stage_args.get(s) == spec.stage_args.get(s) for s in r.pipeline)):
            return r
    return None


def _apply_suffix(model, tokenizer, stages, names: list[str], offset: int, spec: RunSpec, opts: RunnerOptions):
    """Apply the remaining (training-free) stages of a pipeline to a reused finalized prefix model."""
    ctx = RunContext(tokenizer=tokenizer, total_steps=0, seed=spec.seed, out_dir=opts.run_dir(spec),
                     data_dir=Path(opts.data_dir) if opts.data_dir else None,
                     calibration=calibration_sampler(tokenizer, spec.seed, opts.data_dir), extra={"pipeline": names})
    for phase in ("prepare", "finalize"):
        for j, st in enumerate(stages):
            ctx.extra.update(stage_index=offset + j)
            model = getattr(st, phase)(model, ctx)
    return model, {f"{offset + j}-{n}": st.report() for j, (n, st) in enumerate(zip(names[offset:], stages))}


def _make(spec: RunSpec, name: str):
    """Build pipeline stage ``name`` of ``spec`` (a named variant builds its registered stage with its own args)."""
    base = resolve_stage(name, spec.stage_args)[0]
    return registry.make_stage(base, **stage_args(spec, name, registry.stage_class(base)))


def _mask_probes(suite: Suite, spec: RunSpec, tok, opts: RunnerOptions) -> list:
    """``[suite] mask_probe = true``: PAT runs probe their mask at log-spaced steps before the freeze
    (``bench.harness.mask_probe``) on the first 16 windows of the suite's perplexity text (WikiText-2 test by
    default: measured on, never selected with)."""
    if not suite.raw.get("suite", {}).get("mask_probe", False):
        return []
    if not any(resolve_stage(n, spec.stage_args)[0] == "pat" for n in spec.pipeline):
        return []
    from bench.harness.mask_probe import MaskProbe
    from bench.harness.perplexity import heldout_windows

    pp = suite.perplexity
    ids = heldout_windows(tok, (pp.get("datasets") or ["wikitext2"])[0], pp.get("seq_len", 128), 16, opts.data_dir)
    return [MaskProbe(ids)]


def _train(spec: RunSpec, model, tok, opts: RunnerOptions, all_runs: list[RunSpec], reuse: bool,
           probes: list | None = None):
    """Run the pipeline (or its suffix after a reused prefix); returns ``(final model, train record)``."""
    names = list(spec.pipeline)
    prefix = _prefix_run(spec, all_runs) if reuse else None
    prefix_dir = opts.run_dir(prefix) / "model" if prefix else None
    if prefix and (prefix_dir / "config.json").exists() and R.is_finished(opts.out_dir, prefix.run_id):
        model, tok = load_model(str(prefix_dir), device=opts.device)
        offset = len(prefix.pipeline)
        stages = [_make(spec, n) for n in names[offset:]]
        model, reports = _apply_suffix(model, tok, stages, names, offset, spec, opts)
        prev = R.read_result(R.result_path(opts.out_dir, prefix.run_id)) or {}
        rec = {"reused_prefix": prefix.run_id, "prefix_train": prev.get("train"), "stages": reports}
        if _rank() == 0:  # the finalized model, where the trainer would have put it (loadable, retimable)
            out = opts.run_dir(spec) / "model"
            rec["model_format"], rec["model_dir"] = save_model(model, tok, out), str(out)
        return model, rec
    stages = [_make(spec, n) for n in names]
    rec = run_pipeline(model, stages, TrainBudget.from_dict(spec.budget), spec.train_data,
                       opts.run_dir(spec), data_dir=opts.data_dir,
                       checkpoint_every=opts.checkpoint_every, tokenizer=tok, progress=opts.progress,
                       probes=probes or (),
                       prompt_format=spec.prompt_format)
    final = rec.pop("_model")
    if rec.get("status") != "success" or (final is None and _rank() == 0):  # sharded: only rank 0 finalizes
        raise RuntimeError(f"training did not complete: status {rec.get('status')!r}")
    if final is not None and opts.device:  # a sharded run finalizes on rank 0's CPU
        final = final.to(opts.device)
    for k in ("losses", "extra_losses", "curves"):  # keep result files small: at most ~200 points
        if isinstance(rec.get(k), list) and len(rec[k]) > 200:
            step = -(-len(rec[k]) // 200)
            rec[k] = rec[k][::step]
    return final, rec


def _evaluate(model, tok, suite: Suite, spec: RunSpec, opts: RunnerOptions) -> dict[str, Any]:
    metrics: dict[str, Any] = {"main_metric": suite.main_metric}
    ev = suite.eval
    if ev.get("tasks"):
        out = evaluate_tasks(model, tok, list(ev["tasks"]), limit=ev.get("limit") or None, seed=ev.get("seed", 1234),
                             batch_size=ev.get("batch_size", 8), data_dir=opts.data_dir,
                             precision=ev.get("precision", "fp32"))
        metrics.update(tasks=out["tasks"], means=out.get("means", {}), mean=out.get("mean"),
                       eval_seconds=out.get("seconds"), eval_data_sha256=out.get("data_sha256", {}))
    pp = suite.perplexity
    if pp.get("datasets"):
        metrics["perplexity"] = {
            d: perplexity(model, tok, d, seq_len=pp.get("seq_len", 128), stride=pp.get("stride") or None,
                          max_tokens=pp.get("max_tokens") or None, data_dir=opts.data_dir,
                          precision=ev.get("precision", "fp32"))
            for d in pp["datasets"]}
    return metrics


def _trainable(train_rec: dict[str, Any] | None) -> int | None:
    if not train_rec:
        return 0
    return train_rec.get("trainable_params") or (train_rec.get("prefix_train") or {}).get("trainable_params")


def run_one(spec: RunSpec, suite: Suite, model_dir: str, opts: RunnerOptions, all_runs: list[RunSpec],
            prov: dict[str, Any]) -> dict[str, Any] | None:
    """Execute one run and return its ``success`` record (``None`` on ranks > 0); exceptions propagate."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model, tok = load_model(model_dir, device=opts.device)
    dense_params = count_params(model)
    train_rec = None
    if spec.trains:
        model, train_rec = _train(spec, model, tok, opts, all_runs, suite.reuse_prefix,
                                  _mask_probes(suite, spec, tok, opts))
    if _rank() != 0:  # under torchrun every rank trains; only rank 0 evaluates, times and writes
        return None
    model.eval()
    metrics = _evaluate(model, tok, suite, spec, opts)
    params = {"dense_total": dense_params, "total": count_params(model),
              "achieved_ratio": 1.0 - count_params(model) / dense_params, "target_ratio": spec.ratio,
              "trainable": _trainable(train_rec),
              "widths": kept_widths(model)}
    tp = None
    if suite.throughput.get("enabled", True):
        tp = measure(model, **_throughput_args(suite))
    data = dict(prov.get("data_sha256", {}))
    data.update(metrics.get("eval_data_sha256", {}))
    for d, p in metrics.get("perplexity", {}).items():
        data[d] = p.get("sha256")
    return R.make_record(spec.to_dict(), "success", {**prov, "data_sha256": data}, protocol=suite_protocol(suite),
                         model_source=model_dir,
                         metrics=metrics, params=params, train=train_rec, throughput=tp,
                         seconds=round(time.perf_counter() - t0 + (train_rec or {}).get("resumed_wall_seconds", 0.0),
                                       2))


# ---------------------------------------------------------------------------------------------- the grid
def _throughput_args(suite: Suite) -> dict[str, Any]:
    """``bench.harness.throughput.measure`` keyword arguments from the suite's ``[throughput]`` table."""
    return {k: v for k, v in suite.throughput.items() if k != "enabled"}


def suite_protocol(suite: Suite) -> dict[str, Any]:
    """The suite's measurement settings stored in each record; a finished run whose settings differ is rerun."""
    return {"eval": dict(suite.eval), "perplexity": dict(suite.perplexity), "throughput": dict(suite.throughput)}


def run_suite(suite: Suite, runs: list[RunSpec], opts: RunnerOptions,
              all_runs: list[RunSpec] | None = None) -> dict[str, int]:
    """Run ``runs`` (a selection of the suite's runs), skipping finished ones; one JSON per run in ``opts.out_dir``.

    Each run is claimed with a lock in its run directory (``bench.harness.locks``, single-process runs) so two
    shards or jobs never train the same cell at once; a run held by a live process is skipped and counted as
    ``locked``.

    Returns:
        counts: ``{"done", "skipped", "failed", "total"}``, plus ``"locked"`` when a run was held elsewhere.
    """
    all_runs = all_runs if all_runs is not None else runs
    model_dirs = preflight(suite, runs, opts)
    datasets = [suite.train_data] if any(r.trains for r in runs) else []
    prov = R.provenance([d for d in datasets], opts.data_dir)
    counts = {"done": 0, "skipped": 0, "failed": 0, "total": len(runs)}
    bar = tqdm(runs, desc=f"suite {suite.name}", unit="run", disable=not opts.progress)
    protocol = suite_protocol(suite)
    for spec in bar:
        path = R.result_path(opts.out_dir, spec.run_id)
        old = R.read_result(path)
        if old is not None and (old.get("spec") != spec.to_dict() or old.get("protocol", protocol) != protocol):
            log.warning("run %s: the suite (run spec or eval/perplexity/throughput settings) changed since %s was "
                        "written; running it again", spec.run_id, path)
        elif old is not None and (old.get("status") == "success"
                                  or (old.get("status") == "failed" and not opts.retry_failed)):
            counts["skipped"] += 1
            continue
        lock = claim(opts.run_dir(spec)) if _world() == 1 else None
        if _world() == 1 and (lock is None or _finished_meanwhile(path, spec, protocol)):
            if lock is None:
                log.info("run %s: held by %s (another shard or job); skipping it", spec.run_id,
                         holder(opts.run_dir(spec)))
            key = "locked" if lock is None else "skipped"
            counts[key] = counts.get(key, 0) + 1
            if lock is not None:
                lock.release()
            continue
        bar.set_postfix_str(spec.run_id)
        t0 = time.perf_counter()
        try:
            rec = run_one(spec, suite, model_dirs[spec.model], opts, all_runs, prov)
            counts["done"] += 1
            if rec is not None:
                log.info("run %s done in %.0f s: mean acc %s", spec.run_id, rec["seconds"],
                         (rec["metrics"].get("mean") or {}).get("acc"))
        except Exception as e:  # a failed run is recorded and the grid goes on
            log.error("run %s failed: %s: %s", spec.run_id, type(e).__name__, e)
            rec = R.make_record(spec.to_dict(), "failed", prov, protocol=protocol, error={"type": type(e).__name__,
                                                                                          "message": str(e),
                                "traceback": traceback.format_exc()}, seconds=round(time.perf_counter() - t0, 2))
            counts["failed"] += 1
        if rec is not None and _rank() == 0:
            write_json_atomic(path, rec)
        if lock is not None:
            lock.release()
        _free()
    return counts


def _finished_meanwhile(path: Path, spec: RunSpec, protocol: dict[str, Any]) -> bool:
    """Whether another process finished the run between the first check and our claim of its lock."""
    old = R.read_result(path)
    return (old is not None and old.get("status") == "success" and old.get("spec") == spec.to_dict()
            and old.get("protocol", protocol) == protocol)


def retime_suite(suite: Suite, runs: list[RunSpec], opts: RunnerOptions) -> dict[str, int]:
    """Measure the throughput of finished runs again and replace it in their records (nothing else changes).

    For timings taken on a busy host (e.g. ``--jobs 2`` on 2 cores): rerun this on a quiet one. The dense model is
    loaded from its source, a trained run's finalized model from ``WORK_DIR/<suite>/<run_id>/model``; runs whose
    model is not on disk keep their timings and are counted as ``missing``.
    """
    model_dirs = resolve_models(suite.models, sorted({r.model for r in runs}), opts.model_paths, suite.name,
                                suite.runs_here)
    counts = {"retimed": 0, "missing": 0, "failed": 0, "not_finished": 0, "total": len(runs)}
    for spec in runs:
        path = R.result_path(opts.out_dir, spec.run_id)
        rec = R.read_result(path)
        if rec is None or rec.get("status") != "success":
            counts["not_finished"] += 1
            continue
        mdir = Path(model_dirs[spec.model]) if not spec.trains else opts.run_dir(spec) / "model"
        if not (mdir / "config.json").exists():
            log.warning("run %s: no finalized model at %s; its throughput is left as it was", spec.run_id, mdir)
            counts["missing"] += 1
            continue
        torch.manual_seed(spec.seed)
        try:
            model, _ = load_model(str(mdir), device=opts.device)
            tp = measure(model, **_throughput_args(suite))
        except Exception as e:  # one model that cannot be timed must not stop the others; its old timing stays
            log.error("run %s: retiming failed (%s: %s); its throughput is left as it was", spec.run_id,
                      type(e).__name__, e)
            counts["failed"] += 1
            continue
        tp["retimed"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_dir": str(mdir),
                         "replaced_host_load": (rec.get("throughput") or {}).get("host_load")}
        rec["throughput"] = tp
        rec.setdefault("protocol", suite_protocol(suite))["throughput"] = dict(suite.throughput)  # measured as now set
        write_json_atomic(path, rec)
        counts["retimed"] += 1
        log.info("run %s retimed: prefill %s", spec.run_id,
                 {p["batch_size"]: p.get("median_s") for p in tp.get("prefill", [])})
        del model
        _free()
    return counts


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
