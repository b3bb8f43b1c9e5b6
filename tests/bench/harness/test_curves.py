"""bench.harness.curves: one colour per run in every panel, the KD loss dashed in its run's colour, one legend with
every run that drew a line."""

from __future__ import annotations

import matplotlib.pyplot as plt

from bench.harness.curves import curves_figure


def _pts(keys: dict[str, float], n: int = 4) -> dict:
    return {"curves": [{"step": i + 1, **keys} for i in range(n)]}


def test_each_run_keeps_its_colour_and_is_in_the_legend():
    recs = {"pat": _pts({"lm_loss": 3.0, "kd_loss": 1.0, "L_active": 0.5, "active": 432}),
            "flap": _pts({"lm_loss": 3.5}),
            "kd_only": _pts({"kd_loss": 2.0})}  # draws only the dashed key: still named in the legend
    fig = curves_figure(recs)
    try:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["pat", "flap", "kd_only", "dashed: kd_loss"]
        lm, count, active, _ = fig.axes
        colours = [ln.get_color() for ln in lm.get_lines()]
        styles = [ln.get_linestyle() for ln in lm.get_lines()]
        assert styles == ["-", "--", "-", "--"]  # pat lm, pat kd, flap lm, kd_only kd
        assert colours[0] == colours[1] != colours[2] != colours[3]
        # the same run has the same colour in another panel
        assert count.get_lines()[0].get_color() == colours[0] == active.get_lines()[0].get_color()
        assert not any(ax.get_legend() for ax in fig.axes)  # no legend inside a panel
    finally:
        plt.close(fig)
