"""Wanda-SP: structured Wanda, as defined in FLAP's repo (``lib/prune.py: prune_wanda_sp``).

Score of input column ``j`` of ``o_proj`` / ``down_proj`` = mean over output rows of ``|W_ij| * ||x_j||_2``, with
``||x_j||`` the L2 norm of that input channel over all calibration tokens (128 C4 windows of 128 tokens, as FLAP's
repo). A KV group's score is the sum over its query heads' columns. The lowest fraction is removed **uniformly in
every layer** (``int(r n)`` units, the authors' rounding); no bias compensation, no weight update.

**Sequential** (default, as the authors): layer ``i``'s statistics come from the outputs of the already pruned layers
``< i``; ``sequential=False`` scores every layer in one pass over the unpruned model. The ratio is the whole model's
parameter reduction (or PAT's count, ``target="params"``), solved as in LLM-Pruner (``common.solve_uniform_ratio``).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from baselines.common import (
    OneShotStage, apply_uniform, attn_geom, check_calibration, input_stats, layer0_inputs, layer_costs,
    layer_path, layer_range, prune_layer, run_calibration, solve_uniform_ratio, sync_config, target_params, top_k,
    uniform_counts,
)
from pat.arch import base_model, count_params, decoder_layers, get_arch, get_module

log = logging.getLogger(__name__)


def _layer_scores(layer: nn.Module, arch, cfg, o_stats, d_stats) -> tuple[torch.Tensor, torch.Tensor]:
    g = attn_geom(layer, arch, cfg)
    o, d = get_module(layer, arch.attn_out), get_module(layer, arch.mlp_out)
    so = (o.weight.detach().double().abs() * o_stats.l2).mean(0)
    sd = (d.weight.detach().double().abs() * d_stats.l2).mean(0)
    return so.view(g.n_kv, g.group * g.hd).sum(1).cpu(), sd.cpu()


def wanda_scores(model: nn.Module, calibration: torch.Tensor,
                 batch_size: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One pass over the unpruned model: per layer, KV-group scores (n_kv,) and MLP-channel scores (intermediate,)."""
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    layers = decoder_layers(model, arch)
    paths = [layer_path(arch, i, p) for i in range(len(layers)) for p in (arch.attn_out, arch.mlp_out)]
    with input_stats(model, paths) as stats:
        run_calibration(model, calibration, batch_size)
    groups, chans = [], []
    for i, layer in enumerate(layers):
        gs, cs = _layer_scores(layer, arch, cfg, stats[layer_path(arch, i, arch.attn_out)],
                               stats[layer_path(arch, i, arch.mlp_out)])
        groups.append(gs)
        chans.append(cs)
    return groups, chans


def _run_layer(layer: nn.Module, hs: list[torch.Tensor], kws: list[dict]) -> list[torch.Tensor]:
    out = []
    for h, kw in zip(hs, kws):
        y = layer(h, **kw)
        out.append((y[0] if isinstance(y, tuple) else y).detach())
    return out


@torch.no_grad()
def prune_sequential(model: nn.Module, calibration: torch.Tensor, layers: list[int], attn_ratio: float,
                     mlp_ratio: float, rounding: str = "down",
                     batch_size: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict]]:
    """FLAP's ``prune_wanda_sp`` order: layer by layer, score from the inputs that the already pruned earlier layers
    produce, prune, then run the pruned layer to get the next layer's inputs (in place).

    Returns:
        Per pruned layer: KV-group scores, MLP-channel scores, and the widths after pruning.
    """
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    hs, kws = layer0_inputs(model, calibration, batch_size)
    groups, chans, widths = [], [], []
    todo = set(layers)
    for i, layer in enumerate(decoder_layers(model, arch)):
        if i > max(layers):
            break
        if i in todo:
            o_path, d_path = layer_path(arch, i, arch.attn_out), layer_path(arch, i, arch.mlp_out)
            with input_stats(model, [o_path, d_path]) as stats:
                _run_layer(layer, hs, kws)
            gs, cs = _layer_scores(layer, arch, cfg, stats[o_path], stats[d_path])
            cost = layer_costs(model, [i])[0]
            k, c = uniform_counts(cost, attn_ratio, mlp_ratio, rounding)
            prune_layer(layer, arch, cfg, top_k(gs, cost.n_kv - k), top_k(cs, cost.n_channels - c))
            g = attn_geom(layer, arch, cfg)
            groups.append(gs)
            chans.append(cs)
            widths.append({"layer": i, "kv_heads": g.n_kv, "heads": g.n_heads, "intermediate": cost.n_channels - c})
        hs = _run_layer(layer, hs, kws)
    sync_config(model)
    return groups, chans, widths


def prune(model: nn.Module, ratio: float, calibration, batch_size: int = 8, tol: float = 0.01,
          layer_start: int | None = None, layer_end: int | None = None, sequential: bool = True,
          rounding: str = "down", target: str = "ratio") -> tuple[nn.Module, dict]:
    """Wanda-SP: remove ``ratio`` of the whole model's parameters with one uniform ratio over the layers (in place).

    Args:
        calibration: LongTensor (n, seq_len), or a callable returning one.
        layer_start, layer_end: pruned layers ``[start, end)``; default every layer (FLAP's ``prune_wanda_sp``).
        sequential: score layer ``i`` on the outputs of the already pruned layers before it (the authors' order);
            ``False`` scores every layer in one pass over the unpruned model.
        rounding: units removed per layer at ratio ``r``: ``"down"`` = ``int(r n)`` (the authors'), ``"nearest"``,
            ``"up"`` (see ``common.removed_count``).
        target: ``"ratio"``: remove ``ratio`` of the model's parameters; ``"params"``: keep PAT's count at ``ratio``.
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
    goal = target_params(model, ratio, target)
    sol = solve_uniform_ratio(layer_costs(model, layers), total, 1 - goal / total, tol, rounding)
    t0 = time.perf_counter()
    if sequential:
        _, _, widths = prune_sequential(model, calibration, layers, sol["attn_ratio"], sol["mlp_ratio"], rounding,
                                        batch_size)
    else:
        groups, chans = wanda_scores(model, calibration, batch_size)
        widths = apply_uniform(model, layers, groups[s:e], chans[s:e], sol["attn_ratio"], sol["mlp_ratio"], rounding)
    t_score = time.perf_counter() - t0
    after = count_params(model)
    report = {
        "method": "wanda_sp", "sequential": sequential, "rounding": rounding, "target": target, "target_ratio": ratio,
        "layer_range": [s, e], "group_ratio": sol["group_ratio"], "attn_ratio": sol["attn_ratio"],
        "mlp_ratio": sol["mlp_ratio"], "params_before": total, "params_target": goal, "params_after": after,
        "params_off": after / goal - 1, "achieved_ratio": 1 - after / total, "widths": widths,
        "calibration_shape": list(calibration.shape), "score_seconds": round(t_score, 3),
    }
    log.info("wanda_sp: target %.3f achieved %.4f", ratio, report["achieved_ratio"])
    return model, report


class WandaSPStage(OneShotStage):
    """Wanda-SP as a pipeline stage; FLAP's repo calibrates it on 128 C4 windows of 128 tokens."""

    name = "wanda_sp"
    calib_n = 128
    calib_len = 128
    prune_fn = staticmethod(prune)
