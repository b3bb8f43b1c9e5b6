"""Pruned-only quality of the baselines on one model: parameters, WikiText-2 perplexity, forward time vs dense.

    pat-bench measure --model smollm2-135m --ratios 0.2,0.25,0.3 \\
        --methods llm_pruner,llm_pruner_random,wanda_sp,flap,slicegpt --out results/pruned/smollm2-135m.json

(``python -m bench.cli.measure`` is the same command.)

Every (method, ratio) is pruned from a fresh copy of the dense model with no tuning, calibrated on C4 windows of the
authors' size (``METHODS``) unless ``--calib`` says otherwise; each entry records its calibration, the authors' size
and PAT's parameter count at the ratio. Results are merged into ``--out`` (keyed by method and ratio; written
atomically after every entry), so runs can be split or resumed.
``--memory`` adds the peak-RSS probe of Taylor scoring (one subprocess per ``chunk_layers`` setting).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from baselines.common import layer_range, pat_params
from baselines.llm_pruner import taylor_scores
from baselines.pruned_io import load_model
from bench.harness.calibration import load_calibration
from bench.harness.perplexity import perplexity
from bench.harness.throughput import memory_bytes
from pat.arch import count_params, decoder_layers
from pat.io import write_json_atomic

# name -> (module, options, the authors' calibration (n windows, tokens each));
# every default is the authors' algorithm
METHODS = {
    "llm_pruner": ("baselines.llm_pruner", {"importance": "first"}, (10, 64)),
    "llm_pruner_params": ("baselines.llm_pruner", {"importance": "first", "target": "params"}, (10, 64)),
    "llm_pruner_nearest": ("baselines.llm_pruner", {"importance": "first", "rounding": "nearest"}, (10, 64)),
    "llm_pruner_random": ("baselines.llm_pruner", {"importance": "random"}, (10, 64)),
    "llm_pruner_second": ("baselines.llm_pruner", {"importance": "second"}, (10, 64)),
    "llm_pruner_vector": ("baselines.llm_pruner", {"importance": "first", "mode": "vector"}, (10, 64)),
    "wanda_sp": ("baselines.wanda_sp", {}, (128, 128)),
    "wanda_sp_params": ("baselines.wanda_sp", {"target": "params"}, (128, 128)),
    "wanda_sp_onepass": ("baselines.wanda_sp", {"sequential": False}, (128, 128)),
    "wanda_sp_layers4to28": ("baselines.wanda_sp", {"layer_start": 4, "layer_end": 28}, (128, 128)),
    "flap": ("baselines.flap", {}, (1024, 128)),
    "flap_params": ("baselines.flap", {"target": "params"}, (1024, 128)),
    "flap_unsquared": ("baselines.flap", {"square_attn": False}, (1024, 128)),
    "slicegpt": ("baselines.slicegpt", {}, (128, 2048)),
    "slicegpt_params": ("baselines.slicegpt", {"target": "params"}, (128, 2048)),
    "slicegpt_slice_head": ("baselines.slicegpt", {"slice_head": True}, (128, 2048)),
}


def parse_calib(text: str) -> dict[str, tuple[int, int]]:
    """``--calib slicegpt=32x2048,flap=256x128`` -> ``{"slicegpt": (32, 2048), ...}`` (per method family prefix)."""
    out = {}
    for part in [p for p in text.split(",") if p]:
        name, _, size = part.partition("=")
        n, _, L = size.partition("x")
        if not (name and n.isdigit() and L.isdigit()):
            raise SystemExit(f"--calib: '{part}' is not METHOD=NxLEN (e.g. slicegpt=32x2048)")
        out[name] = (int(n), int(L))
    return out


def write_json(path: Path, obj: dict) -> None:
    write_json_atomic(path, obj, indent=1)


@torch.no_grad()
def forward_seconds(model, ids: torch.Tensor, reps: int) -> float:
    """Median wall time of one forward pass over ``ids`` (B, L)."""
    ids = ids.to(next(model.parameters()).device)
    model(input_ids=ids, use_cache=False)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ppl(model, tok, seq_len: int, max_tokens: int, batch: int) -> dict:
    t0 = time.perf_counter()
    r = perplexity(model, tok, dataset="wikitext2", seq_len=seq_len, max_tokens=max_tokens, batch_size=batch)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    return r


def evaluate(model, dense, tok, args) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (args.time_batch, args.time_seq), generator=gen)
    t_dense, t_model = [], []
    for _ in range(2):  # interleave to share the machine's load between both
        t_dense.append(forward_seconds(dense, ids, args.time_reps))
        t_model.append(forward_seconds(model, ids, args.time_reps))
    return {
        "params": count_params(model),
        "ppl128": ppl(model, tok, 128, args.max_tokens_128, 8),
        "ppl2048": ppl(model, tok, 2048, args.max_tokens_2048, 1),
        "forward_s": min(t_model), "dense_forward_s": min(t_dense), "time_ratio_vs_dense": min(t_model) / min(t_dense),
        "time_shape": [args.time_batch, args.time_seq],
    }


def memory_probe(model_name: str, chunk: int | None) -> dict:
    """Peak RSS of LLM-Pruner first-order Taylor scoring (10 x 64 tokens), this process only."""
    model, tok = load_model(model_name)
    calib, _ = load_calibration(tok, "c4", 10, 64, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s, e = layer_range(len(decoder_layers(model)))
    t0 = time.perf_counter()
    taylor_scores(model, calib, list(range(s, e)), chunk_layers=chunk)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = memory_bytes(model)["weights_bytes"]
    return {"chunk_layers": chunk, "layers": [s, e], "rss_before_mib": before / 1024, "rss_peak_mib": after / 1024,
            "scoring_extra_mib": (after - before) / 1024, "weights_mib": weights / 2**20,
            "seconds": round(time.perf_counter() - t0, 2)}


def table(res: dict) -> str:
    """A markdown table of a results file (dense first, then each method and ratio)."""
    cols = ["method", "ratio", "target", "calibration (C4)", "params", "vs PAT's count", "PPL@128", "PPL@2048",
            "forward time vs dense"]
    rows = []
    d = res.get("dense")
    if d:
        rows.append(["dense", "0", "–", "–", f"{d['params']:,}", "–", f"{d['ppl128']['ppl']:.2f}",
                     f"{d['ppl2048']['ppl']:.2f}", f"{d['time_ratio_vs_dense']:.2f} (dense vs dense: noise)"])
    for e in res.get("entries", {}).values():
        rep = e["report"]
        extra = f" (d'={rep['hidden_after']})" if "hidden_after" in rep else ""
        c = e.get("calibration") or {}
        cal = f"{c.get('n')} x {c.get('seq_len')}" if c else "–"
        if c.get("authors") and (c["authors"]["n"], c["authors"]["seq_len"]) != (c.get("n"), c.get("seq_len")):
            cal += f" (authors: {c['authors']['n']} x {c['authors']['seq_len']})"
        pat = e.get("pat_params")
        vs = f"{100 * (e['params'] / pat - 1):+.2f} %" if pat else "–"
        rows.append([e["method"], f"{e['ratio']}{extra}", rep.get("target", "ratio"), cal, f"{e['params']:,}", vs,
                     f"{e['ppl128']['ppl']:.2f}", f"{e['ppl2048']['ppl']:.2f}", f"{e['time_ratio_vs_dense']:.2f}"])
    return pd.DataFrame(rows, columns=cols).to_markdown(index=False, tablefmt="github", disable_numparse=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pat-bench measure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", default="0.2,0.25,0.3")
    ap.add_argument("--methods", default="llm_pruner,llm_pruner_random,wanda_sp,flap,slicegpt")
    ap.add_argument("--out", default="results/pruned/smollm2-135m.json")
    ap.add_argument("--max-tokens-128", type=int, default=2048)
    ap.add_argument("--max-tokens-2048", type=int, default=2048)
    ap.add_argument("--time-batch", type=int, default=1)
    ap.add_argument("--time-seq", type=int, default=128)
    ap.add_argument("--time-reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", default="", help="calibration sizes overriding the authors', METHOD=NxLEN,... "
                    "(METHOD: a --methods name or its family, e.g. slicegpt=32x2048)")
    ap.add_argument("--no-dense", action="store_true", help="skip (re)measuring the dense model")
    ap.add_argument("--memory", action="store_true", help="add the Taylor-scoring memory probe")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    ap.add_argument("--merge", default="", help="comma-separated result files whose entries are merged into --out")
    return ap


def merge_parts(out: Path, parts: list[str]) -> None:
    """Merge the entries (and the memory probe) of result files ``parts`` into ``out``."""
    res = json.loads(out.read_text()) if out.exists() else {"entries": {}}
    for part in parts:
        other = json.loads(Path(part).read_text())
        res.setdefault("entries", {}).update(other.get("entries", {}))
        res.setdefault("parts", []).append({"file": part, "command": other.get("command")})
        if other.get("taylor_memory"):
            res.setdefault("taylor_memory", other.get("taylor_memory"))
    write_json(out, res)


def _prune_and_measure(method: str, dense, tok, args, res: dict, out: Path) -> None:
    """Prune a fresh copy of ``dense`` with ``method`` at every ratio; each entry is written as soon as measured."""
    if method not in METHODS:
        raise SystemExit(f"--methods: unknown '{method}'; expected some of {', '.join(METHODS)}")
    mod_name, opts, authors = METHODS[method]
    family = mod_name.rpartition(".")[2]
    calib_over = parse_calib(args.calib)
    n, L = calib_over.get(method, calib_over.get(family, authors))
    calib, calib_rec = load_calibration(tok, "c4", n, L, seed=args.seed)
    calib_rec = dict(calib_rec, authors={"n": authors[0], "seq_len": authors[1]})
    for ratio in [float(r) for r in args.ratios.split(",")]:
        t0, c0 = time.perf_counter(), time.process_time()
        model, rep = importlib.import_module(mod_name).prune(copy.deepcopy(dense), ratio, calib, **opts)
        prune_s, prune_cpu = time.perf_counter() - t0, time.process_time() - c0
        entry = {"method": method, "ratio": ratio, "opts": opts, "calibration": calib_rec,
                 "pat_params": pat_params(dense, ratio), "prune_seconds": round(prune_s, 1),
                 "prune_cpu_seconds": round(prune_cpu, 1), "report": rep, **evaluate(model, dense, tok, args)}
        res["entries"][f"{method}@{ratio}"] = entry
        write_json(out, res)
        print(method, ratio, "params", entry["params"], "ppl128", round(entry["ppl128"]["ppl"], 2),
              "ppl2048", round(entry["ppl2048"]["ppl"], 2), "time", round(entry["time_ratio_vs_dense"], 3),
              flush=True)
        del model


def _memory_probes(model_name: str) -> list[dict]:
    """The memory probe in fresh subprocesses (peak RSS is per process), all layers at once and 8 at a time."""
    probes = []
    for chunk in (0, 8):
        r = subprocess.run([sys.executable, "-m", "bench.cli.measure", "--model", model_name, "--memory-probe",
                            str(chunk)], capture_output=True, text=True, check=True)
        probes.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return probes


def measure_all(args, argv: list[str] | None) -> None:
    """Dense model, then every method and ratio, then (``--memory``) the probe; merged into ``--out``."""
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res.setdefault("entries", {})
    cmd = "pat-bench measure " + " ".join(sys.argv[1:] if argv is None else argv)
    res.update(model=args.model, command=cmd,
               torch=torch.__version__, threads=torch.get_num_threads(),
               ppl_protocol={"dataset": "wikitext2 test", "max_tokens_128": args.max_tokens_128,
                             "max_tokens_2048": args.max_tokens_2048, "stride": "seq_len (non-overlapping)"})
    dense, tok = load_model(args.model)
    if not args.no_dense:
        res["dense"] = evaluate(dense, dense, tok, args)
        write_json(out, res)
        print("dense", json.dumps({k: v for k, v in res["dense"].items() if k != "ppl128"}), flush=True)
    for method in [m for m in args.methods.split(",") if m]:
        _prune_and_measure(method, dense, tok, args, res, out)
    if args.memory:
        res["taylor_memory"] = _memory_probes(args.model)
        write_json(out, res)
        print("memory", json.dumps(res["taylor_memory"]))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parse_calib(args.calib)  # a malformed --calib stops before anything is measured
    if args.merge:
        merge_parts(Path(args.out), args.merge.split(","))
    elif args.table:
        print(table(json.loads(Path(args.out).read_text())))
    elif args.memory_probe is not None:
        print(json.dumps(memory_probe(args.model, int(args.memory_probe) or None)))
    else:
        measure_all(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
