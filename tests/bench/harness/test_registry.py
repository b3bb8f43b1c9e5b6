"""The stage registry: names -> classes, resolved on first use; errors name the known stages."""

import subprocess
import sys
from pathlib import Path

import pytest

from baselines.lora import LoRAStage
from bench.harness.registry import STAGES, make_pipeline, make_stage, stage_class

REPO = Path(__file__).resolve().parents[3]


def test_registry_builds_stages_lazily():
    assert {"pat", "lora", "llm_pruner", "wanda_sp", "flap", "slicegpt"} <= set(STAGES)
    assert stage_class("lora") is LoRAStage and make_stage("lora", rank=8).cfg.rank == 8
    stages = make_pipeline(["lora"], {"lora": {"rank": 2, "dropout": 0.0}})
    assert isinstance(stages[0], LoRAStage) and stages[0].cfg.rank == 2
    with pytest.raises(ValueError, match="unknown stage 'nope'; known: .*lora"):
        stage_class("nope")
    with pytest.raises(ValueError, match="not in the pipeline"):
        make_pipeline(["lora"], {"pat": {}})
    with pytest.raises(ValueError, match="lora rank must be a positive integer"):
        make_stage("lora", rank=0)


def test_every_registered_stage_resolves_to_a_class_with_the_stage_hooks():
    for name in STAGES:
        cls = stage_class(name)
        assert all(callable(getattr(cls, h, None)) for h in ("prepare", "finalize", "param_groups", "report")), name


def test_importing_the_registry_imports_no_stage():
    code = ("import sys; import bench.harness.registry; "
            "bad = [m for m in ('torch', 'pat.method', 'baselines') if m in sys.modules]; assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
