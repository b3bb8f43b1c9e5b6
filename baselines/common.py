"""Shared helpers of the structured-pruning baselines: slicing linears, GQA head groups, activation statistics,
uniform-ratio solving and config sync.

All architecture knowledge comes from ``pat.arch.ArchSpec``: ``attn_in`` is ``(q, k, v)``, ``attn_out`` is ``o``,
``mlp_in`` the gate/up projections and ``mlp_out`` the down projection. A *KV group* is one key/value head together
with the ``num_key_value_groups`` query heads that read it; removing a group keeps ``num_key_value_groups`` unchanged.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from pat.arch import ArchSpec, base_model, count_params, decoder_layers, get_arch, get_module, head_dim, set_module
from pat.stage import StageDefaults

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class AttnGeom:
    """Head geometry of one attention block: ``n_heads`` query heads, ``n_kv`` KV heads of width ``hd``."""

    n_heads: int
    n_kv: int
    hd: int

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv


def attn_geom(layer: nn.Module, arch: ArchSpec, config) -> AttnGeom:
    """The current (possibly pruned) head counts of ``layer``, read from its linear shapes."""
    hd = head_dim(config)
    q = get_module(layer, arch.attn_in[0])
    k = get_module(layer, arch.attn_in[1])
    return AttnGeom(q.out_features // hd, k.out_features // hd, hd)


def attn_module_path(arch: ArchSpec) -> str:
    return arch.attn_out.rpartition(".")[0]


def group_q_rows(groups: torch.Tensor, geom: AttnGeom) -> torch.Tensor:
    """Rows of ``q_proj`` (= columns of ``o_proj``) of the KV groups ``groups`` (sorted), shape (k*g*hd,)."""
    heads = (groups[:, None] * geom.group + torch.arange(geom.group, device=groups.device)[None, :]).reshape(-1)
    return (heads[:, None] * geom.hd + torch.arange(geom.hd, device=groups.device)[None, :]).reshape(-1)


def group_kv_rows(groups: torch.Tensor, geom: AttnGeom) -> torch.Tensor:
    """Row indices of ``k_proj``/``v_proj`` belonging to KV groups ``groups``, shape (k*hd,)."""
    return (groups[:, None] * geom.hd + torch.arange(geom.hd, device=groups.device)[None, :]).reshape(-1)


def slice_linear(lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` keeping rows ``out_idx`` and columns ``in_idx`` (``None`` keeps all); bias follows rows."""
    w = lin.weight.data
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        b = lin.bias.data if out_idx is None else lin.bias.data.index_select(0, out_idx.to(w.device))
        new.bias.data.copy_(b)
    return new


def prune_attention_groups(layer: nn.Module, arch: ArchSpec, config, keep: torch.Tensor) -> None:
    """Keep only KV groups ``keep`` (with their query heads) in ``layer``; updates the attention module's counts."""
    geom = attn_geom(layer, arch, config)
    keep = torch.sort(keep.to(torch.long).cpu()).values  # index math on the CPU on purpose; slice_linear moves it
    if keep.numel() == 0:
        raise ValueError("prune_attention_groups: keep must retain at least one KV group (got none)")
    q_rows, kv_rows = group_q_rows(keep, geom), group_kv_rows(keep, geom)
    set_module(layer, arch.attn_in[0], slice_linear(get_module(layer, arch.attn_in[0]), out_idx=q_rows))
    for path in arch.attn_in[1:]:
        set_module(layer, path, slice_linear(get_module(layer, path), out_idx=kv_rows))
    set_module(layer, arch.attn_out, slice_linear(get_module(layer, arch.attn_out), in_idx=q_rows))
    set_attn_counts(get_module(layer, attn_module_path(arch)), keep.numel() * geom.group, keep.numel())


def set_attn_counts(attn: nn.Module, n_heads: int, n_kv: int) -> None:
    """Keep the attention module's bookkeeping consistent (``num_key_value_groups`` and any head-count attributes)."""
    attn.num_key_value_groups = n_heads // n_kv
    for name, value in (("num_heads", n_heads), ("num_attention_heads", n_heads), ("num_key_value_heads", n_kv)):
        if hasattr(attn, name):
            setattr(attn, name, value)


def prune_mlp_channels(layer: nn.Module, arch: ArchSpec, keep: torch.Tensor) -> None:
    """Keep only intermediate channels ``keep`` of ``layer``'s MLP."""
    keep = torch.sort(keep.to(torch.long).cpu()).values
    if keep.numel() == 0:
        raise ValueError("prune_mlp_channels: keep must retain at least one channel (got none)")
    for path in arch.mlp_in:
        set_module(layer, path, slice_linear(get_module(layer, path), out_idx=keep))
    set_module(layer, arch.mlp_out, slice_linear(get_module(layer, arch.mlp_out), in_idx=keep))


def sync_config(model: nn.Module) -> None:
    """Write the per-layer widths back into the config: uniform values when all layers agree, else the maxima.

    ``head_dim`` is always made explicit. Heterogeneous models carry their true widths in the pruned manifest
    (``baselines.pruned_io``).
    """
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    cfg.head_dim = head_dim(cfg)
    geoms = [attn_geom(layer, arch, cfg) for layer in decoder_layers(model, arch)]
    inter = [get_module(layer, arch.mlp_out).in_features for layer in decoder_layers(model, arch)]
    cfg.num_attention_heads = max(g.n_heads for g in geoms)
    cfg.num_key_value_heads = max(g.n_kv for g in geoms)
    cfg.intermediate_size = max(inter)


# ------------------------------------------------------------------------------------------------------ size targets
TARGETS = ("ratio", "params")


def pat_params(model: nn.Module, ratio: float, align: int | None = None) -> int:
    """Parameters of the model PAT finalizes at ``ratio``: the same config with ``hidden_size`` = PAT's kept width
    (``pat.config.PATConfig.target_keep``: ``d (1 - r)`` rounded to a multiple of ``align``, default the head count)
    and an explicit ``head_dim``; tied embeddings stay tied (PAT's default ``embed_hsm="auto"``). Built on the meta
    device, so nothing is allocated."""
    import copy

    from transformers import AutoModelForCausalLM

    from pat.config import PATConfig

    cfg = copy.deepcopy(base_model(model).config)
    d, hd = cfg.hidden_size, head_dim(cfg)
    cfg.hidden_size = PATConfig(prune_ratio=ratio, align=align).target_keep(d, cfg.num_attention_heads)
    cfg.head_dim = hd
    with torch.device("meta"):
        return count_params(AutoModelForCausalLM.from_config(cfg))


def target_params(model: nn.Module, ratio: float, target: str = "ratio") -> int:
    """The parameter count a pruner aims at: ``(1 - ratio)`` of the model's (``"ratio"``) or PAT's count at
    ``ratio`` (``"params"``, size matching)."""
    if target == "ratio":
        return round((1 - ratio) * count_params(model))
    if target == "params":
        return pat_params(model, ratio)
    raise ValueError(f"target: unknown '{target}'; expected one of {', '.join(TARGETS)}")


# ------------------------------------------------------------------------------------------------------ ratio solving
def layer_range(n_layers: int, start: int | None = None, end: int | None = None) -> tuple[int, int]:
    """LLM-Pruner's pruned layer range ``[4, 30)`` of 32, scaled to ``n_layers`` (30 layers: ``[4, 28)``)."""
    s = round(4 * n_layers / 32) if start is None else start
    e = round(30 * n_layers / 32) if end is None else end
    if not 0 <= s < e <= n_layers:
        raise ValueError(f"layer range [{s}, {e}) is invalid for {n_layers} layers; "
                         "expected 0 <= start < end <= n_layers")
    return s, e


@dataclass
class LayerCost:
    """Parameters removed from one layer per KV group and per MLP channel, and how many of each it has."""

    n_kv: int
    group_params: int
    n_channels: int
    channel_params: int


def layer_costs(model: nn.Module, layers: list[int]) -> list[LayerCost]:
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    out = []
    for i in layers:
        layer = decoder_layers(model, arch)[i]
        g = attn_geom(layer, arch, cfg)
        q_rows = g.group * g.hd
        per_group = sum(_row_params(get_module(layer, p)) * (q_rows if j == 0 else g.hd)
                        for j, p in enumerate(arch.attn_in))
        per_group += get_module(layer, arch.attn_out).out_features * q_rows
        n_ch = get_module(layer, arch.mlp_out).in_features
        per_ch = sum(_row_params(get_module(layer, p)) for p in arch.mlp_in)
        per_ch += get_module(layer, arch.mlp_out).out_features
        out.append(LayerCost(g.n_kv, per_group, n_ch, per_ch))
    return out


def _row_params(lin: nn.Linear) -> int:
    return lin.in_features + (1 if lin.bias is not None else 0)


ROUNDINGS = ("nearest", "up", "down")


def removed_count(n: int, ratio: float, rounding: str = "nearest") -> int:
    """Units removed out of ``n`` at ``ratio``: ``round(r n)`` (``"nearest"``), ``n - int(n (1 - r))`` (``"up"``,
    LLM-Pruner's ``metapruner.py``) or ``int(r n)`` (``"down"``, FLAP's ``prune_wanda_sp``)."""
    if rounding == "nearest":
        return round(ratio * n)
    if rounding == "up":
        return n - int(n * (1 - ratio))
    if rounding == "down":
        return int(ratio * n)
    raise ValueError(f"rounding: unknown '{rounding}'; expected one of {', '.join(ROUNDINGS)}")


def uniform_counts(cost: LayerCost, attn_ratio: float, mlp_ratio: float,
                   rounding: str = "nearest") -> tuple[int, int]:
    """KV groups and MLP channels removed from one layer at the given ratios (at least one of each kept)."""
    k = min(removed_count(cost.n_kv, attn_ratio, rounding), cost.n_kv - 1)
    c = min(removed_count(cost.n_channels, mlp_ratio, rounding), cost.n_channels - 1)
    return k, c


def solve_uniform_ratio(costs: list[LayerCost], total: int, target: float, tol: float = 0.01,
                        rounding: str = "nearest") -> dict:
    """Solve for the group ratio removing ``target`` of ``total`` parameters with one uniform per-layer ratio.

    First one ratio ``r`` for both heads and channels (bisection; the removal is monotone in ``r``). Heads are
    coarse (SmolLM2 has 3 KV groups per layer), so when that misses the kept count ``(1 - target) total`` by more than
    ``tol`` of it, the head count of the best ``r`` is kept and the MLP ratio alone is solved.

    Returns:
        ``{"group_ratio", "attn_ratio", "mlp_ratio", "removed", "achieved"}``.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"ratio must be in [0, 1); got {target}")

    def removed(ra: float, rm: float) -> int:
        return sum(k * c.group_params + m * c.channel_params
                   for c in costs for k, m in [uniform_counts(c, ra, rm, rounding)])

    goal = target * total
    best = _bisect(lambda r: removed(r, r), goal)
    ra = rm = best
    if abs(removed(ra, rm) - goal) > tol * (total - goal):
        rm = _bisect(lambda r: removed(ra, r), goal)
    got = removed(ra, rm)
    return {"group_ratio": best, "attn_ratio": ra, "mlp_ratio": rm, "removed": got, "achieved": got / total}


def _bisect(f: Callable[[float], int], goal: float, iters: int = 40) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < goal:
            lo = mid
        else:
            hi = mid
    return lo if abs(f(lo) - goal) <= abs(f(hi) - goal) else hi


def apply_uniform(model: nn.Module, layers: list[int], group_scores: list[torch.Tensor],
                  channel_scores: list[torch.Tensor], attn_ratio: float, mlp_ratio: float,
                  rounding: str = "nearest") -> list[dict]:
    """Remove the lowest-scoring KV groups/channels of each layer in ``layers`` at the given uniform ratios.

    Args:
        group_scores: per layer, shape (n_kv,); channel_scores: per layer, shape (intermediate,).
    Returns:
        Per pruned layer ``{"layer", "kv_heads", "heads", "intermediate"}`` after pruning.
    """
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    costs = layer_costs(model, layers)
    out = []
    for i, cost, gs, cs in zip(layers, costs, group_scores, channel_scores):
        k, c = uniform_counts(cost, attn_ratio, mlp_ratio, rounding)
        layer = decoder_layers(model, arch)[i]
        prune_layer(layer, arch, cfg, top_k(gs, cost.n_kv - k), top_k(cs, cost.n_channels - c))
        g = attn_geom(layer, arch, cfg)
        out.append({"layer": i, "kv_heads": g.n_kv, "heads": g.n_heads, "intermediate": cost.n_channels - c})
    sync_config(model)
    return out


def prune_layer(layer: nn.Module, arch: ArchSpec, config, keep_groups: torch.Tensor,
                keep_channels: torch.Tensor) -> None:
    g = attn_geom(layer, arch, config)
    if keep_groups.numel() < g.n_kv:
        prune_attention_groups(layer, arch, config, keep_groups)
    if keep_channels.numel() < get_module(layer, arch.mlp_out).in_features:
        prune_mlp_channels(layer, arch, keep_channels)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores (ties broken by index, deterministic)."""
    # selection on the CPU on purpose: a deterministic stable sort whatever the device; slice_linear moves indices
    order = torch.argsort(scores.detach().double().cpu(), descending=True, stable=True)
    return order[:k]


# ------------------------------------------------------------------------------------------ activation statistics
class InputStats:
    """Streaming per-channel statistics of a linear's input over all tokens (fp64): count, sum, sum of squares."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if self.sum is None:
            self.sum = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
            self.sumsq = torch.zeros_like(self.sum)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def var(self) -> torch.Tensor:
        """Population variance per channel (FLAP's fluctuation)."""
        return (self.sumsq / self.n - self.mean**2).clamp_min(0)

    @property
    def l2(self) -> torch.Tensor:
        """Per-channel L2 norm over all tokens (Wanda's ||x_j||)."""
        return self.sumsq.sqrt()


@contextmanager
def input_stats(model: nn.Module, paths: list[str]) -> Iterator[dict[str, InputStats]]:
    """Record ``InputStats`` of the inputs of the modules at ``paths`` (dotted, from the base model) while inside."""
    model = base_model(model)
    stats = {p: InputStats() for p in paths}
    handles = [get_module(model, p).register_forward_pre_hook(lambda m, a, s=stats[p]: s.update(a[0])) for p in paths]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


class _Stop(Exception):
    pass


@torch.no_grad()
def layer0_inputs(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> tuple[list, list]:
    """Hidden states entering layer 0 and the keyword arguments the model passes to its layers, per batch."""
    layer0 = decoder_layers(model)[0]
    hs, kws = [], []

    def grab(_m, args, kwargs):
        hs.append((args[0] if args else kwargs.pop("hidden_states")).detach())
        kws.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    handle = layer0.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, calibration.shape[0], batch_size):
            try:
                model(input_ids=calibration[i:i + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return hs, kws


@torch.no_grad()
def run_calibration(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> None:
    """Forward the calibration tokens (n, seq_len) through ``model`` in batches (for hooks)."""
    device = next(base_model(model).parameters()).device
    for i in range(0, calibration.shape[0], batch_size):
        model(input_ids=calibration[i:i + batch_size].to(device), use_cache=False)


def layer_path(arch: ArchSpec, i: int, rel: str) -> str:
    return f"{arch.layers}.{i}.{rel}"


def check_calibration(calibration) -> torch.Tensor:
    """Validate calibration tokens: a LongTensor of shape (n, seq_len); a callable is called first."""
    if callable(calibration):
        calibration = calibration()
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise ValueError("calibration must be a LongTensor of shape (n, seq_len) (or a callable returning one); "
                         f"got {type(calibration).__name__} {getattr(calibration, 'shape', '')}")
    return calibration


# ------------------------------------------------------------------------------------------------------- stage
class OneShotStage(StageDefaults):
    """A one-shot pruner as a ``pat.stage.Stage``; trains nothing.

    It prunes in ``prepare`` when it is the first stage of the pipeline (prune-then-tune, P->FT), else in
    ``finalize`` (tune-then-prune, FT->P: earlier stages such as LoRA have merged by then). Subclasses set ``name``,
    ``prune_fn`` (``prune(model, ratio, calibration, **opts) -> (model, report)``), ``calib_n`` and ``calib_len``.
    """

    name = "one_shot"
    calib_n = 128
    calib_len = 128

    def __init__(self, ratio: float = 0.2, calib_n: int | None = None, calib_len: int | None = None, **opts) -> None:
        if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"{self.name}: ratio must be a number in [0, 1); got {ratio!r}")
        self.ratio = float(ratio)
        self.calib_n = calib_n or type(self).calib_n
        self.calib_len = calib_len or type(self).calib_len
        known = set(inspect.signature(type(self).prune_fn).parameters) - {"model", "ratio", "calibration"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; expected some of {sorted(known)}")
        self.opts = opts
        self._report: dict = {}

    @staticmethod
    def prune_fn(model, ratio, calibration, **opts):  # pragma: no cover - overridden
        raise NotImplementedError

    def _prune(self, model: nn.Module, ctx) -> nn.Module:
        if ctx.calibration is None:
            raise ValueError(f"{self.name}: RunContext.calibration is None; the stage needs calibration tokens")
        calib = ctx.calibration(self.calib_n, self.calib_len)
        calib = calib[0] if isinstance(calib, tuple) else calib
        model, rep = type(self).prune_fn(model, self.ratio, calib, **self.opts)
        self._report = dict(rep, calibration={"source": getattr(ctx.calibration, "source", None),
                                              "n": int(calib.shape[0]), "seq_len": int(calib.shape[1])})
        return model

    def _first(self, ctx) -> bool:
        return int((ctx.extra or {}).get("stage_index", 0)) == 0

    def prepare(self, model: nn.Module, ctx) -> nn.Module:
        if self._first(ctx):
            model = self._prune(model, ctx)
            self._report["when"] = "prepare"
        return model

    def finalize(self, model: nn.Module, ctx) -> nn.Module:
        if not self._first(ctx):
            model = self._prune(base_model(model), ctx)
            self._report["when"] = "finalize"
        return model

    def report(self) -> dict:
        return dict(self._report, ratio=self.ratio)
