"""The trainer on accelerate: LR schedules, precision, gradient checkpointing, optimizer-state reset, checkpoints."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from bench.harness.budget import TrainBudget
from pat.stage import RunContext
from bench.harness.train import (
    BadCheckpointError,
    _lm_loss_sum,
    collect_trainable,
    drop_optimizer_state,
    enable_gradient_checkpointing,
    make_accelerator,
    make_scheduler,
    setup_run,
    train_step,
)
from tests.bench.harness.test_train import GateStage, budget, lora_gate, run, trainable_state, write_alpaca
from tests.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ LR schedules
def old_multiplier(b: TrainBudget, s: int) -> float:
    """The schedule of the hand-written loop this trainer replaced: warmup (s + 1) / warmup, then decay to 0."""
    total, warm = b.total_steps, b.warmup_steps
    if s < warm:
        return (s + 1) / warm
    if b.schedule == "constant":
        return 1.0
    frac = (s - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) if b.schedule == "cosine" else max(0.0, 1 - frac)


def lr_sequence(b: TrainBudget) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=b.lr)
    sched = make_scheduler(opt, b)
    out = []
    for _ in range(b.total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_transformers_schedule_vs_old_loop(schedule, warmup):
    """Equal after warmup; in warmup transformers gives s / warmup where the old loop gave (s + 1) / warmup."""
    b = TrainBudget(steps=40, lr=1e-3, schedule=schedule, warmup_steps=warmup)
    new = lr_sequence(b)
    old = [b.lr * old_multiplier(b, s) for s in range(b.total_steps)]
    assert new[warmup:] == pytest.approx(old[warmup:], rel=1e-12, abs=1e-15)
    assert new[:warmup] == pytest.approx([b.lr * s / warmup for s in range(warmup)], abs=1e-15)
    if warmup:  # the warmup is shifted by one step: transformers starts at 0
        assert new[:warmup] == pytest.approx([0.0] + old[:warmup - 1], abs=1e-15)


# ---------------------------------------------------------------------------------------------- precision
def test_bf16_runs_and_is_recorded(tmp_path):
    rec = run(tmp_path, b=budget(steps=2, warmup_steps=0, precision="bf16"), checkpoint_every=0, save_finalized=False)
    assert rec["mixed_precision"] == "bf16" and all(math.isfinite(v) for v in rec["losses"])
    fp32 = run(tmp_path, b=budget(steps=2, warmup_steps=0), name="fp32", checkpoint_every=0, save_finalized=False)
    assert fp32["mixed_precision"] == "no"
    assert rec["losses"][0] == pytest.approx(fp32["losses"][0], rel=2e-2)  # bf16 autocast: ~3 significant digits


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with CUDA")
def test_fp16_without_cuda_names_the_field():
    with pytest.raises(ValueError, match=r"TrainBudget.precision = 'fp16'.*CUDA"):
        make_accelerator(budget(precision="fp16"))


# ----------------------------------------------------------------------------------- gradient checkpointing
def _pat_grads(checkpointing: bool) -> tuple[float, dict, torch.Tensor, int]:
    from pat import get_mask
    from pat.config import PATConfig
    from pat.method import PATStage

    st = PATStage(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0, milestone_frac=0.5))
    model = st.prepare(tiny_model("llama-gqa-tied"),
                       RunContext(total_steps=8, extra={"pipeline": ["pat"], "stage_index": 0, "phase": "prepare"}))
    _, named = collect_trainable(model, [st], 1e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero LoRA B and L1, so every trainable tensor gets a non-trivial gradient
        for n, p in named:
            if "lora_B" in n or n.endswith(".L1"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    mask = get_mask(model)
    before = mask.gate_computations
    ids = torch.randint(2, 128, (2, 16), generator=g)
    loss = _lm_loss_sum(model, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}) / 30
    loss = loss + st.extra_loss(model)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in named}, mask.importance.clone(), mask.gate_computations - before


def test_gradient_checkpointing_same_loss_and_grads_with_pat_and_peft():
    loss0, g0, imp0, n0 = _pat_grads(False)
    loss1, g1, imp1, n1 = _pat_grads(True)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert set(g0) == set(g1) and any("lora_A" in k for k in g0) and any("pat_mask" in k for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=1e-5)
        assert g0[k].abs().sum() > 0, k
    torch.testing.assert_close(imp1, imp0, atol=1e-6, rtol=1e-5)  # Taylor importance accumulated once, not twice
    assert n0 == n1 == 1  # the gate is computed once per forward, also when the layers are recomputed


def test_gradient_checkpointing_budget_option_trains_like_without(tmp_path):
    b = {"steps": 3, "warmup_steps": 0}
    off = run(tmp_path, b=budget(**b), name="off", checkpoint_every=0, save_finalized=False)
    on = run(tmp_path, b=budget(gradient_checkpointing=True, **b), name="on", checkpoint_every=0, save_finalized=False)
    assert on["losses"] == pytest.approx(off["losses"], abs=1e-5)


# ------------------------------------------------------------------------------ optimizer-state reset hook
class ResetStage(GateStage):
    """Returns its parameter from ``on_optimizer_step`` at ``at``: the loop must drop its optimizer state."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_optimizer_step(self, model, step):
        super().on_optimizer_step(model, step)
        return [self._gain(model)] if step == self.at else None


def test_returned_parameters_lose_their_optimizer_state(tmp_path):
    from bench.harness.data import load_instruction_data
    from tests.bench.harness.test_train import CharTokenizer

    model, st = tiny_model("llama-gqa-tied"), ResetStage(at=2)
    model = st.prepare(model, RunContext(extra={"stage_index": 0, "phase": "prepare"}))
    b = budget(steps=4, warmup_steps=0)
    data = load_instruction_data(str(write_alpaca(tmp_path / "a.jsonl")), CharTokenizer(), b.seq_len, None, 3, None)
    r = setup_run(model, [st], b)
    inner, gain = r.optimizer.optimizer, st._gain(model)
    train_step(r, data, 0)
    assert int(inner.state[gain]["step"]) == 1
    train_step(r, data, 1)  # on_optimizer_step(model, 2) returns the gain: its Adam state is dropped
    assert gain not in inner.state
    train_step(r, data, 2)
    assert int(inner.state[gain]["step"]) == 1  # fresh moments, restarted from the reset
    assert r.state["optimizer_state_not_reset"] == []
    stranger = torch.nn.Parameter(torch.zeros(3))
    assert "not held by AdamW" in drop_optimizer_state(r.optimizer, [stranger])[0]
    r.accelerator.free_memory()


# ------------------------------------------------------------------------------------------- checkpoints
def _cut(tmp_path, name="cut", **kw):
    return run(tmp_path, stages=lora_gate(0.1), name=name, checkpoint_every=2, stop_after=4, save_finalized=False,
               **kw)


def test_checkpoint_holds_only_trainable_tensors_and_no_arbitrary_pickle(tmp_path):
    from safetensors.torch import load_file

    _cut(tmp_path)
    root = tmp_path / "cut" / "checkpoint"
    latest = json.loads((root / "latest.json").read_text())
    d = root / latest["dir"]
    assert latest["step"] == 4 and sorted(p.name for p in d.iterdir()) == sorted(
        ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "stages.safetensors",
         "loop.json"])
    saved = load_file(d / "model.safetensors")
    rec = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert sum(t.numel() for t in saved.values()) == rec["trainable_params"]  # not the frozen base
    assert all("lora_" in k or k.endswith("model.norm.weight") for k in saved)
    from accelerate.utils import load as accelerate_load

    for f in ("optimizer.bin", "scheduler.bin"):
        torch.load(d / f, weights_only=True)  # plain containers of tensors: loadable without unpickling objects
    rng = accelerate_load(d / "random_states_0.pkl")  # weights_only plus numpy arrays (numpy's RNG state) only
    assert torch.equal(rng["torch_manual_seed"], torch.as_tensor(rng["torch_manual_seed"]))


def _resume(tmp_path, name="cut", **kw):
    return run(tmp_path, stages=lora_gate(0.1), name=name, checkpoint_every=2, save_finalized=False, **kw)


def _latest_dir(tmp_path, name="cut") -> Path:
    root = tmp_path / name / "checkpoint"
    return root / json.loads((root / "latest.json").read_text())["dir"]


def test_resumed_run_counts_the_earlier_process_wall_time(tmp_path):
    """A run cut after step 4 and resumed reports the first process's seconds up to that checkpoint
    (``resumed_wall_seconds``), so a run's cost is not only its last process's."""
    first = _cut(tmp_path)
    saved = json.loads((_latest_dir(tmp_path) / "loop.json").read_text())["state"]
    assert first["resumed_wall_seconds"] == 0.0
    assert saved["wall_seconds"] >= saved["train_seconds"] > 0  # the process's time from its start to the save
    rest = _resume(tmp_path)
    assert rest["steps_done"] == 8 and rest["resumed_wall_seconds"] == saved["wall_seconds"]
    _cut(tmp_path, name="old")
    loop = _latest_dir(tmp_path, "old") / "loop.json"
    old = json.loads(loop.read_text())
    del old["state"]["wall_seconds"]  # a checkpoint written before the field existed: its training time instead
    loop.write_text(json.dumps(old))
    again = _resume(tmp_path, name="old")
    assert again["resumed_wall_seconds"] == old["state"]["train_seconds"]


@pytest.mark.parametrize("victim", ["optimizer.bin", "model.safetensors", "random_states_0.pkl", "loop.json"])
def test_truncated_checkpoint_file_stops_naming_it(tmp_path, victim):
    _cut(tmp_path)
    f = _latest_dir(tmp_path) / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BadCheckpointError, match=rf"{victim}.*on_bad_checkpoint='restart'"):
        _resume(tmp_path)
    assert f.exists()  # nothing moved or deleted
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "stopped"  # the stopped run's record


class _Payload:
    """A pickle that runs a shell command when unpickled by a plain ``pickle.load`` / ``torch.load``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_tampered_pickle_is_not_executed(tmp_path):
    _cut(tmp_path)
    marker = tmp_path / "PWNED"
    f = _latest_dir(tmp_path) / "random_states_0.pkl"
    with open(f, "wb") as fh:
        pickle.dump({"step": 4, "torch_manual_seed": _Payload(marker)}, fh)
    with pytest.raises(BadCheckpointError, match="random_states_0.pkl.*cannot be read safely"):
        _resume(tmp_path)
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, _latest_dir(tmp_path) / "optimizer.bin")
    with pytest.raises(BadCheckpointError, match="optimizer.bin"):
        _resume(tmp_path, on_bad_checkpoint="stop")
    assert not marker.exists()


def test_bad_checkpoint_restart_starts_over_and_keeps_the_bad_one(tmp_path):
    _cut(tmp_path)
    f = _latest_dir(tmp_path) / "optimizer.bin"
    f.write_bytes(b"garbage")
    rest = _resume(tmp_path, on_bad_checkpoint="restart")
    full = _resume(tmp_path, name="full")
    assert rest["steps_done"] == 8 and rest["losses"] == pytest.approx(full["losses"], abs=1e-6)
    a, b = trainable_state(tmp_path / "full"), trainable_state(tmp_path / "cut")
    for k in a["0-lora.safetensors"]:
        torch.testing.assert_close(a["0-lora.safetensors"][k], b["0-lora.safetensors"][k], atol=1e-6, rtol=0)
    aside = list((tmp_path / "cut").glob("checkpoint.bad-*"))
    assert len(aside) == 1 and (aside[0] / f.parent.name / "optimizer.bin").read_bytes() == b"garbage"
    with pytest.raises(ValueError, match="on_bad_checkpoint = 'later' is invalid"):
        _resume(tmp_path, name="x", on_bad_checkpoint="later")


def test_resume_rejects_other_world_or_budget_before_loading(tmp_path):
    _cut(tmp_path)
    with pytest.raises(ValueError, match="another budget or world size"):
        _resume(tmp_path, b=budget(lr=5e-3))
    f = _latest_dir(tmp_path) / "loop.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), world_size=2)))  # as if written by 2 processes
    with pytest.raises(ValueError, match=r"another world size \(2 processes, now 1\)"):
        _resume(tmp_path)
