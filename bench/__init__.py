"""pat-bench harness: evaluation, matched-budget training, suites, results and reports.

Entry points (thin): ``python -m bench.evaluate``, ``python -m bench.run``, ``python -m bench.report``.
The library code they call lives in ``bench.harness``.
"""
