"""Mask and training diagnostics of the `short` suite (issue 21), from its result records.

    PYTHONPATH=$PWD python scripts/short_diagnostics.py [--results results/short] \
        [--out results/short_diagnostics.json] [--md results/short_diagnostics.md] [--png results/short_curves.png] \
        [--pilots results/short-pilot2/scale10 results/short-pilot2/late]

For every finished PAT run of the suite:
1. its selection: what picked the channels, the freeze step, how many channels the snap changed, its overlap (Jaccard)
   with its own initial importance selection (``mask_init``) and with the Taylor-snap run of the same seed, and
   which of the dense model's three massive-activation channels it keeps (``results/budget_selection.json``);
2. the freeze: the LM loss (and KD loss) over the 3 steps before the freeze, its peak in the 3 steps after it and the
   mean of the last 10 steps;
3. for every distilled run, the teacher's share of the training time;
4. every arm's perplexity per seed, and (``--pilots``) the perplexity and PAT arguments of pilot records run apart
   from the suite (``pat-bench run --out DIR --set ...``);
5. from the suite report's ``pairs.csv`` (``pat-bench report --suite short`` first): each PAT variant against each
   size-matched baseline, perplexity ratio and accuracy above chance with their paired intervals, and (its
   ``claims.csv``) the gap to LoRA on the dense model.
The PNG draws the seed-0 training curves of ``CURVE_ARMS``
(``bench.harness.curves``). Prints Markdown tables under headings (for ``scripts/paste_tables.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from bench.harness.mask_probe import jaccard
from bench.harness.results import load_results

ROOT = Path(__file__).resolve().parents[1]
# the PNG's lines: the pre-registered variant, the exploratory FLAP-metric inits (default and wide ramp), the Taylor
# snap, the best baseline with and without KD
CURVE_ARMS = ("pat_init_kd", "pat_flapinit_kd", "pat_flapinit_wide_kd", "pat_taylor", "flap+lora", "flap+lora_kd")


def _finished(results_dir: str | Path) -> list[dict]:
    """The successful run records in ``results_dir`` (``load_results``: malformed files skipped with a warning)."""
    return [r for r in load_results(results_dir) if r["status"] == "success"]


def _arm(rec: dict) -> str:
    return "+".join(rec["spec"]["pipeline"]) or "dense"


def _stage(rec: dict) -> dict:
    return next(iter(((rec.get("train") or {}).get("stages") or {}).values()), {})


def _window(curves: list[dict], key: str, lo: int, hi: int) -> list[float]:
    return [c[key] for c in curves if lo <= c["step"] <= hi and c.get(key) is not None]


def _fmt(x, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def rows_of(recs: list[dict], massive: list[int]) -> tuple[list[dict], list[dict]]:
    """(PAT rows, distilled rows) of the finished records."""
    taylor = {r["spec"]["seed"]: _stage(r).get("kept_channels") for r in recs if _arm(r) == "pat_taylor"}
    pat, kd = [], []
    for r in recs:
        st, tr = _stage(r), r.get("train") or {}
        seed = r["spec"]["seed"]
        if tr.get("distill"):
            d = tr["distill"]
            kd.append({"arm": _arm(r), "seed": seed, "train_seconds": tr["train_seconds"],
                       "teacher_seconds": d["teacher_forward_seconds"],
                       "teacher_share": d["teacher_forward_seconds"] / tr["train_seconds"],
                       "teacher_flops": d["teacher_forward_flops"]})
        if "kept_channels" not in st or "selection" not in st:
            continue
        kept, sel, curves = st["kept_channels"], st["selection"], tr.get("curves") or []
        f = sel["freeze_step"]
        row = {"arm": _arm(r), "seed": seed, "by": sel["by"], "freeze_step": f, "snap_changed": sel["snap_changed"],
               "ppl": r["metrics"]["perplexity"]["wikitext2"]["ppl"],
               "jaccard_init": (jaccard(kept, st["mask_init"]["kept_channels"])
                                if isinstance(st.get("mask_init"), dict) else None),
               "jaccard_taylor_snap": jaccard(kept, taylor[seed]) if taylor.get(seed) else None,
               "massive_kept": [c for c in massive if c in kept]}
        for key in ("lm_loss", "kd_loss"):  # no snap during training (freeze_step None): no window around it
            before = [] if f is None else _window(curves, key, f - 2, f)
            after = [] if f is None else _window(curves, key, f + 1, f + 3)
            last = [c[key] for c in curves[-10:] if c.get(key) is not None]
            row[key] = {"before": mean(before) if before else None, "peak_after": max(after) if after else None,
                        "last10": mean(last) if last else None}
        pat.append(row)
    key = lambda x: (x["arm"], x["seed"])  # noqa: E731
    return sorted(pat, key=key), sorted(kd, key=key)


def markdown(pat: list[dict], kd: list[dict], massive: list[int]) -> str:
    out = ["## Selections", "",
           f"| arm | seed | picked by | freeze step | snap changed | J(final, initial) | J(final, Taylor snap) "
           f"| massive kept (of {', '.join(map(str, massive))}) | ppl |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pat:
        out.append(f"| {r['arm']} | {r['seed']} | {r['by']} | {_fmt(r['freeze_step'], 'd')} | {r['snap_changed']} | "
                   f"{_fmt(r['jaccard_init'], '.3f')} | {_fmt(r['jaccard_taylor_snap'], '.3f')} | "
                   f"{', '.join(map(str, r['massive_kept'])) or 'none'} | {r['ppl']:,.1f} |")
    out += ["", "## The freeze", "",
            "| arm | seed | LM loss, 3 steps before | peak, 3 steps after | last 10 | KD loss before | KD peak after "
            "| KD last 10 |", "|---|---|---|---|---|---|---|---|"]
    for r in pat:
        lm, k = r["lm_loss"], r["kd_loss"]
        out.append(f"| {r['arm']} | {r['seed']} | {_fmt(lm['before'])} | {_fmt(lm['peak_after'])} | "
                   f"{_fmt(lm['last10'])} | {_fmt(k['before'])} | {_fmt(k['peak_after'])} | {_fmt(k['last10'])} |")
    out += ["", "## Teacher cost", "",
            "| arm | seed | train s | teacher forward s | teacher share | teacher FLOPs |",
            "|---|---|---|---|---|---|"]
    for r in kd:
        out.append(f"| {r['arm']} | {r['seed']} | {r['train_seconds']:,.0f} | {r['teacher_seconds']:,.0f} | "
                   f"{100 * r['teacher_share']:.0f} % | {r['teacher_flops']:.2e} |")
    return "\n".join(out) + "\n"


def per_seed_markdown(recs: list[dict]) -> str:
    """WikiText-2 perplexity of every arm, one column per seed (the records as they are)."""
    seeds = sorted({r["spec"]["seed"] for r in recs})
    cells: dict[str, dict[int, float]] = {}
    for r in recs:
        cells.setdefault(_arm(r), {})[r["spec"]["seed"]] = r["metrics"]["perplexity"]["wikitext2"]["ppl"]
    out = ["## Perplexity per seed", "", "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
           "|---|" + "---|" * len(seeds)]
    out += [f"| {arm} | " + " | ".join(_fmt(c.get(s), ".1f") for s in seeds) + " |"
            for arm, c in sorted(cells.items())]
    return "\n".join(out) + "\n"


PILOT_KEYS = ("mask_init", "mask_init_scale", "milestone_frac")  # the PAT stage arguments a pilot table shows


def pilots_markdown(dirs: list[Path]) -> str:
    """One row per finished record under the pilot directories: where it is, its arm and seed, the PAT stage
    arguments in ``PILOT_KEYS`` as the record's spec holds them (``–``: the stage default) and its perplexity."""
    out = ["## Pilots", "", "| pilot | arm | seed | " + " | ".join(PILOT_KEYS) + " | ppl |",
           "|---|---|---|" + "---|" * len(PILOT_KEYS) + "---|"]
    for d in dirs:
        for r in _finished(d):
            args = {k: v for a in (r["spec"].get("method_args") or {}).values() for k, v in a.items()}
            out.append(f"| {Path(d).name} | {_arm(r)} | {r['spec']['seed']} | "
                       + " | ".join((format(args[k], ".4g") if isinstance(args[k], float) else str(args[k]))
                                    if k in args else "–" for k in PILOT_KEYS)
                       + f" | {r['metrics']['perplexity']['wikitext2']['ppl']:,.1f} |")
    return "\n".join(out) + "\n"


def against_baselines(pairs_csv: Path) -> list[dict]:
    """Every PAT variant against every size-matched baseline (a non-PAT method at the same ratio), from the report's
    pairs table: perplexity ratio PAT / baseline and Δ accuracy on the tasks above chance (PAT minus baseline, points),
    each with its paired 95 % interval (seed component included), turned so that PAT is always the first side."""
    import pandas as pd

    d = pd.read_csv(pairs_csv)
    need = ["wikitext2 ppl ratio", "_plo", "_phi", "Δ acc (above chance)", "_alo", "_ahi"]
    if d.empty or not set(need) <= set(d.columns):  # no perplexity or no above-chance accuracy in this report
        return []
    d = d[(d["ratio"] != "0 %") & d[need].notna().all(axis=1)]
    rows = []
    for _, r in d.iterrows():
        a_pat, b_pat = r["A"].startswith("PAT"), r["B"].startswith("PAT")
        if a_pat == b_pat:
            continue
        flip = b_pat
        ratio, lo, hi = r["wikitext2 ppl ratio"], r["_plo"], r["_phi"]
        acc, alo, ahi = r["Δ acc (above chance)"], r["_alo"], r["_ahi"]
        if flip:
            ratio, lo, hi = 1 / ratio, 1 / hi, 1 / lo
            acc, alo, ahi = -acc, -ahi, -alo
        rows.append({"pat": r["B"] if flip else r["A"], "baseline": r["A"] if flip else r["B"], "seeds": r["seeds"],
                     "ppl_ratio": ratio, "ppl_lo": lo, "ppl_hi": hi, "acc_above": acc, "acc_lo": alo, "acc_hi": ahi})
    return sorted(rows, key=lambda x: (x["pat"], x["baseline"]))


def against_markdown(rows: list[dict]) -> str:
    out = ["## Each PAT variant against each size-matched baseline", "",
           "| PAT variant | baseline | seeds (sides as in the pairs table) | ppl ratio PAT / baseline "
           "| 95 % CI | Δ acc above chance (points) | 95 % CI | PAT ahead on both |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        both = r["ppl_hi"] < 1 and r["acc_lo"] > 0
        out.append(f"| {r['pat']} | {r['baseline']} | {r['seeds']} | {r['ppl_ratio']:.3f} | "
                   f"[{r['ppl_lo']:.3f}, {r['ppl_hi']:.3f}] | {r['acc_above']:.2f} | [{r['acc_lo']:.2f}, "
                   f"{r['acc_hi']:.2f}] | {'yes' if both else 'no'} |")
    return "\n".join(out) + "\n"


def gap_to_lora(claims_csv: Path) -> list[dict]:
    """Each PAT variant against LoRA on the dense model (the report's exploratory "PAT > LoRA FT" rows)."""
    import pandas as pd

    d = pd.read_csv(claims_csv)
    d = d[d["claim"].str.contains("> LoRA FT", regex=False) & d["wikitext2 ppl ratio"].notna()]
    return [{"pat": r["claim"].split(" > ")[0], "seeds": r["seeds"], "ppl_ratio": r["wikitext2 ppl ratio"],
             "ppl_lo": r["_plo"], "ppl_hi": r["_phi"], "acc_above": r["Δ acc (above chance)"], "acc_lo": r["_alo"],
             "acc_hi": r["_ahi"]} for _, r in d.iterrows()]


def gap_markdown(rows: list[dict]) -> str:
    out = ["## The gap to LoRA on the dense model", "",
           "| PAT variant | seeds | ppl ratio PAT / LoRA | 95 % CI | Δ acc above chance (points) | 95 % CI |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r['pat']} | {r['seeds']} | {r['ppl_ratio']:.2f} | [{r['ppl_lo']:.2f}, {r['ppl_hi']:.2f}] | "
            f"{r['acc_above']:.2f} | [{r['acc_lo']:.2f}, {r['acc_hi']:.2f}] |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(ROOT / "results" / "short"))
    ap.add_argument("--massive", default=str(ROOT / "results" / "budget_selection.json"),
                    help="JSON with the dense model's massive-activation channels (scripts/budget_selection.py)")
    ap.add_argument("--out", default=None, help="JSON with the rows")
    ap.add_argument("--md", default=None, help="the tables as Markdown")
    ap.add_argument("--png", default=None, help="seed-0 training curves")
    ap.add_argument("--pilots", nargs="*", default=[], help="directories of pilot records (run with --out): a table "
                    "of their PAT arguments and perplexity")
    ap.add_argument("--pairs", default=None, help="the suite report's pairs.csv (default RESULTS/pairs.csv, if it "
                    "exists): adds each PAT variant against each baseline")
    args = ap.parse_args(argv)
    recs = _finished(args.results)
    massive = [m["channel"] for m in json.loads(Path(args.massive).read_text())["massive"]]
    pat, kd = rows_of(recs, massive)
    md = markdown(pat, kd, massive) + "\n" + per_seed_markdown(recs)
    if args.pilots:
        md += "\n" + pilots_markdown([Path(d) for d in args.pilots])
    pairs = Path(args.pairs) if args.pairs else Path(args.results) / "pairs.csv"
    against = against_baselines(pairs) if pairs.exists() else []
    if against:
        md = against_markdown(against) + "\n" + md
    claims = pairs.parent / "claims.csv"
    gap = gap_to_lora(claims) if claims.exists() else []
    if gap:
        md = md.replace("## Selections", gap_markdown(gap) + "\n## Selections", 1)
    print(md)
    if args.md:
        Path(args.md).write_text(md)
    if args.out:
        Path(args.out).write_text(json.dumps({"massive": massive, "pat": pat, "distilled": kd,
                                              "against_baselines": against, "gap_to_lora": gap}, indent=1))
    if args.png:
        from bench.harness.curves import plot_training_curves

        show = {f"{_arm(r)} s0": r for r in recs if r["spec"]["seed"] == 0 and (r.get("train") or {}).get("curves")
                and _arm(r) in CURVE_ARMS}
        if show:
            plot_training_curves(dict(sorted(show.items())), args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
