"""Post-hoc structured pruning baselines (LLM-Pruner, Wanda-SP, FLAP, SliceGPT) and their checkpoint format.

Each method is a pure function ``prune(model, ratio, calibration, **opts) -> (model, report)`` in its module and a
``bench.harness.method.Method`` stage class, registered lazily below (``"module:Class"``).
"""

STAGE_CLASSES: dict[str, str] = {
    "llm_pruner": "baselines.llm_pruner:LLMPrunerStage",
    "wanda_sp": "baselines.wanda_sp:WandaSPStage",
    "flap": "baselines.flap:FLAPStage",
    "slicegpt": "baselines.slicegpt:SliceGPTStage",
}
