"""The two PAT modules: the shared mask (USM) and the Hybrid Sparsification Module (HSM).

``SharedMask`` owns the one trainable proxy ``W_M`` (d,) that every HSM multiplies by. Its gate
``M = sigmoid(tau(s) W_M) + beta(s)`` is computed once per model forward (a forward pre-hook on the model root calls
``refresh``) and read by all HSMs. Once ``snap`` has fixed the kept channels (the freeze point), and in ``hard`` mode
(inference, merge checks), ``M`` is the exact 0/1 vector of the kept channels: a pruned channel passes nothing.

``HybridSparsifier`` wraps a residual writer (embedding, o_proj, down_proj; possibly a peft LoRA layer) and maps its
output ``y`` to ``s * M * (y + L1 (v * (L0 y)))``: identity at init because ``L1 = 0`` (official form) or ``v = 0``
(paper form).

The identity term of an HSM (``identity_term``) is computed inside its own ``forward`` when ``identity_form`` is set
(``pat.attach`` sets it on the HSMs the identity loss covers) and kept on the module until ``take_identity_term``
consumes it: a sharding engine (FSDP2 with ``reshard_after_forward=True``) holds the unsharded ``L0``/``L1`` only
during the module's forward and backward, so a loss computed from the weights after the forward would see shards.
"""


from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import schedule


class Binarize(torch.autograd.Function):
    """``1[x > 0]`` (or ``>= 0``) forward, identity gradient backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, inclusive: bool) -> torch.Tensor:
        return (x >= 0).to(x.dtype) if inclusive else (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class SharedMask(nn.Module):
    """The unified sparsification mask shared by all HSMs.

    Args:
        hidden_size: d.
        s0: milestone step (>= 2).
        freeze_frac: fraction of s0 at which the task gradient to the proxy stops.
        inclusive: count a proxy of exactly 0 as active (official training threshold) or not.
    """

    def __init__(self, hidden_size: int, s0: int, freeze_frac: float = 0.8, inclusive: bool = False):
        super().__init__()
        self.proxy = nn.Parameter(torch.zeros(hidden_size))  # W_M, fp32, init 0 -> M(0) = 0.5 + 0.5 = 1
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # first-order Taylor importance of each channel's gate, sum over backward passes of |dL/dM_i * M_i|
        # (the task loss only: the regularizers act on the proxy, not through M); used by snap(by="taylor")
        self.register_buffer("importance", torch.zeros(hidden_size))
        self.register_buffer("snapped", torch.zeros((), dtype=torch.bool))
        # set by ``snap``: the kept channels (from then on the gate is exactly 0/1), the step it ran at (-1: outside
        # the schedule, e.g. at finalize) and how many channels it switched
        self.register_buffer("keep", torch.zeros(hidden_size, dtype=torch.bool))
        self.register_buffer("snap_step", torch.full((), -1, dtype=torch.long))
        self.register_buffer("snap_changed", torch.zeros((), dtype=torch.long))
        self.s0 = int(s0)
        self.freeze_frac = float(freeze_frac)
        self.inclusive = bool(inclusive)
        self.hard = False
        self.gate_computations = 0  # how many times the gate was computed (tests: once per forward)
        self._gate: torch.Tensor | None = None

    def set_step(self, step: int) -> None:
        self.step.fill_(int(step))

    def tau(self) -> float:
        return schedule.tau(int(self.step), self.s0, self.freeze_frac)

    def beta(self) -> float:
        return schedule.beta(int(self.step), self.s0)

    def full_proxy(self) -> torch.Tensor:
        """The whole proxy (d,), detached; gathered when a sharding engine (FSDP2) holds it as a sharded DTensor."""
        w = self.proxy.detach()
        return w.full_tensor() if hasattr(w, "full_tensor") else w

    def active(self) -> torch.Tensor:
        """Boolean (d,) of active channels: the snapped selection once ``snap`` ran, else the proxy's sign under
        the training/merge threshold."""
        if bool(self.snapped):
            return self.keep.clone()
        w = self.full_proxy()
        return w >= 0 if self.inclusive else w > 0

    def compute_gate(self) -> torch.Tensor:
        """The gate M (d,) for the current step; fp32."""
        self.gate_computations += 1
        if self.hard or bool(self.snapped):  # exact 0/1: a pruned channel passes nothing, in training as at merge
            return self.active().to(self.proxy.dtype)
        s = int(self.step)
        w = self.proxy.detach() if schedule.mask_frozen(s, self.s0, self.freeze_frac) else self.proxy
        t = schedule.tau(s, self.s0, self.freeze_frac)
        # official form 1 / (1 + exp(min(-tau w, 10))): the clamp keeps a clearly-off channel at ~4.5e-5
        gate = torch.sigmoid(torch.clamp(t * w, min=-10.0)) + schedule.beta(s, self.s0)
        if gate.requires_grad:
            m = gate.detach()

            def accumulate(g: torch.Tensor) -> None:  # returns None: the gradient itself is left unchanged
                self.importance.add_((g.detach() * m).abs())

            gate.register_hook(accumulate)
        return gate

    def refresh(self) -> None:
        self._gate = self.compute_gate()

    def gate(self) -> torch.Tensor:
        if self._gate is None:  # called before any root forward, or after set_step / snap / set_hard dropped it
            self.refresh()
        return self._gate

    def clear(self) -> None:
        self._gate = None

    @torch.no_grad()
    def snap(self, keep: int, margin: float = 0.5, by: str = "proxy", step: int = -1) -> int:
        """Fix exactly ``keep`` active channels, ranked by ``by``: the proxy value (``"proxy"``) or the
        accumulated Taylor importance of the gate (``"taylor"``); those get proxies >= +margin, the rest <= -margin.
        From then on ``active()`` is this selection and the gate is exactly 0/1. ``step`` is recorded in
        ``snap_step`` (-1: not at a training step).

        Returns the number of channels whose active state changed (against the proxy's sign before the snap).
        """
        before = self.active().clone()
        w = self.full_proxy().clone()
        order = torch.argsort(self.importance if by == "taylor" else w, descending=True, stable=True)
        on = torch.zeros_like(before)
        on[order[:keep]] = True
        w[on] = torch.clamp(w[on], min=margin)
        w[~on] = torch.clamp(w[~on], max=-margin)
        if hasattr(self.proxy, "device_mesh"):  # sharded: every process writes its own shard of the snapped proxy
            from torch.distributed.tensor import distribute_tensor

            self.proxy.copy_(distribute_tensor(w, self.proxy.device_mesh, self.proxy.placements))
        else:
            self.proxy.copy_(w)
        self.keep.copy_(on)
        self.snapped.fill_(True)
        self.snap_step.fill_(int(step))
        changed = int((before != on).sum())
        self.snap_changed.fill_(changed)
        self._gate = None
        return changed


class HybridSparsifier(nn.Module):
    """HSM around a residual writer: ``y -> s * M * (y + L1 (v * (L0 y)))``.

    Args:
        inner: the wrapped module (its output has last dimension d).
        mask: the model's ``SharedMask`` (held by reference, not registered as a submodule).
        rank: HIO rank r; 0 means mask (and scale) only.
        scale: learn a per-channel scale s (d,) after the mask (official identity-loss form).
        diag: learn v (r,) inside the low-rank product (paper identity-loss form); L1 then starts orthonormal
            and v at 0, else L1 starts at 0.
    Tensors: L0 (r, d), L1 (d, r), v (r,), s (d,), all fp32.
    """

    def __init__(self, inner: nn.Module, mask: SharedMask, rank: int, scale: bool, diag: bool):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_mask", mask)  # plain attribute: one mask, many readers, one state-dict entry
        d = mask.proxy.numel()
        self.rank = int(rank)
        if self.rank > 0:
            self.L0 = nn.Parameter(torch.empty(self.rank, d))
            nn.init.kaiming_uniform_(self.L0, a=math.sqrt(5))  # peft's LoRA-A init, bound 1/sqrt(d)
            self.L1 = nn.Parameter(torch.zeros(d, self.rank))
            if diag:
                nn.init.orthogonal_(self.L1)
                self.v = nn.Parameter(torch.zeros(self.rank))
            else:
                self.v = None
        else:
            self.L0 = self.L1 = self.v = None
        self.s = nn.Parameter(torch.ones(d)) if scale else None
        self.identity_form: str | None = None  # "official" / "paper": compute the identity term in forward
        self._identity: tuple | None = None  # (form, term, [(tensor, version)]) of the last forward

    def identity_term(self, form: str = "official") -> torch.Tensor:
        """This HSM's identity-loss term from its current weights: official ``MSE(L0 L0^T, I_r)``, paper
        ``||L0 L0^T - I||_F + ||L1^T L1 - I||_F``."""
        L0 = self.L0.float()  # fp32 also when an engine casts the parameters for the forward (a no-op on fp32)
        eye = torch.eye(self.rank, device=L0.device, dtype=L0.dtype)
        if form == "paper":
            L1 = self.L1.float()
            return torch.linalg.matrix_norm(L0 @ L0.t() - eye) + torch.linalg.matrix_norm(L1.t() @ L1 - eye)
        return ((L0 @ L0.t() - eye) ** 2).mean()

    def take_identity_term(self, form: str) -> torch.Tensor | None:
        """The term stashed by the last forward (and forget it), or ``None`` when there is none, it was computed in
        another form, or a weight it read was changed in place since (an optimizer step)."""
        stash, self._identity = self._identity, None
        if stash is None or stash[0] != form or any(t._version != v for t, v in stash[2]):
            return None
        return stash[1]

    def _stash_identity_term(self) -> None:
        # the term is computed whenever the graph is recorded, also in an activation-checkpointing recompute (which
        # must save the same tensors as the original forward), but kept only from the forward itself: a recompute
        # runs inside backward (a graph task is current), after the loss that consumed the original term
        form = self.identity_form
        term = self.identity_term(form)
        if torch._C._current_graph_task_id() == -1:
            read = (self.L0, self.L1) if form == "paper" else (self.L0,)
            self._identity = (form, term, [(t, t._version) for t in read])

    # attributes callers read off the wrapped module (get_input_embeddings().weight, in_features, ...). Not
    # ``base_layer``: peft's merge must not mistake the HSM for one of its LoRA layers.
    _DELEGATED = frozenset({"weight", "bias", "in_features", "out_features", "num_embeddings", "embedding_dim",
                            "padding_idx", "embed_scale", "scalar_embed_scale"})

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in HybridSparsifier._DELEGATED:
                return getattr(super().__getattr__("inner"), name)
            raise

    @property
    def mask(self) -> SharedMask:
        return self._mask

    def forward(self, *args, **kwargs):
        y = self.inner(*args, **kwargs)  # (B, T, d)
        if self.identity_form is not None and self.L0 is not None and torch.is_grad_enabled():
            self._stash_identity_term()
        dtype = y.dtype
        # fp32 math for bf16/fp16 models and under autocast (which would run the two matmuls in bf16): the HSM is
        # small (rank r << d), so fp32 costs little, and the merge folds exactly this fp32 (fp64) operator, so the
        # trained model and the finalized one differ only by the model's own rounding
        with torch.autocast(y.device.type, enabled=False):
            h = y.to(torch.promote_types(y.dtype, torch.float32))
            if self.L0 is not None:
                z = h @ self.L0.t().to(h.dtype)  # (B, T, r)
                if self.v is not None:
                    z = z * self.v.to(h.dtype)
                h = h + z @ self.L1.t().to(h.dtype)
            m = self.mask.gate().to(h.device, h.dtype)  # the mask lives on the first layer's device
            if self.s is not None:  # s * (M * h) as one (d,) factor: one pass over (B, T, d) forward, two fewer back
                m = m * self.s.to(h.device, h.dtype)
            h = h * m
        return h.to(dtype)

    @torch.no_grad()
    def operator(self) -> torch.Tensor:
        """``diag(s) (I + L1 diag(v) L0)`` as a (d, d) fp64 matrix (the mask is applied separately)."""
        d = self.mask.proxy.numel()
        own = next((p for p in (self.L0, self.s) if p is not None), self.mask.proxy)
        D = torch.eye(d, dtype=torch.float64, device=own.device)  # on this HSM's device, beside L0/L1/s
        if self.L0 is not None:
            l1 = self.L1.double() * (self.v.double() if self.v is not None else 1.0)
            D = D + l1 @ self.L0.double()
        if self.s is not None:
            D = self.s.double()[:, None] * D
        return D
