"""Regenerate a suite's report from its result JSONs: ``pat-bench report --suite NAME [--results DIR]``.

``python -m bench.report`` is the same command.

Writes ``TABLES.md``, CSVs and PNG plots next to the JSONs (default ``results/<suite>/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.harness.reporting import build_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pat-bench report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="suite name (the 'suite' field of the run records)")
    ap.add_argument("--results", help="directory of run JSONs (default results/<suite>)")
    ap.add_argument("--out", help="where TABLES.md, CSVs and PNGs go (default: the results directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results) if args.results else Path("results") / args.suite  # relative to the working directory
    try:
        path = build_report(results, args.suite, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
