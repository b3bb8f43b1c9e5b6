"""The one training loop of the harness, on ``accelerate``: every stage, same budget, resumable, any engine.

``run_pipeline(model, stages, budget, train_data, out_dir)`` trains a pipeline of ``pat.stage.Stage`` objects and
never branches on a stage's type:

1. ``prepare`` of each stage, in pipeline order (a pruner first = prune-then-tune; LoRA first = tune-then-prune);
2. trainable parameters = the union of every stage's ``param_groups`` (everything else frozen); an optional
   parameter-parity check (``TrainBudget.param_parity``) fails here, before any training;
3. each optimizer step: for every micro-batch, loss = LM loss on response tokens (normalised by the response
   tokens of the whole global batch) + the sum of the stages' ``extra_loss``; after the step,
   ``on_optimizer_step(model, steps_done)`` of every stage, which may return parameters whose optimizer state the
   loop then drops (PAT's mask proxy at the freeze-point snap);
4. ``finalize`` of each stage, again in pipeline order: the model flows through the stages exactly as in
   ``prepare``. For ``["lora", "llm_pruner"]`` LoRA merges first and the pruner then prunes the tuned model;
   for ``["llm_pruner", "lora"]`` the pruner (which pruned in ``prepare``) passes the model through and LoRA
   merges into the pruned model; PAT (LoRA inside) finalizes once. Each stage sees ``ctx.extra["pipeline"]`` and
   ``ctx.extra["stage_index"]`` to know its place.

Engine: ``accelerate.Accelerator`` owns the processes, the devices, the gradient synchronisation (``prepare``,
``accumulate``, ``backward``, ``clip_grad_norm_``), mixed precision (``TrainBudget.precision``) and the checkpoint
files (``save_state`` / ``load_state``). Launch the same command with ``python`` (one process) or ``accelerate
launch`` (DDP, FSDP or DeepSpeed from accelerate's own config); stages get the unwrapped model and never learn
which engine runs them. With ``global_batch`` fixed, N processes give the same result as one, up to float
summation order. The LR schedule is ``transformers.get_scheduler`` (``linear`` / ``cosine`` /
``constant_with_warmup``) over ``total_steps`` optimizer steps with ``warmup_steps`` of linear warmup.

Resume: every ``checkpoint_every`` steps, ``out_dir/checkpoint/step-<N>/`` is written (accelerate's files: the
trainable parameters as ``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``, ``random_states_<rank>.pkl``;
ours: ``stages.safetensors`` with each stage's ``state_dict``, ``loop.json`` with losses and counters), then
``checkpoint/latest.json`` is replaced atomically to point at it. Nothing is unpickled on load beyond tensors and
plain containers (``torch.load(weights_only=True)``); every file is read and checked before the model is touched,
and a truncated or tampered file raises ``BadCheckpointError`` naming it; ``on_bad_checkpoint="restart"`` moves the
bad checkpoint aside and starts over instead. The data order is a pure function of (step, data_seed), so a resumed
run continues the schedule, data order and RNG.

Outputs in ``out_dir``: ``model/`` (finalized: ``save_pretrained`` + tokenizer, or ``baselines.pruned_io`` format
for non-uniform widths), ``method_state/<i>-<name>.safetensors`` (each stage's state before finalize) and
``run.json`` (budget, params, tokens, time, memory, losses, stage reports), all written atomically.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from baselines import pruned_io
from baselines.pruned_io import load_model
from bench.harness.budget import TrainBudget, check_parity, solve_pat_ranks
from bench.harness.calibration import calibration_sampler
from bench.harness.data import (
    IGNORE_INDEX, InstructionData, check_prompt_format, global_batch_indices, load_instruction_data,
)
from bench.harness.distill import Teacher, kd_sum
from bench.harness.registry import make_pipeline
from bench.harness.results import package_versions
from pat.arch import count_params
from pat.io import write_atomic, write_json_atomic
from pat.models import resolve
from pat.prompts import PROMPT_FORMATS
from pat.stage import RunContext, Stage, drop_optimizer_state

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
ON_BAD_CHECKPOINT = ("stop", "restart")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class BadCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read safely (truncated, tampered, inconsistent); the message names it."""


# ----------------------------------------------------------------------------------------------- helpers
def tracker_available() -> bool:
    """Whether accelerate's TensorBoard tracker can run here (``tensorboard`` installed; it is no dependency)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def make_accelerator(budget: TrainBudget, tracking_dir: str | os.PathLike | None = None):
    """The ``Accelerator`` of a run: mixed precision and gradient accumulation from ``budget``. With
    ``tracking_dir`` and TensorBoard installed, the training curves are also logged through accelerate's
    TensorBoard tracker under ``tracking_dir/tensorboard`` (``tensorboard --logdir``).

    Raises:
        RuntimeError: when the environment says several processes (``WORLD_SIZE`` > 1) but accelerate runs one
            (on CPU ``accelerate launch`` needs ``ACCELERATE_USE_CPU=1``, else every process trains alone).
        ValueError: ``global_batch`` not a multiple of ``micro_batch * processes``; ``fp16`` without CUDA.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    mp = MIXED_PRECISION[budget.precision]
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mp):  # another run of this process chose another
        AcceleratorState._reset_state()
    if mp == "fp16" and not torch.cuda.is_available():
        raise ValueError("TrainBudget.precision = 'fp16' is invalid on this machine; expected a CUDA device for fp16 "
                         "(use 'fp32' or 'bf16' on CPU)")
    # buffers (PAT's step / importance) are per-process state the stages keep in step themselves
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    track = tracking_dir is not None and tracker_available()
    acc = Accelerator(mixed_precision=mp, step_scheduler_with_optimizer=False, kwargs_handlers=[ddp],
                      **({"log_with": "tensorboard", "project_dir": str(Path(tracking_dir) / "tensorboard")}
                         if track else {}))
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1 and acc.num_processes == 1:
        raise RuntimeError(
            f"WORLD_SIZE={world_env} but accelerate runs a single process (distributed type {acc.distributed_type}): "
            "every process would train alone. On CPU set ACCELERATE_USE_CPU=1 "
            "(ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...)")
    acc.gradient_accumulation_steps = budget.accumulation(acc.num_processes)
    return acc


def make_scheduler(optimizer: torch.optim.Optimizer, budget: TrainBudget):
    """``transformers.get_scheduler``: ``warmup_steps`` of linear warmup from 0, then cosine / linear decay to 0
    (or constant) at ``total_steps``; the multiplier of optimizer step ``s`` (0-based) in warmup is ``s / warmup``."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULERS[budget.schedule], optimizer, num_warmup_steps=budget.warmup_steps,
                         num_training_steps=budget.total_steps)


def make_optimizer(groups: list[dict], budget: TrainBudget) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW (betas 0.9 / 0.999, eps 1e-8: the authors' paged_adamw_32bit's settings).

    AdamW uses torch's fused kernel when every parameter is a plain CPU tensor (torch's CPU default is the
    single-tensor loop, one small kernel per tensor per update): the same update up to float rounding, ~3x less
    optimizer time (docs/findings/2026-12-04-step-profile.md). Elsewhere torch's own default stays.
    """
    groups = [dict(g, weight_decay=g.get("weight_decay", budget.weight_decay)) for g in groups]
    if budget.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=budget.lr, momentum=0.9)
    params = [p for g in groups for p in g["params"]]
    cpu = bool(params) and all(type(p) is nn.Parameter and p.device.type == "cpu" and p.dtype.is_floating_point
                               for p in params)
    return torch.optim.AdamW(groups, lr=budget.lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if cpu else {}))


def collect_trainable(model: nn.Module, stages: Sequence[Stage],
                      lr: float) -> tuple[list[dict], list[tuple[str, nn.Parameter]]]:
    """Union of the stages' parameter groups (deduplicated); every other parameter is frozen.

    Returns:
        ``(groups, named)``: optimizer groups, and ``(name, param)`` of every trainable parameter in model order.
    """
    groups, seen = [], set()
    for st in stages:
        for g in st.param_groups(model, lr):
            params = [p for p in g["params"] if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append(dict(g, params=params))
    for p in model.parameters():
        p.requires_grad_(id(p) in seen)
    named = [(n, p) for n, p in model.named_parameters() if id(p) in seen]
    return groups, named


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing of the HF model's layers (non-reentrant), under a peft wrapper too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: CPU max RSS (MiB, process lifetime) and, on CUDA, max allocated (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if platform.system() == "Linux" else 1024 ** 2)
    out = {"cpu_max_rss_mib": round(rss, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def _output_head(model: nn.Module) -> nn.Module | None:
    """The output embedding (LM head) of a causal LM, also under a DDP / FSDP1 (``.module``) or peft wrapper."""
    inner = getattr(model, "module", model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def _response_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (n, V), targets (n,))`` at the n positions whose next token is a response token.

    The LM head runs only on those positions: a forward pre-hook on the output embedding gathers their hidden
    states, (b, t, d) -> (n, d), so the head's matmul, its backward and the softmax cover n positions instead of
    b * t (prompt and padding positions carry no loss). Loss and gradients are those of the full logits up to float
    rounding (tests/bench/harness/test_train_speed.py). A model whose head is not reached through
    ``get_output_embeddings()`` gets the full logits, selected afterwards.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX  # (b, t-1): position i predicts token i + 1
    head = _output_head(model)
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0][:, :-1][keep], *args[1:])) \
        if head is not None else None
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        if handle is not None:
            handle.remove()
    if logits.dim() == 3:  # the hook did not run: full (b, t, V) logits
        logits = logits[:, :-1][keep]
    return logits, targets[keep]


def _lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens. Shapes: input_ids/labels (b, t) -> scalar."""
    logits, targets = _response_logits(model, batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _objective(run: TrainRun, batch: dict[str, torch.Tensor], n_resp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, LM loss)`` of a micro-batch, each a sum over response tokens / ``n_resp``. Without a teacher
    the objective is the LM loss; with one, ``(1 - w) LM + w KD`` (``bench.harness.distill``), student and teacher
    logits both taken at the response positions only."""
    if run.teacher is None:
        lm = _lm_loss_sum(run.engine_model, batch) / max(1, n_resp)
        return lm, lm
    logits, targets = _response_logits(run.engine_model, batch)
    lm = F.cross_entropy(logits.float(), targets, reduction="sum") / max(1, n_resp)
    b = run.budget
    teacher_logits = run.teacher.timed(_response_logits, batch)[0]
    kd = kd_sum(logits, teacher_logits, b.distill_temperature) / max(1, n_resp)
    run.kd_sum = kd.detach() if run.kd_sum is None else run.kd_sum + kd.detach()
    return (1 - b.distill_weight) * lm + b.distill_weight * kd, lm


# ------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_files(world: int, engine_files: bool = False) -> list[str]:
    """The files a checkpoint directory must hold; under FSDP / DeepSpeed the engine's own model and optimizer
    files (sharded directories) are its business, and only the rest is listed."""
    ours = ["stages.safetensors", "loop.json"] + [f"random_states_{r}.pkl" for r in range(world)]
    return ours if engine_files else ["model.safetensors", "optimizer.bin", "scheduler.bin"] + ours


def _read_checked(path: Path) -> Any:
    """Read one checkpoint file without executing anything in it; ``BadCheckpointError`` naming it otherwise."""
    from accelerate.utils import load as safe_torch_load  # torch.load(weights_only=True) + numpy arrays
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return safe_torch_load(path, map_location="cpu")
    except FileNotFoundError:
        raise BadCheckpointError(f"checkpoint file {path} is missing") from None
    except Exception as e:  # truncated, corrupted, or a pickle asking for anything beyond tensors and containers
        raise BadCheckpointError(f"checkpoint file {path} cannot be read safely ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e


def verify_checkpoint(root: Path, world: int, trainable: Iterable[str] | None) -> tuple[Path, dict, dict]:
    """Read and check every file of the latest checkpoint under ``root`` before anything is loaded into the model.

    Args:
        trainable: the names of the trainable parameters the model file must hold; ``None`` when the engine
            (FSDP, DeepSpeed) writes the model and optimizer files itself.
    Returns:
        ``(step_dir, loop_state, stage_tensors)``.
    Raises:
        BadCheckpointError: a file missing, truncated, tampered or inconsistent (the message names it).
        ValueError: the checkpoint was written by another number of processes.
    """
    latest = _read_checked(root / LATEST)
    if not isinstance(latest, dict) or not isinstance(latest.get("dir"), str) or "/" in latest["dir"]:
        raise BadCheckpointError(f"checkpoint file {root / LATEST} is invalid: expected {{'dir': 'step-N', ...}}")
    d = root / latest["dir"]
    loop = _read_checked(d / "loop.json")
    if not isinstance(loop, dict) or not isinstance(loop.get("step"), int) or not isinstance(loop.get("state"), dict):
        raise BadCheckpointError(f"checkpoint file {d / 'loop.json'} is invalid: expected step and state")
    if loop.get("world_size") != world:
        raise ValueError(f"{d} was written by a run with another world size ({loop.get('world_size')} processes, now "
                         f"{world}); remove it or use another out_dir")
    files = {f: _read_checked(d / f) for f in _checkpoint_files(world, engine_files=trainable is None)}
    saved, expected = set(files.get("model.safetensors", ())), set(trainable or ())
    if saved != expected:
        raise BadCheckpointError(f"checkpoint file {d / 'model.safetensors'} holds other parameters than this run "
                                 f"trains: missing {sorted(expected - saved)[:5]}, "
                                 f"extra {sorted(saved - expected)[:5]}")
    return d, loop, files["stages.safetensors"]


def _move_aside(root: Path) -> Path:
    bad = root.with_name(f"{root.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(root, bad)
    return bad


def _stage_tensors(stages: Sequence[Stage], model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}/{k}": v.detach().cpu().contiguous() for i, st in enumerate(stages)
            for k, v in st.state_dict(model).items()}


def _load_stage_tensors(stages: Sequence[Stage], model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for i, st in enumerate(stages):
        st.load_state_dict(model, {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(i)})


def _keep_trainable(models: list, weights: list, output_dir) -> None:
    """``save_state`` pre-hook: write only the trainable tensors (the frozen base is rebuilt by ``prepare``)."""
    for i, (m, w) in enumerate(zip(models, weights)):
        names = {n for n, p in m.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in w.items() if k in names}


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class TrainRun:
    """Everything one training run holds: the engine, the prepared model/optimizer/scheduler and the record."""

    accelerator: Any
    model: nn.Module  # the stages' (unwrapped) model: hooks and finalize see this one
    engine_model: nn.Module  # what accelerate.prepare returned: the forward goes through it
    stages: Sequence[Stage]
    budget: TrainBudget
    groups: list[dict]
    named: list[tuple[str, nn.Parameter]]
    optimizer: Any
    scheduler: Any
    start: int = 0
    teacher: Any = None  # bench.harness.distill.Teacher when budget.distill_weight > 0
    kd_sum: Any = None  # this step's KD loss share so far (a tensor; read once per step)
    probes: Sequence[Any] = ()  # callables (model, step) -> dict | None, e.g. bench.harness.mask_probe.MaskProbe
    t_start: float = field(default_factory=time.perf_counter)  # this process began the run (``train(started=)``)
    wall_before: float = 0.0  # seconds earlier processes spent on this run, up to the checkpoint it resumed from
    # (a lower bound of their time: their model loading before ``started`` and work after that checkpoint are not in)
    state: dict[str, Any] = field(default_factory=lambda: {
        "losses": [], "extra_losses": [], "tokens_seen": 0, "response_tokens_seen": 0, "train_seconds": 0.0,
        "optimizer_state_not_reset": []})

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def accum(self) -> int:
        return self.accelerator.gradient_accumulation_steps

    @property
    def engine_files(self) -> bool:
        """FSDP / DeepSpeed: the engine writes and reads the model and optimizer files of a checkpoint itself."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def engine_trainable_names(self) -> list[str]:
        return [n for n, p in self.engine_model.named_parameters() if p.requires_grad]


def setup_run(model: nn.Module, stages: Sequence[Stage], budget: TrainBudget, accelerator=None,
              trainable: tuple[list[dict], list] | None = None) -> TrainRun:
    """Collect the trainable parameters (unless given), build optimizer and scheduler, ``accelerator.prepare``."""
    acc = accelerator or make_accelerator(budget)
    groups, named = trainable or collect_trainable(model, stages, budget.lr)
    opt = make_optimizer(groups, budget)
    sched = make_scheduler(opt, budget)
    engine_model, opt, sched = acc.prepare(model, opt, sched)
    acc.register_save_state_pre_hook(_keep_trainable)
    return TrainRun(acc, model, engine_model, stages, budget, groups, named, opt, sched)


def after_optimizer_step(run: TrainRun, step: int) -> None:
    """Every stage's ``on_optimizer_step``; parameters a stage returns lose their optimizer state."""
    for st in run.stages:
        reset = st.on_optimizer_step(run.model, step)
        if reset:
            if str(run.accelerator.distributed_type).endswith("DEEPSPEED"):  # flat fp32 partitions, not per parameter
                problems = [f"{len(list(reset))} parameter(s): DeepSpeed keeps the optimizer state in flat partitions"]
            else:
                problems = drop_optimizer_state(run.optimizer, reset)
            for msg in problems:
                log.warning("step %d: optimizer state not reset for %s: %s", step, getattr(st, "name", st), msg)
            run.state["optimizer_state_not_reset"] += [f"step {step}: {m}" for m in problems]


def resume_from_checkpoint(run: TrainRun, out_dir: Path, on_bad_checkpoint: str = "stop") -> bool:
    """Continue from ``out_dir/checkpoint`` when present; returns whether it did.

    Raises:
        BadCheckpointError: a bad file and ``on_bad_checkpoint == "stop"``.
        ValueError: the checkpoint belongs to another budget or number of processes.
    """
    root, acc = Path(out_dir) / CHECKPOINT_DIR, run.accelerator
    if not (root / LATEST).exists():
        return False
    try:
        names = None if run.engine_files else run.engine_trainable_names()
        d, loop, stage_tensors = verify_checkpoint(root, run.world, names)
    except BadCheckpointError as e:
        if on_bad_checkpoint != "restart":
            raise BadCheckpointError(f"{e}; fix: rerun with on_bad_checkpoint='restart' (--on-bad-checkpoint "
                                     f"restart) to start over, or remove {root}") from e
        acc.wait_for_everyone()
        if acc.is_main_process:
            log.warning("%s; starting over (bad checkpoint moved to %s)", e, _move_aside(root))
        acc.wait_for_everyone()
        return False
    saved = loop["state"].get("budget")
    if saved != run.budget.to_dict() or loop.get("world_size") != run.world:
        raise ValueError(f"{d} was written by a run with another budget or world size; remove it or use another "
                         f"out_dir (saved budget {saved}, world {loop.get('world_size')}; now {run.world})")
    # a checkpoint from before the field existed was trained in the Alpaca format
    fmt, now = loop["state"].get("prompt_format", "alpaca"), run.state.get("prompt_format", "alpaca")
    if fmt != now:
        raise ValueError(f"{d} was written by a run in the {fmt!r} prompt format, this one is {now!r}; rerun with "
                         f"prompt_format = {fmt!r} (--prompt-format {fmt}), or remove it or use another out_dir")
    if run.engine_files:
        acc.load_state(str(d))
    else:  # strict=False: the model file holds the trainable tensors only (checked above)
        acc.load_state(str(d), strict=False)
    _load_stage_tensors(run.stages, run.model, stage_tensors)
    run.state, run.start = loop["state"], loop["step"]
    # checkpoints from before ``wall_seconds`` existed carry only the training time: a lower bound of the wall time
    run.wall_before = float(run.state.get("wall_seconds", run.state.get("train_seconds", 0.0)))
    after_optimizer_step(run, run.start)  # stages re-derive their schedule position from the step count
    log.info("resumed from %s at step %d/%d", d, run.start, run.budget.total_steps)
    return True


def save_checkpoint(run: TrainRun, out_dir: Path, step: int) -> Path:
    """Write ``checkpoint/step-<step>/`` on all processes, then point ``checkpoint/latest.json`` at it."""
    acc, root = run.accelerator, Path(out_dir) / CHECKPOINT_DIR
    d = root / f"step-{step:08d}"
    if acc.is_main_process and d.exists():  # left over by a run killed while writing it
        shutil.rmtree(d)
    acc.wait_for_everyone()
    acc.save_state(str(d), safe_serialization=True)
    if acc.is_main_process:
        _save_state(_stage_tensors(run.stages, run.model), d / "stages.safetensors")
        run.state["wall_seconds"] = run.wall_before + time.perf_counter() - run.t_start  # a resume adds it back
        write_json_atomic(d / "loop.json", {"step": step, "world_size": run.world, "state": run.state})
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json_atomic(root / LATEST, {"dir": d.name, "step": step})
        for old in root.glob("step-*"):
            if old != d:
                shutil.rmtree(old, ignore_errors=True)
    return d


def _micro_batches(run: TrainRun, data: InstructionData, step: int) -> tuple[list[list[int]], list[int], int]:
    """``(this process's micro-batches of example indices, the global batch, its response tokens)``."""
    b = run.budget
    idx = global_batch_indices(len(data), step, b.global_batch, b.data_seed)
    n_resp = sum(sum(v != IGNORE_INDEX for v in data.labels[i][1:]) for i in idx)
    per = b.global_batch // run.world
    mine = idx[run.accelerator.process_index * per:(run.accelerator.process_index + 1) * per]
    return [mine[k * b.micro_batch:(k + 1) * b.micro_batch] for k in range(run.accum)], idx, n_resp


def micro_step(run: TrainRun, batch: dict[str, torch.Tensor], n_resp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, ``accelerator.backward`` of one micro-batch; returns its (LM, extra) loss shares.

    The objective of a step is sum over micro-batches of LM-sum / response tokens of the global batch, plus the
    stages' extra losses once. accelerate divides by the accumulation steps and DDP/FSDP average over processes,
    so the loss handed to ``backward`` is scaled by ``accum * world``.
    """
    acc, share = run.accelerator, run.accum * run.world
    with acc.accumulate(run.engine_model), acc.autocast():
        objective, lm = _objective(run, batch, n_resp)
        extras = [e for e in (st.extra_loss(run.model) for st in run.stages) if e is not None]
        extra = torch.stack([e.float() for e in extras]).sum() if extras else torch.zeros((), device=acc.device)
        acc.backward(objective * share + extra)
    return lm.detach(), extra.detach() / share


def optimizer_step(run: TrainRun) -> None:
    """Clip (accelerate's, engine-aware), step optimizer and scheduler, zero the gradients."""
    acc = run.accelerator
    if not acc.sync_gradients:
        raise RuntimeError("gradient accumulation out of step: accelerate did not sync after "
                           f"{run.accum} micro-batches")
    if run.budget.max_grad_norm:  # FSDP1 clips through the wrapper only when handed all of its parameters
        params = list(run.engine_model.parameters()) if run.engine_files else [p for _, p in run.named]
        acc.clip_grad_norm_(params, run.budget.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def train_step(run: TrainRun, data: InstructionData, step: int) -> tuple[float, float]:
    """One optimizer step ``step`` (0-based) of the budget; returns the global (LM, extra) losses."""
    micro, idx, n_resp = _micro_batches(run, data, step)
    dev = run.accelerator.device
    lm_sum, extra_sum = torch.zeros((), device=dev), torch.zeros((), device=dev)
    for ids in micro:
        batch = {k: v.to(dev) for k, v in data.collate(ids).items()}
        lm, extra = micro_step(run, batch, n_resp)
        lm_sum, extra_sum = lm_sum + lm, extra_sum + extra
    optimizer_step(run)
    after_optimizer_step(run, step + 1)
    parts = [lm_sum, extra_sum] + ([run.kd_sum if run.kd_sum is not None else torch.zeros((), device=dev)]
                                   if run.teacher is not None else [])
    lm_all, extra_all, *kd = run.accelerator.reduce(torch.stack(parts), "sum").tolist()
    run.kd_sum = None
    st = run.state
    if kd:
        st.setdefault("kd_losses", []).append(kd[0])
    st["losses"].append(lm_all)
    st["extra_losses"].append(extra_all)
    st["tokens_seen"] += sum(len(data.input_ids[i]) for i in idx)
    st["response_tokens_seen"] += n_resp
    _log_curves(run, step + 1, lm_all, extra_all, kd[0] if kd else None)
    for probe in run.probes:
        res = probe(run.model, step + 1)
        if res is not None:
            st.setdefault("probes", []).append(res)
    return lm_all, extra_all


def _log_curves(run: TrainRun, step: int, lm: float, extra: float, kd: float | None) -> None:
    """One point of the training curves (``run.state["curves"]``, kept in the checkpoint and the run record): the LM
    loss, the stages' extra loss, the KD loss and every stage's ``log_values`` (PAT: active channels, tau, L_active,
    L_identity); also sent to accelerate's trackers when the run has any. Every process asks the stages (reading
    sharded state may be a collective)."""
    point: dict[str, Any] = {"step": step, "lm_loss": lm, "extra_loss": extra}
    if kd is not None:
        point["kd_loss"] = kd
    for st in run.stages:
        for k, v in st.log_values(run.model).items():
            v = float(v) if isinstance(v, (int, float)) else v
            point[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    run.state.setdefault("curves", []).append(point)
    if run.accelerator.trackers:
        run.accelerator.log({k: v for k, v in point.items() if k != "step" and isinstance(v, (int, float))},
                            step=step)


def _progress(run: TrainRun, enabled: bool):
    if not (enabled and run.accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.budget.total_steps, initial=run.start, desc="train", dynamic_ncols=True, mininterval=2.0)


def _show(bar, run: TrainRun, loss: float) -> None:
    """Every process asks the stages for their values (reading sharded state may be a collective); main shows."""
    shown = {"loss": f"{loss:.4f}", "lr": f"{run.scheduler.get_last_lr()[0]:.2e}"}
    for st in run.stages:
        shown.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in st.log_values(run.model).items()})
    if bar is not None:
        bar.set_postfix(shown, refresh=False)
        bar.update(1)


def run_steps(run: TrainRun, data: InstructionData, out_dir: Path, checkpoint_every: int | None,
              stop_after: int | None, progress: bool) -> None:
    """Steps ``run.start`` .. the end of the budget (or ``stop_after`` steps), checkpointing on the way."""
    total = run.budget.total_steps
    end = total if stop_after is None else min(total, run.start + stop_after)
    bar = _progress(run, progress)
    run.engine_model.train()
    t0 = time.perf_counter()
    for step in range(run.start, end):
        loss, _ = train_step(run, data, step)
        if progress:
            _show(bar, run, loss)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
            run.state["train_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(run, out_dir, step + 1)
    run.state["train_seconds"] += time.perf_counter() - t0
    if checkpoint_every and end < total and end % checkpoint_every:  # stopped early: resumable from here
        save_checkpoint(run, out_dir, end)
    if bar is not None:
        bar.close()
    run.model.eval()


def _train_record(run: TrainRun) -> dict[str, Any]:
    st, total = run.state, run.budget.total_steps
    steps_done = len(st["losses"])
    params = [p for _, p in run.named]
    return {
        "completed": steps_done >= total, "steps_done": steps_done, "total_steps": total,
        "accumulation": run.accum, "world_size": run.world,
        "distributed_type": str(run.accelerator.distributed_type), "mixed_precision": run.accelerator.mixed_precision,
        "trainable_params": sum(p.numel() for p in params),
        "trainable_by_group": {g.get("name", str(i)): sum(p.numel() for p in g["params"])
                               for i, g in enumerate(run.groups)},
        "final_loss": st["losses"][-1] if st["losses"] else None,
        "final_loss_mean_last10": sum(st["losses"][-10:]) / max(1, len(st["losses"][-10:])),
        "losses": st["losses"], "extra_losses": st["extra_losses"],
        "tokens_seen": st["tokens_seen"], "response_tokens_seen": st["response_tokens_seen"],
        "train_seconds": st["train_seconds"],
        "resumed_wall_seconds": run.wall_before,
        "tokens_per_s": st["tokens_seen"] / st["train_seconds"] if st["train_seconds"] else None,
        "optimizer_state_not_reset": st.get("optimizer_state_not_reset", []),
        "peak_memory": peak_memory(run.accelerator.device),
        "curves": st.get("curves", []),
        **({"probes": st["probes"]} if st.get("probes") else {}),
        **({"distill": {**run.teacher.record(run.budget.distill_weight, run.budget.distill_temperature),
                        "kd_losses": st.get("kd_losses", [])}} if run.teacher is not None else {}),
    }


def train(
    model: nn.Module,
    stages: Sequence[Stage],
    budget: TrainBudget,
    data: InstructionData,
    out_dir: Path,
    checkpoint_every: int | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
    trainable: tuple[list[dict], list] | None = None,
    on_bad_checkpoint: str = "stop",
    teacher: nn.Module | None = None,
    probes: Sequence[Any] = (),
    started: float | None = None,
) -> dict[str, Any]:
    """Train an already prepared ``model`` (stages' ``prepare`` done) for ``budget.total_steps`` optimizer steps.

    Args:
        model: the model returned by the last stage's ``prepare``.
        stages: the pipeline; their hooks are called in order.
        budget: the shared training budget.
        data: tokenized examples; every process holds all of them and takes its slice of each global batch.
        out_dir: where ``checkpoint/`` lives.
        checkpoint_every: save a checkpoint every this many optimizer steps (``None``/0: never).
        resume: continue from ``out_dir/checkpoint`` if it exists.
        stop_after: stop after this many steps *of this invocation* (preemption / time slicing); resumable.
        progress: show a tqdm bar on the main process.
        accelerator: the run's ``Accelerator`` (default: ``make_accelerator(budget)``).
        trainable: ``collect_trainable``'s result when the caller already has it.
        on_bad_checkpoint: ``"stop"`` (raise ``BadCheckpointError``) or ``"restart"`` (move it aside, start over).
        teacher: the unpruned model, required when ``budget.distill_weight > 0`` (``bench.harness.distill``).
        probes: callables ``probe(model, step) -> dict | None`` run after each optimizer step; their results go to
            the record's ``probes`` (``bench.harness.mask_probe.MaskProbe``: PAT's mask learning curve).
        started: ``time.perf_counter()`` when this process began the run (``run_pipeline``: before loading and
            preparing the model); a checkpoint records the process's wall time from there, and a resumed run reports
            it as ``resumed_wall_seconds`` (default: from here).
    Returns:
        the training record: steps, losses, tokens, seconds, peak memory, ``completed``.
    """
    if on_bad_checkpoint not in ON_BAD_CHECKPOINT:
        raise ValueError(f"on_bad_checkpoint = {on_bad_checkpoint!r} is invalid; expected one of {ON_BAD_CHECKPOINT}")
    if (budget.distill_weight > 0) != (teacher is not None):
        raise ValueError(f"TrainBudget.distill_weight = {budget.distill_weight}: "
                         + ("needs a teacher (the unpruned model)" if teacher is None else
                            "is 0, so no teacher may be given"))
    run = setup_run(model, stages, budget, accelerator, trainable)
    if started is not None:
        run.t_start = started
    if run.accelerator.log_with and run.accelerator.is_main_process:
        run.accelerator.init_trackers("train", config={k: v for k, v in budget.to_dict().items()
                                                       if isinstance(v, (int, float, str, bool))})
    if teacher is not None:
        run.teacher = Teacher(teacher).to(run.accelerator.device)
    run.probes = tuple(probes)
    run.state["prompt_format"] = (data.record or {}).get("template", "alpaca")
    if resume:
        resume_from_checkpoint(run, Path(out_dir), on_bad_checkpoint)
    run.state["budget"] = budget.to_dict()
    run.state["prompt_format"] = (data.record or {}).get("template", "alpaca")
    run_steps(run, data, Path(out_dir), checkpoint_every, stop_after, progress)
    rec = _train_record(run)
    if run.accelerator.trackers:
        run.accelerator.end_training()
    run.accelerator.free_memory()
    return rec


# ------------------------------------------------------------------------------------------- outputs
def save_model(model: nn.Module, tokenizer, path: Path) -> str:
    """Save the finalized model atomically: stock ``save_pretrained`` for uniform widths, else the pruned format.

    Returns:
        ``"hf"`` or ``"pruned"``.
    """
    tok = tokenizer if hasattr(tokenizer, "save_pretrained") else None  # test tokenizers cannot be saved
    out = pruned_io.save_pruned(model, tok, path)  # decides the format, writes atomically
    return "pruned" if pruned_io.is_pruned_checkpoint(out) else "hf"


def _save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    write_atomic(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp))


def _versions() -> dict[str, str]:
    installed = package_versions(("torch", "transformers", "peft", "accelerate"))
    return {"python": sys.version.split()[0], **{k: v for k, v in installed.items() if v is not None}}


def _load_model(model_name_or_model: str | os.PathLike | nn.Module, tokenizer) -> tuple[nn.Module, Any, str]:
    if isinstance(model_name_or_model, (str, os.PathLike)):
        model, tokenizer = load_model(model_name_or_model)
        return model, tokenizer, str(model_name_or_model)
    if tokenizer is None:
        raise ValueError("run_pipeline: pass tokenizer= when model_name_or_model is a model object")
    return model_name_or_model, tokenizer, type(model_name_or_model).__name__


def _run_stages(model: nn.Module, stages: Sequence[Stage], ctx: RunContext, phase: str) -> nn.Module:
    """``prepare`` or ``finalize`` of every stage in pipeline order; the model flows through them."""
    for i, st in enumerate(stages):
        ctx.extra.update(stage_index=i)
        model = st.prepare(model, ctx) if phase == "prepare" else st.finalize(model, ctx)
    return model


def _train_if_trainable(model, stages, budget, tokenizer, train_data, data_dir, out_dir, acc, prompt_format="alpaca",
                        **options) -> tuple:
    """Parity check, data, ``train``; a pipeline with nothing trainable goes straight to finalize.

    Returns:
        ``(train record, parity record, data record)``.
    """
    groups, named = collect_trainable(model, stages, budget.lr)
    if not named:  # retraining-free pipelines (e.g. ["flap"])
        rec = {"completed": True, "steps_done": 0, "total_steps": 0, "trainable_params": 0, "final_loss": None,
               "losses": [], "tokens_seen": 0, "train_seconds": 0.0, "tokens_per_s": None}
        return rec, None, None
    trainable = sum(p.numel() for _, p in named)
    parity = check_parity(trainable, budget.param_parity, budget.parity_tol, model.config) if budget.param_parity \
        else None
    data = load_instruction_data(train_data, tokenizer, budget.seq_len, budget.subset_size, budget.data_seed, data_dir,
                                 prompt_format=prompt_format)
    if budget.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    torch.manual_seed(budget.seed + 1000 * acc.process_index)  # dropout streams differ per process, reproducibly
    rec = train(model, stages, budget, data, out_dir, accelerator=acc, trainable=(groups, named), **options)
    return rec, parity, data.record


def _write_outputs(acc, out_dir: Path, names: list[str], stage_states: list, final_model, tokenizer,
                   record: dict, save_finalized: bool) -> None:
    """Main process: stage states, ``model/``, ``run.json``; the checkpoint goes once the run is complete."""
    if acc.is_main_process:
        for i, (n, sd) in enumerate(zip(names, stage_states)):
            if sd:
                _save_state(sd, out_dir / "method_state" / f"{i}-{n}.safetensors")
        if final_model is not None and save_finalized:
            record["model_format"] = save_model(final_model, tokenizer, out_dir / "model")
            record["model_dir"] = str(out_dir / "model")
        write_json_atomic(out_dir / "run.json", record)
        if final_model is not None and (out_dir / CHECKPOINT_DIR).exists():
            shutil.rmtree(out_dir / CHECKPOINT_DIR)
    acc.wait_for_everyone()


def run_pipeline(
    model_name_or_model: str | nn.Module,
    stages: list[Stage],
    budget: TrainBudget,
    train_data: str,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = 50,
    resume: bool = True,
    tokenizer=None,
    stop_after: int | None = None,
    progress: bool = True,
    save_finalized: bool = True,
    extra: dict[str, Any] | None = None,
    on_bad_checkpoint: str = "stop",
    probes: Sequence[Any] = (),
    prompt_format: str = "alpaca",
) -> dict[str, Any]:
    """Prepare, train and finalize a pipeline of stages under ``budget``; write outputs to ``out_dir``.

    Args:
        model_name_or_model: a name/path for ``pat.models.load`` or a model (then pass ``tokenizer``).
        stages: ``Stage`` instances in pipeline order (see the module docstring for the finalize order).
        budget: the shared ``TrainBudget``.
        train_data: dataset name (``"alpaca"``), a .jsonl path or a hub id.
        out_dir: run directory (``checkpoint/``, ``model/``, ``method_state/``, ``run.json``).
        data_dir: data directory (default ``$PAT_DATA_DIR``).
        checkpoint_every: optimizer steps between checkpoints (``None``/0: none).
        resume: continue from ``out_dir/checkpoint`` when present.
        tokenizer: needed when a model object is passed.
        stop_after: stop after this many steps of this invocation (resumable); no finalize then.
        progress: tqdm bar on the main process.
        save_finalized: write ``model/`` (tests may skip it).
        extra: merged into ``RunContext.extra`` (e.g. ``heldout_ids`` for PAT's merge check).
        on_bad_checkpoint: ``"stop"`` or ``"restart"`` when the checkpoint cannot be read safely.
        probes: run after each optimizer step (``train``); one with a ``finish(probes, kept_channels)`` method is
            given the first stage report's ``kept_channels`` after finalize.
        prompt_format: instruction format of the training examples, ``"alpaca"`` (the paper's, the default here and
            in the suites), ``"chat"`` (the tokenizer's chat template) or ``"auto"`` (chat when the tokenizer has a
            template); see ``pat.prompts``. ``run.json`` records it (``prompt_format``: the format used).
    Returns:
        the run record (also written to ``out_dir/run.json``); the finalized model is returned under the key
        ``"_model"`` of the returned dict only.
    Raises:
        ParityError: when ``budget.param_parity`` is not met, before any training step.
        BadCheckpointError: a bad checkpoint and ``on_bad_checkpoint="stop"``.
    """
    check_prompt_format(prompt_format)
    acc = make_accelerator(budget, tracking_dir=out_dir)
    out_dir = Path(out_dir)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model, tokenizer, model_name = _load_model(model_name_or_model, tokenizer)
    total_before = count_params(model)
    names = [getattr(st, "name", type(st).__name__) for st in stages]
    ctx = RunContext(tokenizer=tokenizer, total_steps=budget.total_steps, seed=budget.seed, out_dir=out_dir,
                     data_dir=Path(data_dir) if data_dir else None,
                     calibration=calibration_sampler(tokenizer, budget.seed, data_dir, budget.seq_len),
                     extra={"pipeline": names, **(extra or {})})
    torch.manual_seed(budget.seed)
    teacher = copy.deepcopy(model) if budget.distill_weight > 0 else None  # the unpruned model, before any stage
    model = _run_stages(model, stages, ctx, "prepare")
    rec, parity, data_record = _train_if_trainable(
        model, stages, budget, tokenizer, train_data, data_dir, out_dir, acc, checkpoint_every=checkpoint_every,
        resume=resume, stop_after=stop_after, progress=progress, on_bad_checkpoint=on_bad_checkpoint, teacher=teacher,
        probes=probes, prompt_format=prompt_format, started=t_start)
    del teacher
    record: dict[str, Any] = {
        "status": "success" if rec["completed"] else "stopped",
        "model": model_name, "pipeline": names, "budget": budget.to_dict(), "data": data_record,
        "prompt_format": data_record["template"] if data_record else None,
        "total_params_before": total_before, "parity": parity, **rec,
        "versions": _versions(), "device": str(acc.device), "torch_threads": torch.get_num_threads(),
    }
    stage_states = [st.state_dict(model) for st in stages] if rec["completed"] else []
    final_model = _run_stages(model, stages, ctx, "finalize") if rec["completed"] else None
    if final_model is not None:
        record["total_params_after"] = count_params(final_model)
        record["hidden_size_after"] = getattr(final_model.config, "hidden_size", None)
    record["stages"] = {f"{i}-{n}": st.report() for i, (n, st) in enumerate(zip(names, stages))}
    kept = next((r["kept_channels"] for r in record["stages"].values() if "kept_channels" in r), None)
    for probe in probes:
        if hasattr(probe, "finish") and record.get("probes"):
            record["probes"] = probe.finish(record["probes"], kept)
    record["wall_seconds"] = time.perf_counter() - t_start
    record["peak_memory"] = peak_memory(acc.device)
    _write_outputs(acc, out_dir, names, stage_states, final_model, tokenizer, record, save_finalized)
    return {**record, "_model": final_model}


# ------------------------------------------------------------------------------------------------ CLI
def _parse(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.harness.train",
                                description="Train a pipeline of stages under a budget.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pipeline", default="lora", help="comma-separated stage names, e.g. pat | lora | llm_pruner,lora")
    p.add_argument("--stage-args", default="{}", help='JSON {stage: {arg: value}}, e.g. {"lora": {"rank": 64}}')
    p.add_argument("--parity-solve", default=None,
                   help="solve PAT's hio_rank/lora_rank to match this reference (lora-64)")
    p.add_argument("--budget", default="{}", help="JSON of TrainBudget fields (steps, global_batch, micro_batch, ...)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="TrainBudget.precision (overrides --budget's): bf16 = autocast, on CPU AMX-BF16 / AVX512-BF16")
    p.add_argument("--train-data", default="alpaca")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="alpaca",
                   help="instruction format: alpaca (the paper's template), chat (the tokenizer's chat template), "
                        "auto (chat when the tokenizer has one)")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--on-bad-checkpoint", choices=ON_BAD_CHECKPOINT, default="stop",
                   help="a checkpoint that cannot be read safely: stop with an error naming the file (default), or "
                        "move it aside and start over")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on an oversubscribed CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m bench.harness.train --pipeline pat --stage-args '{"pat": {"prune_ratio": 0.25}}' ...``."""

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = TrainBudget.from_dict({**json.loads(args.budget),
                                    **({"precision": args.precision} if args.precision else {})})
    names = [n.strip() for n in args.pipeline.split(",") if n.strip()]
    margs = json.loads(args.stage_args)
    if args.parity_solve:
        from transformers import AutoConfig

        sol = solve_pat_ranks(AutoConfig.from_pretrained(resolve(args.model)), args.parity_solve, budget.parity_tol)
        margs.setdefault("pat", {}).update(hio_rank=sol["hio_rank"], lora_rank=sol["lora_rank"])
        log.info("parity %s: %s", args.parity_solve, sol)
    rec = run_pipeline(args.model, make_pipeline(names, margs), budget, args.train_data, args.out,
                       data_dir=args.data_dir, checkpoint_every=args.checkpoint_every, resume=not args.no_resume,
                       on_bad_checkpoint=args.on_bad_checkpoint, prompt_format=args.prompt_format)
    rec.pop("_model", None)
    if rec.get("status") == "success" or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: rec.get(k) for k in ("status", "steps_done", "final_loss", "trainable_params",
                                                  "tokens_per_s", "train_seconds", "peak_memory")}))
    return 0 if rec.get("status") == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
