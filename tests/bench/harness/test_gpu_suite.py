"""The gpu suite (bench/suites/gpu.toml), the ``--set`` override mechanism, and the pack / run scripts of
scripts/gpu: packing into parts, reassembly with checksums, the run step's dry run, and a CPU smoke of the suite."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness.suites import SuiteError, apply_overrides, load_suite, validate

ROOT = Path(__file__).resolve().parents[3]
TASKS = {"boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", ROOT / "scripts" / "gpu" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_suite_is_the_paper_claim_test_on_one_gpu():
    from bench.harness.budget import TrainBudget
    from pat.config import PATConfig

    suite = load_suite("gpu")
    runs = validate(suite)
    assert sorted(r.pipeline_id for r in runs) == sorted(
        ["dense", "lora", "pat", "pat_taylor", "llm_pruner+lora", "slicegpt+lora"])
    assert {r.model for r in runs} == {"smollm2-135m"}
    assert {r.ratio for r in runs if r.pipeline_id not in ("dense", "lora")} == {0.25}
    for r in runs:
        if not r.trains:
            continue
        b = TrainBudget.from_dict(r.budget)
        assert b.precision == "bf16"
        if r.pipeline[0] in ("pat", "pat_taylor"):
            args = {k: v for k, v in r.stage_args[r.pipeline[0]].items() if k not in ("stage", "display")}
            assert PATConfig(**args).milestone(b.total_steps) >= 1000
    assert set(suite.eval["tasks"]) == TASKS and not suite.eval.get("limit")  # full sets
    assert suite.perplexity["datasets"] == ["wikitext2"] and not suite.perplexity.get("max_tokens")
    assert suite.throughput["context"] == 128
    assert min(suite.throughput["batch_sizes"]) == 1 and max(suite.throughput["batch_sizes"]) == 256
    assert suite.stage_args["slicegpt"].get("target") == "params"  # size-matched to PAT's parameter count
    assert suite.stage_args["pat_taylor"]["snap_by"] == "taylor"


def test_gpu_suite_dry_run_lists_its_six_runs(capsys):
    from bench.run import main

    assert main(["--suite", "gpu", "--dry-run", "--out", "/nonexistent/results"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) == 6 and all("[todo]" in x for x in lines)


def test_set_overrides_values_wildcards_and_errors():
    data = {"suite": {"name": "x"}, "budget": {"a": {"steps": 10}, "b": {"steps": 20}}, "eval": {"limit": 0}}
    out = apply_overrides(data, ["budget.*.steps=2", 'budget.a.precision="fp32"', "eval.limit=5",
                                 "throughput.batch_sizes=[1, 2]", "stages.slicegpt.target=params"])
    assert out["budget"] == {"a": {"steps": 2, "precision": "fp32"}, "b": {"steps": 2}}
    assert out["eval"]["limit"] == 5 and out["throughput"]["batch_sizes"] == [1, 2]
    assert out["stages"]["slicegpt"]["target"] == "params"  # a bare word is a string
    assert data["budget"]["a"]["steps"] == 10  # the input is not modified
    with pytest.raises(SuiteError, match="--set 'eval.limit.x=1': eval.limit is a value"):
        apply_overrides(data, ["eval.limit.x=1"])
    with pytest.raises(SuiteError, match="expected KEY=VALUE"):
        apply_overrides(data, ["eval.limit"])
    with pytest.raises(SuiteError, match=r"unknown field\(s\) \['stepz'\]"):
        validate(load_suite("gpu", ["budget.*.stepz=2"]))


# ------------------------------------------------------------------------------------------- pack / run
def _pack(tmp_path: Path, payload: bytes, part_bytes: int) -> Path:
    fake = tmp_path / "fake_model.bin"
    fake.write_bytes(payload)
    pack = tmp_path / "pack"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/gpu/pack.py"), "--out", str(pack), "--no-download",
                        "--extra", str(fake), "--part-mib", str(part_bytes / 2 ** 20)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "call 1: carry" in r.stdout
    return pack


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts/gpu/run.py"), *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def test_pack_splits_and_run_reassembles_with_checksums(tmp_path):
    payload = os.urandom(300_000)
    pack = _pack(tmp_path, payload, 64 * 1024)
    index = json.loads((pack / "parts" / "PARTS.json").read_text())
    assert len(index["parts"]) >= 5 and all(p["bytes"] <= 64 * 1024 for p in index["parts"])
    # parts arrive over several calls: receive lists what is missing, all refuses to start without them
    last = pack / "parts" / index["parts"][-1]["name"]
    held = last.read_bytes()
    last.unlink()
    r = _run("receive", "--pack", str(pack))
    assert r.returncode == 0 and f"missing: {last.name}" in r.stdout, r.stdout + r.stderr
    r = _run("all", "--pack", str(pack), "--dry-run")
    assert r.returncode == 4 and last.name in r.stderr
    last.write_bytes(held)
    r = _run("assemble", "--pack", str(pack))
    assert r.returncode == 0, r.stderr
    assert (pack / "unpacked" / "pack" / "extra" / "fake_model.bin").read_bytes() == payload
    # a corrupted part is named, and nothing is extracted from it
    first = pack / "parts" / index["parts"][0]["name"]
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF
    first.write_bytes(bytes(data))
    r = _run("assemble", "--pack", str(pack))
    assert r.returncode == 3 and f"part {first.name}: sha256/size mismatch" in r.stderr


def test_run_dry_run_prints_the_whole_chain(tmp_path):
    pack = _pack(tmp_path, b"x" * 1000, 512)
    r = _run("all", "--pack", str(pack), "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "-m bench.run --suite gpu" in out and "--device cuda" in out and "--jobs 6" in out
    assert "--retime" in out
    assert "-m bench.report --suite gpu" in out
    assert ("gpu_fsdp_check" in out) == any((ROOT / "scripts").glob("gpu_fsdp_check.*"))
    if "gpu_fsdp_check" in out:  # called as the script expects: check OUT --processes N
        line = next(x for x in out.splitlines() if "gpu_fsdp_check" in x)
        assert " check " in line and "fsdp_check --processes " in line
    smoke = _run("all", "--pack", str(pack), "--dry-run", "--cpu-smoke").stdout
    assert "--set budget.*.steps=2" in smoke and "--set eval.limit=5" in smoke
    assert "--device" not in smoke and "--jobs" not in smoke


def test_carry_plan_keeps_each_call_under_the_upload_limit():
    pack = _script("pack")
    index = {"parts": [{"name": f"pack.tar.{i:03d}", "bytes": 60 * 2 ** 20} for i in range(5)]}
    plan = pack.carry_plan(pack.DEFAULT_OUT, index, 62 * 2 ** 20)
    assert len(plan) == 5 and all(c[0].endswith("PARTS.json") and len(c) == 2 for c in plan)


# --------------------------------------------------------------------------------------- CPU smoke


@pytest.mark.slow
def test_gpu_suite_cpu_smoke_runs_every_cell_and_reports(tmp_path):
    sets = _script("run").SMOKE_SETS
    out, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, "-m", "bench.run", "--suite", "gpu", "--out", str(out), "--work-dir",
           str(work), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(recs) == 6 and all(x["status"] == "success" for x in recs)
    for x in recs:
        assert set(x["metrics"]["tasks"]) == TASKS and all(t["n"] == 5 for t in x["metrics"]["tasks"].values())
        assert x["metrics"]["perplexity"]["wikitext2"]
        if x["spec"]["pipeline"]:
            assert x["train"]["steps_done"] == 2
    r = subprocess.run([sys.executable, "-m", "bench.report", "--suite", "gpu", "--results", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "TABLES.md").exists()
