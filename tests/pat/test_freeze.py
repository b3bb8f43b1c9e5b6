"""PAT's freeze point: the snap always runs once, the gate is exactly 0/1 from then on, the proxy's optimizer state
is dropped, a resumed run keeps the selection, and the finalized model equals the model as training last saw it."""

from __future__ import annotations


import pytest
import torch

from pat import PATConfig, PATStage, get_mask, hsms, pat_loss
from pat.stage import RunContext
from tests.tiny import tiny_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _prepare(name="llama-mha", steps=30, **kw):
    stage = PATStage(PATConfig(**{"hio_rank": 4, "lora_rank": 4, "lora_dropout": 0.0, **kw}))
    return stage, stage.prepare(tiny_model(name), RunContext(total_steps=steps))


def _train_step(stage, model, opt, step, x):
    out = model(input_ids=x, labels=x)
    (out.loss + pat_loss(model)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for p in stage.on_optimizer_step(model, step) or ():
        opt.state.pop(p, None)


def _hsm_outputs(model, x):
    outs = []
    handles = [h.register_forward_hook(lambda m, a, o: outs.append(o.detach())) for h in hsms(model)]
    with torch.no_grad():
        model(input_ids=x)
    for h in handles:
        h.remove()
    return outs


def test_snap_runs_at_freeze_when_count_is_already_n_and_gate_stays_hard():
    # s0 = 10: the freeze at schedule step int(0.8 * 10) = 8 comes after 9 optimizer steps (the gate runs one step
    # behind the optimizer, as in the official code)
    stage, model = _prepare(steps=30)
    mask = get_mask(model)
    opt = torch.optim.AdamW(stage.param_groups(model, 1e-2), lr=1e-2)
    x = tiny_batch(4, 12)
    for step in range(1, 9):
        _train_step(stage, model, opt, step, x)
    assert mask.proxy in opt.state and not bool(mask.snapped)
    # force the count to exactly N with proxies near zero: the soft gate would pass about half of a "pruned" channel
    with torch.no_grad():
        mask.proxy.copy_(0.01 * torch.where(torch.arange(48) < 36, 1.0, -1.0)[torch.randperm(48)])
    assert int(mask.active().sum()) == mask.target == 36
    kept = mask.active().clone()
    out = model(input_ids=x, labels=x)
    (out.loss + pat_loss(model)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # the optimizer step must not be what decides: restore the forced proxies
        mask.proxy.copy_(0.01 * torch.where(kept, 1.0, -1.0))
    reset = stage.on_optimizer_step(model, 9)
    assert reset is not None and [id(p) for p in reset] == [id(mask.proxy)]
    for p in reset:
        opt.state.pop(p, None)
    sel = stage.report()
    assert bool(mask.snapped) and torch.equal(mask.active(), kept)
    for step in range(10, 15):  # recovery training: the gate is exactly 0 / 1, the selection does not move
        gate = mask.compute_gate()
        assert torch.equal(gate[kept], torch.ones(36)) and torch.equal(gate[~kept], torch.zeros(12))
        for o in _hsm_outputs(model, x):
            assert torch.count_nonzero(o[..., ~kept]) == 0
        _train_step(stage, model, opt, step, x)
        assert torch.equal(mask.active(), kept)
    assert opt.state[mask.proxy]["step"] == 5  # Adam restarted from the snap
    small = stage.finalize(model, RunContext(extra={"heldout_ids": x}))
    rep = stage.report()
    assert sel["selection"] == rep["selection"] == {"by": "proxy", "freeze_step": 9, "snap_changed": 0}
    assert rep["steps_after_freeze"] == 14 - 9 and "train_gate_note" not in rep
    assert rep["train_gate_max_abs_logit_diff"] <= 1e-4 and small.config.hidden_size == 36


def test_count_off_at_freeze_is_named_count_snap():
    stage, model = _prepare(steps=30)
    mask = get_mask(model)
    with torch.no_grad():
        mask.proxy.copy_(torch.linspace(-1, 1, 48))  # 24 active
    assert stage.on_optimizer_step(model, 8) is None
    assert stage.on_optimizer_step(model, 9) == [mask.proxy]
    assert stage.on_optimizer_step(model, 10) is None  # once
    stage.finalize(model, None)
    rep = stage.report()
    assert rep["selection"] == {"by": "count_snap", "freeze_step": 9, "snap_changed": 12}
    assert rep["active_at_s0"] == 24 and rep["active_at_s0_step"] == 9  # the count before the snap, not the target


def test_train_gate_diff_detects_the_soft_gate_leak():
    # snap_at_freeze=False keeps the official soft gate; finalize removes what it still passed, and the report says so
    stage, model = _prepare(steps=30, snap_at_freeze=False)
    mask = get_mask(model)
    with torch.no_grad():
        mask.proxy.copy_(0.05 * torch.where(torch.arange(48) < 36, 1.0, -1.0))
        for h in hsms(model):
            if h.L1 is not None:
                h.L1.normal_(0, 0.1)
    stage.on_optimizer_step(model, 12)  # past the freeze point: no snap with this option
    assert not bool(mask.snapped) and 0 < float(mask.compute_gate()[40]) < 1
    stage.finalize(model, RunContext(extra={"heldout_ids": tiny_batch()}))
    rep = stage.report()
    assert rep["merge_max_abs_logit_diff"] <= 1e-4 < rep["train_gate_max_abs_logit_diff"]
    assert rep["selection"]["freeze_step"] is None


def test_resumed_state_keeps_the_selection_and_the_hard_gate():
    stage, model = _prepare(steps=30)
    mask = get_mask(model)
    with torch.no_grad():
        mask.proxy.copy_(torch.linspace(-1, 1, 48))
    stage.on_optimizer_step(model, 9)
    state = stage.state_dict(model)
    again, model2 = _prepare(steps=30)
    with torch.no_grad():
        get_mask(model2).proxy.copy_(mask.proxy)  # the loop restores the trainable parameters first
    again.load_state_dict(model2, state)
    m2 = get_mask(model2)
    assert torch.equal(m2.active(), mask.active()) and torch.equal(m2.compute_gate(), mask.active().float())
    assert again.on_optimizer_step(model2, 10) is None  # snapped before the checkpoint: no second reset
    again.finalize(model2, None)
    rep = again.report()
    assert rep["selection"] == {"by": "count_snap", "freeze_step": 9, "snap_changed": 12}
    assert rep["active_at_s0"] == 24 and rep["steps_after_freeze"] == 1  # restored, not re-recorded after the snap


def test_freeze_at_the_last_step_is_named_a_one_shot_prune():
    # 12 steps with s0 = 10: the snap after step 9 leaves 3 hard-gate steps; stopping at 9 leaves none
    x = tiny_batch()
    for last, after in ((12, 3), (9, 0)):
        stage, model = _prepare(steps=30)
        for step in range(1, last + 1):
            stage.on_optimizer_step(model, step)
        stage.finalize(model, RunContext(extra={"heldout_ids": x}))
        rep = stage.report()
        assert rep["steps_after_freeze"] == after and rep["steps_done"] == last
        assert ("train_gate_note" in rep) == (after == 0)


def test_mask_lr_defaults_to_the_single_lr():
    stage, model = _prepare()
    groups = {g["name"]: g["lr"] for g in stage.param_groups(model, 2e-4)}
    assert groups["pat_mask"] == groups["lora"] == 2e-4
    fast = PATStage(PATConfig(hio_rank=4, lora_rank=4, mask_lr_scale=10.0))
    m2 = fast.prepare(tiny_model("llama-mha"), RunContext(total_steps=30))
    assert {g["name"]: g["lr"] for g in fast.param_groups(m2, 2e-4)}["pat_mask"] == pytest.approx(2e-3)


def test_paper_active_loss_is_normalised_by_d():
    from pat.losses import active_loss

    _, model = _prepare(active_loss="paper")
    mask = get_mask(model)
    with torch.no_grad():
        mask.proxy.copy_(torch.linspace(-1, 1, 48))  # 24 active, target 36
    loss = active_loss(mask, mask.target, "paper", 10.0)
    loss.backward()
    assert loss.item() == pytest.approx(10.0 * 12 / 48)
    expected = torch.zeros(48)
    expected[12:24] = -10.0 / 48  # weight / d on the 12 largest inactive proxies, the ones that must cross
    torch.testing.assert_close(mask.proxy.grad, expected)


def test_paper_active_loss_ties_at_zero_init_when_n_is_half_of_d():
    # all proxies 0, nothing active, N = d/2: the value is 10 * 24 / 48 = 5.0 but the tied channels share the places
    # (half a place each), so the subgradient of the L1 distance to the nearest proxy with exactly N active is 0 on
    # every channel; only the task gradient breaks the tie (docs/method.md)
    from pat.losses import active_loss
    from pat.modules import SharedMask

    m = SharedMask(48, s0=10)
    loss = active_loss(m, 24, "paper", 10.0)
    loss.backward()
    assert loss.item() == pytest.approx(5.0) and torch.count_nonzero(m.proxy.grad) == 0
    with torch.no_grad():  # any split, e.g. what one task-gradient step leaves, gives the count term a direction
        m.proxy.copy_(1e-3 * torch.randn(48, generator=torch.Generator().manual_seed(0)))
    m.proxy.grad = None
    active_loss(m, 24, "paper", 10.0).backward()
    assert torch.count_nonzero(m.proxy.grad) > 0
