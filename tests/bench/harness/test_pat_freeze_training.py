"""PAT's freeze point through the harness trainer: the proxy's optimizer state is dropped at the snap, and a run
resumed after it keeps the selection and the hard gate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pat import PATConfig, PATStage
from tests.bench.harness.test_train import budget, run


def test_harness_drops_the_proxy_state_at_the_snap_and_resume_keeps_hard_gates(tmp_path):
    # budget of 8 steps: s0 = round(8/3) = 3, freeze at schedule step int(2.4) = 2, which the gate (one step behind)
    # reaches after step 3; stop there, checkpoint, resume
    def stage():
        return PATStage(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0))

    b = budget(steps=8, lr=5e-3)
    full = run(tmp_path, stages=[stage()], b=b, name="full", checkpoint_every=0, save_finalized=False)
    first = stage()
    run(tmp_path, stages=[first], b=b, name="cut", checkpoint_every=3, stop_after=3, save_finalized=False)
    root = tmp_path / "cut" / "checkpoint"
    d = root / json.loads((root / "latest.json").read_text())["dir"]
    opt = torch.load(d / "optimizer.bin", weights_only=True)
    n_params = sum(len(g["params"]) for g in opt["param_groups"])
    mask_group = next(g for g in opt["param_groups"] if g["name"] == "pat_mask")
    assert mask_group["params"][0] not in opt["state"]  # the proxy's Adam state is gone ...
    assert len(opt["state"]) == n_params - 1  # ... and only it
    stages = load_file(d / "stages.safetensors")
    snapped = next(k for k in stages if k.endswith("pat_mask.snapped"))
    assert bool(stages[snapped]) and int(stages[snapped.replace("snapped", "snap_step")]) == 3
    resumed = stage()
    rest = run(tmp_path, stages=[resumed], b=b, name="cut", checkpoint_every=3, save_finalized=False)
    rep = resumed.report()
    assert rep["selection"]["freeze_step"] == 3 == full["stages"]["0-pat"]["selection"]["freeze_step"]
    assert rep["kept_channels"] == full["stages"]["0-pat"]["kept_channels"]
    assert rest["losses"] == pytest.approx(full["losses"], abs=1e-5)
