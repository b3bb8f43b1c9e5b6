"""Run a benchmark suite: ``pat-bench run --suite NAME [--out DIR] [--models ...] [--ratios ...] [--only PAT]``.

``python -m bench.run`` is the same command. ``--list`` without ``--suite`` lists the suites, one line each;
``--list`` / ``--dry-run`` with a suite print its expanded runs (and validate every name) without importing torch.
``--set KEY=VALUE`` overrides a suite value before validation (``--set 'budget.*.steps=2' --set eval.limit=5``).
``--shard i/n`` runs every n-th run starting at i (a Slurm job array: ``--shard $SLURM_ARRAY_TASK_ID/$N``);
``--jobs N`` starts N such shard processes on this machine, each with cores/N threads; ``--retime`` measures the
throughput of finished runs again (after a parallel run, on a quiet host) and updates their records.
Results: one JSON per run in ``results/<suite>/`` (or ``--out``); finished runs are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.datadir import DataError
from bench.harness.modelsrc import MissingModelsError
from bench.harness.results import read_result, result_path
from bench.harness.suites import SUITES_DIR, SuiteError, load_suite, parse_shard, select, validate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pat-bench run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", help="suite name (bench/suites/<name>.toml) or a path to a .toml; required except "
                                    "with --list, which then lists the suites")
    ap.add_argument("--out", help="result directory (default results/<suite>)")
    ap.add_argument("--models", nargs="+", help="only these suite model names")
    ap.add_argument("--ratios", nargs="+", type=float, help="only these prune ratios, e.g. 0.25")
    ap.add_argument("--only", help="only run ids matching this glob or substring, e.g. '*pat*'")
    ap.add_argument("--shard", help="i/n: run every n-th selected run starting at i (cluster job arrays)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run the selection as N parallel shard processes on this machine, each with cores/N threads "
                         "(logs in WORK_DIR/logs); e.g. 2 on a 2-core CPU, or one per GPU with CUDA_VISIBLE_DEVICES")
    ap.add_argument("--retime", action="store_true",
                    help="measure the throughput of finished runs again (on a quiet host) and update their records")
    ap.add_argument("--list", action="store_true",
                    help="print the run ids and exit (no torch import); without --suite, list the suites")
    ap.add_argument("--dry-run", action="store_true", help="print runs with their status and config, then exit")
    ap.add_argument("--model-path", action="append", default=[], metavar="NAME=DIR",
                    help="local Hugging Face directory for a suite model (repeatable)")
    ap.add_argument("--data-dir", help="data directory (default $PAT_DATA_DIR)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a suite value before validation, e.g. --set budget.gpu.steps=2 --set eval.limit=5 "
                         "(dotted TOML path, '*' = every table at that level, VALUE in TOML syntax; repeatable)")
    ap.add_argument("--precision", choices=["fp32", "bf16"],
                    help="every budget's training precision and the evaluation's forward precision (shorthand for "
                         "--set 'budget.*.precision=...' --set eval.precision=...); bf16 = autocast (CPU AMX-BF16)")
    ap.add_argument("--train-data",
                    help="override the suite's train_data (a data-directory name, a local .jsonl or a hub id)")
    ap.add_argument("--work-dir", help="checkpoints and finalized models (default $PAT_WORK_DIR or runs/bench)")
    ap.add_argument("--skip-failed", action="store_true", help="do not retry runs recorded as failed")
    ap.add_argument("--device", help="device for models, e.g. cuda (default: where the loader puts them)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _model_paths(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise SuiteError(f"--model-path {it!r}: expected NAME=DIR, e.g. llama2-7b=/models/Llama-2-7b-hf")
        out[name] = path
    return out


def list_suites() -> int:
    """One line per suite file: its name and description."""
    for path in sorted(SUITES_DIR.glob("*.toml")):
        try:
            desc = load_suite(path).description
        except SuiteError as e:
            desc = f"(does not load: {e})"
        print(f"{path.stem:<10} {desc}")
    print(f"# suites in {SUITES_DIR}; list one suite's runs with --suite NAME --list", file=sys.stderr)
    return 0


def _selection(args: argparse.Namespace):
    """``(suite, all runs, selected runs, model paths)``; raises ``SuiteError`` naming the bad option or field."""
    overrides = list(args.overrides)
    if args.precision:
        overrides += [f"budget.*.precision={args.precision}", f"eval.precision={args.precision}"]
    suite = load_suite(args.suite, overrides)
    if args.train_data:
        suite = dataclasses.replace(suite, train_data=args.train_data)
    all_runs = validate(suite)
    runs = select(all_runs, models=args.models, ratios=args.ratios, only=args.only,
                  shard=parse_shard(args.shard) if args.shard else None)
    model_paths = _model_paths(args.model_path)
    unknown = sorted(set(model_paths) - set(suite.models))
    if unknown:
        raise SuiteError(f"--model-path: unknown model name(s) {unknown}; suite models: {sorted(suite.models)}")
    return suite, all_runs, runs, model_paths


def _print_runs(runs, all_runs, suite, out: Path, dry_run: bool) -> int:
    for r in runs:
        rec = read_result(result_path(out, r.run_id)) if dry_run else None
        status = (rec or {}).get("status", "todo") if dry_run else ""
        extra = f"  steps={r.budget.get('steps', '-')} args={r.stage_args}" if dry_run else ""
        print(f"{r.run_id}{('  [' + status + ']') if status else ''}{extra}")
    print(f"# {len(runs)} of {len(all_runs)} runs of suite '{suite.name}'; results in {out}", file=sys.stderr)
    return 0


def _work_dir(args: argparse.Namespace) -> Path:
    from bench.harness.runner import work_dir_default  # lazy, as every runner import: listing stays torch-free

    return Path(args.work_dir) if args.work_dir else work_dir_default()


def _retime(args, suite, runs, model_paths, out: Path) -> int:
    from bench.harness.runner import RunnerOptions, retime_suite

    opts = RunnerOptions(out_dir=out, work_dir=_work_dir(args), model_paths=model_paths, data_dir=args.data_dir,
                         progress=False, device=args.device)
    c = retime_suite(suite, runs, opts)
    print(f"suite {suite.name}: {c['retimed']} runs retimed, {c['missing']} without a model on disk, "
          f"{c['failed']} failed, {c['not_finished']} not finished, of {c['total']}; results in {out}")
    return 1 if c["failed"] else 0


def _run(args, suite, all_runs, runs, model_paths, out: Path) -> int:
    from bench.harness.runner import MissingPieceError, RunnerOptions, run_suite

    opts = RunnerOptions(out_dir=out, work_dir=_work_dir(args), model_paths=model_paths, data_dir=args.data_dir,
                         retry_failed=not args.skip_failed, progress=not args.no_progress, device=args.device)
    try:
        counts = run_suite(suite, runs, opts, all_runs)
    except (MissingModelsError, MissingPieceError, DataError, ValueError) as e:  # preflight failures: nothing ran
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"suite {suite.name}: {counts['done']} done, {counts['skipped']} skipped (finished), "
          f"{counts.get('locked', 0)} held by another process, {counts['failed']} failed, of {counts['total']}; "
          f"results in {out}")
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lm_eval", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.suite is None:
        if args.list:
            return list_suites()
        print("error: --suite NAME is required (list the suites with --list)", file=sys.stderr)
        return 2
    try:
        suite, all_runs, runs, model_paths = _selection(args)
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / suite.name  # relative to the working directory
    if args.list or args.dry_run:
        return _print_runs(runs, all_runs, suite, out, args.dry_run)
    if args.retime:
        return _retime(args, suite, runs, model_paths, out)
    if args.jobs > 1:
        if args.shard:
            print("error: --jobs and --shard together: --jobs N already splits the selection into N shards",
                  file=sys.stderr)
            return 2
        return _run_jobs(argv if argv is not None else sys.argv[1:], args.jobs, _work_dir(args), suite.name)
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs}: expected a positive number of processes", file=sys.stderr)
        return 2
    return _run(args, suite, all_runs, runs, model_paths, out)


def _strip_jobs(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--jobs":
            skip = True
        elif not a.startswith("--jobs="):
            out.append(a)
    return out


def _run_jobs(argv: list[str], n: int, work_dir: Path, suite: str) -> int:
    """Start ``n`` shard processes (``--shard i/n``), each with ``cores // n`` threads, and wait for all.

    Shards are static (run ``i``, ``i+n``, ...), so a rerun resumes each where it stopped. Each writes its own
    results (one JSON per run, atomically), so they never collide; ``reuse_prefix`` falls back to training the
    prefix itself when another shard has not finished it yet.
    """
    threads = max(1, (os.cpu_count() or n) // n)
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log_path = logs / f"{suite}-shard{i}of{n}.log"
        cmd = [sys.executable, "-m", "bench.cli.run", *_strip_jobs(argv), "--shard", f"{i}/{n}", "--no-progress"]
        fh = open(log_path, "a")
        procs.append((subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT), fh, log_path))
        print(f"shard {i}/{n}: pid {procs[-1][0].pid}, {threads} thread(s), log {log_path}")
    t0 = time.time()
    rcs = [p.wait() for p, _, _ in procs]
    for _, fh, _ in procs:
        fh.close()
    for i, (rc, (_, _, log_path)) in enumerate(zip(rcs, procs)):
        print(f"shard {i}/{n}: exit {rc} ({log_path})")
    print(f"suite {suite}: {n} shards finished in {time.time() - t0:.0f} s")
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main())
