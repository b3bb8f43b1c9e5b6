"""Two CPU processes under ``accelerate launch`` (gloo DDP), and under torch's ``fully_shard`` (FSDP2), vs one process.

``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/bench/harness/test_multiprocess.py OUT``
runs the worker half of this file: a LoRA pipeline and a PAT pipeline on a tiny Llama; every process snapshots
its trainable tensors (LoRA, HSMs, the shared mask proxy) right before finalize. The test then runs the same two
pipelines in one process (gradient accumulation 2 instead of 2 processes) and compares.

FSDP2: accelerate's ``--use_fsdp`` falls back to DDP on CPU, so the sharding check drives torch's ``fully_shard``
directly (``python -m torch.distributed.run --nproc_per_node 2 THIS_FILE OUT fsdp2``) with the trainer's own pieces
(``collect_trainable``, ``make_optimizer``, ``_lm_loss_sum``, the stage hooks, the same loss scaling) on PAT
(peft LoRA inside) and compares with ``run_pipeline`` in one process. Every decoder layer and the root are sharded
with the default ``reshard_after_forward=True``: after the forward the HSM parameters are sharded DTensors again,
and PAT's ``extra_loss`` sums the identity terms the HSMs computed inside their forward (see docs/scale.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pat.stage import StageDefaults
from bench.harness.train import run_pipeline
from tests.bench.harness.test_train import ROOT, CharTokenizer, budget, write_alpaca
from tests.tiny import tiny_batch, tiny_model

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.multiprocess]

LOSS_TOL = 1e-4  # float summation order differs (2 x 2 examples + all-reduce vs 4 examples accumulated)
PARAM_TOL = {"atol": 1e-4, "rtol": 1e-3}


class Snapshot(StageDefaults):
    """First stage of the pipeline: its ``finalize`` sees the trained model and saves the trainable tensors."""

    name = "snapshot"

    def __init__(self, path: Path):
        self.path = path

    def prepare(self, model, ctx):
        return model

    def finalize(self, model, ctx):
        save_file({n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  self.path)
        return model

    def report(self):
        return {}


def _second_stage(which: str):
    if which == "lora":
        from baselines.lora import LoRAStage
        from pat.lora import LoRAConfig

        return LoRAStage(LoRAConfig(rank=4, dropout=0.0))
    from pat.config import PATConfig
    from pat.method import PATStage

    return PATStage(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0, milestone_frac=0.5))


def _run(root: Path, which: str, name: str, snapshot: Path) -> dict:
    return run_pipeline(tiny_model("llama-gqa-tied"), [Snapshot(snapshot), _second_stage(which)],
                        budget(steps=6, micro_batch=2, lr=5e-3), str(root / "alpaca.jsonl"), root / name,
                        tokenizer=CharTokenizer(), progress=False, checkpoint_every=0, save_finalized=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, cpu_env: bool) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port",
           str(_free_port()), __file__, str(root)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("which", ["lora", "pat"])
def test_two_processes_match_one(tmp_path_factory, which):
    root = _two_process_runs(tmp_path_factory)
    single = _run(root, which, f"single-{which}", root / f"single-{which}.safetensors")
    multi = json.loads((root / f"multi-{which}" / "run.json").read_text())
    assert multi["world_size"] == 2 and multi["accumulation"] == 1 and single["accumulation"] == 2
    assert multi["distributed_type"] == "DistributedType.MULTI_CPU"
    worst = max(abs(a - b) for a, b in zip(multi['losses'], single['losses']))
    print(f"{which}: max |loss diff| 2 processes vs 1 = {worst:.2e}")
    assert multi["losses"] == pytest.approx(single["losses"], abs=LOSS_TOL)
    r0, r1 = (load_file(root / f"multi-{which}-rank{r}.safetensors") for r in (0, 1))
    ref = load_file(root / f"single-{which}.safetensors")
    assert set(r0) == set(r1) == set(ref) and any("lora_B" in k for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # shared state identical on every process, bit for bit
        torch.testing.assert_close(r0[k], ref[k], **PARAM_TOL)
    print(f"{which}: max |param diff| = {max(float((r0[k] - ref[k]).abs().max()) for k in r0):.2e}")
    if which == "pat":
        mask = next(k for k in r0 if "pat_mask" in k)
        assert torch.equal(r0[mask] > 0, ref[mask] > 0)
        assert multi["stages"]["1-pat"]["active_at_s0"] == single["stages"]["1-pat"]["active_at_s0"]


_ROOT: list[Path] = []


def _two_process_runs(tmp_path_factory) -> Path:
    """One ``accelerate launch`` for both parametrizations (its start-up dominates the time)."""
    if not _ROOT:
        root = tmp_path_factory.mktemp("multiprocess")
        write_alpaca(root / "alpaca.jsonl")
        p = _launch(root, cpu_env=True)
        assert p.returncode == 0, p.stderr[-3000:]
        _ROOT.append(root)
    return _ROOT[0]


def test_launch_without_accelerate_use_cpu_fails_naming_the_variable(tmp_path):
    """Without ACCELERATE_USE_CPU=1 on a CPU machine each process would train alone: the trainer refuses."""
    write_alpaca(tmp_path / "alpaca.jsonl")
    p = _launch(tmp_path, cpu_env=False)
    assert p.returncode != 0
    assert "WORLD_SIZE=2 but accelerate runs a single process" in p.stderr and "ACCELERATE_USE_CPU=1" in p.stderr
    assert not list(tmp_path.glob("multi-*/run.json"))


FSDP2_BUDGET = {"steps": 6, "micro_batch": 2, "lr": 5e-3, "warmup_steps": 0, "schedule": "constant"}


def _fsdp2_worker(root: Path) -> None:
    """Train PAT under ``fully_shard`` on 2 gloo processes; rank 0 writes losses, active count and target."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from bench.harness.data import IGNORE_INDEX, global_batch_indices, load_instruction_data
    from pat.stage import RunContext
    from bench.harness.train import _lm_loss_sum, collect_trainable, make_optimizer
    from pat import get_mask, hsms

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    b = budget(**FSDP2_BUDGET)
    model, st = tiny_model("llama-gqa-tied"), _second_stage("pat")
    torch.manual_seed(b.seed)  # as run_pipeline: the stages' prepare draws from this seed
    model = st.prepare(model, RunContext(total_steps=b.total_steps, extra={
        "pipeline": ["pat"], "stage_index": 0, "phase": "prepare"}))
    collect_trainable(model, [st], b.lr)
    for layer in model.get_base_model().model.layers:
        fully_shard(layer)  # default reshard_after_forward=True: a layer's weights are whole only inside it
    fully_shard(model)
    groups, named = collect_trainable(model, [st], b.lr)  # the sharded (DTensor) parameters
    assert all(type(p).__name__ == "DTensor" for _, p in named)
    opt = make_optimizer(groups, b)
    data = load_instruction_data(str(root / "alpaca.jsonl"), CharTokenizer(), b.seq_len, None, b.data_seed, None)
    accum, losses = b.global_batch // (world * b.micro_batch), []
    model.train()
    for step in range(b.total_steps):
        idx = global_batch_indices(len(data), step, b.global_batch, b.data_seed)
        n_resp = sum(sum(v != IGNORE_INDEX for v in data.labels[i][1:]) for i in idx)
        mine = idx[rank * b.global_batch // world:(rank + 1) * b.global_batch // world]
        lm_sum = torch.zeros(())
        for k in range(accum):
            lm = _lm_loss_sum(model, data.collate(mine[k * b.micro_batch:(k + 1) * b.micro_batch])) / n_resp
            assert all(type(h.L0).__name__ == "DTensor" for h in hsms(model) if h.L0 is not None)  # resharded
            (lm * world + st.extra_loss(model) / accum).backward()  # FSDP averages over processes
            lm_sum += lm.detach()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], b.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        st.on_optimizer_step(model, step + 1)
        dist.all_reduce(lm_sum)
        losses.append(float(lm_sum))
    mask = get_mask(model)
    active = int(mask.active().sum())  # gathers the sharded proxy: a collective, every process calls it
    small = st.finalize(model, RunContext(total_steps=b.total_steps, extra={"heldout_ids": tiny_batch(seed=7)}))
    if rank == 0:
        rep = st.report()
        with torch.no_grad():
            save_file({"logits": small(input_ids=tiny_batch(seed=7)).logits.contiguous()}, root / "fsdp2-logits.st")
        (root / "fsdp2.json").write_text(json.dumps({
            "losses": losses, "active": active, "target": mask.target, "world": world,
            "class": f"{type(small).__module__}.{type(small).__name__}", "hidden_size": small.config.hidden_size,
            "merge_diff": rep["merge_max_abs_logit_diff"], "kept": rep["kept_channels"],
            "sharded_after": all(type(p).__name__ == "DTensor" for _, p in named)}))
    else:
        assert small is None  # the merge runs on the main process only


def test_pat_under_fsdp2_fully_shard_matches_one_process(tmp_path):
    write_alpaca(tmp_path / "alpaca.jsonl")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path), "fsdp2"]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    sharded = json.loads((tmp_path / "fsdp2.json").read_text())
    single = run_pipeline(tiny_model("llama-gqa-tied"), [_second_stage("pat")], budget(**FSDP2_BUDGET),
                          str(tmp_path / "alpaca.jsonl"), tmp_path / "single", tokenizer=CharTokenizer(),
                          progress=False, checkpoint_every=0, save_finalized=False)
    assert sharded["world"] == 2 and single["accumulation"] == 2
    print(f"fsdp2: max |loss diff| = {max(abs(a - b) for a, b in zip(sharded['losses'], single['losses'])):.2e}")
    assert sharded["losses"] == pytest.approx(single["losses"], abs=LOSS_TOL)
    assert sharded["active"] == sharded["target"] == single["stages"]["0-pat"]["target_keep"]
    # finalize after sharded training: the full state gathered on rank 0, merged there into a stock smaller model
    ref = single["_model"]
    assert sharded["class"] == f"{type(ref).__module__}.{type(ref).__name__}"
    assert sharded["class"].startswith("transformers.") and sharded["sharded_after"]
    assert sharded["hidden_size"] == ref.config.hidden_size == sharded["target"]
    assert sharded["kept"] == single["stages"]["0-pat"]["kept_channels"]
    assert sharded["merge_diff"] <= 1e-4
    with torch.no_grad():
        want = ref(input_ids=tiny_batch(seed=7)).logits
    diff = float((load_file(tmp_path / "fsdp2-logits.st")["logits"] - want).abs().max())
    print(f"fsdp2: finalized model, max |logit diff| vs one process = {diff:.2e}; "
          f"merge check {sharded['merge_diff']:.2e}")
    assert diff <= 1e-4


if __name__ == "__main__":  # the launched workers
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    if sys.argv[2:] == ["fsdp2"]:
        _fsdp2_worker(out)
    else:
        rank = os.environ.get("RANK", "0")
        for which in ("lora", "pat"):
            _run(out, which, f"multi-{which}", out / f"multi-{which}-rank{rank}.safetensors")
