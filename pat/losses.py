"""PAT's regularizers: the active-count loss (L_active) and the identity loss (L_identity)."""

from __future__ import annotations

from typing import Iterable

import torch

from .modules import Binarize, HybridSparsifier, SharedMask


def _guarded_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean that is 0 (with a graph) on an empty tensor instead of NaN (pat-spec.md §4.3 quirk)."""
    return x.mean() if x.numel() else x.sum()


def active_loss(mask: SharedMask, target: int, form: str = "official", weight: float = 10.0) -> torch.Tensor:
    """Count loss on the shared mask proxy.

    official: ``weight * |sum(STE(W_M > 0)) - N| / N + mean((w - 0.5)^2 | w > 0) + mean((w + 0.5)^2 | w <= 0)``;
    paper: ``weight * |sum(STE(W_M > 0)) - N| / d``: the paper's ``||N - count||`` normalised by the hidden size d
    (our choice; the paper gives no weight). Each proxy gets the same count gradient (a uniform push); which
    channels cross zero is decided by the task loss through the gate.
    """
    w = mask.proxy
    count = Binarize.apply(w, mask.inclusive).sum()
    if form == "paper":
        return weight * (count - target).abs() / w.numel()
    pos = w > 0
    polar = _guarded_mean((w[pos] - 0.5) ** 2) + _guarded_mean((w[~pos] + 0.5) ** 2)
    return weight * (count - target).abs() / target + polar


def identity_loss(hsms: Iterable[HybridSparsifier], form: str = "official") -> torch.Tensor:
    """Orthogonality loss summed over the given HSMs.

    official: ``MSE(L0 L0^T, I_r)`` per HSM; paper: ``||L0 L0^T - I||_F + ||L1^T L1 - I||_F`` per HSM.
    Each HSM's term is the one its last forward computed (``HybridSparsifier.take_identity_term``, consumed here) when
    there is one, else it is computed from the weights now: the same operations, so the same value and gradients.
    """
    total = None
    for h in hsms:
        if h.L0 is None:
            continue
        term = h.take_identity_term(form)
        if term is None:
            term = h.identity_term(form)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
