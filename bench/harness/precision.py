"""Numeric precision of evaluation forwards: ``fp32`` (default, exact stock lm-eval) or ``bf16`` autocast.

``bf16`` runs the model's matmuls under ``torch.autocast(device, torch.bfloat16)`` (on CPUs with AMX-BF16 /
AVX512-BF16 oneDNN uses those units); the weights stay fp32. The output embedding's logits are cast back to fp32
(a forward hook on ``model.get_output_embeddings()``) so that what consumes them (lm-eval's ``log_softmax``, the
perplexity cross-entropy) runs in fp32: on CPU ``log_softmax`` is not on autocast's fp32 list and would otherwise
sum log-probabilities in bf16. Training precision is ``TrainBudget.precision`` (accelerate's mixed precision);
this module is for evaluation only. The paired fp32-vs-bf16 difference is in
docs/findings/2026-12-04-bf16-cpu.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

EVAL_PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, field: str = "precision") -> str:
    """``precision`` if valid, else ``ValueError`` naming ``field``."""
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"{field}: expected one of {', '.join(EVAL_PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def eval_precision(model, precision: str = "fp32") -> Iterator[None]:
    """Run forwards of ``model`` inside this block at ``precision`` (``fp32``: no change)."""
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    import torch

    device = next(model.parameters()).device.type
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = head.register_forward_hook(lambda _m, _i, out: out.float()) if head is not None else None
    try:
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    finally:
        if handle is not None:
            handle.remove()
