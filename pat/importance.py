"""Calibration importance of the hidden (residual) channels, and a mask proxy initialised from it (ours, not in the
paper: ``PATConfig.mask_init``).

The paper starts every proxy at 0: the gate is 1 for every channel and only the task gradient, over thousands of
steps, ranks them. At short budgets that ranking never forms (docs/findings/2026-11-30-mask-at-cpu-budgets.md). With
``mask_init="taylor"`` or ``"flap"`` the proxy instead starts *ranked* by a calibration score: the top N channels at
small positive values, the rest at small negative ones, on a linear ramp by rank of half-width
``mask_init_scale``. The count is then already N, so the count loss does not push every channel as a block, and the
task gradient only has to move the channels near the boundary.

Scores (one number per hidden channel, larger = more important):

* ``taylor``: ``sum over batches |dL/dM_i * M_i|`` at the initial gate ``M = 1``: the first-order Taylor estimate of
  the loss change from removing channel i of the residual stream everywhere (LLM-Pruner's criterion applied to
  the shared hidden mask; the same quantity the Taylor snap accumulates during training).
* ``flap``: FLAP's fluctuation metric applied to the hidden channels: for every linear that reads the normed
  residual stream (q/k/v, gate/up in each layer, and the LM head), the sample variance of input channel i over the
  calibration tokens times the squared norm of the weight column i, summed over those readers.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from .arch import base_model, get_arch, get_module

SCORES = ("taylor", "flap")


def _batches(calibration: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, calibration.shape[0], batch_size):
        yield calibration[i:i + batch_size]


def taylor_scores(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``sum_b |dL_b/dM_i * M_i|`` (d,), fp32, on the mask's device, for a PAT model whose mask is not snapped.

    Only the mask proxy's gradient is taken (``torch.autograd.grad``): no ``.grad`` of any parameter is touched and
    the mask's own importance accumulator is restored afterwards.
    """
    from .attach import get_mask

    mask = get_mask(model)
    if bool(mask.snapped):
        raise ValueError("taylor_scores: the mask is already snapped (its gate no longer depends on the proxy)")
    saved = mask.importance.clone()
    mask.importance.zero_()
    was_training = model.training
    model.eval()  # no dropout: a deterministic score
    device = mask.proxy.device
    try:
        for ids in _batches(calibration, batch_size):
            ids = ids.to(device)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                # the gate's hook adds |dL/dM * M| to mask.importance; the proxy gradient itself is discarded
                torch.autograd.grad(loss, [mask.proxy])
        scores = mask.importance.detach().clone().float()
    finally:
        mask.importance.copy_(saved)
        mask.clear()
        model.train(was_training)
    return scores


def reader_paths(model: nn.Module) -> list[str]:
    """Dotted paths (under the base model) of every linear that reads the normed residual stream."""
    base = base_model(model)
    arch = get_arch(base)
    n_layers = len(get_module(base, arch.layers))
    return [f"{arch.layers}.{i}.{r}" for i in range(n_layers) for r in (*arch.attn_in, *arch.mlp_in)] + [arch.lm_head]


def _weight(module: nn.Module) -> torch.Tensor:
    """The reader's (out, d) weight, with a peft LoRA delta added when the module carries one (zero at init)."""
    base_layer = getattr(module, "base_layer", None)
    return (base_layer if base_layer is not None else module).weight


@torch.no_grad()
def flap_scores(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """FLAP's fluctuation metric per hidden channel, summed over the readers of the residual stream (d,), fp32."""
    base = base_model(model)
    paths = reader_paths(base)
    d = base.config.hidden_size
    device = next(base.parameters()).device
    # per reader: token count, sum and sum of squares of each input channel (fp64: variance by E[x^2] - E[x]^2)
    stats = {p: [0, torch.zeros(d, dtype=torch.float64, device=device),
                 torch.zeros(d, dtype=torch.float64, device=device)] for p in paths}

    def hook(path):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            s = stats[path]
            s[0] += x.shape[0]
            s[1] += x.sum(0)
            s[2] += (x * x).sum(0)
        return fn

    handles = [get_module(base, p).register_forward_pre_hook(hook(p)) for p in paths]
    was_training = model.training
    model.eval()
    try:
        for ids in _batches(calibration, batch_size):
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    score = torch.zeros(d, dtype=torch.float64, device=device)
    for p in paths:
        n, s1, s2 = stats[p]
        if n < 2:
            raise ValueError(f"flap_scores: reader {p} saw {n} tokens; need at least 2 calibration tokens")
        var = (s2 - s1 * s1 / n) / (n - 1)  # sample variance, as FLAP's running estimate
        w = _weight(get_module(base, p)).detach().double()
        score += var.clamp_min(0) * (w * w).sum(0)
    return score.float()


def channel_scores(model: nn.Module, calibration: torch.Tensor, by: str, batch_size: int = 8) -> torch.Tensor:
    if by == "taylor":
        return taylor_scores(model, calibration, batch_size)
    if by == "flap":
        return flap_scores(model, calibration, batch_size)
    raise ValueError(f"channel_scores: by={by!r}; expected one of {', '.join(SCORES)}")


def ranked_proxy(scores: torch.Tensor, keep: int, scale: float) -> torch.Tensor:
    """A proxy (d,) ranked by ``scores``: the top ``keep`` channels positive, the rest negative, on a linear ramp by
    rank from ``+scale`` (most important) to ``-scale`` (least), crossing 0 between rank ``keep - 1`` and ``keep``.
    Ties keep the lower channel index first (stable sort)."""
    d = scores.numel()
    if not 0 < keep < d:
        raise ValueError(f"ranked_proxy: keep={keep}; expected 0 < keep < {d}")
    # index math on the CPU on purpose (a stable sort, the same ranking on every device); the result follows scores
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
    rank = torch.empty(d, dtype=torch.float32, device="cpu")
    rank[order] = torch.arange(d, dtype=torch.float32, device="cpu")
    half = max(keep - 0.5, d - keep - 0.5)
    return (scale * (keep - 0.5 - rank) / half).to(scores.device)


@torch.no_grad()
def init_mask_from_importance(model: nn.Module, calibration: torch.Tensor, by: str, scale: float,
                              batch_size: int = 8) -> torch.Tensor:
    """Score the hidden channels on ``calibration`` (n, seq_len) and set the mask proxy to ``ranked_proxy``.
    Returns the scores (d,)."""
    from .attach import get_mask

    mask = get_mask(model)
    scores = channel_scores(model, calibration, by, batch_size)
    mask.proxy.copy_(ranked_proxy(scores, mask.target, scale).to(mask.proxy.dtype))
    mask.clear()
    return scores
