"""The matched training budget shared by every method of a comparison, and trainable-parameter parity.

A ``TrainBudget`` is defined once per comparison (suite) and handed unchanged to every pipeline; methods only
choose *what* is trainable, never how long or how hard it is trained (style-anchors P4). It is a frozen dataclass
validated eagerly: a bad field raises ``ValueError`` naming the field, its value and the expected form.

Parameter parity: a budget may declare ``param_parity="lora-64"`` with ``parity_tol=0.05``. The trainer then
refuses to start (``ParityError``) unless the prepared pipeline's trainable-parameter count is within the tolerance
of LoRA-64's count on the same model. ``solve_pat_ranks`` picks PAT's (HIO rank, LoRA rank) to fit; the rule:

* LoRA rank inside PAT = the paper's proportion 20/64 of the reference LoRA rank, rounded, at least 1
  (LoRA-64 -> 20, the paper's value; LoRA-32 -> 10; LoRA-8 -> 2);
* HIO rank = the integer in ``[1, hidden_size]`` whose PAT count is closest to the reference count;
* if that best count is still outside the tolerance, ``ParityError`` says so (before any training).

To add a reference kind, add a parser to ``_REFERENCES``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")
PAPER_LORA_FRACTION = 20 / 64  # PAT's LoRA rank relative to the LoRA baseline it matches (HIO-200 + LoRA-20 ~ LoRA-64)


class ParityError(ValueError):
    """A parameter-parity request that cannot be met; raised before any training starts."""


def _check(cond: bool, field: str, value: Any, expected: str) -> None:
    if not cond:
        raise ValueError(f"TrainBudget.{field} = {value!r} is invalid; expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainBudget:
    """Everything that fixes the training cost of a run; identical for every method of a comparison.

    Exactly one of ``steps`` (optimizer steps) and ``tokens`` is set. With ``tokens``, the run makes
    ``ceil(tokens / (global_batch * seq_len))`` optimizer steps: the token budget counts capacity
    (``global_batch * seq_len`` per step), so it does not depend on how long the examples are.
    ``global_batch`` is the number of examples per optimizer step over all processes; it must be a multiple
    of ``micro_batch * world_size`` (checked by the trainer, which derives gradient accumulation from it).
    ``warmup_steps`` counts optimizer steps. ``subset_size`` (``None`` = all) and ``data_seed`` fix which
    examples are used and in which order. ``precision`` is accelerate's mixed precision (``fp32`` = none;
    ``fp16`` needs a CUDA device). ``gradient_checkpointing`` recomputes activations in the backward pass
    (less memory, about a third more compute, same gradients). ``distill_weight`` (ours; 0 = off, the paper's
    objective) mixes logit distillation from the unpruned model into the loss, ``(1 - w) LM + w KD`` at temperature
    ``distill_temperature`` (``bench.harness.distill``); the teacher's forward cost is recorded with the run.
    """

    steps: int | None = None
    tokens: int | None = None
    global_batch: int = 8
    micro_batch: int = 8
    seq_len: int = 256
    lr: float = 5e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 0.3
    seed: int = 42
    subset_size: int | None = None
    data_seed: int = 42
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    param_parity: str | None = None
    parity_tol: float = 0.05
    distill_weight: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        _check((self.steps is None) != (self.tokens is None), "steps",
               (self.steps, self.tokens), "exactly one of steps / tokens set (the other None)")
        if self.steps is not None:
            _check(_is_int(self.steps) and self.steps >= 1, "steps", self.steps, "a positive integer")
        if self.tokens is not None:
            _check(_is_int(self.tokens) and self.tokens >= 1, "tokens", self.tokens, "a positive integer")
        for name in ("global_batch", "micro_batch", "seq_len"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, name, v, "a positive integer")
        _check(self.global_batch % self.micro_batch == 0, "global_batch", self.global_batch,
               f"a multiple of micro_batch ({self.micro_batch})")
        _check(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "lr", self.lr,
               "a positive finite float")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(isinstance(self.gradient_checkpointing, bool), "gradient_checkpointing", self.gradient_checkpointing,
               "true or false")
        _check(_is_int(self.warmup_steps) and 0 <= self.warmup_steps, "warmup_steps", self.warmup_steps,
               "a non-negative integer")
        if self.steps is not None:
            _check(self.warmup_steps <= self.steps, "warmup_steps", self.warmup_steps,
                   f"at most steps ({self.steps})")
        _check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay",
               self.weight_decay, "a non-negative float")
        _check(self.max_grad_norm is None or (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0),
               "max_grad_norm", self.max_grad_norm, "a positive float or None (no clipping)")
        for name in ("seed", "data_seed"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 0, name, v, "a non-negative integer")
        _check(self.subset_size is None or (_is_int(self.subset_size) and self.subset_size >= 1), "subset_size",
               self.subset_size, "a positive integer or None (all examples)")
        _check(isinstance(self.distill_weight, (int, float)) and not isinstance(self.distill_weight, bool)
               and 0 <= self.distill_weight <= 1, "distill_weight", self.distill_weight,
               "a number in [0, 1] (0 = no distillation)")
        _check(isinstance(self.distill_temperature, (int, float)) and not isinstance(self.distill_temperature, bool)
               and math.isfinite(self.distill_temperature) and self.distill_temperature > 0, "distill_temperature",
               self.distill_temperature, "a positive finite number")
        if self.param_parity is not None:
            parse_reference(self.param_parity)  # raises naming the field
        _check(isinstance(self.parity_tol, (int, float)) and 0 <= self.parity_tol < 1, "parity_tol",
               self.parity_tol, "a float in [0, 1) (relative tolerance)")

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run (from ``steps``, or from ``tokens`` at ``global_batch * seq_len`` a step)."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.tokens / (self.global_batch * self.seq_len))

    def accumulation(self, world_size: int = 1) -> int:
        """Gradient-accumulation steps per optimizer step on each of ``world_size`` processes."""
        per = self.micro_batch * world_size
        if self.global_batch % per:
            raise ValueError(
                f"TrainBudget.global_batch = {self.global_batch} is invalid for {world_size} process(es); expected a "
                f"multiple of micro_batch * world_size = {per}"
            )
        return self.global_batch // per

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_steps"] = self.total_steps
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainBudget:
        """Build from a mapping (e.g. a suite's TOML table); unknown keys are errors naming the key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known - {"total_steps"})
        if unknown:
            raise ValueError(f"TrainBudget: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------- parity
_REFERENCES: dict[str, Callable[[re.Match, Any], int]] = {}


def _lora_ref(m: re.Match, model_config) -> int:
    from pat.lora import lora_param_count  # lazy: this module stays torch-free for ``bench.run --list``

    return lora_param_count(model_config, int(m.group(1)))


_REFERENCES[r"lora-(\d+)"] = _lora_ref


def parse_reference(ref: str) -> tuple[str, re.Match]:
    """Check a parity reference such as ``"lora-64"``; raises ``ValueError`` naming ``param_parity``."""
    if isinstance(ref, str):
        for pattern in _REFERENCES:
            m = re.fullmatch(pattern, ref.strip().lower())
            if m and all(int(g) >= 1 for g in m.groups()):
                return pattern, m
    raise ValueError(f"TrainBudget.param_parity = {ref!r} is invalid; expected 'lora-<rank>' with rank >= 1, e.g. "
                     f"'lora-64'")


def reference_param_count(ref: str, model_config) -> int:
    """Trainable parameters of the reference configuration ``ref`` (e.g. ``"lora-64"``) on ``model_config``."""
    pattern, m = parse_reference(ref)
    return _REFERENCES[pattern](m, model_config)


def check_parity(trainable: int, ref: str, tol: float, model_config) -> dict[str, Any]:
    """Raise ``ParityError`` unless ``trainable`` is within relative ``tol`` of ``ref``'s count; returns a record."""
    target = reference_param_count(ref, model_config)
    rel = (trainable - target) / target
    rec = {"reference": ref, "reference_params": target, "trainable": trainable, "rel_diff": rel, "tol": tol}
    if abs(rel) > tol:
        raise ParityError(
            f"parameter parity failed: {trainable:,} trainable parameters vs {ref} = {target:,} "
            f"({rel:+.2%}, tolerance ±{tol:.2%}); fix: change the method's ranks (see solve_pat_ranks) or parity_tol"
        )
    return rec


def _default_pat_count() -> Callable[[Any, int, int], int]:
    from pat.method import pat_param_count  # lazy: this module stays torch-free for ``bench.run --list``

    return pat_param_count


def solve_pat_ranks(
    model_config,
    ref: str = "lora-64",
    tol: float = 0.05,
    lora_rank: int | None = None,
    count_fn: Callable[[Any, int, int], int] | None = None,
) -> dict[str, Any]:
    """PAT's (HIO rank, LoRA rank) whose trainable count matches ``ref`` within ``tol`` (rule: module docstring).

    Args:
        model_config: the HF config of the model PAT is applied to.
        ref: the parity reference, e.g. ``"lora-64"``.
        tol: relative tolerance on the trainable-parameter count.
        lora_rank: PAT's LoRA rank; default ``round(20/64 * reference rank)``, at least 1.
        count_fn: ``(model_config, hio_rank, lora_rank) -> int``; default ``pat.method.pat_param_count``.
    Returns:
        ``{"hio_rank", "lora_rank", "params", "reference_params", "rel_diff"}``.
    Raises:
        ParityError: when no HIO rank in ``[1, hidden_size]`` is within ``tol``.
    """
    count = count_fn or _default_pat_count()
    target = reference_param_count(ref, model_config)
    if lora_rank is None:
        ref_rank = int(parse_reference(ref)[1].group(1))
        lora_rank = max(1, round(PAPER_LORA_FRACTION * ref_rank))
    if not _is_int(lora_rank) or lora_rank < 1:
        raise ValueError(f"lora_rank = {lora_rank!r} is invalid; expected a positive integer")
    lo, hi = 1, int(model_config.hidden_size)
    while lo < hi:  # smallest HIO rank whose count reaches the target (the count grows with the rank)
        mid = (lo + hi) // 2
        if count(model_config, mid, lora_rank) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min({max(1, lo - 1), lo}, key=lambda r: abs(count(model_config, r, lora_rank) - target))
    params = count(model_config, best, lora_rank)
    rel = (params - target) / target
    if abs(rel) > tol:
        raise ParityError(
            f"cannot match {ref} ({target:,} params) within ±{tol:.2%} with PAT LoRA rank {lora_rank}: the closest "
            f"HIO rank {best} gives {params:,} ({rel:+.2%}); fix: a smaller lora_rank, a larger tolerance or another "
            "reference"
        )
    return {"hio_rank": best, "lora_rank": lora_rank, "params": params, "reference_params": target, "rel_diff": rel}
