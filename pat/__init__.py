"""PAT: Pruning-Aware Tuning (Liu et al., AAAI-25, arXiv 2408.14721), without forking transformers or peft.

Public API::

    cfg = PATConfig(prune_ratio=0.25)
    mask = attach(model, cfg, total_steps)      # HSMs on every residual write + one shared mask
    loss = lm_loss + pat_loss(model)            # L_active + L_identity
    set_step(model, step)                       # after each optimizer step: the tau/beta schedule; at the freeze
                                                # point the snap (exactly N kept, gate exactly 0/1 from then on)
    small = finalize(model)                     # stock HF model with hidden_size = d'

Names in the paper and in the official code (kriskrisliu/PAT_Pruning-Aware-Tuning):

=============================  ==========================  =================================
paper                          official code               here
=============================  ==========================  =================================
HSM                            ``DimDownLayer``            ``HybridSparsifier``
HIO (L0, L1)                   ``dimdown_inout[0/1]``      ``HybridSparsifier.L0 / .L1``
USM proxy W_M                  ``DimDownMask.mask``        ``SharedMask.proxy``
gated mask M                   ``DimDownMask.scalar``      ``SharedMask.gate()``
N_target                       ``dimdown_dim``             ``SharedMask.target``
milestone s0                   ``--global_step``           ``PATConfig.milestone_step``
identity-loss scale            ``dimdown_scale``           ``HybridSparsifier.s``
=============================  ==========================  =================================

Where the mask departs from paper and code (docs/method.md): the snap at the freeze point and the exact 0/1 gate
after it (``snap_at_freeze``); the mask trains at the one LR like the official code (``mask_lr_scale=1.0``;
``10.0`` is our faster option); ``active_loss="paper"`` divides the paper's ``|N - count|`` by d and pushes only
the channels that must cross zero or sit within ``active_margin`` of it (ours).
"""

from .attach import attach, get_mask, hsms, set_hard
from .config import PATConfig
from .losses import active_loss, identity_loss
from .merge import finalize, merge_check
from .method import PATStage, pat_loss, pat_param_count, set_step

__all__ = [
    "PATConfig", "PATStage", "attach", "finalize", "merge_check", "get_mask", "hsms", "set_hard", "set_step",
    "pat_loss", "pat_param_count", "active_loss", "identity_loss",
]
