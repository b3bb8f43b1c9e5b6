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
* Resume (``Trainer.train(resume_from_checkpoint=...)``): peft saves only the LoRA adapter, so ``on_save`` writes
  the rest of PAT's state into the trainer's checkpoint directory, ``checkpoint-<step>/pat_state-rank<i>.safetensors``
  (every trainable tensor: HSMs, mask proxy, LoRA; the stage's ``state_dict``: the mask's step, Taylor importance
  and snapped selection; the callback's counters). When the trainer resumes (``state.global_step > 0`` at
  ``on_train_begin``, after it has loaded the adapter and the optimizer) the callback reads that file back, so the
  resumed run continues the straight run's schedule, selection and weights. The file is looked up under
  ``TrainingArguments.output_dir``; a resume without it (a checkpoint written without the callback, elsewhere, or
  by a run with other PAT settings) is refused with one line naming the file, never restarted silently.

Not supported: fp16 with a gradient scaler (the added gradient would be unscaled twice; use bf16 or fp32),
gradient checkpointing (TRL's ``SFTConfig`` turns it on by default: pass ``gradient_checkpointing=False``),
DeepSpeed and FSDP (they own ``.grad``), hyperparameter-search runs with checkpoints (their checkpoints are not
under ``output_dir``; ``on_save`` refuses them). With DDP, set ``ddp_find_unused_parameters=True``: after the
freeze point the task loss no longer reaches the mask proxy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .method import PATStage
from .io import write_atomic
from .stage import RunContext, drop_optimizer_state

log = logging.getLogger(__name__)

STATE_FILE = "pat_state-rank{rank}.safetensors"


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
        if state.global_step > 0:  # the trainer resumed from a checkpoint (adapter and optimizer already loaded)
            self.load_state(self.state_path(args, state.global_step), model)

    def on_save(self, args, state, control, model=None, **kwargs):
        """Write PAT's state beside the trainer's checkpoint files (peft saves only the LoRA adapter)."""
        d = self.state_path(args, state.global_step).parent
        if not d.is_dir():
            raise ValueError(f"PATCallback: the trainer's checkpoint directory {d} does not exist (hyperparameter-"
                             "search runs keep theirs elsewhere), so PAT's state cannot be saved with it; resuming "
                             "such a run is not supported")
        self.save_state(d / self.state_path(args, state.global_step).name,
                        model if model is not None else self.model)

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

    # -------------------------------------------------------------------------------------------- resume
    @staticmethod
    def state_path(args, step: int) -> Path:
        """``<output_dir>/checkpoint-<step>/pat_state-rank<process_index>.safetensors``."""
        return (Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
                / STATE_FILE.format(rank=getattr(args, "process_index", 0)))

    @staticmethod
    def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in getattr(model, "module", model).named_parameters() if p.requires_grad}

    def save_state(self, path: Path, model: nn.Module) -> Path:
        """Every trainable tensor (``param.<name>``), the stage's state (``stage.<key>``) and the callback's counters
        (``callback.*``), as safetensors (tensors only: nothing is unpickled on load)."""
        from safetensors.torch import save_file

        unwrapped = getattr(model, "module", model)
        tensors = {f"param.{n}": p.detach() for n, p in self._trainable(model).items()}
        if hasattr(self.stage, "state_dict"):
            tensors.update({f"stage.{k}": v for k, v in self.stage.state_dict(unwrapped).items()})
        s0 = getattr(self._mask(unwrapped), "s0", -1)
        tensors["callback.counters"] = torch.tensor([self.dropped_state, self.total_steps or -1, s0], device="cpu")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return write_atomic(path, lambda tmp: save_file(tensors, tmp))

    def _mask(self, model: nn.Module):
        if not isinstance(self.stage, PATStage):
            return None
        from .attach import get_mask

        return get_mask(model)

    def load_state(self, path: Path, model: nn.Module) -> None:
        """Restore what ``save_state`` wrote into ``model`` (in place: the optimizer keeps its parameters).

        Raises:
            ValueError: the file is missing, or belongs to another run (other trainable tensors, milestone, total
                steps, or LoRA weights other than the ones the trainer just loaded from its checkpoint).
        """
        from safetensors.torch import load_file

        if not path.is_file():
            raise ValueError(f"PATCallback: the trainer resumes at step {path.parent.name.rsplit('-', 1)[-1]} but "
                             f"PAT's state {path} is missing (a checkpoint written without PATCallback, outside "
                             "TrainingArguments.output_dir, or by another number of processes); resuming without "
                             "it would restart the HSMs and the mask from scratch, so it is refused")
        saved = load_file(path)
        unwrapped = getattr(model, "module", model)
        params = self._trainable(model)
        names = {k[len("param."):] for k in saved if k.startswith("param.")}
        if names != set(params):
            raise ValueError(f"PATCallback: PAT's state {path} holds other trainable tensors than this model "
                             f"(missing {sorted(set(params) - names)[:3]}, extra {sorted(names - set(params))[:3]}); "
                             "it belongs to a run with other PAT settings")
        dropped, _total, s0 = (int(v) for v in saved["callback.counters"])
        mask = self._mask(unwrapped)
        if mask is not None and s0 != mask.s0:
            raise ValueError(f"PATCallback: PAT's state {path} was written with milestone s0 = {s0}, this run has "
                             f"s0 = {mask.s0} (another max_steps or PAT config); resuming it is refused")
        for n, p in params.items():
            if "lora_" in n and not torch.equal(saved[f"param.{n}"], p.detach().cpu()):
                raise ValueError(f"PATCallback: PAT's state {path} does not belong to the checkpoint the trainer "
                                 f"resumed from (LoRA tensor {n} differs); resume from a checkpoint under "
                                 "TrainingArguments.output_dir")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[f"param.{n}"].to(p.device, p.dtype))
        if hasattr(self.stage, "load_state_dict"):
            self.stage.load_state_dict(unwrapped, {k[len("stage."):]: v for k, v in saved.items()
                                                   if k.startswith("stage.")})
        self.dropped_state = dropped
        log.info("PATCallback: resumed PAT's state from %s", path)

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
