"""LoRA through peft: applied to a dense (or pruned) model, merged away at finalize.

Used on its own as the dense fine-tuning baseline (pipeline ``["lora"]``), as the recovery stage of
prune-then-tune (``["llm_pruner", "lora"]``), as the first stage of tune-then-prune, and inside PAT, which trains
its sparsification modules beside LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.harness.method import StageDefaults
from pat.arch import get_arch

DEFAULT_TARGETS = "all-linear"  # q,k,v,o,gate,up,down (peft excludes the LM head for "all-linear")


def lora_targets(model: nn.Module) -> list[str]:
    """The leaf names of every linear that reads or writes the residual stream (all 7 per layer)."""
    arch = get_arch(model)
    return sorted({p.rsplit(".", 1)[-1] for p in (*arch.attn_in, arch.attn_out, *arch.mlp_in, arch.mlp_out)})


@dataclass
class LoRAConfig:
    """LoRA hyper-parameters. ``alpha`` defaults to ``rank`` (scaling 1) unless given."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    targets: list[str] | None = field(default=None)

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on its seven linear types; base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    pc = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets or lora_targets(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, pc)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA deltas into the base weights and return the unwrapped base model (no-op without peft)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def lora_param_count(model_config, rank: int, targets: list[str] | None = None) -> int:
    """Trainable parameters of LoRA-``rank`` on all seven linear types, from the config alone.

    Per layer: ``rank * (in + out)`` for q, k, v, o, gate, up, down.
    """
    d = model_config.hidden_size
    hd = getattr(model_config, "head_dim", None) or d // model_config.num_attention_heads
    q = model_config.num_attention_heads * hd
    kv = model_config.num_key_value_heads * hd
    f = model_config.intermediate_size
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
              "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    names = targets or list(shapes)
    return model_config.num_hidden_layers * sum(rank * sum(shapes[n]) for n in names)


class LoRAStage(StageDefaults):
    """LoRA as a stage of the one training loop (``bench.harness.method.Method``).

    ``prepare`` wraps the model with peft adapters (every base weight frozen); the adapters are the trainable
    parameters; ``finalize`` merges them and returns the plain model. The method state is the adapter tensors.
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
