"""Finalize: merge LoRA and the HSMs, physically remove the pruned channels, emit a stock Hugging Face model.

pat-spec.md §8, with its bugs fixed:
- writers (embedding, o_proj, down_proj): ``W <- (diag(s) D W)[keep]`` with ``D = I + L1 diag(v) L0``
  (the official merge drops ``s``);
- readers (q/k/v, gate/up, lm_head): ``W <- W[:, keep]``;
- RMSNorm: removing d - d' zero channels changes the mean over channels, so the gains are multiplied by
  ``sqrt(d / d')`` and ``rms_norm_eps`` by ``d / d'``, which makes the sliced norm exactly equal to the masked one
  (the official merge rescales the gains only, leaving an eps error of ~1e-6). For ``(1 + w)`` norms (Gemma),
  ``w <- (1 + w) sqrt(d / d') - 1``;
- Gemma scales its embedding by ``sqrt(hidden_size)``, which becomes ``sqrt(d')``: the embedding absorbs
  ``sqrt(d / d')``;
- tied embeddings: if the embedding HSM is full, the input embedding gets the fold and the LM head does not, so they
  are untied; with a mask-only embedding HSM they stay tied (a tied LM head absorbing Gemma's embedding scale is
  compensated in the final norm).
The result is built from a stock config with ``hidden_size = d'`` and an explicit ``head_dim``.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn as nn

from .arch import base_model, get_arch, get_module, head_dim
from .attach import MASK_ATTR, get_mask, hsm_paths, set_hard
from .modules import HybridSparsifier

log = logging.getLogger(__name__)


def _unwrap_key(key: str) -> str:
    return key.replace(".inner.", ".")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold peft LoRA into the base weights (the HSMs stay); returns the unwrapped base model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Return a new, smaller stock ``PreTrainedModel`` equivalent to ``model`` with its hard mask.

    ``model`` is a PAT model (possibly still peft-wrapped); LoRA is merged into it in place.
    """
    from transformers import AutoModelForCausalLM

    model = merge_lora(model)
    base = base_model(model)
    arch = get_arch(base)
    mask = get_mask(base)
    cfg = mask.cfg
    keep = torch.nonzero(mask.active()).flatten()
    d, d2 = mask.proxy.numel(), int(keep.numel())
    if d2 == 0 or d2 == d:
        raise ValueError(f"finalize: {d2} of {d} channels active; nothing to remove or nothing left")
    hd = head_dim(base.config)
    if d2 % base.config.num_attention_heads:
        log.warning("kept width %d is not a multiple of num_attention_heads=%d; transformers may refuse the config",
                    d2, base.config.num_attention_heads)

    paths = dict(hsm_paths(base))
    emb_hsm: HybridSparsifier = paths[arch.embed]
    emb_full = emb_hsm.L0 is not None or emb_hsm.s is not None
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    keep_tied = tied and not emb_full
    embed_comp = math.sqrt(d / d2) if arch.embed_scale_attr else 1.0  # sqrt(d) -> sqrt(d') inside the embedding
    fold_scale = cfg.fold_scale and not cfg.official_quirks

    sd = {}
    for k, v in base.state_dict().items():
        if k.startswith(MASK_ATTR + ".") or any(k == f"{p}.{n}" for p in paths for n in ("L0", "L1", "v", "s")):
            continue
        sd[_unwrap_key(k)] = v

    def op(h: HybridSparsifier) -> torch.Tensor:
        D = h.operator()  # diag(s) (I + L1 diag(v) L0), fp64
        if not fold_scale and h.s is not None:
            D = D / h.s.double()[:, None]
        return D

    E = sd[f"{arch.embed}.weight"]
    lm_src = sd.get(f"{arch.lm_head}.weight", E)  # tied models may carry no lm_head key
    sd[f"{arch.embed}.weight"] = ((E.double() @ op(emb_hsm).t())[:, keep] * embed_comp).to(E.dtype)
    for path, h in paths.items():
        if path == arch.embed:
            continue
        D = op(h)
        W = sd[f"{path}.weight"]
        sd[f"{path}.weight"] = (D @ W.double())[keep].to(W.dtype)
        if f"{path}.bias" in sd:
            b = sd[f"{path}.bias"]
            sd[f"{path}.bias"] = (D @ b.double())[keep].to(b.dtype)

    layers = get_module(base, arch.layers)
    readers = [f"{arch.layers}.{i}.{r}" for i in range(len(layers)) for r in (*arch.attn_in, *arch.mlp_in)]
    for path in readers:
        sd[f"{path}.weight"] = sd[f"{path}.weight"][:, keep].contiguous()
    if keep_tied:
        sd[f"{arch.lm_head}.weight"] = sd[f"{arch.embed}.weight"]
    else:
        sd[f"{arch.lm_head}.weight"] = lm_src[:, keep].contiguous()

    rms = math.sqrt(d / d2)
    norms = [f"{arch.layers}.{i}.{n}" for i in range(len(layers)) for n in (arch.attn_norm, arch.mlp_norm)]
    for path in norms + [arch.final_norm]:
        factor = rms
        if path == arch.final_norm and keep_tied:
            factor = rms / embed_comp  # the tied LM head absorbed the embedding's compensation
        w = sd[f"{path}.weight"]
        off = arch.norm_offset
        sd[f"{path}.weight"] = ((off + w.double()[keep]) * factor - off).to(w.dtype)

    new_cfg = copy.deepcopy(base.config)
    new_cfg.hidden_size = d2
    new_cfg.head_dim = hd
    new_cfg.tie_word_embeddings = keep_tied
    new_cfg.rms_norm_eps = base.config.rms_norm_eps * d / d2
    dtype = E.dtype
    new = AutoModelForCausalLM.from_config(new_cfg, dtype=dtype)
    expected = new.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise RuntimeError(f"finalize: no tensor for {missing[:5]} (architecture table out of date?)")
    new.load_state_dict({k: sd[k] for k in expected}, strict=True)
    if keep_tied:
        new.tie_weights()
    new.to(next(base.parameters()).device)
    return new.eval()


@torch.no_grad()
def merge_check(pat_model: nn.Module, finalized: nn.Module, input_ids: torch.Tensor) -> float:
    """Max abs logit difference between ``pat_model`` with its hard mask and ``finalized`` on ``input_ids``."""
    set_hard(pat_model, True)
    try:
        a = pat_model(input_ids=input_ids).logits.double()
    finally:
        set_hard(pat_model, False)
    b = finalized(input_ids=input_ids.to(next(finalized.parameters()).device)).logits.double()
    return float((a - b.to(a.device)).abs().max())
