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

A model sharded by FSDP2 (``fully_shard``: its parameters are DTensors) cannot be merged in place: ``is_sharded``
tells, and ``unsharded_copy`` (a collective: every process calls it) gathers the full state on the main process
(rank 0) and loads it into a plain copy of the PAT model there, on the CPU, which the merge then takes.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

from .arch import ArchSpec, base_model, get_arch, get_module, head_dim
from .attach import MASK_ATTR, attach, get_mask, hsm_paths, set_hard
from .lora import LoRAConfig, apply_lora, merge_lora
from .modules import HybridSparsifier

log = logging.getLogger(__name__)


def _unwrap_key(key: str) -> str:
    return key.replace(".inner.", ".")


@dataclass
class _Plan:
    """What the merge needs to know about one PAT model: kept channels, widths, tying and scales."""

    base: nn.Module
    arch: ArchSpec
    paths: dict[str, HybridSparsifier]  # HSM path -> HSM
    keep: torch.Tensor  # indices of the kept hidden channels
    d: int
    d2: int
    keep_tied: bool  # the finalized model keeps input and output embeddings tied
    embed_comp: float  # sqrt(d / d') absorbed by a scaled (Gemma) embedding, else 1
    fold_scale: bool  # fold the HSM scale s into the writers


def _plan(base: nn.Module) -> _Plan:
    arch = get_arch(base)
    mask = get_mask(base)
    keep = torch.nonzero(mask.active()).flatten()
    d, d2 = mask.proxy.numel(), int(keep.numel())
    if d2 == 0 or d2 == d:
        raise ValueError(f"finalize: {d2} of {d} channels active; nothing to remove or nothing left")
    if d2 % base.config.num_attention_heads:
        log.warning("kept width %d is not a multiple of num_attention_heads=%d; transformers may refuse the config",
                    d2, base.config.num_attention_heads)
    paths = dict(hsm_paths(base))
    emb_hsm = paths[arch.embed]
    emb_full = emb_hsm.L0 is not None or emb_hsm.s is not None
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    return _Plan(base=base, arch=arch, paths=paths, keep=keep, d=d, d2=d2, keep_tied=tied and not emb_full,
                 embed_comp=math.sqrt(d / d2) if arch.embed_scale_attr else 1.0,
                 fold_scale=mask.cfg.fold_scale and not mask.cfg.official_quirks)


def _plain_state_dict(plan: _Plan) -> dict[str, torch.Tensor]:
    """The model's tensors without the mask and HSM parameters, under stock (unwrapped) names."""
    hsm_keys = {f"{p}.{n}" for p in plan.paths for n in ("L0", "L1", "v", "s")}
    return {_unwrap_key(k): v for k, v in plan.base.state_dict().items()
            if not k.startswith(MASK_ATTR + ".") and k not in hsm_keys}


def _operator(plan: _Plan, h: HybridSparsifier) -> torch.Tensor:
    D = h.operator()  # diag(s) (I + L1 diag(v) L0), fp64
    if not plan.fold_scale and h.s is not None:
        D = D / h.s.double()[:, None]
    return D


def _fold_writers(plan: _Plan, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Writers (embedding, o_proj, down_proj): ``W <- (D W)[keep]``. Returns the LM head's source weight."""
    arch, keep = plan.arch, plan.keep
    E = sd[f"{arch.embed}.weight"]
    lm_src = sd.get(f"{arch.lm_head}.weight", E)  # tied models may carry no lm_head key
    # every product runs on the weight's own device (D is built beside its HSM, which sits beside its writer)
    emb_op = _operator(plan, plan.paths[arch.embed]).to(E.device)
    sd[f"{arch.embed}.weight"] = ((E.double() @ emb_op.t())[:, keep.to(E.device)] * plan.embed_comp).to(E.dtype)
    for path, h in plan.paths.items():
        if path == arch.embed:
            continue
        W = sd[f"{path}.weight"]
        D, k = _operator(plan, h).to(W.device), keep.to(W.device)
        sd[f"{path}.weight"] = (D @ W.double())[k].to(W.dtype)
        if f"{path}.bias" in sd:
            b = sd[f"{path}.bias"]
            sd[f"{path}.bias"] = (D @ b.double())[k].to(b.dtype)
    return lm_src


def _slice_readers(plan: _Plan, sd: dict[str, torch.Tensor], lm_src: torch.Tensor) -> None:
    """Readers (q/k/v, gate/up, LM head): ``W <- W[:, keep]``; a tied LM head shares the folded embedding."""
    arch, keep = plan.arch, plan.keep
    n_layers = len(get_module(plan.base, arch.layers))
    readers = [f"{arch.layers}.{i}.{r}" for i in range(n_layers) for r in (*arch.attn_in, *arch.mlp_in)]
    for path in readers:
        w = sd[f"{path}.weight"]
        sd[f"{path}.weight"] = w[:, keep.to(w.device)].contiguous()
    if plan.keep_tied:
        sd[f"{arch.lm_head}.weight"] = sd[f"{arch.embed}.weight"]
    else:
        sd[f"{arch.lm_head}.weight"] = lm_src[:, keep.to(lm_src.device)].contiguous()


def _rescale_norms(plan: _Plan, sd: dict[str, torch.Tensor]) -> None:
    """RMSNorm gains: ``(off + w[keep]) * sqrt(d / d') - off`` (the eps is rescaled in the config)."""
    arch = plan.arch
    rms = math.sqrt(plan.d / plan.d2)
    n_layers = len(get_module(plan.base, arch.layers))
    norms = [f"{arch.layers}.{i}.{n}" for i in range(n_layers) for n in (arch.attn_norm, arch.mlp_norm)]
    for path in norms + [arch.final_norm]:
        factor = rms
        if path == arch.final_norm and plan.keep_tied:
            factor = rms / plan.embed_comp  # the tied LM head absorbed the embedding's compensation
        w = sd[f"{path}.weight"]
        off = arch.norm_offset
        sd[f"{path}.weight"] = ((off + w.double()[plan.keep.to(w.device)]) * factor - off).to(w.dtype)


def _build(plan: _Plan, sd: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """A stock model from the original config with ``hidden_size = d'``, loaded strictly from ``sd``."""
    config = plan.base.config
    new_cfg = copy.deepcopy(config)
    new_cfg.hidden_size = plan.d2
    new_cfg.head_dim = head_dim(config)
    new_cfg.tie_word_embeddings = plan.keep_tied
    new_cfg.rms_norm_eps = config.rms_norm_eps * plan.d / plan.d2
    device = next(plan.base.parameters()).device
    with torch.device(device):  # built where the weights are: no host round trip of the whole model
        new = AutoModelForCausalLM.from_config(new_cfg, dtype=dtype)
    expected = new.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise RuntimeError(f"finalize: no tensor for {missing[:5]} (architecture table out of date?)")
    new.load_state_dict({k: sd[k] for k in expected}, strict=True)
    if plan.keep_tied:
        new.tie_weights()
    return new


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (sharded by FSDP2's ``fully_shard``)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _stock_class(module: nn.Module) -> type:
    """The module's own class: ``fully_shard`` swaps it for a subclass ``FSDP<Name>`` of ``FSDPModule``."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


@torch.no_grad()
def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded) copy of a PAT model sharded by FSDP2, on the CPU of the main process; ``None`` elsewhere.

    A collective: every process must call it. The full state comes from ``torch.distributed.checkpoint``'s
    ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` (only rank 0 receives it). The copy is the same
    model rebuilt on the meta device (the base class from its config, peft LoRA and PAT as ``PATStage.prepare``
    applies them) and loaded by assignment, so rank 0 holds one full copy of the weights, in CPU memory; buffers
    outside the state dict (rotary frequencies) come from the sharded model, where they are whole.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    mask = get_mask(model)
    cfg, base = mask.cfg, base_model(model)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        new = _stock_class(base)(copy.deepcopy(base.config))
        if cfg.lora_rank > 0:
            new = apply_lora(new, LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout))
        else:
            new.requires_grad_(False)
        new_mask = attach(new, cfg, total_steps=max(2, mask.s0))
    missing, unexpected = new.load_state_dict(full, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"unsharded_copy: the rebuilt model does not match the sharded one: missing "
                           f"{missing[:5]}, unexpected {unexpected[:5]}")
    theirs = dict(model.named_buffers())
    for name, buf in list(new.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (not in the state dict): whole on every process
            owner, _, attr = name.rpartition(".")
            new.get_submodule(owner).register_buffer(attr, theirs[name].detach().cpu().clone(), persistent=False)
    left = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"unsharded_copy: no value for {left[:5]}")
    new_base = base_model(new)
    if getattr(new_base.config, "tie_word_embeddings", False):  # assignment loaded the tied weights as two tensors
        new_base.get_output_embeddings().weight = new_base.get_input_embeddings().weight
    new_mask.s0, new_mask.target, new_mask.hard = mask.s0, mask.target, mask.hard
    return new.train(model.training)


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Return a new, smaller stock ``PreTrainedModel`` equivalent to ``model`` with its hard mask.

    ``model`` is a PAT model (possibly still peft-wrapped); LoRA is merged into it in place.
    """
    base = base_model(merge_lora(model))
    plan = _plan(base)
    sd = _plain_state_dict(plan)
    dtype = sd[f"{plan.arch.embed}.weight"].dtype
    lm_src = _fold_writers(plan, sd)
    _slice_readers(plan, sd, lm_src)
    _rescale_norms(plan, sd)
    return _build(plan, sd, dtype).eval()


@torch.no_grad()
def merge_check(pat_model: nn.Module, finalized: nn.Module, input_ids: torch.Tensor) -> float:
    """Max abs logit difference between ``pat_model`` with its hard mask and ``finalized`` on ``input_ids``."""
    set_hard(pat_model, True)
    try:  # each model gets the ids on its own device (the FSDP path merges on the CPU, the training model is on GPU)
        a = pat_model(input_ids=input_ids.to(get_mask(pat_model).proxy.device)).logits.double()
    finally:
        set_hard(pat_model, False)
    b = finalized(input_ids=input_ids.to(next(finalized.parameters()).device)).logits.double()
    return float((a - b.to(a.device)).abs().max())
