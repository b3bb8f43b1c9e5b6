"""The one training loop: hooks, union of trainable parameters, gradient accumulation, parity, resume, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from baselines.lora import LoRAStage
from pat.lora import LoRAConfig, lora_param_count
from bench.harness.budget import ParityError, TrainBudget
from bench.harness.train import run_pipeline
from tests.tiny import VOCAB, tiny_model

ROOT = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- helpers
class CharTokenizer:
    """A character tokenizer for the tiny models (vocab 128): 0 = EOS, 1 = pad, 2.. = characters."""

    eos_token_id, pad_token_id, eos_token, pad_token = 0, 1, "<eos>", "<pad>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}

    def decode(self, ids) -> str:
        return "".join("\0" if i == 0 else chr(i - 2) for i in ids)

    def save_pretrained(self, path) -> None:
        Path(path, "char_tokenizer.json").write_text(json.dumps({"vocab": VOCAB}))


def write_alpaca(path: Path, n: int = 40) -> Path:
    """A small Alpaca-format JSONL file with deterministic, learnable rows."""
    rows = []
    for i in range(n):
        a, b = i % 7, (3 * i) % 5
        rows.append({"instruction": f"add {a} and {b}", "input": "" if i % 3 else f"n{i}",
                     "output": f"{a + b} is the sum"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


class GateStage:
    """A test method: trains the final norm gain, adds an L2 extra loss, keeps a mask derived after each step."""

    name = "gate"

    def __init__(self):
        self.mask = None
        self.calls: list[tuple] = []

    @staticmethod
    def _gain(model: nn.Module) -> nn.Parameter:
        return next(p for n, p in model.named_parameters() if n.endswith("model.norm.weight"))

    def prepare(self, model, ctx):
        self.calls.append(("prepare", ctx.extra["stage_index"]))
        self.mask = torch.ones_like(self._gain(model), dtype=torch.bool)
        return model

    def param_groups(self, model, lr):
        return [{"name": "gate", "params": [self._gain(model)], "lr": lr}]

    def extra_loss(self, model):
        return 0.01 * (self._gain(model) - 1).pow(2).sum()

    def on_optimizer_step(self, model, step):
        self.calls.append(("step", step))
        g = self._gain(model).detach()
        self.mask = g >= g.median()

    def log_values(self, model):
        return {"active": int(self.mask.sum())}

    def finalize(self, model, ctx):
        self.calls.append(("finalize", ctx.extra["stage_index"]))
        return model

    def state_dict(self, model):
        return {"mask": self.mask.clone()}

    def load_state_dict(self, model, state):
        self.mask = state["mask"].clone()

    def report(self):
        return {"active": int(self.mask.sum())}


def budget(**kw) -> TrainBudget:
    base = dict(steps=8, global_batch=4, micro_batch=2, seq_len=192, lr=1e-2, schedule="cosine", warmup_steps=2,
                max_grad_norm=1.0, seed=0, data_seed=3)
    base.update(kw)
    return TrainBudget(**base)


def lora_gate(dropout: float = 0.0):
    return [LoRAStage(LoRAConfig(rank=4, dropout=dropout)), GateStage()]


def run(tmp_path, stages=None, b=None, name="run", **kw):
    data = kw.pop("data", None) or write_alpaca(tmp_path / "alpaca.jsonl")
    return run_pipeline(tiny_model("llama-gqa-tied"), stages or lora_gate(), b or budget(), str(data),
                        tmp_path / name, tokenizer=CharTokenizer(), progress=False, **kw)


def trainable_state(rec_or_dir) -> dict:
    from safetensors.torch import load_file

    d = Path(rec_or_dir)
    return {f.name: load_file(f) for f in sorted((d / "method_state").glob("*.safetensors"))}


# --------------------------------------------------------------------------------------------- tests
def test_pipeline_trains_records_and_saves(tmp_path):
    rec = run(tmp_path, checkpoint_every=0)
    out = tmp_path / "run"
    assert rec["status"] == "success" and rec["steps_done"] == 8 and len(rec["losses"]) == 8
    assert rec["losses"][-1] < rec["losses"][0] - 0.1, rec["losses"]
    cfg = tiny_model("llama-gqa-tied").config
    assert rec["trainable_params"] == lora_param_count(cfg, 4) + cfg.hidden_size
    assert rec["trainable_by_group"] == {"lora": lora_param_count(cfg, 4), "gate": cfg.hidden_size}
    assert rec["tokens_seen"] > rec["response_tokens_seen"] > 0 and rec["tokens_per_s"] > 0
    assert rec["peak_memory"]["cpu_max_rss_mib"] > 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["budget"]["total_steps"] == 8
    assert saved["stages"]["1-gate"]["active"] == rec["stages"]["1-gate"]["active"]
    assert saved["data"]["examples"] + saved["data"]["dropped_no_response"] == 40 and saved["data"]["data_seed"] == 3
    assert saved["data"]["examples"] >= 20
    # the finalized model is a plain HF model that reloads and gives the same logits
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    x = torch.randint(2, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, rec["_model"](x).logits, atol=1e-5, rtol=1e-5)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert set(trainable_state(out)) == {"0-lora.safetensors", "1-gate.safetensors"}
    assert not (out / "checkpoint").exists()


def test_retraining_free_pipeline_skips_training_and_finalizes(tmp_path):
    from baselines.wanda_sp import WandaSPStage

    stage = WandaSPStage(ratio=0.2, calib_n=4, calib_len=16)
    rec = run(tmp_path, stages=[stage], b=budget(param_parity="lora-8"))
    assert rec["status"] == "success" and rec["steps_done"] == 0 and rec["trainable_params"] == 0
    assert rec["parity"] is None and rec["data"] is None  # nothing trained: no parity to check, no data read
    assert stage.report()["when"] == "prepare" and rec["total_params_after"] < rec["total_params_before"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "success"


def test_hooks_order_and_steps(tmp_path):
    a, b = GateStage(), GateStage()
    run(tmp_path, stages=[a, b], b=budget(steps=3, warmup_steps=0), checkpoint_every=0, save_finalized=False)
    assert a.calls == [("prepare", 0), ("step", 1), ("step", 2), ("step", 3), ("finalize", 0)]
    assert b.calls[0] == ("prepare", 1) and b.calls[-1] == ("finalize", 1)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    r1 = run(tmp_path, b=budget(micro_batch=4), name="a", checkpoint_every=0, save_finalized=False)
    r2 = run(tmp_path, b=budget(micro_batch=1), name="b", checkpoint_every=0, save_finalized=False)
    assert r1["accumulation"] == 1 and r2["accumulation"] == 4
    assert r1["losses"] == pytest.approx(r2["losses"], abs=1e-5)


def test_parity_is_checked_before_training(tmp_path):
    with pytest.raises(ParityError, match="lora-64"):
        run(tmp_path, b=budget(param_parity="lora-64", parity_tol=0.05), checkpoint_every=0)
    assert not (tmp_path / "run" / "run.json").exists()
    rec = run(tmp_path, stages=[LoRAStage(rank=4, dropout=0.0)], b=budget(steps=1, warmup_steps=0,
                                                                          param_parity="lora-4",
                                                                      parity_tol=0.0), checkpoint_every=0,
                                                                      save_finalized=False)
    assert rec["parity"]["rel_diff"] == 0.0


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    """Time-sliced run (stop_after) with LoRA dropout on: same losses, parameters, mask as one run."""
    full = run(tmp_path, stages=lora_gate(0.1), name="full", checkpoint_every=0, save_finalized=False)
    part = run(tmp_path, stages=lora_gate(0.1), name="cut", checkpoint_every=2, stop_after=4, save_finalized=False)
    assert part["status"] == "stopped" and part["steps_done"] == 4
    rest = run(tmp_path, stages=lora_gate(0.1), name="cut", checkpoint_every=2, save_finalized=False)
    assert rest["steps_done"] == 8 and rest["losses"] == pytest.approx(full["losses"], abs=1e-5)
    a, b = trainable_state(tmp_path / "full"), trainable_state(tmp_path / "cut")
    for f in a:
        for k in a[f]:
            torch.testing.assert_close(a[f][k], b[f][k], atol=1e-6, rtol=0)
    assert torch.equal(a["1-gate.safetensors"]["mask"], b["1-gate.safetensors"]["mask"])


def test_resume_rejects_other_budget(tmp_path):
    run(tmp_path, name="cut", checkpoint_every=2, stop_after=2, save_finalized=False)
    with pytest.raises(ValueError, match="another budget"):
        run(tmp_path, b=budget(lr=5e-3), name="cut", checkpoint_every=2, save_finalized=False)


def _child(out: str, kill_at: int) -> None:
    """Subprocess body: the run of ``test_resume_after_kill``, SIGKILLed right after optimizer step ``kill_at``."""
    class Killer(GateStage):
        def on_optimizer_step(self, model, step):
            super().on_optimizer_step(model, step)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    tmp = Path(out)
    run(tmp, stages=[LoRAStage(LoRAConfig(rank=4, dropout=0.1)), Killer()], name="cut", checkpoint_every=2,
        data=tmp / "alpaca.jsonl")


def test_resume_after_kill(tmp_path):
    write_alpaca(tmp_path / "alpaca.jsonl")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # -m from the root: run as a script, tests/ would be sys.path[0] and tests/bench would shadow the bench package
    p = subprocess.run([sys.executable, "-m", "tests.bench.harness.test_train", str(tmp_path), "5"], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    latest = json.loads((tmp_path / "cut" / "checkpoint" / "latest.json").read_text())
    assert latest["step"] == 4 and not (tmp_path / "cut" / "run.json").exists()
    resumed = run(tmp_path, stages=lora_gate(0.1), name="cut", checkpoint_every=2, save_finalized=False)
    full = run(tmp_path, stages=lora_gate(0.1), name="full", checkpoint_every=0, save_finalized=False)
    assert abs(resumed["final_loss"] - full["final_loss"]) < 1e-5
    assert resumed["losses"] == pytest.approx(full["losses"], abs=1e-5)
    a, b = trainable_state(tmp_path / "full"), trainable_state(tmp_path / "cut")
    assert torch.equal(a["1-gate.safetensors"]["mask"], b["1-gate.safetensors"]["mask"])
    for k in a["0-lora.safetensors"]:
        torch.testing.assert_close(a["0-lora.safetensors"][k], b["0-lora.safetensors"][k], atol=1e-6, rtol=0)


def _pat_stage():
    pytest.importorskip("pat.method")
    from pat.config import PATConfig
    from pat.method import PATStage

    return PATStage(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0, milestone_frac=0.5))


def test_pat_resume_same_mask_and_exact_width(tmp_path):
    """PAT through the loop: stop halfway, resume; same losses and mask as an uninterrupted run; exact width."""
    b = budget(steps=8, lr=5e-3)
    full = run(tmp_path, stages=[_pat_stage()], b=b, name="full", checkpoint_every=0, save_finalized=False)
    run(tmp_path, stages=[_pat_stage()], b=b, name="cut", checkpoint_every=3, stop_after=3, save_finalized=False)
    rest = run(tmp_path, stages=[_pat_stage()], b=b, name="cut", checkpoint_every=3, save_finalized=False)
    assert rest["losses"] == pytest.approx(full["losses"], abs=1e-5)
    # the training curves survive the checkpoint: one point per step, the same as the uninterrupted run's
    assert [p["step"] for p in rest["curves"]] == list(range(1, 9))
    assert [p["active"] for p in rest["curves"]] == [p["active"] for p in full["curves"]]
    assert [p["lm_loss"] for p in rest["curves"]] == pytest.approx([p["lm_loss"] for p in full["curves"]], abs=1e-5)
    rep = full["stages"]["0-pat"]
    # the count the mask reached before the snap (taken before it, restored on resume), not the snapped target
    assert rep["active_at_s0"] == rest["stages"]["0-pat"]["active_at_s0"]
    assert rep["active_at_s0_step"] == rep["selection"]["freeze_step"] == rest["stages"]["0-pat"]["active_at_s0_step"]
    assert full["_model"].config.hidden_size == rep["target_keep"] == rest["_model"].config.hidden_size
    x = torch.randint(2, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(full["_model"](x).logits, rest["_model"](x).logits, atol=1e-4, rtol=1e-4)




class ShrinkStage(GateStage):
    """A test pruner: at finalize, keeps only the first half of layer 0's MLP channels (non-uniform widths)."""

    name = "shrink"

    def finalize(self, model, ctx):
        from pat.lora import merge_lora

        model = merge_lora(model)
        mlp = model.model.layers[0].mlp
        keep = mlp.gate_proj.out_features // 2
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = nn.Linear(old.in_features, keep, bias=False)
            new.weight.data.copy_(old.weight.data[:keep])
            setattr(mlp, name, new)
        new = nn.Linear(keep, mlp.down_proj.out_features, bias=False)
        new.weight.data.copy_(mlp.down_proj.weight.data[:, :keep])
        mlp.down_proj = new
        return model


def test_non_uniform_model_is_saved_in_pruned_format(tmp_path):
    pruned_io = pytest.importorskip("baselines.pruned_io")
    rec = run(tmp_path, stages=[LoRAStage(rank=4, dropout=0.0), ShrinkStage()], b=budget(steps=2, warmup_steps=0),
              checkpoint_every=0)
    assert rec["model_format"] == "pruned" and pruned_io.is_pruned_checkpoint(tmp_path / "run" / "model")
    reloaded = pruned_io.load_pruned(tmp_path / "run" / "model").eval()
    x = torch.randint(2, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, rec["_model"](x).logits, atol=1e-5, rtol=1e-5)
    assert reloaded.model.layers[0].mlp.down_proj.in_features == 48
    assert rec["total_params_after"] < rec["total_params_before"]


if __name__ == "__main__":  # the killed child of test_resume_after_kill
    torch.set_num_threads(1)
    _child(sys.argv[1], int(sys.argv[2]))


def test_training_curves_are_recorded_and_plotted(tmp_path):
    """Every step's LM loss, extra loss and PAT's values are in the record; the plot reads them."""
    from bench.harness.curves import main as curves_main

    b = budget(steps=6, lr=5e-3)
    rec = run(tmp_path, stages=[_pat_stage()], b=b, name="pat", checkpoint_every=0, save_finalized=False)
    pts = rec["curves"]
    assert [p["step"] for p in pts] == list(range(1, 7))
    assert [p["lm_loss"] for p in pts] == rec["losses"] and [p["extra_loss"] for p in pts] == rec["extra_losses"]
    target = rec["stages"]["0-pat"]["target_keep"]
    assert {"active", "tau", "L_active", "L_identity"} <= set(pts[0])
    assert pts[-1]["active"] == target  # after the snap: exactly the kept width
    assert all(isinstance(p["L_identity"], float) for p in pts)
    stored = json.loads((tmp_path / "pat" / "run.json").read_text())
    assert stored["curves"] == pts
    out = tmp_path / "curves.png"
    assert curves_main([str(tmp_path / "pat" / "run.json"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_go_to_tensorboard_when_it_is_installed(tmp_path):
    pytest.importorskip("tensorboard")
    run(tmp_path, stages=[_pat_stage()], b=budget(steps=3, lr=5e-3), name="tb", checkpoint_every=0,
        save_finalized=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))
    assert files
    ev = EventAccumulator(str(files[0].parent))
    ev.Reload()
    assert {"lm_loss", "active"} <= set(ev.Tags()["scalars"])
    assert [e.step for e in ev.Scalars("lm_loss")] == [1, 2, 3]
