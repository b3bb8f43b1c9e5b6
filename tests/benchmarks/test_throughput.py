"""Throughput protocol (bench.harness.throughput): record structure, analytic MACs, refusal of unfinalized models,
the CLI's table + JSON line; and pytest-benchmark microbenchmarks of prefill on SmolLM2 dense vs PAT-25 %.

The microbenchmarks run with ``tox -e bench`` (``--benchmark-only``); the default test run skips them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bench.harness import throughput as T
from pat.arch import count_params
from tests.tiny import tiny_model

PAT25_DIR = Path(os.environ.get(
    "PAT_BENCH_PAT25_MODEL",
    Path(__file__).resolve().parents[2] / "runs" / "bench" / "ci" / "smollm2-135m--pat--r0.25--s0" / "model"))


def test_record_structure_and_analytic_macs():
    model = tiny_model("llama-gqa-tied")  # hidden 48, 4 heads x 12, 2 KV heads, intermediate 96, 2 layers, vocab 128
    rec = T.measure(model, batch_sizes=[1, 2], context=16, decode_tokens=3, repeats=3, warmup=1)
    d, q, kv, f, L, V = 48, 48, 24, 96, 2, 128
    linear = L * (d * q + 2 * d * kv + q * d + 3 * d * f) + d * V  # the tied LM head is still one nn.Linear
    assert rec["macs"]["linear_macs_per_token"] == linear
    assert rec["macs"]["attention_macs_per_sequence"] == L * 2 * 16 * 16 * q
    assert rec["macs"]["prefill_macs_per_sequence"] == 16 * linear + L * 2 * 16 * 16 * q
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    assert rec["memory"]["weights_bytes"] == 4 * rec["params"]
    assert [p["batch_size"] for p in rec["prefill"]] == [1, 2]
    for p in rec["prefill"]:
        assert len(p["times_s"]) == 3 and p["median_s"] == sorted(p["times_s"])[1]
    assert rec["decode"]["new_tokens"] == 3 and rec["decode"]["decode_tokens_per_s"] > 0
    assert rec["device"] == {**rec["device"], "kind": "cpu", "comparable": False}
    assert "not comparable" in rec["device"]["note"]
    assert rec["host_load"]["cpu_count"] == os.cpu_count() and rec["host_load"]["loadavg_1min_before"] >= 0


def test_smaller_model_has_fewer_macs_and_weights():
    big, small = tiny_model("llama-mha"), tiny_model("llama-mha", hidden_size=32,
                                                     head_dim=12)  # PAT-style: d shrinks, heads keep
    rb = T.measure(big, [1], context=8, decode_tokens=0, repeats=1, warmup=0)
    rs = T.measure(small, [1], context=8, decode_tokens=0, repeats=1, warmup=0)
    assert rs["memory"]["weights_bytes"] < rb["memory"]["weights_bytes"]
    assert rs["macs"]["linear_macs_per_token"] < rb["macs"]["linear_macs_per_token"]
    assert "decode" not in rs


def test_refuses_models_that_are_not_finalized():
    from pat.lora import LoRAConfig, apply_lora

    with pytest.raises(ValueError, match="peft wrapper; finalize"):
        T.measure(apply_lora(tiny_model("llama-mha"), LoRAConfig(rank=2)), [1], context=4, repeats=1, warmup=0)


def test_cli_prints_a_table_then_one_json_line(tmp_path, capsys, monkeypatch):
    from bench.harness.modelsrc import build_random_model

    d = build_random_model({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2}, tmp_path)
    assert T.main(["--model", str(d), "--batch-sizes", "1,2", "--context", "8", "--decode-tokens", "2",
                   "--repeats", "2", "--warmup", "0", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "params", "weights"] and "CPU figures" in lines[-2]
    rec = json.loads(lines[-1])["throughput"][str(d)]
    assert [p["batch_size"] for p in rec["prefill"]] == [1, 2] and rec["device"]["kind"] == "cpu"


# ---------------------------------------------------------------------------------------------- microbenchmarks
def _prefill(model, batch=1, context=128):
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    return lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1)


@pytest.mark.slow
def test_bench_prefill_smollm2_dense(benchmark):
    from pat.models import load

    model, _ = load("smollm2-135m")
    with torch.no_grad():
        benchmark.pedantic(_prefill(model), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(params=count_params(model), device="cpu", comparable=False)


@pytest.mark.slow
@pytest.mark.skipif(not (PAT25_DIR / "config.json").exists(),
                    reason="needs a finalized PAT-25 % SmolLM2 (python -m bench.run --suite ci, or "
                           "PAT_BENCH_PAT25_MODEL=DIR)")
def test_bench_prefill_smollm2_pat25(benchmark):
    from pat.models import load

    model, _ = load(str(PAT25_DIR))
    T.check_finalized(model)
    with torch.no_grad():
        benchmark.pedantic(_prefill(model), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(params=count_params(model), hidden_size=model.config.hidden_size, device="cpu",
                                comparable=False)
