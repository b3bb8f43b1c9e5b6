"""Stage names -> classes, resolved on first use (``"module:Class"``), so listing a suite imports no torch.

To add a stage: implement ``pat.stage.Stage`` in a module and add ``name -> "module:Class"`` to ``STAGES``.
A stage is built by ``make_stage(name, **args)``, which is ``Class(**args)``.
"""

from __future__ import annotations

import importlib
from typing import Any

STAGES: dict[str, str] = {
    "pat": "pat.method:PATStage",
    "lora": "baselines.lora:LoRAStage",
    "llm_pruner": "baselines.llm_pruner:LLMPrunerStage",
    "wanda_sp": "baselines.wanda_sp:WandaSPStage",
    "flap": "baselines.flap:FLAPStage",
    "slicegpt": "baselines.slicegpt:SliceGPTStage",
}


def stage_class(name: str) -> type:
    """The class registered for stage ``name``; ``ValueError`` naming the known stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage '{name}'; known: {', '.join(sorted(STAGES))}")
    module, _, cls = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_stage(name: str, **args: Any):
    """An instance of stage ``name`` built with ``args``."""
    return stage_class(name)(**args)


def make_pipeline(names: list[str], stage_args: dict[str, dict] | None = None) -> list:
    """Stages for a pipeline such as ``["llm_pruner", "lora"]``; ``stage_args[name]`` are each stage's args."""
    if not names:
        raise ValueError("pipeline is empty; expected a list of stage names such as ['pat'] or ['llm_pruner', 'lora']")
    stage_args = stage_args or {}
    unknown = sorted(set(stage_args) - set(names))
    if unknown:
        raise ValueError(f"stage_args names stage(s) {unknown} that are not in the pipeline {names}")
    return [make_stage(n, **stage_args.get(n, {})) for n in names]
