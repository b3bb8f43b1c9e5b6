"""PAT's mask learning curve from inside a run (``bench.harness.mask_probe``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bench.harness.mask_probe import MaskProbe, heldout_nll, jaccard, log_steps
from pat import get_mask
from tests.bench.harness.test_train import _pat_stage, budget, run
from tests.tiny import VOCAB

pytestmark = pytest.mark.usefixtures("one_thread")


def test_log_steps_and_jaccard():
    assert log_steps(16) == [1, 2, 4, 8, 16]
    assert log_steps(12) == [1, 2, 4, 8, 12]
    assert log_steps(0) == []
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and jaccard([], []) == 1.0


class CheckedProbe(MaskProbe):
    """The probe, plus the same measurement by an independent route: a deep copy of the model, snapped for good."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.independent: dict[int, float] = {}

    def __call__(self, model, step):
        if step in self.steps and not bool(get_mask(model).snapped):
            twin = copy.deepcopy(model)
            m = get_mask(twin)
            m.snap(m.target, by="proxy")
            twin.eval()
            self.independent[step] = heldout_nll(twin, self.heldout_ids)
        return super().__call__(model, step)


def test_probe_measures_the_current_top_n_and_leaves_training_unchanged(tmp_path):
    b = budget(steps=8, lr=5e-3)
    ids = torch.randint(2, VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    plain = run(tmp_path, stages=[_pat_stage()], b=b, name="plain", checkpoint_every=0, save_finalized=False)
    probe = CheckedProbe(ids, steps=[1, 2, 3, 8])
    probed = run(tmp_path, stages=[_pat_stage()], b=b, name="probed", checkpoint_every=0, save_finalized=False,
                 probes=[probe])
    assert probed["losses"] == plain["losses"]  # state restored exactly: the run trains as an unprobed one
    assert probed["stages"]["0-pat"]["kept_channels"] == plain["stages"]["0-pat"]["kept_channels"]
    pts = probed["probes"]
    assert pts  # s0 = 4: probes at steps before the freeze exist
    freeze = probed["stages"]["0-pat"]["selection"]["freeze_step"]
    assert [p["step"] for p in pts] == [s for s in (1, 2, 3) if s < freeze]  # none at or after the freeze
    n = probed["stages"]["0-pat"]["target_keep"]
    for p in pts:
        assert len(p["proxy_topn"]) == len(p["taylor_topn"]) == n
        # the independent route: same model state, snapped on a copy (fp32 forward: identical ops, ~1e-7)
        assert p["heldout_nll"] == pytest.approx(probe.independent[p["step"]], rel=1e-6)
        assert p["heldout_ppl"] == pytest.approx(math.exp(p["heldout_nll"]))
        assert 0 <= p["jaccard_proxy_taylor"] <= 1
        assert p["jaccard_proxy_final"] == jaccard(p["proxy_topn"], probed["stages"]["0-pat"]["kept_channels"])
