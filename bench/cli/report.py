"""Regenerate a suite's report from its result JSONs: ``pat-bench report --suite NAME [--results DIR]``.

``python -m bench.report`` is the same command.

Writes ``TABLES.md``, CSVs and PNG plots next to the JSONs (default ``results/<suite>/``). A budget sweep
(``[suite] budget_in_id``, e.g. ``budget``) gets the sweep's report (``bench.harness.reporting.budget``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.harness.reporting import build_report
from bench.harness.reporting.budget import build_budget_report
from bench.harness.suites import SuiteError, load_suite, suite_path


def _is_sweep(suite: str) -> bool:
    """A budget sweep (``[suite] budget_in_id``) gets its own report (``bench.harness.reporting.budget``)."""
    try:
        return load_suite(suite_path(suite)).budget_in_id
    except SuiteError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pat-bench report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="suite name (the 'suite' field of the run records)")
    ap.add_argument("--results", help="directory of run JSONs (default results/<suite>)")
    ap.add_argument("--out", help="where TABLES.md, CSVs and PNGs go (default: the results directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results) if args.results else Path("results") / args.suite  # relative to the working directory
    try:
        build = build_budget_report if _is_sweep(args.suite) else build_report
        path = build(results, args.suite, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
