"""``PATStage``: PAT as a stage of a training loop (the ``pat.stage.Stage`` protocol).

PAT trains beside LoRA: ``prepare`` applies peft LoRA (rank ``lora_rank``), then attaches the HSMs and the shared
mask. The loop adds ``extra_loss`` (L_active + L_identity) and calls ``on_optimizer_step`` after each optimizer
step, which advances the tau/beta schedule. At the freeze point it snaps the mask, once, whatever the count: exactly
N channels kept, the gate exactly 0/1 from then on, and it returns the mask proxy so that the loop drops its
optimizer state. ``finalize`` merges everything into a smaller stock model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from . import schedule
from .arch import count_params, get_arch
from .attach import attach, get_mask, hsms, identity_hsms, pat_parameters
from .config import PATConfig
from .importance import init_mask_from_importance
from .lora import LoRAConfig, apply_lora, lora_param_count, merge_lora
from .losses import active_loss, identity_loss
from .merge import finalize as _finalize
from .merge import is_sharded, merge_check, unsharded_copy

log = logging.getLogger(__name__)


NO_HARD_STEPS = ("no optimizer step trained with the hard gate (the freeze point was the last step, or training "
                 "ended before it): this is a one-shot prune after training, not a clean freeze, and "
                 "train_gate_max_abs_logit_diff compares the finalized model with a gate no step trained")


def pat_loss(model: nn.Module) -> torch.Tensor:
    """``L_active + identity_weight * L_identity`` for a PAT model.

    Call it after the forward whose loss it joins: the HSMs computed their identity terms in that forward (so a
    sharding engine may reshard their weights after it) and this consumes them; without such a forward the terms
    are computed from the weights, with the same value and gradients."""
    mask = get_mask(model)
    cfg = mask.cfg
    la = active_loss(mask, mask.target, cfg.active_loss, cfg.active_weight, cfg.active_margin)
    if cfg.identity_loss == "none" or cfg.identity_weight == 0:
        li = torch.zeros((), device=la.device)
    else:
        li = identity_loss(identity_hsms(model), cfg.identity_loss).to(la.device)
    mask.last_losses = (float(la.detach()), float(li.detach()))
    return la + cfg.identity_weight * li


def set_step(model: nn.Module, step: int) -> int:
    """Advance the gate schedule after ``step`` optimizer steps; at the freeze point (once) snap the mask to exactly
    the target count.

    The gate's schedule step is ``pat.schedule.gate_step(step, cfg.gate_step_lag)`` (the official code's: one behind
    the optimizer). The snap runs whatever the count is, so the gate is exactly 0/1 from the freeze point on
    (``snap_at_freeze``); ``snap_step`` records ``step``, so the optimizer steps from ``step`` on train with the hard
    gate. Returns the number of channels whose state the snap changed (0 when it did not run or changed nothing).
    """
    mask = get_mask(model)
    g = schedule.gate_step(step, mask.cfg.gate_step_lag)
    mask.set_step(g)
    mask.steps_done = int(step)
    mask.clear()
    for h in hsms(model):  # identity terms of forwards before this optimizer step are stale
        h.take_identity_term("")
    if mask.cfg.snap_at_freeze and schedule.mask_frozen(g, mask.s0, mask.freeze_frac) and not bool(mask.snapped):
        by = mask.cfg.snap_by
        if by == "taylor" and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mask.importance)  # every rank must pick the same channels
        changed = mask.snap(mask.target, by=by, step=step)
        log.info("step %d: snapped the mask to exactly %d active channels by %s (%d changed)",
                 step, mask.target, by, changed)
        return changed
    return 0


def selection(mask) -> dict[str, Any]:
    """What picked the kept channels: ``by`` is ``"taylor"`` (Taylor importance), ``"proxy"`` (the proxies' own signs
    already gave exactly N: the snap changed nothing) or ``"count_snap"`` (the snap changed ``snap_changed`` channels:
    the N largest proxies kept); ``freeze_step`` is the number of optimizer steps done at the snap (the steps after it
train with the hard gate; ``None``: it ran at finalize)."""
    if not bool(mask.snapped):
        return {"by": None, "freeze_step": None, "snap_changed": 0}
    changed = int(mask.snap_changed)
    by = "taylor" if mask.cfg.snap_by == "taylor" else ("proxy" if changed == 0 else "count_snap")
    step = int(mask.snap_step)
    return {"by": by, "freeze_step": step if step >= 0 else None, "snap_changed": changed}


def pat_param_count(model_config, hio_rank: int, lora_rank: int, embed_mode: str = "mask_only",
                    identity_loss: str = "official") -> int:
    """Trainable parameters of PAT (HSMs + mask + LoRA) from the config alone."""
    d, L = model_config.hidden_size, model_config.num_hidden_layers
    per = 2 * d * hio_rank + (d if identity_loss == "official" else 0) + (hio_rank if identity_loss == "paper" else 0)
    n_full = 2 * L + (1 if embed_mode == "full" else 0)
    lora = lora_param_count(model_config, lora_rank) if lora_rank > 0 else 0
    return n_full * per + d + lora


class PATStage:
    """PAT stage. ``PATStage(PATConfig(...))`` or ``PATStage(prune_ratio=0.25, ...)``."""

    name = "pat"

    def __init__(self, config: PATConfig | None = None, **kwargs: Any):
        self.cfg = config if config is not None else PATConfig(**kwargs)
        self._report: dict[str, Any] = {}
        self._reset_pending = False  # a snap in load_state_dict: the next on_optimizer_step reports the proxy
        self._steps_done = 0  # optimizer steps done, as the last on_optimizer_step saw them

    def prepare(self, model: nn.Module, ctx) -> nn.Module:
        get_arch(model)  # unsupported architectures fail here, before any work
        self._report["params_before"] = count_params(model)
        self._report["hidden_size_before"] = model.config.hidden_size
        if self.cfg.lora_rank > 0:
            model = apply_lora(model, LoRAConfig(self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_dropout))
        else:
            for p in model.parameters():
                p.requires_grad_(False)
        mask = attach(model, self.cfg, ctx.total_steps)
        pat_parameters(model)
        if self.cfg.mask_init != "zero":
            self._init_mask(model, ctx)
        self._report.update(target_keep=mask.target, hio_rank=self.cfg.rank_for(mask.proxy.numel()),
                            lora_rank=self.cfg.lora_rank, milestone_step=mask.s0, embed_hsm=mask.embed_mode,
                            target_ratio=self.cfg.prune_ratio)
        return model

    def _init_mask(self, model: nn.Module, ctx) -> None:
        """``mask_init`` (ours): rank the proxy by a calibration score before the first step (``pat.importance``)."""
        calib = getattr(ctx, "calibration", None)
        if calib is None:
            raise ValueError(f"PATConfig.mask_init={self.cfg.mask_init!r} needs calibration data: "
                             "RunContext.calibration is None (pass a sampler or a LongTensor (n, seq_len))")
        tokens = calib(self.cfg.mask_init_samples) if callable(calib) else calib[:self.cfg.mask_init_samples]
        scores = init_mask_from_importance(model, tokens, self.cfg.mask_init, self.cfg.mask_init_scale)
        mask = get_mask(model)
        order = torch.argsort(scores.cpu(), descending=True, stable=True)
        self._report["mask_init"] = {"by": self.cfg.mask_init, "scale": self.cfg.mask_init_scale,
                                     "samples": int(tokens.shape[0]),
                                     "kept_channels": sorted(order[:mask.target].tolist())}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        mask_params, hsm_params = pat_parameters(model)
        pat_ids = {id(p) for p in mask_params + hsm_params}
        lora = [p for p in model.parameters() if p.requires_grad and id(p) not in pat_ids]
        groups = [
            {"name": "lora", "params": lora, "lr": lr},
            {"name": "pat_hsm", "params": hsm_params, "lr": lr * self.cfg.hsm_lr_scale},
            {"name": "pat_mask", "params": mask_params, "lr": self.cfg.mask_lr or lr * self.cfg.mask_lr_scale,
             "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        return pat_loss(model)

    def on_optimizer_step(self, model: nn.Module, step: int) -> list[nn.Parameter] | None:
        """Advance the schedule; returns ``[proxy]`` when the mask was snapped (the loop drops its optimizer state:
        Adam's moments from the soft-gate phase must not move the snapped proxies)."""
        mask = get_mask(model)
        was_snapped = bool(mask.snapped)
        active_before = int(mask.active().sum())  # what the mask's own training reached, before any snap
        set_step(model, step)
        self._steps_done = int(step)
        snapped_now = bool(mask.snapped) and not was_snapped
        if "active_at_s0" not in self._report and (snapped_now or int(mask.step) >= mask.s0):
            # the default snap (at int(0.8 s0)) comes before s0: then the count just before it
            self._report["active_at_s0"] = active_before if snapped_now else int(mask.active().sum())
            self._report["active_at_s0_step"] = int(step)
        if snapped_now or self._reset_pending:
            self._reset_pending = False
            self._report["selection"] = selection(mask)
            return [mask.proxy]
        return None

    def log_values(self, model: nn.Module) -> dict[str, float]:
        mask = get_mask(model)
        la, li = getattr(mask, "last_losses", (float("nan"), float("nan")))
        return {"active": int(mask.active().sum()), "tau": round(mask.tau(), 3), "L_active": la, "L_identity": li}

    def finalize(self, model: nn.Module, ctx) -> nn.Module | None:
        """Merge into a smaller stock model. A model sharded by FSDP2 is first gathered into a plain copy on the
        main process (``pat.merge.unsharded_copy``, a collective): there the merge runs on the CPU; the other
        processes return ``None``."""
        if is_sharded(model):
            model = unsharded_copy(model)
            if model is None:
                return None
        mask = get_mask(model)
        heldout = (ctx.extra or {}).get("heldout_ids") if ctx is not None else None
        train_logits = None
        if heldout is not None:  # the model as training last saw it: its training-time gate, soft or hard
            with torch.no_grad():
                train_logits = model(input_ids=heldout.to(mask.proxy.device)).logits.double()
        self._report["active_before_finalize"] = int(mask.active().sum())
        if not bool(mask.snapped):  # training stopped before the freeze point (or snap_at_freeze=False)
            self._report["snap_changed_at_finalize"] = mask.snap(mask.target, by=self.cfg.snap_by)
        self._report["selection"] = selection(mask)
        self._report["snap_changed"] = self._report["selection"]["snap_changed"]
        freeze = self._report["selection"]["freeze_step"]
        self._report["steps_done"] = self._steps_done
        self._report["steps_after_freeze"] = max(0, self._steps_done - freeze) if freeze is not None else 0
        self._report["kept_channels"] = torch.nonzero(mask.active()).flatten().tolist()
        merged = merge_lora(model)  # peft LoRA folded in place; the HSMs remain on `merged`
        small = _finalize(merged)
        if heldout is not None:
            self._report["merge_max_abs_logit_diff"] = merge_check(merged, small, heldout)
            with torch.no_grad():
                b = small(input_ids=heldout.to(next(small.parameters()).device)).logits.double()
            diff = (train_logits - b.to(train_logits.device)).abs().max()
            self._report["train_gate_max_abs_logit_diff"] = float(diff)
            if self._report["steps_after_freeze"] == 0:
                self._report["train_gate_note"] = NO_HARD_STEPS
        d, d2 = self._report["hidden_size_before"], small.config.hidden_size
        self._report.update(hidden_size_after=d2, params_after=count_params(small), achieved_ratio=1 - d2 / d)
        self._report["param_ratio"] = 1 - self._report["params_after"] / self._report["params_before"]
        return small

    _BUFFERS = ("importance", "snapped", "keep", "snap_step", "snap_changed")

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The mask's buffers (``pat_mask.*``: the gate step, Taylor importance, the snapped selection) and the
        stage's own counters (``pat_stage.*``: optimizer steps done, the active count recorded at s0, -1 = none).
        The trainable tensors (proxy, HSMs, LoRA) are the loop's to save."""
        mask = get_mask(model)
        out = {f"pat_mask.{k}": getattr(mask, k).detach().clone() for k in ("step",) + self._BUFFERS}
        # host-side counters: on the CPU on purpose (read back with int(); saved as they are)
        out["pat_stage.steps_done"] = torch.tensor(self._steps_done, dtype=torch.long, device="cpu")
        out["pat_stage.active_at_s0"] = torch.tensor(
            [self._report.get("active_at_s0", -1), self._report.get("active_at_s0_step", -1)], dtype=torch.long,
            device="cpu")
        return out

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore the mask's state; a run resumed after the freeze point keeps its snapped selection (hard gate)."""
        mask = get_mask(model)
        for k in self._BUFFERS:
            if f"pat_mask.{k}" in state:
                getattr(mask, k).copy_(state[f"pat_mask.{k}"])
        if bool(mask.snapped) and "pat_mask.keep" not in state:  # no saved selection: the snapped proxies' signs
            mask.keep.copy_(mask.proxy.detach() > 0)
        if "pat_stage.steps_done" in state:
            steps = int(state["pat_stage.steps_done"])
        else:  # a checkpoint from before gate_step_lag: its gate step was the number of steps done
            steps = int(state["pat_mask.step"])
        at_s0, at_step = (int(v) for v in state.get("pat_stage.active_at_s0", (-1, -1)))
        if at_s0 >= 0:
            self._report.update(active_at_s0=at_s0, active_at_s0_step=at_step)
        was_snapped = bool(mask.snapped)
        set_step(model, steps)
        self._steps_done = steps
        self._reset_pending = bool(mask.snapped) and not was_snapped
        if bool(mask.snapped):
            self._report["selection"] = selection(mask)

    def report(self) -> dict[str, Any]:
        return dict(self._report)

