"""``pat-tune``: PAT on instruction data, then finalize into a smaller stock Hugging Face model.

Example (``python -m bench.cli.tune`` is the same command)::

    pat-tune --model smollm2-135m --ratio 0.25 --train-data alpaca --max-steps 60 --out runs/pat-25

writes to ``--out``: the finalized model (``config.json``, ``model.safetensors``) and its tokenizer, loadable with
``AutoModelForCausalLM.from_pretrained`` (with the default ``--align``; another value may give pat-bench's pruned
format, said at exit); ``pat_report.json`` (widths, parameters, achieved ratio, merge check,
what selected the channels); ``run/run.json`` (budget, losses, throughput, versions) and ``run/method_state/``. An
interrupted run resumes from its last checkpoint when the same command is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from baselines.pruned_io import load_model
from bench.harness.budget import TrainBudget
from bench.harness.datadir import DataError, dataset_path
from bench.harness.train import ON_BAD_CHECKPOINT, BadCheckpointError, run_pipeline, save_model
from pat.config import PATConfig
from pat.io import write_json_atomic
from pat.method import PATStage
from pat.prompts import PROMPT_FORMATS

log = logging.getLogger("pat")


class UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    t = argparse.ArgumentParser(prog="pat-tune", description=__doc__.split("\n\n")[0])
    t.add_argument("--model", default="smollm2-135m", help="registered name, local HF directory or hub id")
    t.add_argument("--ratio", type=float, required=True, help="fraction of hidden channels to remove, in (0, 1)")
    t.add_argument("--train-data", default="alpaca",
                   help="dataset name in the data directory, a .jsonl file, or a hub id")
    t.add_argument("--max-steps", type=int, required=True, help="optimizer steps (s0 = 1/3 of them by default)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--data-dir", default=None, help="data directory (default: $PAT_DATA_DIR)")
    t.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="auto",
                   help="instruction format of the training examples: chat (the tokenizer's chat template, as the "
                        "model is asked at inference), alpaca (the paper's template, for base models), auto (chat "
                        "when the tokenizer has a chat template, else alpaca; default)")
    t.add_argument("--hio-rank", type=int, default=None, help="HIO rank r (default: 5 %% of the hidden size)")
    t.add_argument("--lora-rank", type=int, default=20)
    t.add_argument("--lora-alpha", type=float, default=None,
                   help="default: the paper's scaling alpha / rank = 4 / 20, i.e. 0.2 x --lora-rank")
    t.add_argument("--align", type=int, default=None,
                   help="kept width multiple (default: num_attention_heads, which keeps OUT loadable with stock "
                        "from_pretrained); a value that gives a width the head count does not divide (e.g. 1) writes "
                        "pat-bench's pruned format instead (load it with baselines.pruned_io.load_model), and the "
                        "command says so at exit")
    t.add_argument("--identity-loss", default="official", choices=["official", "paper", "none"])
    t.add_argument("--embed-hsm", default="auto", choices=["auto", "full", "mask_only"])
    t.add_argument("--snap-by", default="proxy", choices=["proxy", "taylor"],
                   help="how the freeze-point snap picks the kept channels (taylor: for short budgets, see README)")
    t.add_argument("--mask-init", default="zero", choices=["zero", "taylor", "flap"],
                   help="how the mask proxy starts: zero (the paper's) or ranked by a calibration score of the "
                        "hidden channels (ours, for short budgets; docs/method.md)")
    t.add_argument("--mask-init-scale", type=float, default=0.05,
                   help="half-width of the ranked initial proxy (with --mask-init taylor/flap)")
    t.add_argument("--distill-weight", type=float, default=0.0,
                   help="mix logit distillation from the unpruned model into the loss: (1-w) LM + w KD "
                        "(ours, not in the paper; 0 = off)")
    t.add_argument("--distill-temperature", type=float, default=1.0, help="distillation temperature T")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--global-batch", type=int, default=8)
    t.add_argument("--micro-batch", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--warmup-steps", type=int, default=None, help="default: 5 %% of the steps")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--checkpoint-every", type=int, default=25)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="training mixed precision (TrainBudget.precision): fp32 (default) or bf16 autocast (CPU AMX); "
                        "fp16 needs CUDA")
    t.add_argument("--on-bad-checkpoint", choices=ON_BAD_CHECKPOINT, default="stop",
                   help="a checkpoint in OUT/run that cannot be read safely: stop naming the file (default), or move "
                        "it aside and start over")
    return t


def _validate(a: argparse.Namespace) -> None:
    if not 0.0 < a.ratio < 1.0:
        raise UsageError(f"--ratio {a.ratio}: expected a number in (0, 1), e.g. 0.25")
    if a.max_steps < 3:
        raise UsageError(f"--max-steps {a.max_steps}: expected an integer >= 3 (the mask milestone is 1/3 of it)")
    if a.hio_rank is not None and a.hio_rank < 1:
        raise UsageError(f"--hio-rank {a.hio_rank}: expected an integer >= 1 and at most the hidden size")
    if a.lora_rank < 0:
        raise UsageError(f"--lora-rank {a.lora_rank}: expected an integer >= 0")
    if not 0 <= a.distill_weight <= 1:
        raise UsageError(f"--distill-weight {a.distill_weight}: expected a number in [0, 1] (0 = no distillation)")
    if not a.distill_temperature > 0:
        raise UsageError(f"--distill-temperature {a.distill_temperature}: expected a number > 0")
    if not a.mask_init_scale > 0:
        raise UsageError(f"--mask-init-scale {a.mask_init_scale}: expected a number > 0")
    td = a.train_data
    looks_local = td.endswith((".jsonl", ".json")) or td.startswith((".", "/", "~"))  # else a name or a hub id
    if looks_local and not Path(td).expanduser().exists():
        raise UsageError(f"--train-data {td}: file not found")


def _heldout_ids(tokenizer, data_dir, n: int = 2, seq_len: int = 128):
    """Tokens the merge check runs on: the start of WikiText-2 test (never trained on)."""
    try:
        path = dataset_path("wikitext2", data_dir)
        text = "".join(json.loads(line)["text"] for _, line in zip(range(400), open(path, encoding="utf-8")))
    except DataError:
        text = "The quick brown fox jumps over the lazy dog. " * 64
    ids = tokenizer(text, return_tensors="pt").input_ids[0, : n * seq_len]
    return ids.reshape(n, -1) if ids.numel() == n * seq_len else ids[None]


def _paper_alpha(rank: int) -> float:
    """LoRA alpha with the paper's scaling inside PAT (``PATConfig``'s default alpha / rank: 4 / 20)."""
    ref = PATConfig()
    return ref.lora_alpha / ref.lora_rank * rank


def tune(a: argparse.Namespace) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    if a.hio_rank is not None and a.hio_rank > model.config.hidden_size:
        raise UsageError(f"--hio-rank {a.hio_rank}: expected at most the hidden size {model.config.hidden_size}")
    cfg = PATConfig(prune_ratio=a.ratio, hio_rank=a.hio_rank, lora_rank=a.lora_rank, align=a.align,
                    lora_alpha=a.lora_alpha if a.lora_alpha is not None else _paper_alpha(a.lora_rank),
                    identity_loss=a.identity_loss, embed_hsm=a.embed_hsm, snap_by=a.snap_by,
                    mask_init=a.mask_init, mask_init_scale=a.mask_init_scale)
    warmup = a.warmup_steps if a.warmup_steps is not None else max(1, a.max_steps // 20)
    budget = TrainBudget(steps=a.max_steps, global_batch=a.global_batch, micro_batch=a.micro_batch, seq_len=a.seq_len,
                         lr=a.lr, warmup_steps=warmup, seed=a.seed, precision=a.precision,
                         distill_weight=a.distill_weight, distill_temperature=a.distill_temperature)
    out = Path(a.out)
    stage = PATStage(cfg)
    # training state (checkpoints, run.json, method_state/) lives in OUT/run; the model files go to OUT itself
    rec = run_pipeline(model, [stage], budget, a.train_data, out / "run", data_dir=a.data_dir, tokenizer=tok,
                       checkpoint_every=a.checkpoint_every, save_finalized=False,
                       on_bad_checkpoint=a.on_bad_checkpoint, extra={"heldout_ids": _heldout_ids(tok, a.data_dir)},
                       prompt_format=a.prompt_format)
    small = rec.pop("_model", None)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun the main process writes OUT
        return {"rank": int(os.environ["RANK"]), "status": rec.get("status")}
    if small is None:
        raise RuntimeError(f"training stopped before the end ({rec.get('status')}); rerun the command to resume")
    staging = out.with_name(out.name + ".staging")
    fmt = save_model(small, tok, staging)
    os.replace(out / "run", staging / "run")
    shutil.rmtree(out)
    os.replace(staging, out)
    r = stage.report()
    report = {
        "model": a.model, "ratio": a.ratio, **{k: r.get(k) for k in (
            "hidden_size_before", "hidden_size_after", "params_before", "params_after", "achieved_ratio",
            "param_ratio", "merge_max_abs_logit_diff", "train_gate_max_abs_logit_diff", "target_keep", "hio_rank",
            "lora_rank", "milestone_step", "active_at_s0", "active_at_s0_step", "snap_changed", "selection",
            "steps_after_freeze", "train_gate_note", "embed_hsm", "kept_channels")},
        "config": cfg.to_dict(), "final_loss": rec.get("final_loss"), "steps": rec.get("steps_done"),
        "format": fmt,
        "prompt_format": rec.get("prompt_format"),
    }
    write_json_atomic(out / "pat_report.json", report)
    return report


def exit_notes(report: dict) -> list[str]:
    """One line per thing the user must know about OUT that the numbers alone do not say."""
    notes = []
    if report.get("steps_after_freeze") == 0:
        notes.append("no step trained after the freeze point with the hard gate (freeze step == last step): this "
                     "was a one-shot prune after training, not a clean freeze, and train_gate_max_abs_logit_diff "
                     "means little; train longer than the freeze point (0.8 x s0)")
    if report.get("format") == "pruned":
        notes.append(f"--align {report['config']['align']} gave hidden size {report.get('hidden_size_after')}, "
                     "which the head count does not divide: OUT is in pat-bench's pruned format, not a stock model "
                     "(stock from_pretrained rejects it; load it with baselines.pruned_io.load_model)")
    return notes


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    a = _parser().parse_args(argv)
    try:
        _validate(a)
        report = tune(a)
    except (UsageError, ValueError, FileNotFoundError, BadCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "rank" in report:
        return 0 if report["status"] == "success" else 1
    for note in exit_notes(report):
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps({k: report[k] for k in ("hidden_size_before", "hidden_size_after", "params_before",
                                             "params_after", "achieved_ratio", "merge_max_abs_logit_diff")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
