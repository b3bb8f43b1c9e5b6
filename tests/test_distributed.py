"""Two CPU processes (torchrun, gloo) vs one process with the same global batch: same losses, same shared state.

The worker half of this file runs under ``python -m torch.distributed.run --nproc_per_node 2 tests/test_distributed.py
OUT``; every rank snapshots its trainable parameters (LoRA, HSMs, the shared mask proxy) right before finalize.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

if __name__ == "__main__":  # a torchrun worker: its script directory (tests/) must not shadow `baselines` with tests/baselines
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
from bench.harness.method import StageDefaults
from pathlib import Path

import pytest
import torch

from bench.harness.train import run_pipeline
from tests.test_train import ROOT, CharTokenizer, budget, write_alpaca
from tests.tiny import tiny_model


class Snapshot(StageDefaults):
    """First stage of the pipeline: its ``finalize`` sees the trained model and saves the trainable tensors."""

    name = "snapshot"

    def __init__(self, path: Path):
        self.path = path

    def prepare(self, model, ctx):
        return model

    def finalize(self, model, ctx):
        torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, self.path)
        return model

    def report(self):
        return {}


def _stages(snapshot: Path) -> list:
    from pat.config import PATConfig
    from pat.method import PATMethod

    pat = PATMethod(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0, milestone_frac=0.5))
    return [Snapshot(snapshot), pat]


def _run(out: Path, snapshot: Path) -> dict:
    return run_pipeline(tiny_model("llama-gqa-tied"), _stages(snapshot), budget(steps=6, micro_batch=2, lr=5e-3),
                        str(out.parent / "alpaca.jsonl"), out, tokenizer=CharTokenizer(), progress=False,
                        checkpoint_every=0, save_finalized=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_processes_match_one(tmp_path):
    pytest.importorskip("pat.method")
    write_alpaca(tmp_path / "alpaca.jsonl")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    single = _run(tmp_path / "single", tmp_path / "single.pt")
    import json

    multi = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert multi["world_size"] == 2 and multi["accumulation"] == 1 and single["accumulation"] == 2
    assert multi["losses"] == pytest.approx(single["losses"], abs=1e-4)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    ref = torch.load(tmp_path / "single.pt")
    assert set(r0) == set(r1) == set(ref) and any("mask" in k for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # shared state identical on every rank, bit for bit
        torch.testing.assert_close(r0[k], ref[k], atol=1e-4, rtol=1e-3)
    mask = next(k for k in r0 if "mask" in k)
    assert torch.equal(r0[mask] > 0, ref[mask] > 0)
    assert multi["stages"]["1-pat"]["active_at_s0"] == multi["stages"]["1-pat"]["target_keep"]


if __name__ == "__main__":  # the torchrun worker
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    _run(root / "multi", root / f"rank{os.environ.get('RANK', '0')}.pt")
