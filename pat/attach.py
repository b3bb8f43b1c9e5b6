"""Attach PAT to a model without editing transformers or peft.

Each residual writer (embedding, every ``o_proj``, every ``down_proj``) is replaced by a ``HybridSparsifier`` that
wraps it (``setattr`` on the parent, as peft does). One ``SharedMask`` is registered on the model root as
``pat_mask``; a forward pre-hook on the root computes its gate once per forward. The gate stays cached after the
forward (``set_step``, ``snap`` and ``set_hard`` drop it), so activation checkpointing recomputes the layers with the
very gate of the original forward.
Apply peft LoRA first, then attach: the HSM then sees ``W x + dW x``.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
import torch.nn as nn

from .arch import base_model, get_arch, get_module, set_module
from .config import PATConfig
from .modules import HybridSparsifier, SharedMask

log = logging.getLogger(__name__)

MASK_ATTR = "pat_mask"


def writer_paths(model: nn.Module) -> list[str]:
    """Dotted paths of every residual writer under the base model, in forward order (embedding first)."""
    base = base_model(model)
    arch = get_arch(base)
    n_layers = len(get_module(base, arch.layers))
    return [arch.embed] + [f"{arch.layers}.{i}.{w}" for i in range(n_layers) for w in arch.writers]


def attach(model: nn.Module, cfg: PATConfig, total_steps: int) -> SharedMask:
    """Install HSMs and the shared mask on ``model`` (a HF causal LM, possibly peft-wrapped); returns the mask.

    The model's logits are unchanged at this point (L1 = 0 or v = 0, M = 1).
    """
    base = base_model(model)
    if hasattr(base, MASK_ATTR):
        raise ValueError("PAT is already attached to this model")
    c = base.config
    d = c.hidden_size
    keep = cfg.target_keep(d, c.num_attention_heads)
    rank = cfg.rank_for(d)
    s0 = cfg.milestone(total_steps)
    # PAT's tensors are created on the CPU on purpose, then moved to the model's device: the same init values (and
    # random draws) on every device, so a CPU and a GPU run start from the same HSMs
    with torch.device("cpu"):
        mask = SharedMask(d, s0, cfg.mask_freeze_frac, inclusive=cfg.keep_threshold == "ge0")
    mask.target = keep
    mask.cfg = cfg
    mask.steps_done = 0  # optimizer steps done, as set_step last saw them (the gate's own step is mask.step)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    mask.embed_mode = cfg.embed_mode(tied)
    ref = next(base.parameters())
    mask.to(device=ref.device)
    base.add_module(MASK_ATTR, mask)

    scale = cfg.identity_loss == "official"
    diag = cfg.identity_loss == "paper"
    for i, path in enumerate(writer_paths(base)):
        inner = get_module(base, path)
        embed_mask_only = i == 0 and mask.embed_mode == "mask_only"
        with torch.device("cpu"):
            hsm = HybridSparsifier(inner, mask, 0 if embed_mask_only else rank, scale and not embed_mask_only, diag)
        hsm.to(device=next(inner.parameters(), ref).device)  # beside its writer (a model split over devices)
        set_module(base, path, hsm)

    if cfg.identity_loss != "none" and cfg.identity_weight != 0:
        for h in identity_hsms(base):  # their forward computes the identity term (see HybridSparsifier)
            h.identity_form = cfg.identity_loss
    mask.hook_handles = (base.register_forward_pre_hook(lambda m, a: mask.refresh()),)
    log.info("PAT attached: d=%d -> keep %d (%.4f pruned), hio_rank=%d, s0=%d, %d HSMs, embedding %s",
             d, keep, 1 - keep / d, rank, s0, len(list(hsms(base))), mask.embed_mode)
    return mask


def get_mask(model: nn.Module) -> SharedMask:
    base = base_model(model)
    mask = getattr(base, MASK_ATTR, None)
    if mask is None:
        raise ValueError("no PAT attached to this model (call pat.attach first)")
    return mask


def hsms(model: nn.Module) -> Iterator[HybridSparsifier]:
    """All HSMs in forward order."""
    return (m for m in base_model(model).modules() if isinstance(m, HybridSparsifier))


def identity_hsms(model: nn.Module) -> list[HybridSparsifier]:
    """The HSMs the identity loss covers: all, or with ``official_quirks`` the embedding's and the last layer's
    (pat-spec.md §5: the official ``_loss`` overwrite reaches only those)."""
    all_h = list(hsms(model))
    if get_mask(model).cfg.official_quirks:
        return [all_h[0]] + all_h[-2:]
    return all_h


def hsm_paths(model: nn.Module) -> list[tuple[str, HybridSparsifier]]:
    base = base_model(model)
    return [(n, m) for n, m in base.named_modules() if isinstance(m, HybridSparsifier)]


def pat_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(mask proxy params, HSM params). Marks them trainable and fp32 — the one place that does so."""
    mask = get_mask(model)
    mask.proxy.data = mask.proxy.data.float()
    mask.proxy.requires_grad_(True)
    hsm_params = []
    for h in hsms(model):
        for name in ("L0", "L1", "v", "s"):
            p = getattr(h, name)
            if p is not None:
                p.data = p.data.float()
                p.requires_grad_(True)
                hsm_params.append(p)
    return [mask.proxy], hsm_params


def set_hard(model: nn.Module, hard: bool = True) -> None:
    """Switch the shared gate to the exact binary mask (inference) or back to the training gate."""
    mask = get_mask(model)
    mask.hard = hard
    mask.clear()
