"""``pat-bench COMMAND [ARGS]``: one entry point for the benchmark commands.

Each command is also a module: ``pat-bench run`` is ``python -m bench.run``, ``report`` is ``python -m bench.report``,
``evaluate`` is ``python -m bench.evaluate``, ``measure`` is ``python -m bench.cli.measure``, ``train`` is
``python -m bench.harness.train`` and ``throughput`` is ``python -m bench.harness.throughput``.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv), one line of help); imported on use, so `pat-bench run --list` stays torch-free
COMMANDS = {
    "run": ("bench.cli.run", "run a benchmark suite (--list: the suites, or a suite's runs)"),
    "report": ("bench.cli.report", "tables, CSVs and plots of a suite's result JSONs"),
    "evaluate": ("bench.cli.evaluate", "zero-shot accuracy and perplexity of one model"),
    "measure": ("bench.cli.measure", "pruned-only perplexity and forward time of the baselines"),
    "train": ("bench.harness.train", "train one pipeline of stages under a budget"),
    "throughput": ("bench.harness.throughput", "prefill and decode speed of finalized models"),
}


def usage() -> str:
    lines = ["usage: pat-bench COMMAND [ARGS]   (pat-bench COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
