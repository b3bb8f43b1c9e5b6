"""The paper form of the active loss (``active_loss="paper"``) drives the count to N and holds it there, through the
real harness loop, and its straight-through gradient pushes only the channels that must cross (or sit within the
margin)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pat import PATConfig, PATStage, get_mask
from pat.losses import active_loss
from pat.stage import RunContext
from tests.bench.harness.test_train import budget, run
from tests.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _same_global_rng_after():
    """These tests seed and draw from torch's global RNG; later tests get it back as it was."""
    with torch.random.fork_rng():
        yield


class _CountTrace(PATStage):
    """Records the active count after every optimizer step (before the loop's next forward)."""

    def on_optimizer_step(self, model, step):
        out = super().on_optimizer_step(model, step)
        self.counts = getattr(self, "counts", []) + [int(get_mask(model).active().sum())]
        return out


@pytest.mark.parametrize("weight", [10.0, 1.0])
def test_paper_count_reaches_n_and_stays_there_until_the_freeze(tmp_path: Path, weight: float):
    # tiny Llama, d = 48, N = 36; 100 steps at LR 1e-2, s0 = 100, so the mask freezes (and snaps) at step 80
    stage = _CountTrace(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4, lora_dropout=0.0, active_loss="paper",
                                  active_weight=weight, milestone_frac=1.0))
    run(tmp_path, stages=[stage], b=budget(steps=100, lr=1e-2, warmup_steps=5), checkpoint_every=0,
        save_finalized=False)
    pre = stage.counts[:79]  # after steps 1..79: the snap at step 80 would make any count exact
    assert len(pre) == 79
    assert pre[0] != 36  # it starts away from N (all proxies 0: nothing active), so reaching N is the loss's work
    first = pre.index(36)
    assert first < 40, pre
    assert pre[first:] == [36] * (79 - first), pre


def _mask(**kw):
    stage = PATStage(PATConfig(hio_rank=4, lora_rank=4, lora_dropout=0.0, active_loss="paper", **kw))
    return get_mask(stage.prepare(tiny_model("llama-mha"), RunContext(total_steps=30)))


def test_paper_active_loss_keeps_the_margin_at_n_and_shares_ties():
    mask = _mask()
    w = torch.linspace(-1, 1, 48)
    w[12:] = torch.linspace(0.005, 1, 36)  # exactly 36 active; the smallest active one is inside the 0.01 margin
    w[11] = -0.004  # and the largest inactive one too
    with torch.no_grad():
        mask.proxy.copy_(w)
    loss = active_loss(mask, mask.target, "paper", 10.0, 0.01)
    loss.backward()
    assert loss.item() == 0.0
    expected = torch.zeros(48)
    expected[12], expected[11] = -10.0 / 48, 10.0 / 48  # pushed out of the margin, each on its own side
    torch.testing.assert_close(mask.proxy.grad, expected)
    mask.proxy.grad = None
    with torch.no_grad():
        mask.proxy.zero_()  # init: all tied at 0, none active; the 36 places are shared by all 48 channels
    active_loss(mask, mask.target, "paper", 10.0, 0.01).backward()
    torch.testing.assert_close(mask.proxy.grad, torch.full((48,), (1 - 2 * 36 / 48) * 10.0 / 48))


def test_paper_active_margin_is_validated():
    with pytest.raises(ValueError, match="active_margin"):
        PATConfig(active_margin=-0.1)
