"""Tiny random models of every supported architecture, built in memory (no download)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 128

# name -> (model_type, config overrides); hidden 48 with 4 heads of 12, or GQA 4/2
TINY = {
    "llama-mha": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)),
    "llama-gqa-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                sliding_window=None)),
    "qwen2": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "gemma": ("gemma", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=12, tie_word_embeddings=True)),
}


def tiny_config(name: str, **overrides):
    model_type, kw = TINY[name]
    base = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        max_position_embeddings=256, rms_norm_eps=1e-6,
    )
    base.update(kw)
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def tiny_model(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name, **overrides), dtype=torch.float32)
    # random norm gains and (for qwen2) biases, so that slicing/folding bugs cannot hide behind ones/zeros
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                offset = 0.0 if model.config.model_type == "gemma" else 1.0  # Gemma norms multiply by (1 + w)
                p.copy_(offset + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_batch(batch: int = 2, seq: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


@torch.no_grad()
def randomize_pat(model, g: torch.Generator, hsm_scale: float = 0.1, lora_scale: float = 0.1) -> None:
    """Random non-zero L0/L1/v/s, LoRA B and mask proxies, then exactly the target count active (so no fold can hide
    behind an identity)."""
    from pat import get_mask, hsms

    for h in hsms(model):
        for n in ("L0", "L1", "v", "s"):
            p = getattr(h, n)
            if p is not None:
                p.add_(hsm_scale * torch.randn(p.shape, generator=g))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.add_(lora_scale * torch.randn(p.shape, generator=g))
    mask = get_mask(model)
    mask.proxy.copy_(torch.randn(mask.proxy.shape, generator=g))
    mask.snap(mask.target)
