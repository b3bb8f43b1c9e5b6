"""Training curves from a run record: the LM loss (and KD loss), PAT's count and identity losses and its active
channels against the optimizer step, as one PNG.

    python -m bench.harness.curves RUN_JSON [RUN_JSON ...] --out curves.png

Each record's ``curves`` (``bench.harness.train``, one point per optimizer step) is read; a run record of
``pat-bench run`` keeps the training record under ``train``. Records without a value leave that panel's line out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PANELS = (  # (title, keys drawn in that panel)
    ("LM loss", ("lm_loss", "kd_loss")),
    ("count loss (L_active)", ("L_active",)),
    ("active channels", ("active",)),
    ("identity loss", ("L_identity",)),
)


def curves_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-step points of a run record (``run.json`` of the harness, or a suite's result record)."""
    for rec in (record, record.get("train") or {}):
        if rec.get("curves"):
            return rec["curves"]
    raise ValueError("record has no 'curves' (made before training curves were recorded, or nothing trained)")


def plot_training_curves(records: dict[str, dict[str, Any]], out: str | Path) -> Path:
    """One row of panels (``PANELS``) with a line per record; ``records`` maps a label to a run record."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def curves_figure(records: dict[str, dict[str, Any]]):
    """The figure of ``plot_training_curves``: one colour per record in every panel, a second key of a panel (the KD
    loss) dashed in that colour, and one legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, dashed = {}, set()
    for i, (label, rec) in enumerate(records.items()):
        pts = curves_of(rec)
        color = colors[i % len(colors)]  # one colour per record in every panel
        for ax, (title, keys) in zip(axes, PANELS):
            for key in keys:
                xs = [p["step"] for p in pts if p.get(key) is not None]
                ys = [p[key] for p in pts if p.get(key) is not None]
                if xs:
                    ax.plot(xs, ys, color=color, linestyle="-" if key == keys[0] else "--", linewidth=1.2)
                    handles.setdefault(label, plt.Line2D([], [], color=color))  # every record that drew a line
                    if key != keys[0]:
                        dashed.add(key)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
    labels = list(handles)
    lines = [handles[k] for k in labels]
    if dashed:  # a second key in a panel (the KD loss): dashed, in the record's colour
        lines.append(plt.Line2D([], [], color="grey", linestyle="--"))
        labels.append("dashed: " + ", ".join(sorted(dashed)))
    # one legend for the figure, below the panels (4 entries a row), so that no panel's lines are hidden
    if labels:
        fig.legend(lines, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * -(-len(labels) // 4), 1, 1))
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.harness.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", help="run.json files (harness) or suite result records")
    p.add_argument("--out", required=True, help="PNG to write")
    a = p.parse_args(argv)
    recs = {}
    for path in a.records:
        try:
            recs[Path(path).parent.name if Path(path).name == "run.json" else Path(path).stem] = \
                json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            p.error(f"{path}: cannot read a run record ({e})")
    try:
        print(plot_training_curves(recs, a.out))
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
