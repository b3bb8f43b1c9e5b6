"""The mask gate's temperature tau(s) and bias beta(s) as pure functions of the optimizer step s.

Paper (pat-spec.md §4.1): ``tau(s) = 1 / (1 - ln s / ln s0)`` for s < s0 and ``1/eps`` after;
``beta(s) = max(0.5 - s / s0, 0)``. Official code: the step used for tau is clamped at ``freeze_frac * s0``
(0.8), from where the task loss no longer reaches the mask (pat-spec.md §4.2), so training never uses the hard gate.
"""

from __future__ import annotations

import math

EPS = 1e-6
HARD_TAU = 1.0 / EPS


def tau(step: float, s0: int, freeze_frac: float = 0.8) -> float:
    """Gate temperature at ``step`` for milestone ``s0`` (>= 2)."""
    s = min(step, freeze_frac * s0)
    if s >= s0:  # only reachable with freeze_frac == 1: the paper's hard phase
        return HARD_TAU
    return 1.0 / (1.0 - math.log(max(1.0, s)) / math.log(s0) + EPS)


def beta(step: float, s0: int) -> float:
    """Gate bias at ``step``: 0.5 at the start, 0 from ``s0 / 2`` on."""
    return max(0.5 - step / s0, 0.0)


def mask_frozen(step: float, s0: int, freeze_frac: float = 0.8) -> bool:
    """True once the task loss stops reaching the mask proxy (the regularizer still does)."""
    return step >= freeze_frac * s0
