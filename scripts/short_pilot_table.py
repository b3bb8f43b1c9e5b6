"""The short-budget pilot's table (docs/findings/2026-12-04-short-budget-pilot.md), generated from result records.

    python scripts/short_pilot_table.py

Reads the pilot record(s) in results/short-pilot/ and the cpu suite's seed-0 records of the same cells; prints a
Markdown table (WikiText-2 perplexity @128, 7-task mean accuracy, what picked the channels) and the overlap of the
pilot's kept channels with its initial (importance) selection and with the cpu suite's Taylor-snap selection.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU = ["lora--r0.00--s0", "pat--r0.25--s0", "pat_taylor--r0.25--s0", "llm_pruner+lora--r0.25--s0",
       "flap+lora--r0.25--s0"]


def _row(path: Path) -> tuple[str, float, float, str, dict]:
    r = json.loads(path.read_text())
    st = next(iter((r.get("train") or {}).get("stages", {}).values()), {}) if r.get("train") else {}
    sel = st.get("selection") or {}
    picked = f"{sel['by']} (snap changed {sel['snap_changed']})" if sel else "-"
    return (r["spec"]["run_id"], r["metrics"]["perplexity"]["wikitext2"]["ppl"], 100 * r["metrics"]["mean"]["acc"],
            picked, st)


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b)


def main() -> None:
    rows = [_row(p) for p in sorted((ROOT / "results" / "short-pilot").glob("*.json"))]
    cpu = [_row(ROOT / "results" / "cpu" / f"smollm2-135m--{c}.json") for c in CPU]
    print("| run | source | WikiText-2 ppl @128 | 7-task mean acc (%) | channels picked by |")
    print("|---|---|---|---|---|")
    for src, rs in (("short pilot", rows), ("cpu suite", cpu)):
        for rid, ppl, acc, picked, _ in rs:
            print(f"| {rid} | {src} | {ppl:,.1f} | {acc:.1f} | {picked} |")
    taylor = cpu[2][4]["kept_channels"]
    for rid, _, _, _, st in rows:
        if "mask_init" in st:
            print(f"\n{rid}: Jaccard(final, initial importance selection) = "
                  f"{jaccard(st['kept_channels'], st['mask_init']['kept_channels']):.3f}; "
                  f"Jaccard(final, cpu suite Taylor snap s0) = {jaccard(st['kept_channels'], taylor):.3f}; "
                  f"massive-activation channels 17 and 247 kept: "
                  f"{all(c in st['kept_channels'] for c in (17, 247))}")


if __name__ == "__main__":
    main()
