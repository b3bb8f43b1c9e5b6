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

"Slicing ratio" is the fraction of the hidden dimension removed; the parameter reduction is smaller (shortcut
matrices, untied head) and is reported beside it.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn as nn

from baselines.common import OneShotStage, attn_module_path, check_calibration
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
        attn_q = torch.zeros(entry["attn_shortcut_Q"], dtype=dtype)
        return cls(layer, arch, attn_q, torch.zeros(entry["mlp_shortcut_Q"], dtype=dtype),
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
    idx = torch.arange(H.shape[0])
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


class _Stop(Exception):
    pass


@torch.no_grad()
def _layer0_inputs(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> tuple[list, list]:
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


def sliced_dim(d: int, slicing: float, round_to: int) -> int:
    new = int((1 - slicing) * d)
    return max(round_to, new - new % round_to)


@torch.no_grad()
def rotate_and_slice(model: nn.Module, calibration: torch.Tensor, slicing: float, round_to: int = 8,
                     batch_size: int = 8, fp64_shortcut: bool = False) -> dict:
    """Rotate the (norm-folded) model by per-point PCA bases and slice the hidden dimension (in place)."""
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    d = cfg.hidden_size
    dn = sliced_dim(d, slicing, round_to)
    c = math.sqrt(d / dn)
    hs, kws = _layer0_inputs(model, calibration, batch_size)
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
        layers[i], Q, xs = _slice_layer(layer, arch, Q, xs, kws, c, dn, fp64_shortcut)
    head = get_module(model, arch.lm_head)
    _rot_in(head, Q)
    _set_gain(get_module(model, arch.final_norm), arch, c, dn)
    cfg.hidden_size = dn
    cfg.head_dim = head_dim(cfg) if getattr(cfg, "head_dim", None) else d // cfg.num_attention_heads
    return {"hidden_before": d, "hidden_after": dn, "norm_gain": c}


def _run(module: nn.Module, xs: list[torch.Tensor], fn) -> list[torch.Tensor]:
    dtype = next(module.parameters()).dtype
    return [fn(x.to(dtype), j).double() for j, x in enumerate(xs)]


def _slice_layer(layer: nn.Module, arch: ArchSpec, Q: torch.Tensor, xs: list, kws: list, c: float, dn: int,
                 fp64_shortcut: bool = False):
    """One layer: returns (wrapped layer, basis of its output (d, d'), its sliced outputs)."""
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
    Qn = pca_basis(out)[:, :dn]
    _rot_out(get_module(layer, arch.mlp_out), Qn)
    dtype = get_module(layer, arch.mlp_out).weight.dtype
    wrapped = ShortcutDecoderLayer(layer, arch, attn_q.to(dtype), (Qm.T @ Qn).to(dtype), fp64_shortcut)
    return wrapped, Qn, [o @ Qn for o in out]


def prune(model: nn.Module, ratio: float, calibration, round_to: int = 8, batch_size: int = 8,
          fp64_shortcut: bool = False) -> tuple[nn.Module, dict]:
    """SliceGPT: fold norms, then rotate and slice ``ratio`` of the hidden dimension (in place).

    Args:
        ratio: slicing ratio (fraction of the hidden dimension removed), in [0, 1).
        calibration: LongTensor (n, seq_len), or a callable returning one.
        round_to: the sliced dimension is rounded down to a multiple of this (SliceGPT's ``--round-interval``).
        fp64_shortcut: compute the skip-path rotations in fp64 (exactness checks; slower).
    Returns:
        ``(model, report)`` with the slicing ratio, the new hidden size and the achieved parameter ratio.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (slicing) must be in [0, 1); got {ratio}")
    calibration = check_calibration(calibration)
    model = base_model(model)
    total = count_params(model)
    t0 = time.perf_counter()
    fold_norms(model)
    rep = rotate_and_slice(model, calibration, ratio, round_to, batch_size, fp64_shortcut)
    after = count_params(model)
    report = {"method": "slicegpt", "slicing_ratio": ratio, **rep, "params_before": total, "params_after": after,
              "achieved_ratio": 1 - after / total, "calibration_shape": list(calibration.shape),
              "score_seconds": round(time.perf_counter() - t0, 3)}
    log.info("slicegpt: slicing %.3f (d %d -> %d), achieved parameter ratio %.4f", ratio, rep["hidden_before"],
             rep["hidden_after"], report["achieved_ratio"])
    return model, report


class SliceGPTStage(OneShotStage):
    """SliceGPT as a pipeline stage (``ratio`` = slicing ratio)."""

    name = "slicegpt"
    calib_n = 128
    calib_len = 128
    prune_fn = staticmethod(prune)
