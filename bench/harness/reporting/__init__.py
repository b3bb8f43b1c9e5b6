"""Tables and plots from a suite's result JSONs: ``results/<suite>/TABLES.md``, CSVs (pandas), PNGs (matplotlib).

Nothing here is typed by hand: every number comes from a run record (``bench.harness.results``), except the
paper's own Table 1, which is read from ``bench/paper_table1.toml`` (with its citation) and printed as a separate
reference table beside ours.

The parts, one module each:

- ``frames``: record frames (one row per run, per task, per throughput point), method labels, the size check;
- ``chance``: the tasks at chance for the dense model (the recorded chance set, ``results/chance/``);
- ``pairing``: records grouped into cells, paired bootstrap intervals (documents, windows in blocks, the seed
  variance component), the pairs table and the per-cell intervals;
- ``claims``: the paper's comparisons beside ours, the suite's pre-registered primary claims and their Holm
  correction;
- ``tables``: the main table (the paper's Table 1 layout) and the other tables, Markdown rendering;
- ``plots``: the PNGs;
- ``build``: ``build_report``, the Markdown build of ``TABLES.md``.

Sections of ``TABLES.md``: the main table laid out like the paper's Table 1 (rows: ratio x method x mode; columns:
models; cells: mean accuracy in %; beside each model its parameters), the paper's reference table, the primary
claims, delta vs LoRA, per-task accuracy, perplexity and parameters, throughput (speedup vs batch size against the
dense model), failed runs, and the plots.
"""

from bench.harness.reporting.build import FEW_MASK_STEPS, _precision_line, build_report  # noqa: F401
from bench.harness.reporting.chance import CHANCE_ALPHA, CHANCE_DIR, chance_tasks, recorded_chance
from bench.harness.reporting.claims import ALPHA, claims_table, primary_table
from bench.harness.reporting.frames import (
    DISPLAY,
    LETTER,
    LOGLIK,
    METHOD_ORDER,
    MODE_ORDER,
    OFF_SIZE,
    PAPER_TABLE,
    SIZE_TOL,
    label,
    runs_frame,
    size_check,
    tasks_frame,
    throughput_frame,
)
from bench.harness.reporting.pairing import (
    LEVEL,
    MIN_SEEDS,
    N_BOOT,
    SeedModel,
    cell_intervals,
    pairs_table,
    paired_acc,
    paired_log_ppl,
    seed_model,
)
from bench.harness.reporting.plots import (
    COLOURS,
    MODE_STYLE,
    method_colours,
    plot_forest,
    plot_primary,
    plot_speedup,
    plot_vs_params,
)
from bench.harness.reporting.tables import (
    delta_vs_lora,
    main_table,
    paper_table,
    per_task_table,
    ratio_table,
    to_markdown,
)

__all__ = ["ALPHA", "CHANCE_ALPHA", "CHANCE_DIR", "COLOURS", "DISPLAY", "FEW_MASK_STEPS", "LETTER", "LEVEL", "LOGLIK",
           "METHOD_ORDER", "MIN_SEEDS", "MODE_ORDER", "MODE_STYLE", "N_BOOT", "OFF_SIZE", "PAPER_TABLE", "SIZE_TOL",
           "SeedModel", "build_report", "cell_intervals", "chance_tasks", "claims_table", "delta_vs_lora", "label",
           "main_table", "method_colours", "paired_acc", "paired_log_ppl", "pairs_table", "paper_table",
           "per_task_table", "plot_forest", "plot_primary", "plot_speedup", "plot_vs_params", "primary_table",
           "ratio_table", "recorded_chance", "runs_frame", "seed_model", "size_check", "tasks_frame",
           "throughput_frame", "to_markdown"]
