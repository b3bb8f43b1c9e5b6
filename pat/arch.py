"""Architecture descriptions: where the residual stream is written and read, per ``config.model_type``.

PAT's attach/merge and the structured-pruning baselines all work from this one table, so no other module branches
on a model's name. Module paths are dotted attribute paths; per-layer paths are relative to one decoder layer.

To add an architecture: add an ``ArchSpec`` to ``ARCHS`` keyed by its ``config.model_type`` and make sure the
tests in ``tests/pat/`` pass on a tiny config of it (``tests/tiny.py`` builds one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ArchSpec:
    """Where a decoder-only model writes into and reads from its residual stream.

    Attributes:
        model_type: ``config.model_type`` this spec serves.
        embed: token embedding (a residual *writer*).
        layers: the ``nn.ModuleList`` of decoder layers.
        final_norm: the norm before the LM head (a residual *reader*).
        lm_head: the output projection (reads the final norm).
        attn_norm, mlp_norm: per-layer pre-norms (readers), relative to a layer.
        attn_in, mlp_in: per-layer linears that read the normed residual (input columns = hidden channels).
        attn_out, mlp_out: per-layer linears whose output is added to the residual (writers).
        norm_offset: 1.0 when the norm multiplies by ``(1 + weight)`` (Gemma), else 0.0.
        embed_scale_attr: name of the embedding module's buffer holding a ``sqrt(hidden_size)`` scale (Gemma),
            or ``None`` when the embedding is not scaled.
    """

    model_type: str
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    attn_in: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    attn_out: str = "self_attn.o_proj"
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    mlp_out: str = "mlp.down_proj"
    norm_offset: float = 0.0
    embed_scale_attr: str | None = None

    @property
    def writers(self) -> tuple[str, ...]:
        """Per-layer residual writers, in forward order."""
        return (self.attn_out, self.mlp_out)


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2"),  # q/k/v carry biases; slicing their input columns leaves the biases unchanged
    "gemma": ArchSpec("gemma", norm_offset=1.0, embed_scale_attr="embed_scale"),
}


class UnsupportedArchitectureError(ValueError):
    pass


def get_arch(model_or_config) -> ArchSpec:
    """The ``ArchSpec`` for a model or config; raises naming the architecture and the supported ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' is not supported; supported model_type values: {', '.join(sorted(ARCHS))}. "
            "To add one, add an ArchSpec to pat.arch.ARCHS."
        )
    return ARCHS[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted attribute path (``"model.layers"``) under ``root``."""
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the module at a dotted path (the peft ``_replace_module`` idea: ``setattr`` on the parent)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(root, parent_path) if parent_path else root
    setattr(parent, name, new)


def base_model(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` of a possibly peft-wrapped model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: nn.Module, arch: ArchSpec | None = None) -> nn.ModuleList:
    model = base_model(model)
    return get_module(model, (arch or get_arch(model)).layers)


def head_dim(config) -> int:
    """Per-head width; explicit in the config when present (pruned models always carry it)."""
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once); ``num_parameters()`` for Hugging Face models."""
    if hasattr(model, "num_parameters"):
        return int(model.num_parameters())
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
