"""Stage names -> classes, resolved lazily (``"module:Class"``), so importing the harness imports no method.

To add a method: implement ``bench.harness.method.Method`` in a module and add ``name -> "module:Class"`` to
``METHODS`` (or, for a baseline, to ``baselines.STAGE_CLASSES``, which is merged in when present).
A stage is built by ``make_stage(name, **args)``: ``Class.from_args(**args)`` when the class defines it, else
``Class(**args)``.
"""

from __future__ import annotations

import importlib
from typing import Any

METHODS: dict[str, str] = {
    "pat": "pat.method:PATMethod",
    "lora": "baselines.lora:LoRAStage",
}


def methods() -> dict[str, str]:
    """All known stage names: ``METHODS`` plus ``baselines.STAGE_CLASSES`` (if that mapping exists)."""
    out = dict(METHODS)
    try:
        extra = getattr(importlib.import_module("baselines"), "STAGE_CLASSES", {})
    except ImportError:
        extra = {}
    for name, target in extra.items():
        out.setdefault(name, target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}")
    return out


def stage_class(name: str) -> type:
    """The class registered for stage ``name``; ``ValueError`` naming the known stages otherwise."""
    known = methods()
    if name not in known:
        raise ValueError(f"unknown method/stage '{name}'; known: {', '.join(sorted(known))}")
    module, _, cls = known[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_stage(name: str, **args: Any):
    """Instantiate stage ``name`` with ``args`` (``from_args`` if the class defines it)."""
    cls = stage_class(name)
    factory = getattr(cls, "from_args", None)
    return factory(**args) if callable(factory) else cls(**args)


def make_pipeline(names: list[str], method_args: dict[str, dict] | None = None) -> list:
    """Stages for a pipeline such as ``["llm_pruner", "lora"]``; ``method_args[name]`` are each stage's args."""
    if not names:
        raise ValueError("pipeline is empty; expected a list of stage names such as ['pat'] or ['llm_pruner', 'lora']")
    method_args = method_args or {}
    unknown = sorted(set(method_args) - set(names))
    if unknown:
        raise ValueError(f"method_args names stage(s) {unknown} that are not in the pipeline {names}")
    return [make_stage(n, **method_args.get(n, {})) for n in names]
