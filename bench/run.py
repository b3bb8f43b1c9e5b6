"""Run a benchmark suite: ``python -m bench.run --suite NAME [--out DIR] [--models ...] [--ratios ...] [--only PAT]``.

``--list`` / ``--dry-run`` print the expanded runs (and validate every name) without importing torch.
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
import sys
from pathlib import Path

from bench.harness.suites import SuiteError, load_suite, parse_shard, select, validate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="suite name (bench/suites/<name>.toml) or a path to a .toml")
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
    ap.add_argument("--list", action="store_true", help="print the run ids and exit (no torch import)")
    ap.add_argument("--dry-run", action="store_true", help="print runs with their status and config, then exit")
    ap.add_argument("--model-path", action="append", default=[], metavar="NAME=DIR",
                    help="local Hugging Face directory for a suite model (repeatable)")
    ap.add_argument("--data-dir", help="data directory (default $PAT_DATA_DIR)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a suite value before validation, e.g. --set budget.gpu.steps=2 --set eval.limit=5 "
                         "(dotted TOML path, '*' = every table at that level, VALUE in TOML syntax; repeatable)")
    ap.add_argument("--train-data", help="override the suite's train_data (a data-directory name, a local .jsonl or a hub id)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lm_eval", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        suite = load_suite(args.suite, args.overrides)
        if args.train_data:
            suite = dataclasses.replace(suite, train_data=args.train_data)
        all_runs = validate(suite)
        runs = select(all_runs, models=args.models, ratios=args.ratios, only=args.only,
                      shard=parse_shard(args.shard) if args.shard else None)
        model_paths = _model_paths(args.model_path)
        unknown = sorted(set(model_paths) - set(suite.models))
        if unknown:
            raise SuiteError(f"--model-path: unknown model name(s) {unknown}; suite models: {sorted(suite.models)}")
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / suite.name  # relative to the working directory
    if args.list or args.dry_run:
        from bench.harness.results import read_result, result_path

        for r in runs:
            rec = read_result(result_path(out, r.run_id)) if args.dry_run else None
            status = (rec or {}).get("status", "todo") if args.dry_run else ""
            extra = f"  steps={r.budget.get('steps', '-')} args={r.method_args}" if args.dry_run else ""
            print(f"{r.run_id}{('  [' + status + ']') if status else ''}{extra}")
        print(f"# {len(runs)} of {len(all_runs)} runs of suite '{suite.name}'; results in {out}", file=sys.stderr)
        return 0
    from bench.harness.runner import RunnerOptions, run_suite, work_dir_default

    if args.retime:
        from bench.harness.runner import retime_suite

        opts = RunnerOptions(out_dir=out, work_dir=Path(args.work_dir) if args.work_dir else work_dir_default(),
                             model_paths=model_paths, data_dir=args.data_dir, progress=False, device=args.device)
        c = retime_suite(suite, runs, opts)
        print(f"suite {suite.name}: {c['retimed']} runs retimed, {c['missing']} without a model on disk, "
              f"{c['failed']} failed, {c['not_finished']} not finished, of {c['total']}; results in {out}")
        return 1 if c["failed"] else 0
    if args.jobs > 1:
        if args.shard:
            print("error: --jobs and --shard together: --jobs N already splits the selection into N shards", file=sys.stderr)
            return 2
        return _run_jobs(argv if argv is not None else sys.argv[1:], args.jobs,
                         Path(args.work_dir) if args.work_dir else work_dir_default(), suite.name)
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs}: expected a positive number of processes", file=sys.stderr)
        return 2

    opts = RunnerOptions(out_dir=out, work_dir=Path(args.work_dir) if args.work_dir else work_dir_default(),
                         model_paths=model_paths, data_dir=args.data_dir, retry_failed=not args.skip_failed,
                         progress=not args.no_progress, device=args.device)
    try:
        counts = run_suite(suite, runs, opts, all_runs)
    except Exception as e:  # preflight failures: nothing ran
        if type(e).__name__ in ("MissingModelsError", "MissingPieceError", "DataError", "SuiteError", "ValueError"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(f"suite {suite.name}: {counts['done']} done, {counts['skipped']} skipped (finished), "
          f"{counts.get('locked', 0)} held by another process, {counts['failed']} failed, of {counts['total']}; "
          f"results in {out}")
    return 1 if counts["failed"] else 0


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
    import os
    import subprocess
    import time

    threads = max(1, (os.cpu_count() or n) // n)
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log_path = logs / f"{suite}-shard{i}of{n}.log"
        cmd = [sys.executable, "-m", "bench.run", *_strip_jobs(argv), "--shard", f"{i}/{n}", "--no-progress"]
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
