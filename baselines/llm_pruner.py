"""LLM-Pruner, block-wise (Ma et al., NeurIPS 2023), implemented natively on ``pat.arch.ArchSpec``.

As in horseee/LLM-Pruner (``hf_prune.py``, ``llama3.py``, ``hf_llama_pruner.TaylorImportance``):

- **Groups.** Attention: one KV head with its query group (q/k/v rows plus the matching ``o_proj`` columns; for
  MHA a group is one head). MLP: one intermediate channel (gate/up rows plus the ``down_proj`` column).
- **Importance.** Taylor on calibration text (10 x 64 tokens by default): salience per weight ``W * dL/dW``
  (``first``), ``W * F * W`` with the diagonal empirical Fisher ``F`` = mean of per-sample squared gradients
  (``second``), or first minus half second (``mix``). ``element``-wise takes ``|salience|`` per weight and sums
  it over the group; ``vector``-wise sums per channel first and takes ``|.|`` after. Group importance = sum over
  the group's members (``--grouping_strategy sum``). ``random`` draws seeded random scores.
- **Selection.** Local: one uniform ratio per pruned layer. The layers ``[4, 30)`` of 32 are scaled to the model
  (``common.layer_range``; 30 layers -> ``[4, 28)``).
- **Target.** The whole model's parameter reduction (``target="ratio"``), or PAT's parameter count at the ratio
  (``target="params"``); ``common.solve_uniform_ratio`` solves the group ratio. Per layer the authors remove
  ``n - int(n (1 - r))`` units (``rounding="up"``, the default); ``rounding="nearest"`` removes ``round(r n)``.

Memory: gradients are only materialized for the linears of ``chunk_layers`` layers per backward pass (default: all
pruned layers in one pass), so scoring a 7B model fits on one GPU by chunking (see ``docs/baselines.md``).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from baselines.common import (
    OneShotStage, apply_uniform, attn_geom, check_calibration, layer_costs, layer_range,
    solve_uniform_ratio, target_params,
)
from pat.arch import base_model, count_params, decoder_layers, get_arch, get_module

log = logging.getLogger(__name__)

IMPORTANCE = ("first", "second", "mix", "random")
MODES = ("element", "vector")


def _salience(lin: nn.Linear, kind: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per-weight salience of ``lin`` (and of its bias, or None)."""
    out = []
    for p in (lin.weight, lin.bias):
        if p is None:
            out.append(None)
            continue
        first = p.data * p.grad if kind in ("first", "mix") else None
        second = p.data * p.acc_grad * p.data if kind in ("second", "mix") else None
        out.append(first if kind == "first" else second if kind == "second" else first - 0.5 * second)
    return out  # type: ignore[return-value]


def _rows(lin: nn.Linear, kind: str, mode: str) -> torch.Tensor:
    """Importance per output row, shape (out,)."""
    s, sb = _salience(lin, kind)
    imp = s.abs().sum(1) if mode == "element" else s.sum(1).abs()
    return imp + sb.abs() if sb is not None else imp


def _cols(lin: nn.Linear, kind: str, mode: str) -> torch.Tensor:
    """Importance per input column, shape (in,)."""
    s, _ = _salience(lin, kind)
    return s.abs().sum(0) if mode == "element" else s.sum(0).abs()


def _layer_scores(layer: nn.Module, arch, config, kind: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(KV-group scores (n_kv,), MLP-channel scores (intermediate,)) of one layer from its gradients."""
    g = attn_geom(layer, arch, config)
    q = _rows(get_module(layer, arch.attn_in[0]), kind, mode) + _cols(get_module(layer, arch.attn_out), kind, mode)
    groups = q.view(g.n_kv, g.group * g.hd).sum(1)
    for path in arch.attn_in[1:]:
        groups = groups + _rows(get_module(layer, path), kind, mode).view(g.n_kv, g.hd).sum(1)
    chans = _cols(get_module(layer, arch.mlp_out), kind, mode)
    for path in arch.mlp_in:
        chans = chans + _rows(get_module(layer, path), kind, mode)
    return groups.double().cpu(), chans.double().cpu()


def _linears(layer: nn.Module, arch) -> list[nn.Linear]:
    return [get_module(layer, p) for p in (*arch.attn_in, arch.attn_out, *arch.mlp_in, arch.mlp_out)]


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def taylor_scores(model: nn.Module, calibration: torch.Tensor, layers: list[int], kind: str = "first",
                  mode: str = "element", chunk_layers: int | None = None
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Taylor group importance of ``layers`` on ``calibration`` (n, seq_len).

    Only the linears of at most ``chunk_layers`` layers hold gradients at a time (one forward/backward per chunk).
    Returns per-layer KV-group and MLP-channel scores.
    """
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    device = next(model.parameters()).device
    ids = calibration.to(device)
    was_training, grad_state = model.training, {id(p): p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    chunk = chunk_layers or len(layers)
    groups, chans = [], []
    try:
        for c0 in range(0, len(layers), chunk):
            idx = layers[c0:c0 + chunk]
            lins = [lin for i in idx for lin in _linears(decoder_layers(model, arch)[i], arch)]
            params = [p for lin in lins for p in (lin.weight, lin.bias) if p is not None]
            for p in params:
                p.requires_grad_(True)
            if kind in ("second", "mix"):
                _accumulate_fisher(model, ids, params)
            _lm_loss(model, ids).backward()
            for i in idx:
                gs, cs = _layer_scores(decoder_layers(model, arch)[i], arch, cfg, kind, mode)
                groups.append(gs)
                chans.append(cs)
            for p in params:
                p.grad = None
                if hasattr(p, "acc_grad"):
                    del p.acc_grad
                p.requires_grad_(False)
    finally:
        for p in model.parameters():
            p.requires_grad_(grad_state[id(p)])
        model.train(was_training)
    return groups, chans


def _accumulate_fisher(model: nn.Module, ids: torch.Tensor, params: list[nn.Parameter]) -> None:
    """``p.acc_grad`` = mean over samples of the per-sample squared gradient (LLM-Pruner's diagonal Fisher)."""
    for p in params:
        p.acc_grad = torch.zeros_like(p)
    for j in range(ids.shape[0]):
        _lm_loss(model, ids[j:j + 1]).backward()
        for p in params:
            p.acc_grad += p.grad * p.grad / ids.shape[0]
            p.grad = None


def random_scores(model: nn.Module, layers: list[int], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeded random importance (LLM-Pruner's ``--pruner_type random``)."""
    gen = torch.Generator().manual_seed(seed)
    costs = layer_costs(model, layers)
    # scores live on the CPU on purpose (all selection math does, see common.top_k); same draws on every device
    return ([torch.rand(c.n_kv, generator=gen, dtype=torch.float64, device="cpu") for c in costs],
            [torch.rand(c.n_channels, generator=gen, dtype=torch.float64, device="cpu") for c in costs])


def prune(model: nn.Module, ratio: float, calibration, importance: str = "first", mode: str = "element",
          layer_start: int | None = None, layer_end: int | None = None, chunk_layers: int | None = None,
          seed: int = 0, tol: float = 0.01, rounding: str = "up", target: str = "ratio") -> tuple[nn.Module, dict]:
    """Block-wise LLM-Pruner: remove ``ratio`` of the whole model's parameters (in place).

    Args:
        model: a causal LM of a supported architecture.
        ratio: target fraction of all parameters to remove, in [0, 1).
        calibration: LongTensor (n, seq_len) (10 x 64 in LLM-Pruner), or a callable returning one.
        importance: ``first`` | ``second`` | ``mix`` | ``random``; mode: ``element`` | ``vector``.
        layer_start, layer_end: pruned layers ``[start, end)``; default LLM-Pruner's 4..30 of 32, scaled.
        chunk_layers: layers whose gradients are held at once (bounds memory).
        rounding: units removed per layer at group ratio ``r``: ``"up"`` = ``n - int(n (1 - r))``, the authors'
            (``metapruner.py``); ``"nearest"`` = ``round(r n)``; ``"down"`` = ``int(r n)``.
        target: ``"ratio"``: remove ``ratio`` of the model's parameters; ``"params"``: keep PAT's count at ``ratio``
            (``baselines.common.pat_params``).
    Returns:
        ``(model, report)`` with the solved ratios, per-layer widths and achieved parameter ratio.
    """
    if importance not in IMPORTANCE:
        raise ValueError(f"importance: unknown '{importance}'; expected one of {', '.join(IMPORTANCE)}")
    if mode not in MODES:
        raise ValueError(f"mode: unknown '{mode}'; expected one of {', '.join(MODES)}")
    model = base_model(model)
    n_layers = len(decoder_layers(model))
    s, e = layer_range(n_layers, layer_start, layer_end)
    layers = list(range(s, e))
    total = count_params(model)
    goal = target_params(model, ratio, target)
    t0 = time.perf_counter()
    if importance == "random":
        calib_shape = None
        groups, chans = random_scores(model, layers, seed)
    else:
        calibration = check_calibration(calibration)
        calib_shape = list(calibration.shape)
        groups, chans = taylor_scores(model, calibration, layers, importance, mode, chunk_layers)
    t_score = time.perf_counter() - t0
    sol = solve_uniform_ratio(layer_costs(model, layers), total, 1 - goal / total, tol, rounding)
    widths = apply_uniform(model, layers, groups, chans, sol["attn_ratio"], sol["mlp_ratio"], rounding)
    after = count_params(model)
    report = {
        "method": "llm_pruner", "importance": importance, "mode": mode, "target": target, "target_ratio": ratio,
        "rounding": rounding, "params_target": goal, "params_off": after / goal - 1,
        "layer_range": [s, e], "group_ratio": sol["group_ratio"], "attn_ratio": sol["attn_ratio"],
        "mlp_ratio": sol["mlp_ratio"], "params_before": total, "params_after": after,
        "achieved_ratio": 1 - after / total, "widths": widths, "calibration_shape": calib_shape,
        "score_seconds": round(t_score, 3),
    }
    log.info("llm_pruner %s/%s: target %.3f achieved %.4f (%d -> %d params)", importance, mode, ratio,
             report["achieved_ratio"], total, after)
    return model, report


class LLMPrunerStage(OneShotStage):
    """LLM-Pruner as a pipeline stage (``["llm_pruner", "lora"]`` = P->FT, ``["lora", "llm_pruner"]`` = FT->P)."""

    name = "llm_pruner"
    calib_n = 10
    calib_len = 64
    prune_fn = staticmethod(prune)
