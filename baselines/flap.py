"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024), after CASIA-IVA-Lab/FLAP
``lib/prune.py``.

- **Statistics.** For the inputs of ``o_proj`` and ``down_proj``: per-channel mean and variance over all calibration
  tokens (the "fluctuation"; the stage draws FLAP's 1024 windows of 128 tokens, from C4: the authors used WikiText-2
  train, which the data directory does not ship).
- **WIFV** of input channel ``j`` = ``var(x_j) * ||W[:, j]||^2``; the attention channels' WIFV is squared before
  standardizing, the MLP's is not (the authors' ``prune.py``; ``square_attn=False`` squares neither). A KV group's
  score is the mean over its query heads' columns (FLAP: the mean over a head's 128 dims; with GQA the unit is the
  whole query group).
- **Standardization.** Per layer, z-score of the per-channel metric of ``o_proj`` and of ``down_proj`` inputs
  (FLAP's ``standarlization``, ``axis=1``); a KV group then scores the mean of its columns' z-scores.
- **Global selection (AL-AM).** All groups and channels of all layers are ranked together; the kept set is the top
  of that ranking whose parameter cost is closest to the budget (each unit weighted by the parameters it owns). At
  least one KV group and one channel stay in each layer. The ratio is the whole model's parameter reduction.
- **Bias compensation.** ``b += W[:, removed] @ mean(x[removed])`` on ``o_proj`` / ``down_proj``. Where the config has
  ``attention_bias`` / ``mlp_bias`` flags (Llama), they are set and the other projections get zero biases, so the
  config describes the modules stock code builds; otherwise only ``o_proj``/``down_proj`` get a bias, recorded in the
  pruned manifest (``baselines.pruned_io``).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from baselines.common import (
    OneShotStage, attn_geom, check_calibration, group_q_rows, input_stats, layer_costs, layer_path,
    prune_layer, run_calibration, sync_config, target_params,
)
from pat.arch import base_model, count_params, decoder_layers, get_arch, get_module

log = logging.getLogger(__name__)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def flap_stats(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> dict:
    """``InputStats`` of every layer's ``o_proj`` and ``down_proj`` inputs, keyed by their module paths."""
    model = base_model(model)
    arch = get_arch(model)
    paths = [layer_path(arch, i, p) for i in range(len(decoder_layers(model))) for p in (arch.attn_out, arch.mlp_out)]
    with input_stats(model, paths) as stats:
        run_calibration(model, calibration, batch_size)
    return stats


def wifv_scores(model: nn.Module, stats: dict,
                square_attn: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, standardized WIFV of the KV groups (n_kv,) and MLP channels (intermediate,).

    ``square_attn``: square the attention channels' WIFV before standardizing (the authors' ``prune.py``, ``** 2`` on
    ``self_attn.o_proj`` only); ``False`` standardizes the plain WIFV of both."""
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    groups, chans = [], []
    for i, layer in enumerate(decoder_layers(model, arch)):
        g = attn_geom(layer, arch, cfg)
        o, d = get_module(layer, arch.attn_out), get_module(layer, arch.mlp_out)
        so = stats[layer_path(arch, i, arch.attn_out)].var * o.weight.detach().double().pow(2).sum(0)
        sd = stats[layer_path(arch, i, arch.mlp_out)].var * d.weight.detach().double().pow(2).sum(0)
        so = so**2 if square_attn else so
        groups.append(_zscore(so).view(g.n_kv, -1).mean(1).cpu())  # FLAP: z-score per channel, then head mean
        chans.append(_zscore(sd).cpu())
    return groups, chans


def global_select(groups: list[torch.Tensor], chans: list[torch.Tensor], costs, remove: float) -> tuple[list, list]:
    """Keep masks per layer: the globally best units whose kept cost is closest to ``total cost - remove``."""
    scores, cost, owner = [], [], []
    for li, (gs, cs, c) in enumerate(zip(groups, chans, costs)):
        scores += [gs, cs]
        cost += [torch.full_like(gs, c.group_params), torch.full_like(cs, c.channel_params)]
        owner += [(li, 0, gs.numel()), (li, 1, cs.numel())]
    s, w = torch.cat(scores), torch.cat(cost)
    order = torch.argsort(s, descending=True, stable=True)
    kept_cost = torch.cumsum(w[order], 0)
    k = int(torch.argmin((kept_cost - (w.sum() - remove)).abs())) + 1
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep[order[:k]] = True
    masks, pos = [], 0
    for li, kind, n in owner:
        m = keep[pos:pos + n].clone()
        if not m.any():  # at least one unit per layer and module: its best one
            m[torch.argmax(s[pos:pos + n])] = True
        masks.append(m)
        pos += n
    return masks[0::2], masks[1::2]


def _ensure_bias(lin: nn.Linear) -> None:
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))


def _add_compensation_biases(model: nn.Module) -> None:
    """Give o_proj/down_proj biases; with Llama-style config flags, all attention/MLP projections (zeros)."""
    arch, cfg = get_arch(model), model.config
    attn_flag, mlp_flag = hasattr(cfg, "attention_bias"), hasattr(cfg, "mlp_bias")
    for layer in decoder_layers(model, arch):
        paths = [arch.attn_out, arch.mlp_out]
        paths += (list(arch.attn_in) if attn_flag else []) + (list(arch.mlp_in) if mlp_flag else [])
        for p in paths:
            _ensure_bias(get_module(layer, p))
    if attn_flag:
        cfg.attention_bias = True
    if mlp_flag:
        cfg.mlp_bias = True


@torch.no_grad()
def prune(model: nn.Module, ratio: float, calibration, batch_size: int = 8, square_attn: bool = True,
          target: str = "ratio") -> tuple[nn.Module, dict]:
    """FLAP: remove about ``ratio`` of the whole model's parameters with adaptive per-layer widths (in place).

    Args:
        calibration: LongTensor (n, seq_len), or a callable returning one.
        square_attn: square the attention metric before standardizing, as the authors' code (see ``wifv_scores``).
        target: ``"ratio"``: keep ``1 - ratio`` of the model's parameters; ``"params"``: keep PAT's count at
            ``ratio`` (``baselines.common.pat_params``).
    Returns:
        ``(model, report)`` with per-layer widths and the achieved parameter ratio (compensation biases included).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1); got {ratio}")
    calibration = check_calibration(calibration)
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    total = count_params(model)
    goal = target_params(model, ratio, target)
    t0 = time.perf_counter()
    stats = flap_stats(model, calibration, batch_size)
    groups, chans = wifv_scores(model, stats, square_attn)
    layers = decoder_layers(model, arch)
    _add_compensation_biases(model)  # first, so that the budget pays for the added biases too
    remove = count_params(model) - goal
    gmasks, cmasks = global_select(groups, chans, layer_costs(model, list(range(len(layers)))), remove)
    widths = []
    for i, layer in enumerate(layers):
        g = attn_geom(layer, arch, cfg)
        _compensate(layer.get_submodule(arch.attn_out), stats[layer_path(arch, i, arch.attn_out)].mean,
                    group_q_rows(torch.nonzero(~gmasks[i]).flatten(), g))
        _compensate(layer.get_submodule(arch.mlp_out), stats[layer_path(arch, i, arch.mlp_out)].mean,
                    torch.nonzero(~cmasks[i]).flatten())
        prune_layer(layer, arch, cfg, torch.nonzero(gmasks[i]).flatten(), torch.nonzero(cmasks[i]).flatten())
        widths.append({"layer": i, "kv_heads": int(gmasks[i].sum()), "heads": int(gmasks[i].sum()) * g.group,
                       "intermediate": int(cmasks[i].sum())})
    sync_config(model)
    after = count_params(model)
    report = {"method": "flap", "metric": "WIFV", "square_attn": square_attn, "target": target, "target_ratio": ratio,
              "params_before": total, "params_target": goal, "params_after": after, "params_off": after / goal - 1,
              "achieved_ratio": 1 - after / total, "widths": widths, "calibration_shape": list(calibration.shape),
              "score_seconds": round(time.perf_counter() - t0, 3)}
    log.info("flap: target %.3f achieved %.4f", ratio, report["achieved_ratio"])
    return model, report


def _compensate(lin: nn.Linear, mean: torch.Tensor, removed: torch.Tensor) -> None:
    """``lin.bias += W[:, removed] @ mean[removed]`` (the removed inputs replaced by their calibration mean)."""
    if removed.numel():
        w = lin.weight.detach().double()[:, removed.to(lin.weight.device)]
        lin.bias.data += (w @ mean[removed.to(mean.device)]).to(lin.bias.dtype)


class FLAPStage(OneShotStage):
    """FLAP as a pipeline stage."""

    name = "flap"
    calib_n = 1024
    calib_len = 128
    prune_fn = staticmethod(prune)
