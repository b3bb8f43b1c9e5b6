"""Distillation from the unpruned model as a training objective (ours, not in the PAT paper; the recovery recipe of
Minitron, Sheared-LLaMA, NutePrune and APT): ``TrainBudget.distill_weight`` > 0 turns it on for any pipeline.

The objective of a micro-batch is ``(1 - a) * LM + a * KD`` with ``a = distill_weight``, where both terms are sums
over the response tokens divided by the global batch's response tokens (the LM term's normalisation), and

    KD = T^2 * sum_tokens KL( softmax(z_teacher / T) || softmax(z_student / T) )

at temperature ``T = distill_temperature`` (Hinton et al.'s ``T^2`` keeps the gradient scale comparable across T).
At ``a = 0`` the objective is the LM loss exactly (no teacher is built).

The teacher is the model as loaded, before any stage's ``prepare`` (so before pruning, LoRA and PAT's HSMs): a
frozen copy in eval mode on the training device, under the same autocast. Under DDP or FSDP every process holds a
whole replica of it (it is not handed to accelerate, so it is neither wrapped nor sharded): its memory is one more
copy of the dense weights per process. Its cost is counted: forward seconds and forward FLOPs (``2 * params *
tokens``, an upper bound: the teacher's LM head runs at the response positions only, as the student's) go into the
run record's ``distill`` entry, so distilled arms are compared with their extra compute stated.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.harness.data import IGNORE_INDEX


def kd_loss_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """``T^2 * sum KL(p_teacher || p_student)`` over the positions whose next token is a response token.

    Shapes: logits (b, t, V), labels (b, t) with ``IGNORE_INDEX`` outside the response; position j predicts token
    j + 1, as in the LM loss. Computed in fp32.
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    return kd_sum(student_logits[:, :-1][keep], teacher_logits[:, :-1][keep], temperature)


def kd_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * sum KL(p_teacher || p_student)`` over the rows of already selected logits (n, V); fp32."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    return kl * temperature ** 2


class Teacher:
    """A frozen copy of the unpruned model that times its own forwards."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.forward_seconds = 0.0
        self.forward_tokens = 0

    def to(self, device) -> "Teacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full logits (b, t, V) of the teacher on ``batch``."""
        return self.timed(lambda m, b: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, batch)

    @torch.no_grad()
    def timed(self, fn, batch: dict[str, torch.Tensor]):
        """``fn(teacher model, batch)`` without gradient, its seconds and the batch's tokens counted."""
        t0 = time.perf_counter()
        out = fn(self.model, batch)
        self.forward_seconds += time.perf_counter() - t0
        self.forward_tokens += int(batch["attention_mask"].sum())
        return out

    def record(self, weight: float, temperature: float) -> dict:
        return {"weight": weight, "temperature": temperature, "teacher": "the loaded model before prepare",
                "teacher_params": self.params, "teacher_forward_seconds": round(self.forward_seconds, 3),
                "teacher_forward_tokens": self.forward_tokens,
                "teacher_forward_flops": 2 * self.params * self.forward_tokens,
                "placement": "replicated on every process (not wrapped or sharded)"}
