"""``PATConfig``: every PAT hyper-parameter and every paper-vs-code choice, validated eagerly.

Where the paper and the official code differ (pat-spec.md §13-14) the choice is a field with a documented default.
The official code's bugs are reproducible only through ``official_quirks=True``, never by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

IDENTITY_LOSSES = ("official", "paper", "none")
ACTIVE_LOSSES = ("official", "paper")
EMBED_MODES = ("auto", "full", "mask_only")
KEEP_THRESHOLDS = ("gt0", "ge0")
MASK_INITS = ("zero", "taylor", "flap")


@dataclass(frozen=True)
class PATConfig:
    """PAT settings.

    Attributes:
        prune_ratio: fraction of hidden channels to remove, in (0, 1). The kept width is ``d * (1 - prune_ratio)``
            rounded to a multiple of ``align``.
        align: kept width is a multiple of this; ``None`` means ``num_attention_heads`` (transformers 5.x refuses a
            hidden size that the head count does not divide).
        hio_rank: rank r of the low-rank operator L1 L0 (paper: ~5 % of d); ``None`` means ``round(0.05 * d)``.
        lora_rank, lora_alpha, lora_dropout: the LoRA trained beside the HSMs (paper: 20, 4, 0.05).
        milestone_step: s0, the step by which the mask is binary (paper: 1/3 of training). ``None`` means
            ``milestone_frac * total_steps``.
        milestone_frac: s0 as a fraction of the total steps when ``milestone_step`` is ``None``.
        mask_freeze_frac: from the schedule step ``int(mask_freeze_frac * s0)`` on (the official code's rounding),
            the task loss no longer reaches the mask and tau stops growing (pat-spec.md §4.2, official code 0.8).
            ``1.0`` gives the paper's schedule (hard mask after s0).
        gate_step_lag: the gate's schedule step in optimizer step i (0-based) is ``max(i - gate_step_lag, 0)``.
            ``1`` (default) is the official code's: its patched trainer writes ``global_step`` into the model before
            ``global_step += 1``, so steps 0 and 1 both use schedule step 0 and the gate runs one step behind the
            optimizer. ``0`` is this project's schedule before 2026-12-04 (one step ahead of the official code).
        snap_at_freeze: at the freeze point (once), fix exactly the target count active (the top N by ``snap_by``)
            whatever the count the regularizer reached, and from then on train with the exact 0/1 gate (a pruned
            channel passes nothing; the proxy's optimizer state is reset). Not in the paper or the official code,
            which keep training with the soft gate (it passes ~4.5e-5 of a pruned channel at s0 = 10 000, more at short
            budgets, where tau at the freeze point is small).
            ``False``: that soft gate; finalize then snaps if the count is not exactly N.
        snap_by: how the snap ranks channels. ``"proxy"`` (default, the paper's mask decides; the snap only fixes
            the count when it is off) or ``"taylor"``: at the freeze point keep the N channels with the largest
            accumulated first-order Taylor importance of the gate, ``sum |dL/dM_i * M_i|`` over the steps before
            it (LLM-Pruner's criterion applied to the hidden channels). Not in the paper; meant for short budgets,
            where the proxies have too few steps to separate (see README).
        active_loss: ``"official"`` = ``active_weight * |count - N| / N`` (STE count) plus the polarisation term;
            ``"paper"`` = ``active_weight * |count - N| / d``, the paper's ``||N - count||`` (which has no weight)
            divided by the hidden size d, with no polarisation. Its straight-through gradient is ours (the paper
            states none): it pushes only the channels that must cross zero, or that sit within ``active_margin`` of
            it, towards the nearest proxy with exactly N active (``pat.losses.active_loss``; docs/findings).
        active_weight: weight of the count term (official code: 10).
        active_margin: ``active_loss="paper"`` only (ours): the count gradient keeps the proxies at least this far
            from zero on their side, so the task gradient cannot tip a channel across it once the count is N.
        identity_loss: ``"official"`` = per-channel scale s after the mask and ``MSE(L0 L0^T, I_r)`` on every HSM;
            ``"paper"`` = ``D = I + L1 diag(v) L0`` with ``||L0 L0^T - I||_F + ||L1^T L1 - I||_F``; ``"none"`` =
            neither scale nor loss (the paper's "Identity x" ablation).
        identity_weight: weight of the identity loss.
        embed_hsm: ``"full"`` = HIO + scale on the embedding too (tied embeddings are untied at finalize, which adds
            ``vocab * d'`` parameters); ``"mask_only"`` = the embedding HSM only masks, so tied embeddings stay tied
            and parameters drop by the pruned fraction; ``"auto"`` = ``mask_only`` for tied models, else ``full``.
        keep_threshold: ``"gt0"`` (default): a channel is active iff its proxy > 0, in training and at merge alike.
            ``"ge0"`` is the official training threshold (merge still keeps > 0 there).
        mask_lr_scale: learning-rate multiplier for the shared mask proxy (relative to the base LR). Default 1.0:
            the official code trains the mask at the one LR (5e-5). ``10.0`` (not in the paper or the code) lets
            the proxies move ten times further in a short budget.
        mask_lr: an absolute learning rate for the mask proxy, overriding ``mask_lr_scale``.
        hsm_lr_scale: learning-rate multiplier for L0, L1, v and s.
        fold_scale: fold the learned scale s into the writers at finalize (the official merge drops it: a bug).
        mask_init: how the mask proxy starts. ``"zero"`` (default): every proxy at 0, as in the paper and the official
            code. ``"taylor"`` / ``"flap"`` (ours, not in the paper): ranked by a calibration score of the hidden
            channels (first-order Taylor importance of the gate, or FLAP's fluctuation metric over the readers of
            the residual stream; ``pat.importance``), the top N at small positive values and the rest at small
            negative ones, so the learned mask starts from an importance-based selection.
        mask_init_scale: half-width of that ranked ramp (the most important channel starts at ``+scale``, the least
            at ``-scale``).
        mask_init_samples: calibration sequences scored for ``mask_init`` (from the run's calibration sampler).
        official_quirks: reproduce the official code's bugs: identity loss only on the embedding HSM and the last
            layer's two HSMs, and ``fold_scale`` forced off. For comparisons only.
    """

    prune_ratio: float = 0.25
    align: int | None = None
    hio_rank: int | None = None
    lora_rank: int = 20
    lora_alpha: float = 4.0
    lora_dropout: float = 0.05
    milestone_step: int | None = None
    milestone_frac: float = 1.0 / 3.0
    mask_freeze_frac: float = 0.8
    gate_step_lag: int = 1
    snap_at_freeze: bool = True
    snap_by: Literal["proxy", "taylor"] = "proxy"
    active_loss: Literal["official", "paper"] = "official"
    active_weight: float = 10.0
    active_margin: float = 0.01
    identity_loss: Literal["official", "paper", "none"] = "official"
    identity_weight: float = 1.0
    embed_hsm: Literal["auto", "full", "mask_only"] = "auto"
    keep_threshold: Literal["gt0", "ge0"] = "gt0"
    mask_lr_scale: float = 1.0
    mask_lr: float | None = None
    hsm_lr_scale: float = 1.0
    fold_scale: bool = True
    mask_init: Literal["zero", "taylor", "flap"] = "zero"
    mask_init_scale: float = 0.05
    mask_init_samples: int = 32
    official_quirks: bool = False

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"PATConfig.{name}={getattr(self, name)!r}: expected {expected}")

        if not (isinstance(self.prune_ratio, (int, float)) and 0.0 < self.prune_ratio < 1.0):
            bad("prune_ratio", "a number in (0, 1)")
        if self.align is not None and (not isinstance(self.align, int) or self.align < 1):
            bad("align", "a positive integer or None")
        if self.hio_rank is not None and (not isinstance(self.hio_rank, int) or self.hio_rank < 1):
            bad("hio_rank", "an integer >= 1 or None")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            bad("lora_rank", "an integer >= 0 (0 = no LoRA)")
        if self.milestone_step is not None and (not isinstance(self.milestone_step, int) or self.milestone_step < 2):
            bad("milestone_step", "an integer >= 2 or None")
        if not 0.0 < self.milestone_frac <= 1.0:
            bad("milestone_frac", "a number in (0, 1]")
        if not 0.0 < self.mask_freeze_frac <= 1.0:
            bad("mask_freeze_frac", "a number in (0, 1]")
        if not isinstance(self.gate_step_lag, int) or isinstance(self.gate_step_lag, bool) or self.gate_step_lag < 0:
            bad("gate_step_lag", "an integer >= 0 (1 = the official code, 0 = one step ahead)")
        for name, allowed in (("active_loss", ACTIVE_LOSSES), ("identity_loss", IDENTITY_LOSSES),
                              ("embed_hsm", EMBED_MODES), ("keep_threshold", KEEP_THRESHOLDS),
                              ("snap_by", ("proxy", "taylor")), ("mask_init", MASK_INITS)):
            if getattr(self, name) not in allowed:
                bad(name, "one of " + ", ".join(allowed))
        if self.mask_lr is not None and not (isinstance(self.mask_lr, (int, float)) and self.mask_lr > 0):
            bad("mask_lr", "a positive number or None")
        if not (isinstance(self.mask_init_scale, (int, float)) and math.isfinite(self.mask_init_scale)
                and self.mask_init_scale > 0):
            bad("mask_init_scale", "a finite number > 0")
        if not isinstance(self.mask_init_samples, int) or isinstance(self.mask_init_samples, bool) \
                or self.mask_init_samples < 1:
            bad("mask_init_samples", "an integer >= 1")
        for name in ("active_weight", "active_margin", "identity_weight", "mask_lr_scale", "hsm_lr_scale",
                     "lora_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, "a finite number >= 0")

    # ---- derived quantities -------------------------------------------------------------------------------
    def target_keep(self, hidden_size: int, num_heads: int) -> int:
        """Kept hidden width: ``d (1 - ratio)`` rounded to the nearest multiple of ``align`` (>= align, < d)."""
        a = self.align or num_heads
        keep = int(round(hidden_size * (1.0 - self.prune_ratio) / a)) * a
        keep = min(max(keep, a), hidden_size - a)
        if keep <= 0 or keep >= hidden_size:
            raise ValueError(f"PATConfig.align={a}: no kept width that is a multiple of it fits in hidden size "
                             f"{hidden_size}")
        return keep

    def rank_for(self, hidden_size: int) -> int:
        r = self.hio_rank if self.hio_rank is not None else max(1, round(0.05 * hidden_size))
        if r > hidden_size:
            raise ValueError(f"PATConfig.hio_rank={r}: expected at most the hidden size {hidden_size}")
        return r

    def milestone(self, total_steps: int) -> int:
        if self.milestone_step is not None:
            return self.milestone_step
        if total_steps < 2:
            raise ValueError(f"total_steps={total_steps}: PAT needs at least 2 steps to place the milestone s0")
        return max(2, int(round(self.milestone_frac * total_steps)))

    def embed_mode(self, tied: bool) -> str:
        if self.embed_hsm == "auto":
            return "mask_only" if tied else "full"
        return self.embed_hsm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
