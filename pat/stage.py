"""The ``Stage`` protocol: how PAT, LoRA or a one-shot pruner plugs into a training loop.

A training loop (``bench.harness.train``) calls these hooks and never branches on a stage's type. A pipeline such as
``["llm_pruner", "lora"]`` (prune-then-tune) is a list of stages. One-shot pruners do their work in ``prepare`` (or
``finalize`` when they run after tuning) and train nothing.

To add a stage: implement this protocol in a module and add ``name -> "module:Class"`` to
``bench.harness.registry.STAGES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
import torch.nn as nn


@dataclass
class RunContext:
    """What a stage may need besides the model: tokenizer, calibration data, total steps, output dir, seed.

    ``extra`` carries the stage's place in the pipeline (``"pipeline"``: the stage names, ``"stage_index"``) and
    optional inputs such as ``"heldout_ids"`` (the tokens of PAT's merge check).
    """

    tokenizer: Any = None
    total_steps: int = 0
    seed: int = 0
    out_dir: Path | None = None
    data_dir: Path | None = None
    calibration: Any = None  # callable () -> LongTensor (n, seq_len) of calibration tokens, built lazily
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Stage(Protocol):
    name: str

    def prepare(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Inject modules / prune; returns the model to train (may be a new object, e.g. a peft wrapper)."""

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Optimizer parameter groups of this stage's trainable parameters (may be empty)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A loss added to the LM loss (PAT: L_active + L_identity), or ``None``."""

    def on_optimizer_step(self, model: nn.Module, step: int) -> Iterable[nn.Parameter] | None:
        """Called after every optimizer step with the number of steps done so far. May return parameters whose
        optimizer state the loop must drop (``optimizer.state.pop(p, None)``); ``None`` = nothing."""

    def log_values(self, model: nn.Module) -> dict[str, float]:
        """Scalars to show in the progress bar / log (PAT: active channels, tau, losses)."""

    def finalize(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Merge / physically remove; returns a plain ``PreTrainedModel`` that needs no custom code."""

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Stage-owned tensors to checkpoint (for resume) — beyond the trainable parameters, if any."""

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""

    def report(self) -> dict[str, Any]:
        """What this stage records in the run's JSON (achieved ratio, widths, ...)."""


class StageDefaults:
    """No-op versions of the hooks a stage may not need; a stage inherits them and overrides what it uses."""

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        return []

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def on_optimizer_step(self, model: nn.Module, step: int) -> None:
        return None

    def log_values(self, model: nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        return None


def trainable_count(groups: Iterable[dict]) -> int:
    return sum(p.numel() for g in groups for p in g["params"])


def drop_optimizer_state(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> list[str]:
    """Forget the optimizer state (e.g. Adam moments) of ``params``, as ``on_optimizer_step`` asks; returns why any
    could not be dropped.

    ``optimizer`` may be wrapped (accelerate's ``AcceleratedOptimizer``: the torch optimizer is its ``.optimizer``).
    Under engines that keep their own flat or partitioned optimizer state (DeepSpeed, FSDP1 flat parameters) the
    parameter is not a key of ``optimizer.state``; that is reported, not ignored silently.
    """
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    held = {id(q) for g in getattr(inner, "param_groups", []) for q in g["params"]}
    problems = []
    for p in params:
        if id(p) not in held or not isinstance(getattr(inner, "state", None), dict):
            problems.append(f"parameter of shape {tuple(p.shape)} is not held by {type(inner).__name__}")
            continue
        inner.state.pop(p, None)
    return problems
