"""Distillation from the unpruned model (``TrainBudget.distill_weight``, ours): the KD term, the mixed objective and
the teacher's recorded cost."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from baselines.lora import LoRAStage
from bench.harness.budget import TrainBudget
from bench.harness.distill import Teacher, kd_loss_sum
from bench.harness.train import _objective
from pat.lora import LoRAConfig
from tests.bench.harness.test_train import budget, run
from tests.tiny import tiny_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_known_answer():
    """Two response positions of a 3-token vocabulary, worked by hand at T = 2."""
    s = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])  # (1, 3, 3)
    t = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 4, 7]])  # positions 0 and 1 predict response tokens; position 2 predicts nothing
    T = 2.0

    def kl(zt, zs):
        pt = [math.exp(v / T) for v in zt]
        ps = [math.exp(v / T) for v in zs]
        pt = [v / sum(pt) for v in pt]
        ps = [v / sum(ps) for v in ps]
        return sum(a * math.log(a / b) for a, b in zip(pt, ps))

    want = T * T * (kl([2.0, 1.0, 0.0], [0.0, 1.0, 2.0]) + kl([0.0, 0.0, 0.0], [1.0, 0.0, 0.0]))
    got = float(kd_loss_sum(s, t, labels, T))
    assert got == pytest.approx(want, rel=1e-6)  # fp32 softmax of O(1) logits: ~1e-7 relative
    assert float(kd_loss_sum(t, t, labels, T)) == pytest.approx(0.0, abs=1e-6)


def _tiny_run(weight: float):
    model = tiny_model("llama-mha")
    teacher = Teacher(tiny_model("llama-mha", seed=5))
    b = budget(distill_weight=weight, distill_temperature=2.0)
    return SimpleNamespace(engine_model=model, teacher=teacher, budget=b, kd_sum=None)


def test_objective_is_the_lm_loss_at_zero_weight_and_the_kd_loss_at_weight_one():
    ids = tiny_batch(2, 10)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    n_resp = int((labels[:, 1:] != -100).sum())
    r0 = _tiny_run(0.0)
    obj, lm = _objective(r0, batch, n_resp)
    assert float(obj) == float(lm)  # exactly the LM loss: (1 - 0) * lm + 0 * kd
    r1 = _tiny_run(1.0)
    obj1, lm1 = _objective(r1, batch, n_resp)
    with torch.no_grad():
        kd = kd_loss_sum(r1.engine_model(input_ids=ids).logits, r1.teacher.model(input_ids=ids).logits, labels, 2.0)
    assert float(obj1) == pytest.approx(float(kd) / n_resp, rel=1e-5)
    assert float(lm1) == pytest.approx(float(lm), rel=1e-6)
    assert r1.teacher.forward_tokens == ids.numel()


@pytest.mark.parametrize("field,value", [("distill_weight", 1.5), ("distill_weight", -0.1),
                                         ("distill_temperature", 0.0)])
def test_bad_distill_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"TrainBudget.{field} = "):
        TrainBudget(steps=2, **{field: value})


def test_pipeline_distils_from_the_unpruned_model_and_records_its_cost(tmp_path):
    """LoRA on the dense tiny model with KD: the student starts equal to its teacher (LoRA B = 0, no dropout), so the
    first step's KD loss is 0 up to fp32 rounding; it grows once LoRA moves the student. The record states the
    teacher's forward tokens and FLOPs (2 x params x tokens)."""
    b = budget(steps=4, distill_weight=0.5, distill_temperature=1.0)
    rec = run(tmp_path, stages=[LoRAStage(LoRAConfig(rank=4, dropout=0.0))], b=b)
    d = rec["distill"]
    assert len(d["kd_losses"]) == 4
    assert abs(d["kd_losses"][0]) < 1e-5  # identical logits: KL is 0 up to rounding (fp32 log-softmax, ~1e-7/token)
    assert d["kd_losses"][-1] > 1e-4
    assert d["teacher_forward_tokens"] > 0
    assert d["teacher_forward_flops"] == 2 * d["teacher_params"] * d["teacher_forward_tokens"]
    assert rec["budget"]["distill_weight"] == 0.5


def test_distillation_needs_a_teacher():
    from bench.harness.train import train

    with pytest.raises(ValueError, match="TrainBudget.distill_weight = 0.5: needs a teacher"):
        train(tiny_model("llama-mha"), [], budget(distill_weight=0.5), None, "unused")


def test_distillation_under_bf16_autocast(tmp_path):
    """The `short` suite trains with KD in bf16: the teacher runs under the same autocast. Its KD loss starts near 0
    (student = teacher) within bf16's rounding of the logits and the run's losses stay finite."""
    b = budget(steps=3, distill_weight=0.5, distill_temperature=1.0, precision="bf16")
    rec = run(tmp_path, stages=[LoRAStage(LoRAConfig(rank=4, dropout=0.0))], b=b)
    kd = rec["distill"]["kd_losses"]
    assert rec["budget"]["precision"] == "bf16" and len(kd) == 3
    assert all(math.isfinite(v) for v in kd + rec["losses"])
    # identical models under the same autocast give identical bf16 logits: KL 0 up to the fp32 softmax's rounding
    assert abs(kd[0]) < 1e-4
