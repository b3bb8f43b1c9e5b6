"""PAT's device and precision correctness on the CPU: what a GPU user runs, under ``tests/device_guard.py``.

The guard makes every tensor that ``pat`` creates without a device land off the model's device (docs/testing.md),
so a CPU-made ``torch.eye`` beside CUDA weights fails here as it does on a GPU. bf16: the HSM does its math in fp32
under autocast, and a model trained under bf16 autocast snaps, finalizes and merge-checks.
"""

from __future__ import annotations

import pytest
import torch

from pat import PATConfig, PATStage, get_mask, hsms, merge_check
from pat.lora import merge_lora
from pat.merge import finalize
from pat.stage import RunContext
from tests.device_guard import DeviceMismatch, ForeignDefaultDevice
from tests.tiny import TINY, tiny_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8


def _steps(stage, model, x: torch.Tensor, steps: int, lr: float, autocast: bool) -> None:
    """``steps`` plain training steps of a prepared PAT model on ``x`` (optionally under bf16 autocast)."""
    opt = torch.optim.AdamW(stage.param_groups(model, lr))
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=x, labels=x).loss
        (loss.float() + stage.extra_loss(model)).backward()
        opt.step()
        opt.zero_grad()
        for p in stage.on_optimizer_step(model, step + 1) or []:
            opt.state.pop(p, None)


def _train(name: str, identity: str = "official", autocast: bool = False, **kw):
    """A PAT model trained STEPS steps (the mask snaps at its freeze point on the way), and its stage."""
    stage = PATStage(PATConfig(hio_rank=4, lora_rank=4, lora_dropout=0.0, identity_loss=identity, **kw))
    model = stage.prepare(tiny_model(name), RunContext(total_steps=STEPS))
    _steps(stage, model, tiny_batch(4, 12, seed=2), STEPS, 1e-2, autocast)
    return stage, model


def test_guard_fails_on_a_tensor_made_without_device_and_passes_an_explicit_one():
    # the guard must be able to fail: the bug's shape (a CPU-made eye beside the model's weights) is caught and named
    w = torch.randn(3, 3)
    with ForeignDefaultDevice(roots=("tests",)) as g:  # this file counts as "our code" here
        with pytest.raises(DeviceMismatch, match=r"add: tensors on \['cpu', 'meta'\], called from tests/pat"):
            torch.eye(3) + w
        assert torch.eye(3, device=w.device).add(w).device == w.device  # an explicit device is respected
    assert len(g.injected) == 1 and "test_device.py" in g.injected[0]


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("identity", ["official", "paper"])
def test_train_snap_finalize_merge_check_under_the_guard(name, identity):
    held = tiny_batch(seed=5)
    with ForeignDefaultDevice():
        stage, model = _train(name, identity)
        assert bool(get_mask(model).snapped)  # the freeze point was inside the run
        small = stage.finalize(model, RunContext(extra={"heldout_ids": held}))
    assert small.config.hidden_size == 36
    assert stage.report()["merge_max_abs_logit_diff"] <= 1e-4  # the fp32 merge bound of test_core (derived there)


# ------------------------------------------------------------------------------------------------- bf16
def test_hsm_math_is_fp32_under_autocast():
    # the embedding's HSM under autocast: its writer returns fp32, which autocast would feed to bf16 matmuls
    from pat.modules import HybridSparsifier, SharedMask

    torch.manual_seed(0)
    mask = SharedMask(48, s0=4)
    h = HybridSparsifier(torch.nn.Identity(), mask, rank=8, scale=True, diag=False)
    with torch.no_grad():
        h.L1.normal_(0, 0.3)
        h.s.normal_(1, 0.1)
    x = torch.randn(4, 16, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = h(x)
    ref = (x + (x @ h.L0.t()) @ h.L1.t()) * mask.gate() * h.s
    # fp32 vs fp32 in another summation order: |ref| (<~ 5) x fp32 eps (1.2e-7) x sqrt(d = 48) ~ 4e-6; bound 2e-5.
    # bf16 matmuls (the bug) round x, L0, z and L1 to 8 bits: measured 1.2e-2 before the fix, 0.0 after
    assert out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 2e-5


@pytest.mark.parametrize("name", ["llama-gqa-tied", "qwen2"])
def test_bf16_autocast_training_snaps_finalizes_and_merges(name):
    held = tiny_batch(seed=5)
    stage, model = _train(name, autocast=True)
    assert bool(get_mask(model).snapped)
    assert all(p.dtype == torch.float32 for h in hsms(model) for p in h.parameters() if p.requires_grad)
    merged = merge_lora(model)
    small = finalize(merged)
    # fp32 check: the merge itself, bound as in test_core
    assert merge_check(merged, small, held) <= 1e-4
    # under bf16 autocast both models round every matmul output to bf16 (unit roundoff u = 2^-8), in different
    # places (the folded weights differ), so the logits differ by at most ~ |logit| x u x (rounding stages in
    # series): |logit| <= 1 on these tiny models (measured <= 0.95), 2 layers x 4 matmul stages + the head = 9
    # -> 1 x 3.9e-3 x 9 = 0.035 (linear worst case). Measured 0.002 - 0.0039 (1 ulp of the logits) on all five tiny
    # architectures. Fold bugs are caught by the fp32 check above; this one catches a finalized model that does not
    # run under autocast, or a dtype mix-up that costs more than rounding
    from pat.attach import set_hard

    set_hard(merged, True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = merged(input_ids=held).logits.float(), small(input_ids=held).logits.float()
    set_hard(merged, False)
    assert float((a - b).abs().max()) <= 0.035


@pytest.mark.slow
def test_smollm2_bf16_autocast_training_snaps_finalizes_and_merges(smollm2):
    import copy

    from pat.attach import set_hard
    from tests.pat.test_smollm2 import _noise_floor

    stage = PATStage(PATConfig(prune_ratio=0.25, hio_rank=8, lora_rank=4, lora_dropout=0.0))
    torch.manual_seed(0)
    model = stage.prepare(copy.deepcopy(smollm2[0]), RunContext(total_steps=4))
    x = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(1))
    _steps(stage, model, x, 4, 1e-3, autocast=True)
    assert bool(get_mask(model).snapped)
    merged = merge_lora(model)
    small = finalize(merged)
    held = x[:, :16]
    set_hard(merged, True)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = merged(input_ids=held).logits.float(), small(input_ids=held).logits.float()
        a32, b32 = merged(input_ids=held).logits, small(input_ids=held).logits
    set_hard(merged, False)
    err, err32 = float((a - b).abs().max()), float((a32 - b32).abs().max())
    floor16 = max(float((a - a32).abs().max()), float((b - b32).abs().max()))
    floor32 = _noise_floor(merged, held)
    print(f"SmolLM2 bf16-trained: merge fp32 {err32:.3g} (floor {floor32:.3g}), under bf16 {err:.3g} "
          f"(floor {floor16:.3g})")
    # fp32: the bound of test_smollm2.py's merge check, 4x this machine's fp32 floor measured in the test: here
    # 2.2e-4 on a floor of 1.47e-4 (1 thread, 1.52 floor) and 1.5e-4 on 1.45e-4 (2 threads, 1.06 floor), so
    # 4 floor is >= 2.6x the worst. This is the sharp check of the fold: a fold bug gives >= 0.1
    assert err32 <= max(1e-4, 4 * floor32)
    # under bf16 autocast SmolLM2's logits (|logit| ~ 30) move by ~3-4 against fp32 (floor16: each model's own
    # bf16-vs-fp32 distance, measured 2.9 and 3.8 with 1 and 2 threads); the two models' bf16 logits differ by
    # 1.36 and 1.28 floor16: bound 5 floor16 (>= 3x). Catches a finalized model that breaks under autocast (a
    # dtype mix-up, an fp32-only fold), which would differ by O(|logit|)
    assert err <= 5 * floor16
