"""Throughput and memory of finalized (physically smaller) models: the paper's protocol (pat-spec.md §11).

Measured per model:

* memory after load: parameter + buffer bytes, and on CUDA the allocator's bytes after loading with no tokens;
* prefill latency: time to the first token's logits for a batch at ``context`` tokens, over a batch-size sweep;
* decode tokens/s: greedy single-token steps with the KV cache after a prefill;
* parameters and MACs (analytic: linear MACs per token + attention-score MACs at ``context``).

Hygiene (nanoGPT/nanochat): warm-up iterations, ``torch.cuda.synchronize()`` around ``time.perf_counter()``, the
median of ``repeats``; the device is recorded and CPU figures carry ``comparable=False`` (they are not the paper's
A100 numbers). Only vanilla Hugging Face models are timed; a peft wrapper or a model with PAT modules attached is
refused, because masked models are not smaller.

CLI: ``python -m bench.harness.throughput --model smollm2-135m --model runs/pat-25/final`` prints a table, then
one JSON line last.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn as nn

from baselines.pruned_io import load_model
from pat.arch import count_params, decoder_layers, get_arch, get_module

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_finalized(model: nn.Module) -> None:
    """Refuse models that are not plain, physically pruned HF models (peft wrappers, PAT/HSM modules)."""
    if hasattr(model, "peft_config") or hasattr(model, "get_base_model"):
        raise ValueError("throughput: the model is a peft wrapper; finalize (merge) it first so the timed model is "
                         "the deployed one")
    foreign = sorted({type(m).__module__ for m in model.modules() if type(m).__module__.startswith(("pat.", "peft."))})
    if foreign:
        raise ValueError(f"throughput: the model still holds training-time modules from {foreign}; time only "
                         f"finalized models")


def memory_bytes(model: nn.Module) -> dict[str, Any]:
    """Weights + buffers in bytes; on CUDA also ``torch.cuda.memory_allocated`` (VRAM after load, no tokens)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    out: dict[str, Any] = {"weights_bytes": weights, "buffers_bytes": buffers}
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        _sync(dev)
        out["cuda_allocated_bytes"] = torch.cuda.memory_allocated(dev)
    return out


def macs(model: nn.Module, context: int) -> dict[str, int]:
    """Analytic multiply-accumulates of one sequence's prefill at ``context`` tokens.

    Linear MACs per token = the number of weights of every ``nn.Linear`` (LM head included, embeddings excluded);
    attention-score MACs per layer = ``2 * context^2 * q_width`` (QK^T and AV, full square; ``q_width`` = the
    layer's query projection output width, which pruned models may vary per layer).
    """
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    arch = get_arch(model)
    q_path = arch.attn_in[0]
    attn = sum(2 * context * context * get_module(layer, q_path).out_features for layer in decoder_layers(model, arch))
    return {"linear_macs_per_token": linear, "attention_macs_per_sequence": attn,
            "prefill_macs_per_sequence": linear * context + attn}


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def prefill_latency(model: nn.Module, batch: int, context: int, repeats: int, warmup: int, seed: int = 0) -> dict[str,
                                                                                                                  Any]:
    """Median seconds to the first token's logits for ``(batch, context)`` random token ids."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU on purpose (the same ids on every device), then moved
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=g, device="cpu").to(device)
    times = _timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), device, repeats, warmup)
    med = statistics.median(times)
    return {"batch_size": batch, "context": context, "median_s": med, "min_s": min(times), "times_s": times,
            "prefill_tokens_per_s": batch * context / med}


@torch.no_grad()
def decode_speed(model: nn.Module, batch: int, context: int, new_tokens: int, repeats: int, warmup: int,
                 seed: int = 0) -> dict[str, Any]:
    """Greedy decode tokens/s with the KV cache: ``new_tokens`` single-token steps after a ``context`` prefill."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU on purpose (the same ids on every device), then moved
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=g, device="cpu").to(device)

    # transformers 5.x renamed past_key_values -> cache; support both
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run() -> None:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        pkv, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **{key: pkv})
            pkv, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
        _sync(device)
        run.last = time.perf_counter() - t0  # type: ignore[attr-defined]

    times = []
    for i in range(warmup + repeats):
        run()
        if i >= warmup:
            times.append(run.last)  # type: ignore[attr-defined]
    med = statistics.median(times)
    return {"batch_size": batch, "context": context, "new_tokens": new_tokens, "median_s": med,
            "decode_tokens_per_s": batch * new_tokens / med}


def device_label(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "comparable": True}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "comparable": False, "note": "CPU figures; not comparable with the paper's A100 numbers"}


def measure(model: nn.Module, batch_sizes: list[int] = (1, 8), context: int = 128, decode_tokens: int = 16,
            repeats: int = 5, warmup: int = 1, seed: int = 0, threads: int | None = None, **_: Any) -> dict[str, Any]:
    """The full throughput record of one finalized model (see module docstring).

    Args:
        model: a vanilla HF causal LM, already on its device, in eval mode.
        batch_sizes: prefill batch-size sweep; an out-of-memory batch is recorded as ``{"oom": True}``.
        context: prefill length in tokens (paper: 128).
        decode_tokens: greedy steps timed for decode tokens/s (batch 1); 0 skips decode.
        threads: CPU threads for the timing (restored afterwards); ``None`` keeps torch's setting. On the 2-core VM
            of results/cpu one thread was steadier: identical architectures within 2 % at batch 1 and 4 (up to 20 %
            apart on two threads); batch 8 stayed noisy.
    Returns:
        JSON-ready dict: ``device``, ``memory``, ``params``, ``macs``, ``prefill`` (list), ``decode``.
    """
    check_finalized(model)
    model.eval()
    device = next(model.parameters()).device
    if threads and device.type == "cpu":
        before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return measure(model, batch_sizes, context, decode_tokens, repeats, warmup, seed)
        finally:
            torch.set_num_threads(before)
    rec: dict[str, Any] = {"device": device_label(device), "memory": memory_bytes(model),
                           "params": count_params(model),
                           "macs": macs(model, context), "dtype": str(next(model.parameters()).dtype).replace("torch.",
                                                                                                              ""),
                           "protocol": {"context": context, "repeats": repeats, "warmup": warmup,
                                        "statistic": "median"}}
    load0 = os.getloadavg()[0]  # contention makes CPU timings meaningless; the report flags loaded hosts
    rec["prefill"] = []
    for b in batch_sizes:
        try:
            rec["prefill"].append(prefill_latency(model, int(b), context, repeats, warmup, seed))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rec["prefill"].append({"batch_size": int(b), "context": context, "oom": True})
    if decode_tokens:
        rec["decode"] = decode_speed(model, 1, context, decode_tokens, repeats, warmup, seed)
    rec["host_load"] = {"loadavg_1min_before": load0, "loadavg_1min_after": os.getloadavg()[0],
                        "cpu_count": os.cpu_count()}
    return rec


def format_table(records: dict[str, dict[str, Any]]) -> str:
    """A human table: one row per (model, batch size), with speedup vs the first model."""
    names = list(records)
    base = {p["batch_size"]: p.get("median_s") for p in records[names[0]]["prefill"]} if names else {}
    lines = [f"{'model':<36} {'params':>12} {'weights MB':>10} {'batch':>5} {'prefill ms':>10} {'speedup':>7} "
             f"{'decode tok/s':>12}"]
    for n in names:
        r = records[n]
        dec = r.get("decode", {}).get("decode_tokens_per_s")
        for p in r["prefill"]:
            ms = "OOM" if p.get("oom") else f"{1000 * p['median_s']:.1f}"
            b0 = base.get(p["batch_size"])
            sp = f"{b0 / p['median_s']:.2f}x" if b0 and not p.get("oom") else "-"
            lines.append(f"{n[-36:]:<36} {r['params']:>12,} {r['memory']['weights_bytes'] / 2**20:>10.1f} "
                         f"{p['batch_size']:>5} {ms:>10} {sp:>7} {(f'{dec:.1f}' if dec else '-'):>12}")
    dev = next(iter(records.values()))["device"] if records else {}
    cpu_note = "  (CPU figures: not comparable with the paper)" if dev.get("kind") == "cpu" else ""
    lines.append(f"device: {dev.get('kind')} {dev.get('name')}" + cpu_note)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.harness.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="registered name or finalized model dir (repeat)")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated prefill batch sizes (default 1,8)")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, help="CPU threads for the timing (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    bs = [int(x) for x in args.batch_sizes.split(",") if x]
    records = {}
    for name in args.model:
        model, _ = load_model(name, dtype=getattr(torch, args.dtype), device=args.device)
        records[name] = measure(model, bs, args.context, args.decode_tokens, args.repeats, args.warmup,
                                threads=args.threads)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(format_table(records))
    print(json.dumps({"throughput": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
