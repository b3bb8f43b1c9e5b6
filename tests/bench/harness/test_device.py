"""Device correctness of what a GPU user runs, proven on the CPU (tests/device_guard.py, docs/testing.md).

Every path runs its model on the CPU under ``ForeignDefaultDevice``: a tensor our code creates without a device lands
on the foreign stand-in for a GPU run's CPU, and any op that mixes it with the model's tensors fails, naming the op
and the call site. Covered: PAT training (pipeline and ``PATCallback``), the snap, finalize and the merge check; each
baseline's prune and its prune-then-LoRA (P->FT) run; evaluation, perplexity and throughput.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.harness.budget import TrainBudget
from bench.harness.train import run_pipeline
from pat.attach import get_mask
from pat.hf import PATCallback
from pat.method import PATStage
from tests.bench.harness.test_hf_callback import pat_kwargs, trainer_args
from tests.bench.harness.test_train import CharTokenizer, write_alpaca
from tests.device_guard import ForeignDefaultDevice
from tests.tiny import VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.environ.get("PAT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA or not os.path.isdir(DATA), reason="PAT_DATA_DIR not set")


def budget(**kw) -> TrainBudget:
    base = dict(steps=6, global_batch=4, micro_batch=2, seq_len=192, lr=1e-2, schedule="cosine", warmup_steps=1,
                max_grad_norm=1.0, seed=0, data_seed=3)
    return TrainBudget(**{**base, **kw})


def test_pat_pipeline_trains_snaps_finalizes_and_merge_checks(tmp_path):
    data = write_alpaca(tmp_path / "a.jsonl")
    heldout = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    stage = PATStage(**pat_kwargs())
    with ForeignDefaultDevice():
        rec = run_pipeline(tiny_model("llama-gqa-tied"), [stage], budget(), str(data), tmp_path / "run",
                           tokenizer=CharTokenizer(), progress=False, checkpoint_every=2,
                           extra={"heldout_ids": heldout})
    rep = rec["stages"]["0-pat"]
    assert rec["completed"] and rep["selection"]["freeze_step"] is not None  # snapped during training
    assert rec["hidden_size_after"] == rep["target_keep"] == 36
    assert rep["merge_max_abs_logit_diff"] <= 1e-4  # the tiny-model merge bound of tests/pat/test_core.py


def test_pat_callback_trains_and_finalizes(tmp_path):
    from transformers import Trainer

    from bench.harness.data import load_instruction_data

    b = budget()
    data = load_instruction_data(str(write_alpaca(tmp_path / "a.jsonl")), CharTokenizer(), b.seq_len, None, 3)
    heldout = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    with ForeignDefaultDevice():
        torch.manual_seed(0)
        cb = PATCallback(**pat_kwargs())
        model = cb.prepare(tiny_model("llama-gqa-tied"), total_steps=6)
        args = trainer_args(tmp_path, max_steps=6, logging_steps=100)
        opt = cb.create_optimizer(model, args)
        trainer = Trainer(model=model, args=args, train_dataset=list(range(len(data))) * 2,
                          data_collator=data.collate, callbacks=[cb], optimizers=(opt, None))
        trainer.train()
        small = cb.finalize(model, heldout_ids=heldout)
    assert int(get_mask(model).active().sum()) == small.config.hidden_size == 36
    assert cb.report()["merge_max_abs_logit_diff"] <= 1e-4  # the tiny-model merge bound of tests/pat/test_core.py


PRUNERS = ["llm_pruner", "slicegpt", "flap", "wanda_sp"]


@needs_data
@pytest.mark.parametrize("pruner", PRUNERS)
def test_baseline_prune_then_lora(pruner, tmp_path):
    from bench.harness.registry import make_pipeline

    stages = make_pipeline([pruner, "lora"], {pruner: {"ratio": 0.25, "calib_n": 4, "calib_len": 16},
                                              "lora": {"rank": 4}})
    with ForeignDefaultDevice():
        rec = run_pipeline(tiny_model("qwen2", num_hidden_layers=3), stages, budget(steps=3), str(write_alpaca(
            tmp_path / "a.jsonl")), tmp_path / "run", tokenizer=CharTokenizer(), progress=False, checkpoint_every=2,
            data_dir=DATA)
        small = rec["_model"]
        logits = small(input_ids=torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))).logits
    assert rec["completed"] and rec["total_params_after"] < rec["total_params_before"]
    assert torch.isfinite(logits).all()


@needs_data
def test_evaluation_and_perplexity():
    from bench.harness import evaluation as ev
    from bench.harness.perplexity import perplexity
    from tests.bench.harness.test_perplexity import byte_tokenizer, tiny_lm

    model, tok = tiny_lm("qwen2"), byte_tokenizer()
    with ForeignDefaultDevice():
        r = ev.evaluate_tasks(model, tok, ["piqa", "paper_winogrande"], limit=3, seed=7, batch_size=2)
        p = perplexity(model, tok, "wikitext2", seq_len=32, stride=16, max_tokens=96, batch_size=2)
    assert r["tasks"]["piqa"]["n"] == r["tasks"]["paper_winogrande"]["n"] == 3
    assert 100 < p["ppl"] < 1000  # a random byte model is near-uniform over its 260 logits


def test_throughput():
    from bench.harness.throughput import measure

    small = tiny_model("llama-mha")
    with ForeignDefaultDevice():
        rec = measure(small, batch_sizes=[1, 2], context=16, decode_tokens=2, repeats=1, warmup=0)
    assert [p["batch_size"] for p in rec["prefill"]] == [1, 2] and rec["decode"]


@needs_data  # the importance init scores C4 calibration windows (the run's calibration sampler)
@pytest.mark.parametrize("by", ["taylor", "flap"])
def test_pat_importance_init_distillation_and_mask_probe(by, tmp_path):
    """The short-budget options (ours): the importance init of the mask, distillation from the unpruned model and
    the mask probe, through the pipeline under the guard."""
    from bench.harness.mask_probe import MaskProbe

    data = write_alpaca(tmp_path / "a.jsonl")
    heldout = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    stage = PATStage(**{**pat_kwargs(), "mask_init": by, "mask_init_samples": 4})
    with ForeignDefaultDevice():
        rec = run_pipeline(tiny_model("llama-gqa-tied"), [stage], budget(distill_weight=0.5), str(data),
                           tmp_path / "run", tokenizer=CharTokenizer(), progress=False, checkpoint_every=0,
                           extra={"heldout_ids": heldout}, probes=[MaskProbe(heldout, [1, 2])])
    rep = rec["stages"]["0-pat"]
    assert rec["completed"] and rep["mask_init"]["by"] == by and rec["probes"]
    assert len(rec["distill"]["kd_losses"]) == 6
    assert rep["merge_max_abs_logit_diff"] <= 1e-4  # the tiny-model merge bound of tests/pat/test_core.py
