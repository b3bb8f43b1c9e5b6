"""The command-line entry points: ``pat-tune`` (``tune``) and ``pat-bench`` (``main``: run, report, evaluate,
measure, train, throughput). They parse arguments and call ``bench.harness``; no library code lives here."""
