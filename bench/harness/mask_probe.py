"""A learning curve of PAT's mask from inside one run (issue 20): at log-spaced optimizer steps before the freeze,
what would the model be if the mask were cut *now*?

At each probe step the probe
- hard-selects the current top-N proxies (the paper's selection, as the count snap would make it at that step) and
  measures the held-out NLL / perplexity of the model with that exact 0/1 gate (LoRA and HSMs as they are);
- records that top-N and the top-N of the Taylor importance accumulated so far (what ``snap_by="taylor"`` would
  keep at that step), and their Jaccard overlap.
At the end of the run ``finish`` adds each probe's Jaccard overlap with the final selection (the kept channels of
the stage report).

The model's state is restored exactly after each probe (proxy, the snap buffers, the gate cache, train/eval mode),
so a probed run trains as an unprobed one (tested). A probe costs one held-out forward (no gradient) per probe step.
Single process only: under DDP/FSDP the probe is refused (the snap of a sharded proxy is a collective).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pat.attach import get_mask
from pat.modules import SharedMask


def log_steps(last: int, base: float = 2.0) -> list[int]:
    """1, 2, 4, ... up to ``last`` (included): log-spaced probe steps."""
    if last < 1:
        return []
    steps, s = [], 1.0
    while s < last:
        steps.append(int(round(s)))
        s *= base
    steps.append(int(last))
    return sorted(set(steps))


def jaccard(a: list[int] | set[int], b: list[int] | set[int]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def _top(scores: torch.Tensor, n: int) -> list[int]:
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)  # index math on the CPU
    return sorted(order[:n].tolist())


_BUFFERS = ("keep", "snapped", "snap_step", "snap_changed")


@torch.no_grad()
def heldout_nll(model: nn.Module, ids: torch.Tensor) -> float:
    """Mean next-token NLL of ``model`` on ``ids`` (n, seq_len), fp64 sum over windows."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for row in ids:
        x = row[None].to(dev)
        logits = model(input_ids=x).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").double())
        count += x.shape[1] - 1
    return total / count


class MaskProbe:
    """Callable for ``bench.harness.train.train(probes=[...])``: ``probe(model, step) -> dict | None``.

    Args:
        heldout_ids: (n, seq_len) tokens the probe's perplexity runs on.
        steps: optimizer steps to probe at; ``None``: ``log_steps(freeze)``, 1, 2, 4, ... up to the mask's freeze
            step, read from the mask at the first call. Steps at or after the freeze are skipped (the selection is
            fixed there; the final model is measured by the suite itself).
    """

    def __init__(self, heldout_ids: torch.Tensor, steps: list[int] | None = None):
        self.heldout_ids = heldout_ids
        self.steps = None if steps is None else set(int(s) for s in steps)

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        mask: SharedMask = get_mask(model)
        if self.steps is None:
            self.steps = set(log_steps(int(mask.freeze_frac * mask.s0)))
        if step not in self.steps:
            return None
        if bool(mask.snapped):
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise RuntimeError("MaskProbe: probing the mask is single-process only")
        n = int(mask.target)
        proxy_top = _top(mask.full_proxy(), n)
        taylor_top = _top(mask.importance, n)
        saved = {"proxy": mask.proxy.detach().clone(), **{k: getattr(mask, k).clone() for k in _BUFFERS}}
        was_training, hard = model.training, mask.hard
        active = int(mask.active().sum())
        try:
            mask.snap(n, by="proxy", step=-1)  # exactly the current top-N proxies, a 0/1 gate
            model.eval()
            nll = heldout_nll(model, self.heldout_ids)
        finally:
            mask.proxy.data.copy_(saved["proxy"])
            for k in _BUFFERS:
                getattr(mask, k).copy_(saved[k])
            mask.hard = hard
            mask.clear()
            model.train(was_training)
        return {"step": int(step), "active": active, "heldout_nll": nll, "heldout_ppl": math.exp(min(nll, 700.0)),
                "proxy_topn": proxy_top, "taylor_topn": taylor_top,
                "jaccard_proxy_taylor": jaccard(proxy_top, taylor_top)}

    @staticmethod
    def finish(probes: list[dict[str, Any]], kept_channels: list[int] | None) -> list[dict[str, Any]]:
        """Add each probe's overlap with the final selection (``kept_channels`` of the stage report)."""
        if kept_channels is None:
            return probes
        for p in probes:
            p["jaccard_proxy_final"] = jaccard(p["proxy_topn"], kept_channels)
            p["jaccard_taylor_final"] = jaccard(p["taylor_topn"], kept_channels)
        return probes
