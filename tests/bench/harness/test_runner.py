"""The grid runner on a tiny random model saved to disk: results, failures recorded, resume after a kill,
tune-then-prune reusing the finished LoRA run, the paper suite's missing-model message.

Stages are injected through the registry (``bench.harness.registry.STAGES``), so these tests exercise the runner
and the real trainer without depending on a particular method.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pat.stage import StageDefaults
from pathlib import Path

import pytest
import torch.nn as nn

from bench.harness import registry
from bench.harness import results as R
from bench.harness.runner import RunnerOptions, ratio_kwarg, run_suite
from bench.harness.suites import SuiteError, expand, parse_suite, validate

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="needs PAT_DATA_DIR (Alpaca)")


class NormTuneStage(StageDefaults):
    """A real, minimal method: trains the final norm gain only; finalize returns the model unchanged."""

    name = "normtune"

    def __init__(self, sleep: float = 0.0):
        self.sleep = float(os.environ.get("TEST_STAGE_SLEEP", sleep))

    def prepare(self, model: nn.Module, ctx) -> nn.Module:
        time.sleep(self.sleep)
        for p in model.parameters():
            p.requires_grad_(False)
        model.model.norm.weight.requires_grad_(True)
        return model

    def param_groups(self, model, lr):
        return [{"name": "norm", "params": [model.model.norm.weight], "lr": lr}]

    def finalize(self, model, ctx):
        return model

    def report(self):
        return {"kind": "normtune"}


class BoomStage(NormTuneStage):
    name = "boom"

    def prepare(self, model, ctx):
        raise RuntimeError("boom: this stage always fails in prepare")


class FakePruner(NormTuneStage):
    """Records where the trainer/runner call it; takes the run's ratio through its ``ratio`` argument."""

    name = "fakeprune"

    def __init__(self, ratio: float = 0.0):
        super().__init__()
        self.ratio, self.calls = ratio, []

    def prepare(self, model, ctx):
        self.calls.append(("prepare", ctx.extra["stage_index"], list(ctx.extra["pipeline"])))
        return model

    def param_groups(self, model, lr):
        return []

    def finalize(self, model, ctx):
        self.calls.append(("finalize", ctx.extra["stage_index"], type(model).__name__))
        return model

    def report(self):
        return {"ratio": self.ratio, "calls": self.calls}


STAGES = {"normtune": "tests.bench.harness.test_runner:NormTuneStage",
          "boom": "tests.bench.harness.test_runner:BoomStage",
          "fakeprune": "tests.bench.harness.test_runner:FakePruner"}


def suite_dict(pipelines, ratios=(0.0,), reuse=False) -> dict:
    return {
        "suite": {"name": "rt", "seeds": [0], "train_data": "alpaca", "reuse_prefix": reuse},
        "throughput": {"enabled": True, "batch_sizes": [1], "context": 8, "decode_tokens": 2, "repeats": 1,
                       "warmup": 0},
        "budget": {"b": {"steps": 2, "global_batch": 2, "micro_batch": 2, "seq_len": 256, "subset_size": 4,
                         "lr": 1e-3}},
        "models": {"tiny": {"random": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}}},
        "grid": [{"models": ["tiny"], "ratios": list(ratios), "pipelines": pipelines, "budget": "b"}],
    }


@pytest.fixture
def env(tmp_path, monkeypatch):
    for k, v in STAGES.items():
        monkeypatch.setitem(registry.STAGES, k, v)
    monkeypatch.setenv("PAT_CACHE_DIR", str(tmp_path / "cache"))
    return RunnerOptions(out_dir=tmp_path / "out", work_dir=tmp_path / "work", progress=False, checkpoint_every=1)


def _run(d, opts):
    suite = parse_suite(d)
    runs = validate(suite)
    return run_suite(suite, runs, opts), runs


def test_runs_write_complete_records_and_failures_do_not_stop_the_grid(env):
    counts, runs = _run(suite_dict([[], ["boom"], ["normtune"]]), env)
    assert counts == {"done": 2, "skipped": 0, "failed": 1, "total": 3}
    recs = {r["run_id"]: r for r in R.load_results(env.out_dir)}
    assert set(recs) == {r.run_id for r in runs}
    for r in recs.values():
        R.validate_record(r)
    failed = recs["tiny--boom--r0.00--s0"]
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert "boom: this stage always fails" in failed["error"]["message"]
    assert "Traceback" in failed["error"]["traceback"]
    tuned = recs["tiny--normtune--r0.00--s0"]
    assert tuned["train"]["steps_done"] == 2 and tuned["params"]["trainable"] == 32
    assert tuned["spec"]["budget"]["seed"] == 0 and tuned["spec"]["budget"]["steps"] == 2
    dense = recs["tiny--dense--r0.00--s0"]
    assert dense["params"]["total"] == dense["params"]["dense_total"]
    assert dense["params"]["widths"]["hidden_size"] == 32
    tp = dense["throughput"]
    assert tp["device"]["kind"] == "cpu" and tp["device"]["comparable"] is False and tp["prefill"][0]["median_s"] > 0
    assert re.fullmatch(r"[0-9a-f]{40}", dense["provenance"]["git"]["sha"])
    assert len(dense["provenance"]["data_sha256"]["alpaca"]) == 64

    # rerun: finished runs are skipped, the failed one is retried (and fails again)
    counts2, _ = _run(suite_dict([[], ["boom"], ["normtune"]]), env)
    assert counts2 == {"done": 0, "skipped": 2, "failed": 1, "total": 3}
    env.retry_failed = False
    counts3, _ = _run(suite_dict([[], ["boom"], ["normtune"]]), env)
    assert counts3["skipped"] == 3


def test_changed_measurement_settings_rerun_finished_runs(env):
    d = suite_dict([[]])
    assert _run(d, env)[0]["done"] == 1
    rec = R.read_result(R.result_path(env.out_dir, "tiny--dense--r0.00--s0"))
    assert rec["protocol"]["throughput"]["batch_sizes"] == [1]
    assert _run(d, env)[0]["skipped"] == 1
    d["throughput"]["batch_sizes"] = [1, 2]  # same run spec, other measurement: the old record no longer applies
    assert _run(d, env)[0] == {"done": 1, "skipped": 0, "failed": 0, "total": 1}
    rec = R.read_result(R.result_path(env.out_dir, "tiny--dense--r0.00--s0"))
    assert [p["batch_size"] for p in rec["throughput"]["prefill"]] == [1, 2]


def test_retime_replaces_only_the_throughput_of_finished_runs(env):
    from bench.harness.runner import retime_suite

    d = suite_dict([[], ["normtune"], ["boom"]])
    _run(d, env)
    before = {r["run_id"]: r for r in R.load_results(env.out_dir)}
    suite = parse_suite(d)
    counts = retime_suite(suite, validate(suite), env)
    assert counts == {"retimed": 2, "missing": 0, "failed": 0, "not_finished": 1, "total": 3}
    after = {r["run_id"]: r for r in R.load_results(env.out_dir)}
    for rid in ("tiny--dense--r0.00--s0", "tiny--normtune--r0.00--s0"):
        old, new = before[rid], after[rid]
        expect = old["model_source"] if "dense" in rid else str(env.work_dir / "rt" / rid / "model")
        assert new["throughput"]["retimed"]["model_dir"] == expect
        assert new["throughput"]["params"] == old["throughput"]["params"]
        unchanged = {k: v for k, v in old.items() if k != "throughput"}
        assert {k: v for k, v in new.items() if k != "throughput"} == unchanged
    assert after["tiny--boom--r0.00--s0"] == before["tiny--boom--r0.00--s0"]

    # retiming with other throughput settings records them, so a later run of the suite does not redo the runs
    d["throughput"].update(batch_sizes=[2], threads=1)
    suite = parse_suite(d)
    assert retime_suite(suite, validate(suite), env)["retimed"] == 2
    rec = R.read_result(R.result_path(env.out_dir, "tiny--normtune--r0.00--s0"))
    assert rec["protocol"]["throughput"]["threads"] == 1 and rec["throughput"]["device"]["threads"] == 1
    assert [p["batch_size"] for p in rec["throughput"]["prefill"]] == [2]
    assert _run(d, env)[0]["skipped"] == 2


def test_a_named_variant_runs_its_stage_with_its_own_args(env):
    d = suite_dict([["fakeprune"], ["fp_half"]], ratios=(0.25,))
    d["stages"] = {"fp_half": {"stage": "fakeprune", "display": "Fake (half)"}}
    counts, runs = _run(d, env)
    assert counts["done"] == 2 and [r.run_id for r in runs] == ["tiny--fakeprune--r0.25--s0",
                                                                "tiny--fp_half--r0.25--s0"]
    rec = R.read_result(R.result_path(env.out_dir, "tiny--fp_half--r0.25--s0"))
    assert rec["train"]["stages"]["0-fakeprune"]["ratio"] == 0.25  # built as FakePruner, with the run's ratio


def test_resume_after_a_killed_suite(env, tmp_path):
    """SIGKILL the runner while its second run trains; the rerun skips the first and completes the rest."""
    d = suite_dict([[], ["normtune"]])
    spec = tmp_path / "suite.json"
    spec.write_text(json.dumps(d))
    code = (
        "import json, sys; from pathlib import Path\n"
        "from bench.harness import registry\n"
        f"registry.STAGES.update({STAGES!r})\n"
        "from bench.harness.suites import parse_suite, validate\n"
        "from bench.harness.runner import RunnerOptions, run_suite\n"
        "s = parse_suite(json.loads(Path(sys.argv[1]).read_text()))\n"
        "run_suite(s, validate(s), RunnerOptions(out_dir=Path(sys.argv[2]), work_dir=Path(sys.argv[3]), "
        "progress=False))\n"
    )
    envvars = dict(os.environ, TEST_STAGE_SLEEP="120", PAT_CACHE_DIR=os.environ["PAT_CACHE_DIR"])
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec), str(env.out_dir), str(env.work_dir)], cwd=REPO,
                            env=envvars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = env.out_dir / "tiny--dense--r0.00--s0.json"
    try:
        deadline = time.time() + 300
        while not first.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        time.sleep(1.0)  # now inside the second run (its stage sleeps 120 s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (env.out_dir / "tiny--normtune--r0.00--s0.json").exists()
    assert not list(env.out_dir.glob(".*.tmp"))
    mtime = first.stat().st_mtime_ns
    counts, _ = _run(d, env)
    assert counts == {"done": 1, "skipped": 1, "failed": 0, "total": 2}
    assert first.stat().st_mtime_ns == mtime  # the finished run was not redone
    assert R.is_finished(env.out_dir, "tiny--normtune--r0.00--s0")


def test_tune_then_prune_reuses_the_finished_tuning_run(env):
    d = suite_dict([["normtune"]], reuse=True)
    d["grid"].append({"models": ["tiny"], "ratios": [0.25], "pipelines": [["normtune", "fakeprune"]], "budget": "b"})
    counts, runs = _run(d, env)
    assert counts["done"] == 2
    rec = R.read_result(R.result_path(env.out_dir, "tiny--normtune+fakeprune--r0.25--s0"))
    assert rec["train"]["reused_prefix"] == "tiny--normtune--r0.00--s0"
    assert rec["train"]["prefix_train"]["steps_done"] == 2
    rep = rec["train"]["stages"]["1-fakeprune"]
    assert rep["ratio"] == 0.25  # the run's ratio reached the stage through its `ratio` argument
    assert rep["calls"] == [["prepare", 1, ["normtune", "fakeprune"]], ["finalize", 1, "LlamaForCausalLM"]]
    assert not (env.work_dir / "rt" / "tiny--normtune+fakeprune--r0.25--s0" / "run.json").exists()  # no 2nd training
    saved = env.work_dir / "rt" / "tiny--normtune+fakeprune--r0.25--s0" / "model"
    assert rec["train"]["model_dir"] == str(saved) and (saved / "config.json").exists()  # the pruned model is kept
    assert rec["params"]["trainable"] == 32


def test_ratio_reaches_stages_through_their_own_argument_names():
    assert ratio_kwarg(FakePruner) == "ratio"
    assert ratio_kwarg(NormTuneStage) is None
    pat_method = pytest.importorskip("pat.method")
    assert ratio_kwarg(pat_method.PATStage) == "prune_ratio"  # via its PATConfig dataclass
    assert ratio_kwarg(registry.stage_class("lora")) is None


def test_paper_suite_without_models_stops_before_any_work(tmp_path, monkeypatch):
    from bench.harness.modelsrc import MissingModelsError, resolve_models
    from bench.harness.suites import load_suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for k in list(os.environ):
        if k.startswith("PAT_MODEL_"):
            monkeypatch.delenv(k)
    suite = load_suite("paper")
    with pytest.raises(MissingModelsError) as e:
        resolve_models(suite.models, sorted(suite.models), {}, "paper", suite.runs_here)
    msg = str(e.value)
    assert "5 model(s) not found, nothing was run" in msg
    assert "--model-path llama2-7b=DIR" in msg and "export PAT_MODEL_LLAMA2_7B=DIR" in msg
    assert "python -m bench.run --suite cpu" in msg
    # pointing at a directory through the env var resolves it
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text("{}")
    monkeypatch.setenv("PAT_MODEL_LLAMA2_7B", str(d))
    assert resolve_models(suite.models, ["llama2-7b"], {}, "paper") == {"llama2-7b": str(d)}
    with pytest.raises(MissingModelsError, match="--model-path gemma-2b=/nope: no config.json"):
        resolve_models(suite.models, ["gemma-2b"], {"gemma-2b": "/nope"}, "paper")


def test_bad_stage_arguments_fail_before_any_work(env):
    d = suite_dict([["normtune"]])
    d["stages"] = {"normtune": {"sleep": 0.0, "bogus_option": 3}}
    suite = parse_suite(d)
    with pytest.raises(ValueError,
                       match=r"run tiny--normtune--r0.00--s0: stage 'normtune' rejects its arguments .*bogus_option"):
        run_suite(suite, validate(suite), env)
    assert not env.out_dir.exists()


def test_a_stage_that_cannot_be_imported_is_named(env, monkeypatch):
    from bench.harness import registry, runner

    monkeypatch.setitem(registry.STAGES, "ghost", "no_such_module_anywhere:GhostStage")
    suite = parse_suite(suite_dict([["ghost"]]))
    with pytest.raises(runner.MissingPieceError, match=r"stage 'ghost' cannot be imported .*no_such_module_anywhere"):
        run_suite(suite, expand(suite), env)
    assert not env.out_dir.exists()  # nothing was run


@pytest.mark.integration
def test_smoke_suite_end_to_end_then_report(tmp_path, monkeypatch):
    """``python -m bench.run --suite smoke`` (tiny random Llama built to disk) then ``python -m bench.report``."""
    from bench.report import main as report_main
    from bench.run import main as run_main

    monkeypatch.setenv("PAT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "smoke"
    assert run_main(["--suite", "smoke", "--out", str(out), "--work-dir", str(tmp_path / "work"),
                     "--no-progress"]) == 0
    recs = {r["run_id"]: r for r in R.load_results(out)}
    assert set(recs) == {r.run_id for r in expand(parse_suite(__import__("tomllib").loads(
        (REPO / "bench" / "suites" / "smoke.toml").read_text())))}
    for r in recs.values():
        R.validate_record(r)
        assert r["status"] == "success", r.get("error")
    pat = recs["tiny-llama--pat--r0.25--s0"]
    assert pat["params"]["widths"]["hidden_size"] == 36 and pat["params"]["achieved_ratio"] > 0.2
    assert recs["tiny-llama--lora+llm_pruner--r0.25--s0"]["train"]["reused_prefix"] == "tiny-llama--lora--r0.00--s0"
    assert report_main(["--suite", "smoke", "--results", str(out)]) == 0
    assert "| 25 % | PAT | PAT |" in re.sub(r" {2,}", " ", (out / "TABLES.md").read_text())


def test_mask_probe_suite_records_pat_learning_curve(env):
    """``[suite] mask_probe = true``: a PAT run's record carries the probes (log-spaced steps before the freeze)."""
    d = suite_dict([["pat"]], ratios=(0.25,))
    d["suite"]["mask_probe"] = True
    d["budget"]["b"]["steps"] = 9
    d["stages"] = {"pat": {"hio_rank": 2, "lora_rank": 2}}
    counts, _ = _run(d, env)
    assert counts["done"] == 1
    rec = R.read_result(R.result_path(env.out_dir, "tiny--pat--r0.25--s0"))
    probes = rec["train"]["probes"]
    assert probes and probes[0]["step"] == 1 and all(p["step"] < 9 for p in probes)
    assert all(len(p["proxy_topn"]) == 24 and "jaccard_taylor_final" in p for p in probes)
    bad = suite_dict([[]])
    bad["suite"]["mask_probe"] = "yes"
    with pytest.raises(SuiteError, match=r"\[suite\].mask_probe = 'yes': expected true or false"):
        parse_suite(bad)
