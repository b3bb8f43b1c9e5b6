"""SliceGPT (Ashkboos et al., ICLR 2024), after microsoft/TransformerCompression (``rotate.py``,
``layernorm_fusion.py``), implemented on ``pat.arch.ArchSpec``.

1. **Norm folding** (computational invariance): every RMSNorm gain is folded into the linears that read it
   (q/k/v, gate/up, lm_head); the norms become gain-free. Tied embeddings are untied (the head gets the final-norm
   gain and its own rotation).
2. **PCA** per residual-stream point on calibration data, in fp64: ``H = sum x x^T`` (+1 % mean-diagonal damping),
   eigenvectors by decreasing eigenvalue. Sequentially, layer by layer, on the already sliced model's activations.
3. **Rotate and slice** the hidden dimension to ``d' = int((1 - slicing) * d)`` rounded down to ``round_to``:
   embedding columns, reader columns, writer rows. Each residual point has its own basis, so the skip path gets
   explicit ``attn_shortcut_Q`` / ``mlp_shortcut_Q`` matrices (``ShortcutDecoderLayer``).
4. The sliced RMSNorm must still divide by ``sqrt(d)`` (SliceGPT's ``RMSN(mean_dim=d)``); that is its gain
   ``sqrt(d / d')`` (Gemma: minus 1), so stock norm modules stay.
5. **Head path.** By default (``slice_head=False``, TransformerCompression's ``do_slice_head=False``) the last layer's
   ``down_proj`` output, the final norm and the LM head stay ``d`` wide in the original basis; ``slice_head=True``
   slices them to ``d'`` too.

"Slicing ratio" is the fraction of the hidden dimension removed; the parameter reduction is smaller (shortcut
matrices, untied head) and is reported beside it. ``target="params"`` instead picks ``d'`` so that the sliced model has
PAT's parameter count at the given ratio (size matching).
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn as nn

from baselines.common import OneShotStage, attn_module_path, check_calibration, layer0_inputs, target_params
from pat.arch import ArchSpec, base_model, count_params, decoder_layers, get_arch, get_module, head_dim

log = logging.getLogger(__name__)


class ShortcutDecoderLayer(nn.Module):
    """A pre-norm decoder layer whose skip path is rotated: ``h = h @ Q_attn + attn(norm(h))``, then
    ``h = h @ Q_mlp + mlp(norm(h))``. Submodule names are the stock layer's, so weight names stay the same."""

    def __init__(self, layer: nn.Module, arch: ArchSpec, attn_q: torch.Tensor, mlp_q: torch.Tensor,
                 fp64_shortcut: bool = False) -> None:
        super().__init__()
        self._names = {"attn": attn_module_path(arch), "mlp": arch.mlp_out.rpartition(".")[0],
                       "attn_norm": arch.attn_norm, "mlp_norm": arch.mlp_norm}
        for k, v in vars(layer).items():  # plain attributes the model may read (e.g. attention_type)
            if not k.startswith("_") and not isinstance(v, nn.Module):
                setattr(self, k, v)
        for path in self._names.values():
            self.add_module(path, get_module(layer, path))
        self.fp64_shortcut = bool(fp64_shortcut)
        self.attn_shortcut_Q = nn.Parameter(attn_q.detach().clone(), requires_grad=False)
        self.mlp_shortcut_Q = nn.Parameter(mlp_q.detach().clone(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args:
            raise TypeError("ShortcutDecoderLayer: pass everything but hidden_states as keyword arguments")
        sub = {k: getattr(self, v) for k, v in self._names.items()}
        residual = self._shortcut(hidden_states, self.attn_shortcut_Q)
        h, _ = sub["attn"](hidden_states=sub["attn_norm"](hidden_states), **kwargs)
        hidden_states = residual + h
        residual = self._shortcut(hidden_states, self.mlp_shortcut_Q)
        return residual + sub["mlp"](sub["mlp_norm"](hidden_states))

    def _shortcut(self, h: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """``h @ Q``; in fp64 when asked (large residual channels make the fp32 product the main rounding error)."""
        if self.fp64_shortcut:
            return (h.double() @ Q.double()).to(h.dtype)
        return h @ Q.to(h.dtype)

    def shortcut_manifest(self) -> dict:
        """What ``baselines.pruned_io`` stores to rebuild this wrapper."""
        return {"kind": "shortcut", "attn_shortcut_Q": list(self.attn_shortcut_Q.shape),
                "mlp_shortcut_Q": list(self.mlp_shortcut_Q.shape), "fp64_shortcut": self.fp64_shortcut}

    @classmethod
    def from_manifest(cls, layer: nn.Module, arch: ArchSpec, entry: dict, dtype: torch.dtype) -> ShortcutDecoderLayer:
        # placeholders filled by the checkpoint's tensors: a pruned model is loaded on the CPU, then moved
        attn_q = torch.zeros(entry["attn_shortcut_Q"], dtype=dtype, device="cpu")
        return cls(layer, arch, attn_q, torch.zeros(entry["mlp_shortcut_Q"], dtype=dtype, device="cpu"),
                   bool(entry.get("fp64_shortcut", False)))


# --------------------------------------------------------------------------------------------------- norm folding
def _gain(norm: nn.Module, arch: ArchSpec) -> torch.Tensor:
    return norm.weight.detach().double() + arch.norm_offset


def _set_gain(norm: nn.Module, arch: ArchSpec, value: float, dim: int) -> None:
    w = norm.weight
    norm.weight = nn.Parameter(torch.full((dim,), value - arch.norm_offset, dtype=w.dtype, device=w.device))


def _scale_columns(lin: nn.Linear, g: torch.Tensor) -> None:
    lin.weight.data = (lin.weight.data.double() * g[None, :]).to(lin.weight.dtype)


@torch.no_grad()
def fold_norms(model: nn.Module) -> nn.Module:
    """Fold every norm gain into the linears reading it (in place); the model's outputs are unchanged."""
    model = base_model(model)
    arch = get_arch(model)
    d = model.config.hidden_size
    for layer in decoder_layers(model, arch):
        for norm_path, readers in ((arch.attn_norm, arch.attn_in), (arch.mlp_norm, arch.mlp_in)):
            norm = get_module(layer, norm_path)
            g = _gain(norm, arch)
            for p in readers:
                _scale_columns(get_module(layer, p), g)
            _set_gain(norm, arch, 1.0, d)
    untie(model)
    final = get_module(model, arch.final_norm)
    _scale_columns(get_module(model, arch.lm_head), _gain(final, arch))
    _set_gain(final, arch, 1.0, d)
    return model


def untie(model: nn.Module) -> None:
    """Give the LM head its own weight copy and mark the config untied."""
    arch = get_arch(model)
    head, emb = get_module(model, arch.lm_head), get_module(model, arch.embed)
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False


# ----------------------------------------------------------------------------------------------------- rotation
def pca_basis(xs: list[torch.Tensor]) -> torch.Tensor:
    """Eigenvectors (d, d), fp64, by decreasing eigenvalue, of ``sum x^T x`` over the token rows of ``xs``."""
    H = None
    for x in xs:
        x = x.reshape(-1, x.shape[-1]).double()
        H = x.T @ x if H is None else H + x.T @ x
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += 0.01 * H.diagonal().mean()
    vals, vecs = torch.linalg.eigh(H)
    return vecs[:, torch.argsort(vals, descending=True)]


def _rot_in(lin: nn.Linear, Q: torch.Tensor) -> None:
    """Reader: ``W <- W @ Q`` (input columns into the rotated, sliced basis)."""
    lin.weight = nn.Parameter((lin.weight.data.double() @ Q).to(lin.weight.dtype))
    lin.in_features = Q.shape[1]


def _rot_out(lin: nn.Linear, Q: torch.Tensor) -> None:
    """Writer: ``W <- Q^T @ W``, ``b <- Q^T b`` (output rows into the rotated, sliced basis)."""
    lin.weight = nn.Parameter((Q.T @ lin.weight.data.double()).to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias = nn.Parameter((Q.T @ lin.bias.data.double()).to(lin.bias.dtype))
    lin.out_features = Q.shape[1]


def sliced_dim(d: int, slicing: float, round_to: int) -> int:
    new = int((1 - slicing) * d)
    return max(round_to, new - new % round_to)


def sliced_params(model: nn.Module, dn: int, slice_head: bool = False) -> int:
    """Parameters of ``model`` (dense, before folding) once SliceGPT has sliced it to ``dn``: the untied head, the
    shortcut matrices, and with ``slice_head=False`` the last ``down_proj``, the final norm and the head ``d`` wide.
    Exact (``count_params`` of the sliced model), from the shapes alone."""
    model = base_model(model)
    arch = get_arch(model)
    d = model.config.hidden_size
    emb, head = get_module(model, arch.embed), get_module(model, arch.lm_head)
    layers = decoder_layers(model, arch)
    n = emb.num_embeddings * dn
    for i, layer in enumerate(layers):
        out = d if (i == len(layers) - 1 and not slice_head) else dn
        sliced = set()
        for p in (*arch.attn_in, *arch.mlp_in):
            lin = get_module(layer, p)
            n += lin.out_features * dn + (lin.out_features if lin.bias is not None else 0)
            sliced.add(p)
        for p, width in ((arch.attn_out, dn), (arch.mlp_out, out)):
            lin = get_module(layer, p)
            n += lin.in_features * width + (width if lin.bias is not None else 0)
            sliced.add(p)
        n += 2 * dn + dn * dn + dn * out  # two norms, two shortcut matrices
        sliced |= {arch.attn_norm, arch.mlp_norm}
        n += sum(q.numel() for name, q in layer.named_parameters()
                 if not any(name == f"{p}.weight" or name == f"{p}.bias" for p in sliced))
    dh = dn if slice_head else d
    return n + dh + head.out_features * dh + (head.out_features if head.bias is not None else 0)


def hidden_for_params(model: nn.Module, goal: int, round_to: int = 8, slice_head: bool = False) -> int:
    """The multiple of ``round_to`` (at most ``d``) whose ``sliced_params`` is closest to ``goal``, by bisection."""
    d = base_model(model).config.hidden_size
    lo, hi = 1, d // round_to  # sliced_params grows with the width: find the last k with count <= goal
    if sliced_params(model, lo * round_to, slice_head) > goal:
        return lo * round_to
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sliced_params(model, mid * round_to, slice_head) <= goal:
            lo = mid
        else:
            hi = mid - 1
    cands = [k * round_to for k in (lo, lo + 1) if k * round_to <= d]
    return min(cands, key=lambda w: abs(sliced_params(model, w, slice_head) - goal))


@torch.no_grad()
def rotate_and_slice(model: nn.Module, calibration: torch.Tensor, slicing: float, round_to: int = 8,
                     batch_size: int = 8, fp64_shortcut: bool = False, slice_head: bool = False,
                     hidden: int | None = None) -> dict:
    """Rotate the (norm-folded) model by per-point PCA bases and slice the hidden dimension (in place).

    ``hidden`` overrides the width from ``slicing``. With ``slice_head=False`` the last layer's output, the final norm
    and the LM head keep the full width ``d`` and are not rotated (TransformerCompression's ``do_slice_head=False``).
    """
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    d = cfg.hidden_size
    dn = hidden if hidden is not None else sliced_dim(d, slicing, round_to)
    c = math.sqrt(d / dn)
    hs, kws = layer0_inputs(model, calibration, batch_size)
    Q = pca_basis(hs)[:, :dn]
    emb = get_module(model, arch.embed)
    scale_attr = arch.embed_scale_attr
    scale = float(getattr(emb, scale_attr)) if scale_attr else 1.0
    new_scale = math.sqrt(dn) if scale_attr else 1.0
    emb.weight = nn.Parameter((emb.weight.data.double() @ Q * (scale / new_scale)).to(emb.weight.dtype))
    emb.embedding_dim = dn
    if scale_attr:
        getattr(emb, scale_attr).fill_(new_scale)
        if hasattr(emb, "scalar_embed_scale"):
            emb.scalar_embed_scale = new_scale
    xs = [h.double() @ Q for h in hs]
    layers = decoder_layers(model, arch)
    for i, layer in enumerate(layers):
        full_out = i == len(layers) - 1 and not slice_head
        layers[i], Q, xs = _slice_layer(layer, arch, Q, xs, kws, c, dn, fp64_shortcut, full_out)
    if slice_head:
        _rot_in(get_module(model, arch.lm_head), Q)
        _set_gain(get_module(model, arch.final_norm), arch, c, dn)
    cfg.head_dim = head_dim(cfg) if getattr(cfg, "head_dim", None) else d // cfg.num_attention_heads
    cfg.hidden_size = dn
    return {"hidden_before": d, "hidden_after": dn, "head_hidden": dn if slice_head else d, "slice_head": slice_head,
            "norm_gain": c}


def _run(module: nn.Module, xs: list[torch.Tensor], fn) -> list[torch.Tensor]:
    dtype = next(module.parameters()).dtype
    return [fn(x.to(dtype), j).double() for j, x in enumerate(xs)]


def _slice_layer(layer: nn.Module, arch: ArchSpec, Q: torch.Tensor, xs: list, kws: list, c: float, dn: int,
                 fp64_shortcut: bool = False, full_out: bool = False):
    """One layer: returns (wrapped layer, basis of its output (d, d'), its sliced outputs).

    ``full_out``: the output keeps the full width in the original basis (identity; the unsliced head path)."""
    attn = get_module(layer, attn_module_path(arch))
    for p in arch.attn_in:
        _rot_in(get_module(layer, p), Q)
    _set_gain(get_module(layer, arch.attn_norm), arch, c, dn)
    a = _run(layer, xs, lambda x, j: attn(hidden_states=get_module(layer, arch.attn_norm)(x), **kws[j])[0])
    mid = [x @ Q.T + y for x, y in zip(xs, a)]
    Qm = pca_basis(mid)[:, :dn]
    _rot_out(get_module(layer, arch.attn_out), Qm)
    attn_q = Q.T @ Qm
    xm = [m @ Qm for m in mid]
    for p in arch.mlp_in:
        _rot_in(get_module(layer, p), Qm)
    _set_gain(get_module(layer, arch.mlp_norm), arch, c, dn)
    mlp = get_module(layer, arch.mlp_out.rpartition(".")[0])
    m = _run(layer, xm, lambda x, j: mlp(get_module(layer, arch.mlp_norm)(x)))
    out = [x @ Qm.T + y for x, y in zip(xm, m)]
    Qn = torch.eye(out[0].shape[-1], dtype=torch.float64, device=out[0].device) if full_out else pca_basis(out)[:, :dn]
    _rot_out(get_module(layer, arch.mlp_out), Qn)
    dtype = get_module(layer, arch.mlp_out).weight.dtype
    wrapped = ShortcutDecoderLayer(layer, arch, attn_q.to(dtype), (Qm.T @ Qn).to(dtype), fp64_shortcut)
    return wrapped, Qn, [o @ Qn for o in out]


def prune(model: nn.Module, ratio: float, calibration, round_to: int = 8, batch_size: int = 8,
          fp64_shortcut: bool = False, slice_head: bool = False, target: str = "ratio") -> tuple[nn.Module, dict]:
    """SliceGPT: fold norms, then rotate and slice the hidden dimension (in place).

    Args:
        ratio: with ``target="ratio"`` (the authors' convention) the slicing ratio: the fraction of the hidden
            dimension removed, ``d' = int((1 - ratio) d)`` rounded down to ``round_to``. With ``target="params"`` the
            PAT ratio whose parameter count to match: ``d'`` is the multiple of ``round_to`` whose sliced model is
            closest to ``baselines.common.pat_params(model, ratio)`` (bisection over ``sliced_params``).
        calibration: LongTensor (n, seq_len), or a callable returning one.
        round_to: the sliced dimension is a multiple of this (SliceGPT's ``--round-interval``).
        fp64_shortcut: compute the skip-path rotations in fp64 (exactness checks; slower).
        slice_head: also slice the last layer's output, the final norm and the LM head (default ``False``, as
            TransformerCompression's ``do_slice_head=False``).
    Returns:
        ``(model, report)`` with the slicing ratio, the new hidden size and the achieved parameter ratio.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (slicing) must be in [0, 1); got {ratio}")
    if round_to < 1:
        raise ValueError(f"round_to must be a positive integer; got {round_to}")
    calibration = check_calibration(calibration)
    model = base_model(model)
    total = count_params(model)
    d = model.config.hidden_size
    if target == "params":
        goal = target_params(model, ratio, "params")
        dn = hidden_for_params(model, goal, round_to, slice_head)
    else:
        goal = target_params(model, ratio, target)  # validates target
        dn = sliced_dim(d, ratio, round_to)
    t0 = time.perf_counter()
    fold_norms(model)
    rep = rotate_and_slice(model, calibration, 1 - dn / d, round_to, batch_size, fp64_shortcut, slice_head, dn)
    after = count_params(model)
    report = {"method": "slicegpt", "target": target, "slicing_ratio": 1 - dn / d, "ratio": ratio, **rep,
              "params_before": total, "params_target": goal, "params_after": after,
              "params_off": after / goal - 1, "achieved_ratio": 1 - after / total,
              "calibration_shape": list(calibration.shape), "score_seconds": round(time.perf_counter() - t0, 3)}
    log.info("slicegpt: d %d -> %d (head %d), params %d (target %d, %+.2f %%)", rep["hidden_before"],
             rep["hidden_after"], rep["head_hidden"], after, goal, 100 * report["params_off"])
    return model, report


class SliceGPTStage(OneShotStage):
    """SliceGPT as a pipeline stage (``ratio`` = slicing ratio, or PAT's ratio with ``target = "params"``); the
    authors' calibration, 128 windows of 2048 tokens."""

    name = "slicegpt"
    calib_n = 128
    calib_len = 2048
    prune_fn = staticmethod(prune)
