"""PAT inside a Hugging Face ``Trainer`` or TRL ``SFTTrainer``: one callback, no Trainer subclass.

Example::

    from pat.hf import PATCallback

    pat = PATCallback(prune_ratio=0.25)                      # or PATCallback(stage) for any stage object
    model = pat.prepare(model)                                 # peft LoRA + HSMs + the shared mask
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[pat],
                      optimizers=(pat.create_optimizer(model, args), None))
    trainer.train()
    small = pat.finalize(trainer.model)                        # a stock, smaller PreTrainedModel
    small.save_pretrained("out")                               # AutoModelForCausalLM.from_pretrained("out")

The data: ``pat.prompts.tokenize_example(record, tokenizer)`` (for ``Trainer``, with ``DataCollatorForSeq2Seq``) or
``pat.prompts.format_example(record, tokenizer)`` (SFTTrainer's prompt/completion) formats an Alpaca or LaMini record
in the tokenizer's chat template when it has one, else the paper's Alpaca template (``prompt_format``), with labels
on the response and the end-of-turn token only, as ``pat-tune`` does.

What the callback does, and why it needs no change to the trainer's loss code:

* PAT's extra loss (``L_active + L_identity``) depends only on PAT's own parameters (the mask proxy and the HIO
  factors), not on the batch. So at the start of each optimizer step (``on_step_begin``) the callback computes it
  once and adds its gradient to the parameters' ``.grad``; the trainer's micro-batches then accumulate the task
  gradient on top. The result is the gradient of ``LM loss + extra loss`` for the whole step, whatever way the
  trainer (or ``SFTTrainer``'s own ``compute_loss``) scales its loss for gradient accumulation and processes, and
  before gradient clipping, as in ``bench.harness.train``. The gradient is taken with ``torch.autograd.grad``, so
  DDP's gradient hooks do not fire on it; the value is identical on every rank.
* After each optimizer step (``on_step_end``, ``state.global_step`` steps done) it calls the stage's
  ``on_optimizer_step`` (PAT: the tau/beta schedule, the snap to the exact width at the freeze point) and drops the
  optimizer state of every parameter the hook returns.
* ``create_optimizer`` builds AdamW from the stage's ``param_groups`` (the mask proxy gets its own learning rate,
  ``mask_lr_scale`` x the base LR, and no weight decay) with the ``TrainingArguments``' betas, epsilon and weight
  decay; pass it as ``optimizers=(optimizer, None)`` and the trainer still builds its LR schedule on it (the
  schedule multiplies each group's own LR).
* ``on_train_begin`` places PAT's milestone ``s0`` from ``state.max_steps`` when ``prepare`` was not told the
  number of steps.

Not supported: fp16 with a gradient scaler (the added gradient would be unscaled twice; use bf16 or fp32),
gradient checkpointing (TRL's ``SFTConfig`` turns it on by default: pass ``gradient_checkpointing=False``),
DeepSpeed and FSDP (they own ``.grad``), resuming from a Trainer checkpoint (peft saves only the LoRA adapter, not
the HSMs and the mask). With DDP, set ``ddp_find_unused_parameters=True``: after the freeze point the task loss no
longer reaches the mask proxy.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .method import PATStage
from .stage import RunContext, drop_optimizer_state

log = logging.getLogger(__name__)


class PATCallback(TrainerCallback):
    """Train a stage (PAT by default) with ``transformers.Trainer`` / ``trl.SFTTrainer``; see the module docstring.

    Args:
        stage: a stage object (``prepare``, ``param_groups``, ``extra_loss``, ``on_optimizer_step``, ``finalize``);
            default ``PATStage(**pat_kwargs)``.
        **pat_kwargs: ``pat.PATConfig`` fields when ``stage`` is not given, e.g. ``prune_ratio=0.25``.
    """

    def __init__(self, stage=None, **pat_kwargs: Any):
        if stage is not None and pat_kwargs:
            raise ValueError("PATCallback: pass either a stage or PATConfig fields, not both "
                             f"(got {sorted(pat_kwargs)})")
        self.stage = stage if stage is not None else PATStage(**pat_kwargs)
        self.model: nn.Module | None = None
        self.total_steps: int | None = None
        self._grad_step: int | None = None
        self.dropped_state = 0  # optimizer-state entries dropped on the stage's request (e.g. at PAT's snap)

    # -------------------------------------------------------------------------------------------- set-up
    def prepare(self, model: nn.Module, total_steps: int | None = None, tokenizer=None, seed: int = 0) -> nn.Module:
        """Run the stage's ``prepare`` (PAT: LoRA + HSMs + mask); returns the model to hand to the trainer.

        ``total_steps``: the optimizer steps of the run (PAT places ``s0`` at ``milestone_frac`` of them); ``None``
        lets ``on_train_begin`` place it from the trainer's ``max_steps``.
        """
        self.total_steps = total_steps
        model = self.stage.prepare(model, RunContext(tokenizer=tokenizer, total_steps=total_steps or 3, seed=seed))
        self.model = model
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The stage's optimizer groups; every other parameter of ``model`` is frozen."""
        groups = [g for g in self.stage.param_groups(model, lr) if g["params"]]
        keep = {id(p) for g in groups for p in g["params"]}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        return groups

    def create_optimizer(self, model: nn.Module, args) -> torch.optim.Optimizer:
        """AdamW over the stage's groups with ``args``' LR, betas, epsilon and weight decay (a group's own wins)."""
        groups = [dict(g, weight_decay=g.get("weight_decay", args.weight_decay))
                  for g in self.param_groups(model, args.learning_rate)]
        if not groups:
            raise ValueError("PATCallback.create_optimizer: the stage has no trainable parameters "
                             "(was prepare called?)")
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                 eps=args.adam_epsilon)

    # -------------------------------------------------------------------------------------------- callbacks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, "fp16", False):
            raise ValueError("PATCallback: TrainingArguments.fp16=True is not supported (the gradient scaler would "
                             "unscale PAT's added gradient); use bf16=True or fp32")
        ckpt = [f for f in ("gradient_checkpointing", "activation_checkpointing") if getattr(args, f, False) is True]
        if ckpt and isinstance(self.stage, PATStage):
            raise ValueError(f"PATCallback: TrainingArguments.{ckpt[0]}=True is not supported with PAT "
                             "(the shared gate is computed once per forward, so a recomputed layer sees a different "
                             "tensor); set gradient_checkpointing=False (TRL's SFTConfig turns it on by default)")
        model = model if model is not None else self.model
        if self.total_steps is None and state.max_steps and hasattr(self.stage, "cfg"):
            from .attach import get_mask

            mask = get_mask(model)
            mask.s0 = self.stage.cfg.milestone(state.max_steps)
            self.total_steps = state.max_steps
            if hasattr(self.stage, "_report"):
                self.stage._report["milestone_step"] = mask.s0
            log.info("PAT milestone s0 = %d of %d steps", mask.s0, state.max_steps)
        elif self.total_steps is not None and state.max_steps and state.max_steps != self.total_steps:
            log.warning("PATCallback: prepare(total_steps=%d) but the trainer runs %d steps; s0 stays where it was "
                        "placed", self.total_steps, state.max_steps)
        self.model = model
        self._grad_step = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._grad_step == state.global_step:
            return
        self._grad_step = state.global_step
        self.add_extra_grad(model if model is not None else self.model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        model = model if model is not None else self.model
        dropped = self.stage.on_optimizer_step(model, state.global_step)
        if dropped and optimizer is not None:
            dropped = list(dropped)
            self.dropped_state += len(dropped) - len(drop_optimizer_state(optimizer, dropped))

    # -------------------------------------------------------------------------------------------- pieces
    def add_extra_grad(self, model: nn.Module) -> float | None:
        """Add the gradient of the stage's ``extra_loss`` to ``.grad`` of the parameters it reaches; returns its
        value."""
        extra = self.stage.extra_loss(model)
        if extra is None or not extra.requires_grad:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(extra.float(), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.to(p.dtype).clone()
                else:
                    p.grad.add_(g.to(p.grad.dtype))
        return float(extra.detach())

    def finalize(self, model: nn.Module | None = None, heldout_ids: torch.Tensor | None = None) -> nn.Module:
        """The stage's ``finalize`` (PAT: merge LoRA, fold the HSMs, remove the pruned channels): a stock model.

        ``heldout_ids`` (LongTensor (b, t)) adds the merge check (max |logit difference|) to ``report()``.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("PATCallback.finalize: no model (call prepare first or pass the trained model)")
        unwrapped = getattr(model, "module", model)  # DDP
        extra = {"heldout_ids": heldout_ids} if heldout_ids is not None else {}
        return self.stage.finalize(unwrapped, RunContext(total_steps=self.total_steps or 0, extra=dict(extra or {})))

    def report(self) -> dict[str, Any]:
        """The stage's report (PAT: target and achieved width, kept channels, params before/after, snap changes)."""
        rep = dict(self.stage.report()) if hasattr(self.stage, "report") else {}
        rep["dropped_optimizer_state"] = self.dropped_state
        return rep
