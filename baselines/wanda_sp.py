"""Wanda-SP: structured Wanda, as defined in FLAP's repo (``lib/prune.py: prune_wanda_sp``).

Score of input column ``j`` of ``o_proj`` / ``down_proj`` = mean over output rows of ``|W_ij| * ||x_j||_2``, with
``||x_j||`` the L2 norm of that input channel over all calibration tokens (128 C4 windows by default). A KV group's
score is the sum over its query heads' columns. The lowest fraction is removed **uniformly in every layer**; no bias
compensation, no weight update. The ratio is the whole model's parameter reduction, solved as in LLM-Pruner
(``common.solve_uniform_ratio``).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from baselines.common import (
    OneShotStage, apply_uniform, attn_geom, check_calibration, input_stats, layer_costs, layer_path,
    layer_range, run_calibration, solve_uniform_ratio,
)
from pat.arch import base_model, count_params, decoder_layers, get_arch, get_module

log = logging.getLogger(__name__)


def wanda_scores(model: nn.Module, calibration: torch.Tensor,
                 batch_size: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: KV-group scores (n_kv,) and MLP-channel scores (intermediate,)."""
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    layers = decoder_layers(model, arch)
    paths = [layer_path(arch, i, p) for i in range(len(layers)) for p in (arch.attn_out, arch.mlp_out)]
    with input_stats(model, paths) as stats:
        run_calibration(model, calibration, batch_size)
    groups, chans = [], []
    for i, layer in enumerate(layers):
        g = attn_geom(layer, arch, cfg)
        o, d = get_module(layer, arch.attn_out), get_module(layer, arch.mlp_out)
        so = (o.weight.detach().double().abs() * stats[layer_path(arch, i, arch.attn_out)].l2).mean(0)
        sd = (d.weight.detach().double().abs() * stats[layer_path(arch, i, arch.mlp_out)].l2).mean(0)
        groups.append(so.view(g.n_kv, g.group * g.hd).sum(1).cpu())
        chans.append(sd.cpu())
    return groups, chans


def prune(model: nn.Module, ratio: float, calibration, batch_size: int = 8, tol: float = 0.01,
          layer_start: int | None = None, layer_end: int | None = None) -> tuple[nn.Module, dict]:
    """Wanda-SP: remove ``ratio`` of the whole model's parameters with one uniform ratio over the layers (in place).

    Args:
        calibration: LongTensor (n, seq_len), or a callable returning one.
        layer_start, layer_end: pruned layers ``[start, end)``; default every layer (FLAP's ``prune_wanda_sp``).
    Returns:
        ``(model, report)``.
    """
    calibration = check_calibration(calibration)
    model = base_model(model)
    n_layers = len(decoder_layers(model))
    whole = layer_start is None and layer_end is None
    s, e = (0, n_layers) if whole else layer_range(n_layers, layer_start, layer_end)
    layers = list(range(s, e))
    total = count_params(model)
    t0 = time.perf_counter()
    groups, chans = wanda_scores(model, calibration, batch_size)
    groups, chans = groups[s:e], chans[s:e]
    t_score = time.perf_counter() - t0
    sol = solve_uniform_ratio(layer_costs(model, layers), total, ratio, tol)
    widths = apply_uniform(model, layers, groups, chans, sol["attn_ratio"], sol["mlp_ratio"])
    after = count_params(model)
    report = {
        "method": "wanda_sp", "target_ratio": ratio, "layer_range": [s, e], "group_ratio": sol["group_ratio"],
        "attn_ratio": sol["attn_ratio"],
        "mlp_ratio": sol["mlp_ratio"], "params_before": total, "params_after": after,
        "achieved_ratio": 1 - after / total, "widths": widths, "calibration_shape": list(calibration.shape),
        "score_seconds": round(t_score, 3),
    }
    log.info("wanda_sp: target %.3f achieved %.4f", ratio, report["achieved_ratio"])
    return model, report


class WandaSPStage(OneShotStage):
    """Wanda-SP as a pipeline stage."""

    name = "wanda_sp"
    calib_n = 128
    calib_len = 128
    prune_fn = staticmethod(prune)
