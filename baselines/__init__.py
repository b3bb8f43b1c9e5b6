"""Post-hoc structured pruning baselines (LLM-Pruner, Wanda-SP, FLAP, SliceGPT) and their checkpoint format.

Each pruner is a pure function ``prune(model, ratio, calibration, **opts) -> (model, report)`` in its module and a
``pat.stage.Stage`` class, registered by name in ``bench.harness.registry.STAGES``. The LoRA stage is
``baselines.lora.LoRAStage``.
"""
