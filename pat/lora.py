"""LoRA through peft: config, adapters on the seven linear types, the parameter count, the merge.

Used by PAT (which trains its sparsification modules beside LoRA) and by the LoRA stage of the baselines
(``baselines.lora.LoRAStage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
from peft import LoraConfig, get_peft_model

from .arch import get_arch

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
    """Fold the LoRA deltas into the base weights and return the unwrapped base model (no-op without peft).

    Other modules in the model (PAT's HSMs) stay where they are.
    """
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
