"""pat-bench harness: evaluation, matched-budget training, suites, results and reports.

The library code lives in ``bench.harness``; the entry points in ``bench.cli`` (console scripts ``pat-tune`` and
``pat-bench run|report|evaluate|measure|train|throughput``; ``python -m bench.run|report|evaluate`` are the same).
"""
