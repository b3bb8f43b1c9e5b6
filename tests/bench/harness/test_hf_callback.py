"""PAT through ``transformers.Trainer`` / ``trl.SFTTrainer`` with ``pat.hf.PATCallback``.

The Trainer run is compared with the harness (``bench.harness.train.run_pipeline``) on the same model, data, order
and budget. Matched: the prepared model (``budget.seed`` before ``prepare``, LoRA dropout 0), the examples of each
optimizer step (the harness's ``global_batch_indices`` order fed through a sequential sampler), micro-batch and
gradient accumulation (2 x 2), the collation (the harness's right padding), the loss normalisation (response
tokens of the whole global batch: the model's ``num_items_in_batch``), AdamW betas/eps, weight decay 0, per-group
LRs, cosine schedule with 0 warmup, gradient clipping 1.0, fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transformers import TrainerCallback

from bench.harness.budget import TrainBudget
from bench.harness.data import load_instruction_data
from bench.harness.train import run_pipeline
from pat.attach import get_mask
from pat.hf import PATCallback, PATStage
from tests.tiny import VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, GLOBAL, MICRO = 12, 4, 2
LOSS_RTOL = 1e-5  # per-step LM loss, Trainer vs harness (observed 1.1e-7: float summation order only)
LOGIT_ATOL = 1e-4  # finalized models, max |logit difference| on random tokens


class CharTokenizer:
    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}


def write_alpaca(path: Path, n: int = 24) -> Path:
    rows = [{"instruction": f"add {i % 7} and {(3 * i) % 5}", "input": "", "output": f"{i % 7 + (3 * i) % 5} is it"}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def pat_kwargs() -> dict:
    return {"prune_ratio": 0.25, "hio_rank": 4, "lora_rank": 4, "lora_alpha": 4.0, "lora_dropout": 0.0, "align": 4}


def budget() -> TrainBudget:
    return TrainBudget(steps=STEPS, global_batch=GLOBAL, micro_batch=MICRO, seq_len=192, lr=1e-2, schedule="cosine",
                       warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0, data_seed=3)


def trainer_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = {"output_dir": str(tmp_path / "hf"), "max_steps": STEPS, "per_device_train_batch_size": MICRO,
            "gradient_accumulation_steps": GLOBAL // MICRO, "learning_rate": 1e-2, "lr_scheduler_type": "cosine",
            "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
            "adam_epsilon": 1e-8, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "use_cpu": True,
            "dataloader_num_workers": 0, "train_sampling_strategy": "sequential", "seed": 0, "disable_tqdm": True}
    return TrainingArguments(**{**base, **kw})


class DropAtSnap(PATStage):
    """PAT that asks the loop to drop the mask proxy's optimizer state at the freeze point (the stage protocol's
    reset hook), so the test sees the callback honour it."""

    def on_optimizer_step(self, model, step):
        out = super().on_optimizer_step(model, step)
        mask = get_mask(model)
        if step == int(mask.freeze_frac * mask.s0) + 1:  # the snap: the gate (one step behind) reaches the freeze
            return [mask.proxy]
        return out


def test_trainer_matches_harness_loop(tmp_path):
    from transformers import Trainer

    from bench.harness.data import global_batch_indices

    b = budget()
    path = str(write_alpaca(tmp_path / "a.jsonl"))
    # harness: run_pipeline seeds with budget.seed, prepares, trains, finalizes
    h_stage = PATStage(**pat_kwargs())
    rec = run_pipeline(tiny_model("llama-gqa-tied"), [h_stage], b, path, tmp_path / "h", tokenizer=CharTokenizer(),
                       progress=False, save_finalized=False, checkpoint_every=None)
    small_h = rec["_model"]

    # HF Trainer: the same seed before prepare, the same examples in the same order
    data = load_instruction_data(path, CharTokenizer(), b.seq_len, b.subset_size, b.data_seed)
    order = [i for s in range(STEPS) for i in global_batch_indices(len(data), s, GLOBAL, b.data_seed)]
    model = tiny_model("llama-gqa-tied")
    torch.manual_seed(b.seed)
    cb = PATCallback(**pat_kwargs())
    model = cb.prepare(model, total_steps=STEPS)
    args = trainer_args(tmp_path)
    trainer = Trainer(model=model, args=args, train_dataset=order, data_collator=data.collate, callbacks=[cb],
                      optimizers=(cb.create_optimizer(model, args), None))
    trainer.train()
    hf_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    mask = get_mask(model)

    assert len(hf_losses) == STEPS == len(rec["losses"])
    rel = [abs(a - h) / h for a, h in zip(hf_losses, rec["losses"])]
    assert max(rel) < LOSS_RTOL, f"per-step loss Trainer vs harness: max rel diff {max(rel):.2e}"
    assert int(mask.active().sum()) == mask.target  # snapped at the freeze point, before the last step
    kept = torch.nonzero(mask.active()).flatten().tolist()
    assert kept == rec["stages"]["0-pat"]["kept_channels"]
    small_t = cb.finalize(model)
    assert small_t.config.hidden_size == small_h.config.hidden_size == mask.target
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = small_h(ids).logits
        dl = float((small_t(ids).logits - ref).abs().max())
    assert dl < LOGIT_ATOL, f"finalized models differ: max |logit diff| {dl:.2e}"


def test_callback_places_milestone_from_trainer_steps(tmp_path):
    from transformers import Trainer

    b = budget()
    data = load_instruction_data(str(write_alpaca(tmp_path / "a.jsonl")), CharTokenizer(), b.seq_len, None, 3)
    torch.manual_seed(0)
    cb = PATCallback(DropAtSnap(**pat_kwargs()))
    model = cb.prepare(tiny_model("llama-gqa-tied"))  # no total_steps: s0 from the trainer's max_steps
    args = trainer_args(tmp_path, max_steps=9, logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=list(range(len(data))) * 3, data_collator=data.collate,
                      callbacks=[cb], optimizers=(cb.create_optimizer(model, args), None))
    trainer.train()
    mask = get_mask(model)
    assert mask.s0 == 3 and mask.steps_done == 9 and int(mask.step) == 8  # the gate runs one step behind
    assert int(mask.active().sum()) == mask.target
    # the stage returned the proxy at the freeze point (step 3): its Adam state was dropped, so it restarted there
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert cb.dropped_state == 1
    assert int(opt.state[mask.proxy]["step"]) == 9 - 3
    assert int(opt.state[next(p for n, p in model.named_parameters() if "lora_A" in n)]["step"]) == 9
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["pat_mask"]["initial_lr"] == pytest.approx(groups["lora"]["initial_lr"])  # the one LR (official)
    small = cb.finalize(model)
    assert small.config.hidden_size == mask.target
    assert cb.report()["hidden_size_after"] == mask.target


@pytest.mark.parametrize("field", ["fp16", "gradient_checkpointing", "activation_checkpointing"])
def test_unsupported_settings_are_refused_naming_the_field(field):
    cb = PATCallback(**pat_kwargs())
    args = type("A", (), {field: True})()
    with pytest.raises(ValueError, match=f"TrainingArguments.{field}=True"):
        cb.on_train_begin(args, None, None)


@pytest.mark.slow
def test_sft_trainer_trains_and_finalizes_to_a_stock_model(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pat.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    rows = [{"prompt": f"Q: what is {i} plus {i % 3}?\nA:", "completion": f" {i + i % 3}."} for i in range(16)]
    ds = Dataset.from_list(rows)
    torch.manual_seed(0)
    model = tiny_model("llama-gqa-tied", vocab_size=len(tok), max_position_embeddings=128)
    cb = PATCallback(**pat_kwargs())
    model = cb.prepare(model, total_steps=6, tokenizer=tok)
    cfg = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=6, per_device_train_batch_size=4,
                        gradient_accumulation_steps=1, learning_rate=5e-3, max_length=64, logging_steps=1,
                        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, bf16=False,
                        gradient_checkpointing=False)
    trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[cb],
                             optimizers=(cb.create_optimizer(model, cfg), None))
    out = trainer.train()
    assert torch.isfinite(torch.tensor(out.training_loss))
    mask = get_mask(model)
    assert mask.steps_done == 6 and int(mask.step) == 5 and int(mask.active().sum()) == mask.target
    small = cb.finalize(trainer.model)
    assert small.config.hidden_size == mask.target < 48
    assert type(small).__module__.startswith("transformers.")
    small.save_pretrained(tmp_path / "small")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    ids = tok(["Q: what is 4 plus 1?\nA:"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = small.eval()(ids).logits, again.eval()(ids).logits
    assert again.config.hidden_size == mask.target
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps, as a killed job would (after the checkpoint of that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def _resume_run(tmp_path, data, order, name, stop=None, resume=None, snap_by="proxy"):
    """A Trainer run of STEPS steps with a checkpoint every ``stop`` steps (none when ``stop`` is None), ended after
    ``stop`` steps, or resumed from ``resume``; returns (callback, model, trainer)."""
    from transformers import Trainer

    torch.manual_seed(0)
    cb = PATCallback(**pat_kwargs(), snap_by=snap_by)
    model = cb.prepare(tiny_model("llama-gqa-tied"), total_steps=STEPS)
    save = {"save_strategy": "steps", "save_steps": stop or resume} if (stop or resume) else {}
    args = trainer_args(tmp_path / name, **save)
    extra = [StopAt(stop)] if stop else []
    trainer = Trainer(model=model, args=args, train_dataset=order, data_collator=data.collate, callbacks=[cb] + extra,
                      optimizers=(cb.create_optimizer(model, args), None))
    trainer.train(resume_from_checkpoint=str(tmp_path / "cut" / "hf" / f"checkpoint-{resume}") if resume else None)
    return cb, model, trainer


@pytest.mark.parametrize("k, snap_by", [(2, "proxy"), (4, "proxy"), (6, "proxy"), (2, "taylor")])
def test_trainer_resume_equals_a_straight_run(tmp_path, k, snap_by):
    """Killed after the checkpoint of step k (before the snap after step 4, at it, or after it) and resumed with
    ``Trainer.train(resume_from_checkpoint=...)``: the same losses, selection and finalized model as a straight run.

    Tolerance: the resumed run restores every tensor bit for bit (safetensors, fp32) and then runs the same operations
    in the same order on one thread, so it is exact here; the bound allows one fp32 rounding per remaining step on
    logits of magnitude |z| (|z| x 2^-23 x STEPS), a thousand times below the 0.48 of a run that restarts the HSMs
    and the mask."""
    from bench.harness.data import global_batch_indices

    b = budget()
    path = str(write_alpaca(tmp_path / "a.jsonl"))
    data = load_instruction_data(path, CharTokenizer(), b.seq_len, b.subset_size, b.data_seed)
    order = [i for s in range(STEPS) for i in global_batch_indices(len(data), s, GLOBAL, b.data_seed)]
    straight, m_s, t_s = _resume_run(tmp_path, data, order, "straight", snap_by=snap_by)
    _resume_run(tmp_path, data, order, "cut", stop=k, snap_by=snap_by)
    assert (tmp_path / "cut" / "hf" / f"checkpoint-{k}" / "pat_state-rank0.safetensors").is_file()
    resumed, m_r, t_r = _resume_run(tmp_path, data, order, "cut", resume=k, snap_by=snap_by)
    mask_s, mask_r = get_mask(m_s), get_mask(m_r)
    assert int(mask_r.snap_step) == int(mask_s.snap_step) == 4  # s0 = 4, freeze int(3.2) = 3, one step behind
    assert torch.equal(mask_r.keep, mask_s.keep) and torch.equal(mask_r.proxy, mask_s.proxy)
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (t_s, t_r)]
    assert len(losses[0]) == len(losses[1]) == STEPS
    assert losses[1] == pytest.approx(losses[0], rel=STEPS * 2 ** -23)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    a, r = straight.finalize(m_s), resumed.finalize(m_r)
    with torch.no_grad():
        za, zr = a(ids).logits, r(ids).logits
    bound = float(za.abs().max()) * 2 ** -23 * STEPS
    print(f"k={k} {snap_by}: max |logit diff| resumed vs straight {float((za - zr).abs().max()):.2e}, "
          f"bound {bound:.2e}")
    assert float((za - zr).abs().max()) <= bound, f"resumed vs straight: {float((za - zr).abs().max()):.2e}"
    ra, rr = straight.report(), resumed.report()
    for key in ("selection", "active_at_s0", "active_at_s0_step", "steps_after_freeze", "dropped_optimizer_state"):
        assert rr[key] == ra[key], key
    assert ra["steps_after_freeze"] == STEPS - 4


def test_trainer_resume_without_pat_state_is_refused(tmp_path):
    b = budget()
    data = load_instruction_data(str(write_alpaca(tmp_path / "a.jsonl")), CharTokenizer(), b.seq_len, None, 3)
    order = list(range(len(data))) * 2
    _resume_run(tmp_path, data, order, "cut", stop=2)
    (tmp_path / "cut" / "hf" / "checkpoint-2" / "pat_state-rank0.safetensors").unlink()
    with pytest.raises(ValueError, match="PAT's state .*pat_state-rank0.safetensors is missing"):
        _resume_run(tmp_path, data, order, "cut", resume=2)
