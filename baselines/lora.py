"""The LoRA stage: peft LoRA applied to a dense (or pruned) model, merged away at finalize.

Used on its own as the dense fine-tuning baseline (pipeline ``["lora"]``), as the recovery stage of
prune-then-tune (``["llm_pruner", "lora"]``) and as the first stage of tune-then-prune. The peft helpers live in
``pat.lora``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pat.lora import LoRAConfig, apply_lora, merge_lora
from pat.stage import StageDefaults


class LoRAStage(StageDefaults):
    """LoRA as a stage of the one training loop (``pat.stage.Stage``).

    ``prepare`` wraps the model with peft adapters (every base weight frozen); the adapters are the trainable
    parameters; ``finalize`` merges them and returns the plain model. The stage state is the adapter tensors.
    ``LoRAStage(LoRAConfig(rank=64))`` or ``LoRAStage(rank=64, alpha=16)``.
    """

    name = "lora"

    def __init__(self, config: LoRAConfig | None = None, **kwargs):
        if config is not None and kwargs:
            raise ValueError(f"LoRAStage: pass either a LoRAConfig or keyword fields, not both (got {sorted(kwargs)})")
        self.cfg = config if config is not None else LoRAConfig(**kwargs)
        self._report: dict = {}

    @staticmethod
    def _lora_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if "lora_" in n]

    def prepare(self, model: nn.Module, ctx) -> nn.Module:
        model = apply_lora(model, self.cfg)
        self._report.update(rank=self.cfg.rank, alpha=self.cfg.alpha if self.cfg.alpha is not None else self.cfg.rank,
                            dropout=self.cfg.dropout, params=sum(p.numel() for _, p in self._lora_named(model)))
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        params = [p for _, p in self._lora_named(model)]
        return [{"name": "lora", "params": params, "lr": lr}] if params else []

    def finalize(self, model: nn.Module, ctx) -> nn.Module:
        return merge_lora(model)

    def state_dict(self, model: nn.Module) -> dict:
        return {n: p.detach().clone() for n, p in self._lora_named(model)}

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        named = dict(self._lora_named(model))
        if set(named) != set(state):
            raise KeyError(f"LoRAStage.load_state_dict: keys differ (missing {sorted(set(named) - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - set(named))[:3]})")
        with torch.no_grad():
            for n, t in state.items():
                named[n].copy_(t)

    def report(self) -> dict:
        return dict(self._report)
