"""The mask gate's temperature tau(s) and bias beta(s) as pure functions of the gate's schedule step s.

Paper (pat-spec.md §4.1): ``tau(s) = 1 / (1 - ln s / ln s0)`` for s < s0 and ``1/eps`` after;
``beta(s) = max(0.5 - s / s0, 0)``. Official code: the step used for tau is clamped at ``int(freeze_frac * s0)``
(freeze_frac 0.8), from where the task loss no longer reaches the mask (pat-spec.md §4.2), so training never uses
the hard gate.

The schedule step s is not the number of optimizer steps done: the official patched trainer writes
``state.global_step`` into the model right after ``optimizer.step()`` and *before* ``global_step += 1``, so the
forward of optimizer step i (0-based) reads ``max(i - 1, 0)`` (steps 0 and 1 both read 0). ``gate_step`` maps the
optimizer steps done to that value (``PATConfig.gate_step_lag``; 1 = the official code).
"""

from __future__ import annotations

import math

EPS = 1e-6
HARD_TAU = 1.0 / EPS


def freeze_step(s0: int, freeze_frac: float = 0.8) -> int:
    """The schedule step from which the mask is frozen: ``int(freeze_frac * s0)``, as the official code
    (``int(self.global_step * alpha)``)."""
    return int(s0 * freeze_frac)


def gate_step(steps_done: int, lag: int = 1) -> int:
    """The schedule step the gate uses in the forward that follows ``steps_done`` optimizer steps:
    ``max(steps_done - lag, 0)`` (``lag=1``: the official code's, see the module docstring)."""
    return max(int(steps_done) - int(lag), 0)


def tau(step: float, s0: int, freeze_frac: float = 0.8) -> float:
    """Gate temperature at schedule step ``step`` for milestone ``s0`` (>= 2)."""
    s = min(step, freeze_step(s0, freeze_frac))
    if s >= s0:  # only reachable with freeze_frac == 1: the paper's hard phase
        return HARD_TAU
    return 1.0 / (1.0 - math.log(max(1.0, s)) / math.log(s0) + EPS)


def beta(step: float, s0: int) -> float:
    """Gate bias at ``step``: 0.5 at the start, 0 from ``s0 / 2`` on."""
    return max(0.5 - step / s0, 0.0)


def mask_frozen(step: float, s0: int, freeze_frac: float = 0.8) -> bool:
    """True once the task loss stops reaching the mask proxy (the regularizer still does): schedule step
    ``>= int(freeze_frac * s0)``."""
    return step >= freeze_step(s0, freeze_frac)
