"""Markdown tables of docs/findings/2026-12-04-*speed* from the result files in results/speed (never typed by hand).

Usage: ``PYTHONPATH=$PWD python scripts/speed_tables.py [results/speed]`` prints every table it has files for.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

GOALS = {"lora-fp32 / bare-fp32": 1.15, "pat-fp32 / lora-fp32": 1.25, "lora-bf16 / lora-fp32": 0.70,
         "eval bf16/fp32": 0.60}


def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def ratios(path: Path) -> str:
    d = json.loads(path.read_text())
    tr = d["train"]
    r = dict(tr["ratios"])
    rows = [[k, f"{v:.3f}", GOALS.get(k, "–"), ("met" if v <= GOALS[k] else "missed") if k in GOALS else ""]
            for k, v in r.items()]
    med = [[f"{name}: {a}", f"{statistics.median(t):.2f}", " ".join(f"{x:.2f}" for x in t),
            f"{tr['trainable'][a]:,}"] for name, times in tr["pairs"].items() for a, t in times.items()]
    mem = [[a, m["rss_before_steps_mib"], m["rss_peak_mib"], round(m["rss_peak_mib"] - m["rss_before_steps_mib"], 1)]
           for a, m in tr["memory"].items()]
    ev = d.get("eval")
    if ev:
        fp32, bf16 = (" ".join(f"{x:.1f}" for x in ev["times"][k]) for k in ("fp32", "bf16"))
        ev_line = (f"Evaluation arm ({ev['limit']} documents per task x 7 tasks), ratio {ev['ratio']:.3f}, seconds a "
                   f"round: fp32 {fp32}, bf16 {bf16}. Not a bf16 measurement: before dfd22a5 lm-eval's own "
                   "autocast context switched bf16 off, so both arms ran in fp32 (superseded by eval-ratio-*.json)")
    else:
        ev_line = "(no evaluation arms in this file)"
    return "\n\n".join([
        f"Ratios ({path.name}; {d['threads']} thread(s), {d['rounds']} rounds, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in d['load_average'])}): median over rounds of the per-round ratio",
        _table(["ratio", "median", "goal", ""], rows),
        "Step seconds per arm (median; every round)",
        _table(["arm", "median s", "rounds", "trainable"], med),
        ev_line,
        "Resident memory of each worker process (MiB): before the timed steps, peak during them (sampled every 5 ms)",
        _table(["arm", "RSS before steps", "peak RSS during steps", "increment"], mem),
    ])


CATEGORIES = (  # (category, op-name substrings), first match wins
    ("matmul (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA, forward + backward)", ("scaled_dot_product",)),
    ("dropout masks (bernoulli_)", ("bernoulli",)),
    ("log-softmax / cross-entropy", ("log_softmax", "nll_loss", "cross_entropy")),
    ("casts and copies (copy_, to, clone)", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::to")),
    ("elementwise (mul, add, div, pow, silu, rsqrt, ...)", ("aten::mul", "aten::add", "aten::div", "aten::pow",
                                                           "aten::silu", "aten::rsqrt", "aten::sub", "aten::neg",
                                                           "aten::cat", "aten::sum", "aten::mean", "aten::sqrt",
                                                           "aten::fill_", "aten::where", "aten::zero", "aten::lerp",
                                                           "aten::addcdiv", "aten::addcmul", "_foreach", "_fused",
                                                           "aten::sigmoid", "aten::abs", "aten::norm",
                                                           "aten::linalg_vector_norm", "aten::clamp")),
)


def categories(paths: list[Path]) -> str:
    """Share of the profiled self CPU time by kind of op, per profile (from the 60 largest ops of each file)."""
    heads, cols = [], []
    for p in paths:
        d = json.loads(p.read_text())
        total = d["profiled_self_cpu_s_per_step"]
        shares = {c: 0.0 for c, _ in CATEGORIES}
        rest = total
        for o in d["ops"]:
            for c, keys in CATEGORIES:
                if any(k in o["op"] for k in keys):
                    shares[c] += o["self_cpu_s"]
                    rest -= o["self_cpu_s"]
                    break
        shares["everything else"] = rest
        heads.append(f"{d['pipeline']} {d['precision']}")
        cols.append({c: 100 * v / total for c, v in shares.items()})
    rows = [[c] + [f"{col[c]:.1f}" for col in cols] for c in cols[0]]
    return _table(["% of profiled self CPU time"] + heads, rows)


def profile(paths: list[Path], top: int = 12) -> str:
    blocks = []
    for p in paths:
        d = json.loads(p.read_text())
        rows = [[o["op"][:60], f"{o['self_cpu_s']:.3f}", f"{100 * o['share']:.1f}", f"{o['calls']:.0f}"]
                for o in d["ops"][:top]]
        steps = " ".join(f"{s:.2f}" for s in d["step_seconds"])
        blocks.append(f"**{d['pipeline']} {d['precision']}** ({p.name}; {d['threads']} thread(s), step seconds "
                      f"{steps}; profiled self CPU {d['profiled_self_cpu_s_per_step']:.2f} s a step)\n\n"
                      + _table(["op", "self s / step", "%", "calls / step"], rows))
    return "\n\n".join(blocks)


def paired(path: Path) -> str:
    d = json.loads(path.read_text())
    a = d["acc_diff_bf16_minus_fp32"]
    rows = [["mean accuracy over 7 tasks, bf16 - fp32 (points)", f"{100 * a['estimate']:+.2f}",
             f"[{100 * a['lo']:+.2f}, {100 * a['hi']:+.2f}]", f"{a['n_items']} documents"],
            ["documents whose chosen answer differs", d["choice_flips"], "", f"of {d['documents']}"]]
    for k, v in d.items():
        if k.startswith("ppl_"):
            rows.append([f"perplexity {k[4:]}, bf16 / fp32", f"{v['ratio']:.5f}",
                         f"[{v['ratio_interval'][0]:.5f}, {v['ratio_interval'][1]:.5f}]",
                         f"fp32 {v['fp32']:.3f}, bf16 {v['bf16']:.3f}; max per-window mean-NLL diff "
                         f"{v['max_abs_window_mean_nll_diff']:.4f}"])
    per = [[t, f"{100 * m['acc_fp32']:.1f}", f"{100 * m['acc_bf16']:.1f}", m["choice_flips"], m["n"]]
           for t, m in d["per_task"].items()]
    secs = d["eval_seconds"]
    return "\n\n".join([
        f"Paired fp32 vs bf16 ({path.name}); 95 % paired bootstrap intervals (`bench.harness.stats.bootstrap`, "
        f"2000 replicates); lm-eval seconds fp32 {secs['fp32']}, bf16 {secs['bf16']} (sequential, loaded host)",
        _table(["quantity", "estimate", "95 % CI", "n"], rows),
        _table(["task", "acc fp32 %", "acc bf16 %", "choice flips", "n"], per)])


def curve(path: Path) -> str:
    d = json.loads(path.read_text())
    a, b = d["fp32"]["losses"], d["bf16"]["losses"]
    rows = [[i + 1, f"{x:.4f}", f"{y:.4f}", f"{y - x:+.4f}"] for i, (x, y) in enumerate(zip(a, b))]
    return (f"Training loss per step ({path.name}: {d['config']}); mean |bf16 - fp32| {d['mean_abs_diff']:.4f}; "
            f"train seconds fp32 {d['fp32']['train_seconds']:.0f}, bf16 {d['bf16']['train_seconds']:.0f}\n\n"
            + _table(["step", "fp32", "bf16", "bf16 - fp32"], rows))


def projection(cpu_dir: Path, prev: Path, main: Path, paired: Path | None = None, evr: Path | None = None) -> str:
    """Projected `tox -e reproduce` wall time from the cpu suite's run records (results/cpu: per-run train, eval
    and perplexity seconds) and the measured ratios: each run's training seconds x its step ratio, evaluation and
    perplexity seconds x an evaluation ratio, the rest unchanged; wall = 120.4 min x (new job time / old job time)
    (the two shards keep their balance), plus environment and report (1.1 min). bf16 evaluation ratios: 1.0 (no
    gain), the interleaved benchmark's, and the sequential full runs' (``paired``: tasks and perplexity)."""
    rp, rm = json.loads(prev.read_text())["train"]["ratios"], json.loads(main.read_text())
    new = {"lora": rp["lora-fp32 / loraprev-fp32"], "pat": rp["pat-fp32 / patprev-fp32"]}
    tr_ratios = rm["train"]["ratios"]
    bf16 = {"lora": tr_ratios["lora-bf16 / lora-fp32"], "pat": tr_ratios["pat-bf16 / pat-fp32"]}
    evs_ratio = {"bf16, evaluation ratio 1.0": (1.0, 1.0)}
    if evr is not None:  # the main file's evaluation arm predates the HFLM fix (its tasks ran in fp32)
        e = json.loads(evr.read_text())["eval"]["ratio"]
        evs_ratio[f"bf16, benchmark's evaluation ratio {e:.2f}"] = (e, e)
    if paired is not None:
        a, b = (json.loads(paired.with_name(f"dense-{p}.json").read_text()) for p in ("fp32", "bf16"))
        rt = b["seconds"] / a["seconds"]
        rpp = b["perplexity"]["wikitext2"]["seconds"] / a["perplexity"]["wikitext2"]["seconds"]
        evs_ratio[f"bf16, sequential full runs' ratios (tasks {rt:.2f}, perplexity {rpp:.2f})"] = (rt, rpp)
    tot = {"old": 0.0, "fp32": 0.0, **{k: 0.0 for k in evs_ratio}}
    parts = {"train": 0.0, "eval+ppl": 0.0, "other": 0.0}
    for f in sorted(cpu_dir.glob("*--*.json")):
        r = json.loads(f.read_text())
        tr = (r.get("train") or {}).get("train_seconds") or 0.0
        m = r.get("metrics") or {}
        ev = m.get("eval_seconds") or 0.0
        pp = sum(p.get("seconds", 0.0) for p in (m.get("perplexity") or {}).values())
        other = r["seconds"] - tr - ev - pp
        kind = "pat" if r["spec"]["pipeline"] and r["spec"]["pipeline"][0].startswith("pat") else "lora"
        tot["old"] += r["seconds"]
        tot["fp32"] += tr * new[kind] + ev + pp + other
        for k, (re, rpp) in evs_ratio.items():
            tot[k] += tr * new[kind] * bf16[kind] + ev * re + pp * rpp + other
        parts["train"] += tr
        parts["eval+ppl"] += ev + pp
        parts["other"] += other
    wall = {k: 120.4 * v / tot["old"] + 1.1 for k, v in tot.items()}
    names = {"old": "measured (fp32, before issue 18)", "fp32": "fp32, this branch (projected)"}
    rows = [[names.get(k, k + " (projected)"), f"{v / 60:.1f}", f"{wall[k]:.1f}"] for k, v in tot.items()]
    return (f"Job time of the 29 runs: training {parts['train'] / 60:.1f} min, evaluation + perplexity "
            f"{parts['eval+ppl'] / 60:.1f} min, the rest (pruning, calibration, loading, throughput) "
            f"{parts['other'] / 60:.1f} min. Step ratios new/old: LoRA-type runs {new['lora']:.3f}, PAT runs "
            f"{new['pat']:.3f} ({prev.name}); bf16/fp32 steps: LoRA {bf16['lora']:.3f}, PAT {bf16['pat']:.3f} "
            f"({main.name})\n\n" + _table(["`tox -e reproduce`", "job min", "wall min"], rows))


def main(root: str = "results/speed") -> None:
    r = Path(root)
    for p in sorted(r.glob("ratios-*.json")):
        print(ratios(p), end="\n\n")
    for p in sorted(r.glob("eval-ratio-*.json")):
        e = json.loads(p.read_text())
        t = e["eval"]["times"]
        print(f"Evaluation bf16 / fp32 ({p.name}; {e['eval']['limit']} documents per task x 7 tasks, "
              f"{len(t['fp32'])} rounds alternating, {e['threads']} thread(s)): median ratio "
              f"{e['eval']['ratio']:.3f}; seconds fp32 {' '.join(f'{x:.1f}' for x in t['fp32'])}, bf16 "
              f"{' '.join(f'{x:.1f}' for x in t['bf16'])}", end="\n\n")
    profs = sorted(r.glob("profile-*.json"))
    if profs:
        print(categories(profs), end="\n\n")
        print(profile(profs), end="\n\n")
    for p in sorted(r.glob("dense-paired.json")):
        print(paired(p), end="\n\n")
    for p in sorted(r.glob("train-curve*.json")):
        print(curve(p), end="\n\n")
    prev = sorted(r.glob("ratios-prev-*.json"))
    mains = [p for p in sorted(r.glob("ratios-*.json")) if "prev" not in p.name and "patlora" not in p.name]
    if prev and mains:
        paired_file = r / "dense-paired.json"
        evr = sorted(r.glob("eval-ratio-*.json"))
        print(projection(Path("results/cpu"), prev[-1], mains[-1], paired_file if paired_file.exists() else None,
                         evr[-1] if evr else None), end="\n\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
