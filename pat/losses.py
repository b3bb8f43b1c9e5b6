"""PAT's regularizers: the active-count loss (L_active) and the identity loss (L_identity)."""

from __future__ import annotations

from typing import Iterable

import torch

from .modules import Binarize, HybridSparsifier, SharedMask


def _guarded_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean that is 0 (with a graph) on an empty tensor instead of NaN (pat-spec.md §4.3 quirk)."""
    return x.mean() if x.numel() else x.sum()


def _paper_direction(w: torch.Tensor, target: int, margin: float, inclusive: bool) -> torch.Tensor:
    """Descent direction of the paper form's straight-through count (ours; the paper states no estimator).

    The subgradient of the L1 distance from ``w`` to the nearest proxy with exactly ``target`` entries >= ``margin``
    and the rest <= ``-margin``: -1 on the top-``target`` channels below ``+margin``, +1 on the other channels above
    ``-margin``, 0 elsewhere. Channels tied at the top-``target`` boundary share its remaining places (at init all
    proxies are 0, so the task gradient, not the channel index, decides which channels go).
    """
    d = w.numel()
    if target <= 0:
        top = torch.zeros_like(w)
    elif target >= d:
        top = torch.ones_like(w)
    else:
        srt = torch.sort(w, descending=True).values
        edge, below = srt[target - 1], srt[target]
        top = (w > below).to(w.dtype)
        if edge == below:
            tied = w == edge
            top = torch.where(tied, (target - (w > edge).sum()) / tied.sum(), (w > edge).to(w.dtype))
    down = (w >= -margin) if inclusive else (w > -margin)
    return (1 - top) * down.to(w.dtype) - top * (w <= margin).to(w.dtype)


def active_loss(mask: SharedMask, target: int, form: str = "official", weight: float = 10.0,
                margin: float = 0.01) -> torch.Tensor:
    """Count loss on the shared mask proxy.

    official: ``weight * |sum(STE(W_M > 0)) - N| / N + mean((w - 0.5)^2 | w > 0) + mean((w + 0.5)^2 | w <= 0)``,
    where the STE passes the gradient unchanged to every proxy (a uniform push).

    paper: the value is ``weight * |sum(1(W_M > 0)) - N| / d``, the paper's ``||N - count||_2`` divided by the hidden
    size d (the weight and the division are ours; the paper gives neither). Its gradient (ours; the paper states no
    estimator) is ``weight / d`` times the subgradient of the L1 distance from W_M to the nearest proxy with exactly N
    entries >= ``margin`` and the rest <= ``-margin`` (see ``_paper_direction``): only the channels that must cross
    zero, or that sit within ``margin`` of it on their side, are pushed; at exactly N with every proxy outside the
    margin the gradient is 0. A uniform push instead moves every proxy by about one Adam step at once, and the count
    swings around N without holding it (docs/findings/2026-11-30-paper-active-loss.md).
    """
    w = mask.proxy
    if form == "paper":
        count = (w.detach() >= 0).sum() if mask.inclusive else (w.detach() > 0).sum()
        full = mask.full_proxy()
        direction = _paper_direction(full, int(target), float(margin), mask.inclusive)
        if hasattr(w, "device_mesh"):  # sharded proxy (FSDP2): the direction is computed whole, applied per shard
            from torch.distributed.tensor import distribute_tensor

            direction = distribute_tensor(direction, w.device_mesh, w.placements)
        surrogate = (w * direction).sum()
        return weight * ((count - target).abs().to(w.dtype) + surrogate - surrogate.detach()) / w.numel()
    count = Binarize.apply(w, mask.inclusive).sum()
    pos = w > 0
    polar = _guarded_mean((w[pos] - 0.5) ** 2) + _guarded_mean((w[~pos] + 0.5) ** 2)
    return weight * (count - target).abs() / target + polar


def identity_loss(hsms: Iterable[HybridSparsifier], form: str = "official") -> torch.Tensor:
    """Orthogonality loss summed over the given HSMs.

    official: ``MSE(L0 L0^T, I_r)`` per HSM; paper: ``||L0 L0^T - I||_F + ||L1^T L1 - I||_F`` per HSM.
    Each HSM's term is the one its last forward computed (``HybridSparsifier.take_identity_term``, consumed here) when
    there is one, else it is computed from the weights now: the same operations, so the same value and gradients.
    """
    total, device = None, None
    for h in hsms:
        device = h.mask.proxy.device
        if h.L0 is None:
            continue
        term = h.take_identity_term(form)
        if term is None:
            term = h.identity_term(form)
        total = term if total is None else total + term
    if total is None:  # no HSM has factors (hio_rank 0): a zero on the mask's device
        return torch.zeros((), device=device)
    return total
