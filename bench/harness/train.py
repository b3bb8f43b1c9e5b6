"""The one training loop of the harness: every method, same budget, resumable, single- or multi-process.

``run_pipeline(model, stages, budget, train_data, out_dir)`` trains a pipeline of ``Method`` stages and never
branches on a stage's type:

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
   merges into the pruned model; PAT (LoRA inside) finalizes once. Each stage sees ``ctx.extra["pipeline"]``,
   ``ctx.extra["stage_index"]`` and ``ctx.extra["phase"]`` (``"prepare"`` / ``"finalize"``) to know its place.

Distributed: run the same command under ``torchrun --nproc_per_node N`` or ``accelerate launch``. Each process
holds the whole model; only the trainable parameters' gradients are all-reduced (one flat buffer per step), so the
shared state (LoRA, PAT's mask) stays identical on every rank, and the result equals a single-process run with the
same global batch up to float summation order. Backend: NCCL on CUDA, gloo on CPU.

Resume: every ``checkpoint_every`` steps, ``out_dir/checkpoint.pt`` is written atomically with the trainable
parameters, optimizer and scheduler state, step, per-rank RNG states and each stage's ``state_dict``. The data
order is a pure function of (step, data_seed), so a resumed run continues the schedule, data order and RNG.

Outputs in ``out_dir``: ``model/`` (finalized: ``save_pretrained`` + tokenizer, or ``baselines.pruned_io`` format
for non-uniform widths), ``method_state/<i>-<name>.safetensors`` (each stage's state before finalize) and
``run.json`` (budget, params, tokens, time, memory, losses, stage reports), all written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from bench.harness.budget import TrainBudget, check_parity
from bench.harness.calibration import calibration_sampler
from bench.harness.data import IGNORE_INDEX, InstructionData, global_batch_indices, load_instruction_data
from bench.harness.method import Method, RunContext

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------------------------- helpers
def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
    os.replace(tmp, path)


def _save_torch_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def init_distributed() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; joins the process group when launched by torchrun / accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def lr_lambda(budget: TrainBudget) -> Callable[[int], float]:
    """Multiplier of the base LR after ``s`` optimizer steps: linear warmup, then cosine / linear decay to 0."""
    total, warm = budget.total_steps, budget.warmup_steps

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        if budget.schedule == "constant":
            return 1.0
        frac = (s - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) if budget.schedule == "cosine" else max(0.0, 1 - frac)

    return f


def make_optimizer(groups: list[dict], budget: TrainBudget) -> torch.optim.Optimizer:
    groups = [dict(g, weight_decay=g.get("weight_decay", budget.weight_decay)) for g in groups]
    if budget.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=budget.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=budget.lr, betas=(0.9, 0.999), eps=1e-8)


def collect_trainable(model: nn.Module, stages: Sequence[Method], lr: float) -> tuple[list[dict], list[tuple[str, nn.Parameter]]]:
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


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: CPU max RSS (MiB, process lifetime) and, on CUDA, max allocated (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if platform.system() == "Linux" else 1024 ** 2)
    out = {"cpu_max_rss_mib": round(rss, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _allreduce_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over all ranks in place, through one flat buffer."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    off = 0
    for t in tensors:
        t.copy_(flat[off: off + t.numel()].view_as(t))
        off += t.numel()


def _lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens. Shapes: input_ids/labels (b, t) -> scalar."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _save_checkpoint(path: Path, step: int, named, opt, sched, stages, model, rng_all, state: dict) -> None:
    _save_torch_atomic({
        "step": step,
        "trainable": {n: p.detach().cpu() for n, p in named},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_all,
        "stages": [st.state_dict(model) for st in stages],
        "state": state,
    }, path)


def _gather_rng(world: int) -> list[dict]:
    st = _rng_state()
    if world == 1:
        return [st]
    out: list = [None] * world
    dist.all_gather_object(out, st)
    return out


# ------------------------------------------------------------------------------------------- the loop
def train(
    model: nn.Module,
    stages: Sequence[Method],
    budget: TrainBudget,
    data: InstructionData,
    out_dir: Path,
    checkpoint_every: int | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    dist_info: tuple[int, int, torch.device] | None = None,
) -> dict[str, Any]:
    """Train an already prepared ``model`` (stages' ``prepare`` done) for ``budget.total_steps`` optimizer steps.

    Args:
        model: the model returned by the last stage's ``prepare``, on its device.
        stages: the pipeline; their hooks are called in order.
        budget: the shared training budget.
        data: tokenized examples; every rank holds all of them and takes its slice of each global batch.
        out_dir: where ``checkpoint.pt`` lives.
        checkpoint_every: save a checkpoint every this many optimizer steps (``None``/0: never).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        stop_after: stop after this many steps *of this invocation* (preemption / time slicing); resumable.
        progress: show a tqdm bar on rank 0.
        dist_info: ``(rank, world, device)`` from ``init_distributed``.
    Returns:
        the training record: steps, losses, tokens, seconds, peak memory, ``completed``.
    """
    rank, world, device = dist_info or init_distributed()
    accum = budget.accumulation(world)
    total = budget.total_steps
    groups, named = collect_trainable(model, stages, budget.lr)
    params = [p for _, p in named]
    opt = make_optimizer(groups, budget)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(budget))
    state = {"losses": [], "extra_losses": [], "tokens_seen": 0, "response_tokens_seen": 0, "train_seconds": 0.0}
    start = 0
    ckpt = Path(out_dir) / CHECKPOINT
    if world > 1:  # identical start on every rank, whatever RNG the stages' prepare used
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)
    if resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        if ck["state"].get("budget") != budget.to_dict() or len(ck["rng"]) != world:
            raise ValueError(f"{ckpt} was written by a run with another budget or world size; remove it or use "
                             f"another out_dir (saved budget {ck['state'].get('budget')}, world {len(ck['rng'])})")
        trainable = dict(named)
        with torch.no_grad():
            for n, t in ck["trainable"].items():
                trainable[n].copy_(t)
        for st, sd in zip(stages, ck["stages"]):
            st.load_state_dict(model, sd)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"][rank])
        state, start = ck["state"], ck["step"]
        for st in stages:
            for p in st.on_optimizer_step(model, start) or ():
                opt.state.pop(p, None)
        log.info("resumed from %s at step %d/%d", ckpt, start, total)
    state["budget"] = budget.to_dict()
    end = total if stop_after is None else min(total, start + stop_after)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=2.0)
    per_rank = budget.global_batch // world
    model.train()
    t0 = time.perf_counter()
    for step in range(start, end):
        idx = global_batch_indices(len(data), step, budget.global_batch, budget.data_seed)
        n_resp = sum(sum(v != IGNORE_INDEX for v in data.labels[i][1:]) for i in idx)
        mine = idx[rank * per_rank: (rank + 1) * per_rank]
        lm_sum = torch.zeros((), device=device)
        extra_sum = torch.zeros((), device=device)
        for k in range(accum):
            batch = {key: v.to(device) for key, v in data.collate(mine[k * budget.micro_batch:(k + 1) * budget.micro_batch]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=budget.precision == "bf16"):
                lm = _lm_loss_sum(model, batch) / max(1, n_resp)
                extras = [e for e in (st.extra_loss(model) for st in stages) if e is not None]
                extra = torch.stack([e.float() for e in extras]).sum() if extras else torch.zeros((), device=device)
            (lm + extra / (accum * world)).backward()
            lm_sum += lm.detach()
            extra_sum += extra.detach() / (accum * world)
        if world > 1:
            _allreduce_([p.grad for p in params if p.grad is not None] + [lm_sum, extra_sum])
        if budget.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, budget.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for st in stages:
            for p in st.on_optimizer_step(model, step + 1) or ():  # parameters whose optimizer state must go
                opt.state.pop(p, None)
        state["losses"].append(float(lm_sum))
        state["extra_losses"].append(float(extra_sum))
        state["tokens_seen"] += sum(len(data.input_ids[i]) for i in idx)
        state["response_tokens_seen"] += n_resp
        if bar is not None:
            shown = {"loss": f"{float(lm_sum):.4f}", "lr": f"{sched.get_last_lr()[0]:.2e}"}
            for st in stages:
                shown.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in st.log_values(model).items()})
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
            state["train_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            rng_all = _gather_rng(world)
            if rank == 0:
                _save_checkpoint(ckpt, step + 1, named, opt, sched, stages, model, rng_all, state)
    state["train_seconds"] += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    model.eval()
    steps_done = len(state["losses"])
    return {
        "completed": steps_done >= total,
        "steps_done": steps_done,
        "total_steps": total,
        "accumulation": accum,
        "world_size": world,
        "trainable_params": sum(p.numel() for p in params),
        "trainable_by_group": {g.get("name", str(i)): sum(p.numel() for p in g["params"]) for i, g in enumerate(groups)},
        "final_loss": state["losses"][-1] if state["losses"] else None,
        "final_loss_mean_last10": sum(state["losses"][-10:]) / max(1, len(state["losses"][-10:])),
        "losses": state["losses"],
        "extra_losses": state["extra_losses"],
        "tokens_seen": state["tokens_seen"],
        "response_tokens_seen": state["response_tokens_seen"],
        "train_seconds": state["train_seconds"],
        "tokens_per_s": state["tokens_seen"] / state["train_seconds"] if state["train_seconds"] else None,
        "peak_memory": peak_memory(device),
    }


# ------------------------------------------------------------------------------------------- outputs
def save_model(model: nn.Module, tokenizer, path: Path) -> str:
    """Save the finalized model atomically: stock ``save_pretrained`` for uniform widths, else the pruned format.

    Returns:
        ``"hf"`` or ``"pruned"``.
    """
    from baselines import pruned_io
    from pat.fsutil import atomic_dir

    with atomic_dir(path) as tmp:
        fmt = "pruned" if pruned_io.needs_pruned_format(model) else "hf"
        if fmt == "pruned":
            pruned_io.save_pruned(model, tmp)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
    return fmt


def _save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_pipeline(
    model_name_or_model: str | nn.Module,
    stages: list[Method],
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
) -> dict[str, Any]:
    """Prepare, train and finalize a pipeline of stages under ``budget``; write outputs to ``out_dir``.

    Args:
        model_name_or_model: a name/path for ``pat.models.load`` or a model (then pass ``tokenizer``).
        stages: ``Method`` instances in pipeline order (see the module docstring for the finalize order).
        budget: the shared ``TrainBudget``.
        train_data: dataset name (``"alpaca"``), a .jsonl path or a hub id.
        out_dir: run directory (checkpoint, ``model/``, ``method_state/``, ``run.json``).
        data_dir: data directory (default ``$PAT_DATA_DIR``).
        checkpoint_every: optimizer steps between checkpoints (``None``/0: none).
        resume: continue from ``out_dir/checkpoint.pt`` when present.
        tokenizer: needed when a model object is passed.
        stop_after: stop after this many steps of this invocation (resumable); no finalize then.
        progress: tqdm bar on rank 0.
        save_finalized: write ``model/`` (tests may skip it).
        extra: merged into ``RunContext.extra`` (e.g. ``heldout_ids`` for PAT's merge check).
    Returns:
        the run record (also written to ``out_dir/run.json``); ``"model"`` is not in it — the finalized model is
        returned under the key ``"_model"`` of the returned dict only.
    Raises:
        ParityError: when ``budget.param_parity`` is not met, before any training step.
    """
    rank, world, device = dist_info = init_distributed()
    out_dir = Path(out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if isinstance(model_name_or_model, (str, os.PathLike)):
        from pat.models import load

        model, tokenizer = load(model_name_or_model)
        model_name = str(model_name_or_model)
    else:
        model, model_name = model_name_or_model, type(model_name_or_model).__name__
        if tokenizer is None:
            raise ValueError("run_pipeline: pass tokenizer= when model_name_or_model is a model object")
    base_config = model.config
    total_before = _count(model)
    names = [getattr(st, "name", type(st).__name__) for st in stages]
    ctx = RunContext(tokenizer=tokenizer, total_steps=budget.total_steps, seed=budget.seed, out_dir=out_dir,
                     data_dir=Path(data_dir) if data_dir else None,
                     calibration=calibration_sampler(tokenizer, budget.seed, data_dir, budget.seq_len),
                     extra={"pipeline": names, **(extra or {})})
    torch.manual_seed(budget.seed)
    for i, st in enumerate(stages):
        ctx.extra.update(stage_index=i, phase="prepare")
        model = st.prepare(model, ctx)
    groups, named = collect_trainable(model, stages, budget.lr)
    trainable = sum(p.numel() for _, p in named)
    model.to(device)
    if trainable:
        parity = check_parity(trainable, budget.param_parity, budget.parity_tol, base_config) if budget.param_parity else None
        data = load_instruction_data(train_data, tokenizer, budget.seq_len, budget.subset_size, budget.data_seed, data_dir)
        torch.manual_seed(budget.seed + 1000 * rank)  # dropout streams differ per rank, reproducibly
        rec = train(model, stages, budget, data, out_dir, checkpoint_every, resume, stop_after, progress, dist_info)
        data_record = data.record
    else:  # retraining-free pipelines (e.g. ["flap"]): nothing to train, straight to finalize
        parity, data_record = None, None
        rec = {"completed": True, "steps_done": 0, "total_steps": 0, "trainable_params": 0, "final_loss": None,
               "losses": [], "tokens_seen": 0, "train_seconds": 0.0, "tokens_per_s": None}
    record: dict[str, Any] = {
        "status": "success" if rec["completed"] else "stopped",
        "model": model_name, "pipeline": names, "budget": budget.to_dict(), "data": data_record,
        "total_params_before": total_before, "parity": parity, **rec,
        "versions": _versions(), "device": str(device), "torch_threads": torch.get_num_threads(),
    }
    stage_states = [st.state_dict(model) for st in stages] if rec["completed"] else []
    final_model = None
    if rec["completed"]:
        for i, st in enumerate(stages):
            ctx.extra.update(stage_index=i, phase="finalize")
            model = st.finalize(model, ctx)
        final_model = model
        record["total_params_after"] = _count(model)
        record["hidden_size_after"] = getattr(model.config, "hidden_size", None)
    record["stages"] = {f"{i}-{n}": st.report() for i, (n, st) in enumerate(zip(names, stages))}
    record["wall_seconds"] = time.perf_counter() - t_start
    record["peak_memory"] = peak_memory(device)
    if rank == 0:
        for i, (n, sd) in enumerate(zip(names, stage_states)):
            if sd:
                _save_state(sd, out_dir / "method_state" / f"{i}-{n}.safetensors")
        if final_model is not None and save_finalized:
            record["model_format"] = save_model(final_model, tokenizer, out_dir / "model")
            record["model_dir"] = str(out_dir / "model")
        write_json_atomic(out_dir / "run.json", record)
        if rec["completed"] and (out_dir / CHECKPOINT).exists():
            (out_dir / CHECKPOINT).unlink()
    if world > 1:
        dist.barrier()
    return {**record, "_model": final_model}


# ------------------------------------------------------------------------------------------------ CLI
def _parse(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.harness.train", description="Train a pipeline of stages under a budget.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pipeline", default="lora", help="comma-separated stage names, e.g. pat | lora | llm_pruner,lora")
    p.add_argument("--method-args", default="{}", help='JSON {stage: {arg: value}}, e.g. {"lora": {"rank": 64}}')
    p.add_argument("--parity-solve", default=None, help="solve PAT's hio_rank/lora_rank to match this reference (lora-64)")
    p.add_argument("--budget", default="{}", help="JSON of TrainBudget fields (steps, global_batch, micro_batch, ...)")
    p.add_argument("--train-data", default="alpaca")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on an oversubscribed CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m bench.harness.train --pipeline pat --method-args '{"pat": {"prune_ratio": 0.25}}' ...``."""
    from bench.harness.budget import solve_pat_ranks
    from bench.harness.registry import make_pipeline

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = TrainBudget.from_dict(json.loads(args.budget))
    names = [n.strip() for n in args.pipeline.split(",") if n.strip()]
    margs = json.loads(args.method_args)
    if args.parity_solve:
        from transformers import AutoConfig

        from pat.models import resolve

        sol = solve_pat_ranks(AutoConfig.from_pretrained(resolve(args.model)), args.parity_solve, budget.parity_tol)
        margs.setdefault("pat", {}).update(hio_rank=sol["hio_rank"], lora_rank=sol["lora_rank"])
        log.info("parity %s: %s", args.parity_solve, sol)
    rec = run_pipeline(args.model, make_pipeline(names, margs), budget, args.train_data, args.out,
                       data_dir=args.data_dir, checkpoint_every=args.checkpoint_every, resume=not args.no_resume)
    rec.pop("_model", None)
    if rec.get("status") == "success" or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: rec.get(k) for k in ("status", "steps_done", "final_loss", "trainable_params",
                                                  "tokens_per_s", "train_seconds", "peak_memory")}))
    return 0 if rec.get("status") == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
