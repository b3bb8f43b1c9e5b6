"""``PATConfig.mask_init`` (ours): the calibration scores of the hidden channels and the ranked proxy they give."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pat import PATConfig, get_mask
from pat.arch import base_model, get_arch, get_module
from pat.importance import flap_scores, ranked_proxy, taylor_scores
from pat.method import PATStage
from pat.stage import RunContext
from tests.tiny import tiny_batch, tiny_model


def _pat(name="llama-mha", **kw):
    model = tiny_model(name)
    stage = PATStage(PATConfig(prune_ratio=0.25, lora_rank=0, **kw))
    return stage.prepare(model, RunContext(total_steps=30)), stage


def test_ranked_proxy_orders_by_score_and_keeps_exactly_n():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(48, generator=g)
    w = ranked_proxy(scores, keep=36, scale=0.05)
    assert int((w > 0).sum()) == 36
    assert torch.equal(torch.argsort(w, descending=True), torch.argsort(scores, descending=True))
    assert float(w.abs().max()) <= 0.05 + 1e-9
    assert torch.equal((w > 0), scores >= torch.topk(scores, 36).values[-1])


def test_ranked_proxy_rejects_keep_outside_range():
    with pytest.raises(ValueError, match="keep=48"):
        ranked_proxy(torch.rand(48), keep=48, scale=0.05)


def test_taylor_scores_equal_finite_differences_of_the_gate():
    """|dL_b/dM_i| at M = 1, summed over batches, against central differences of the loss in the proxy.

    At step 0 the gate is ``sigmoid(tau w) + 0.5`` with ``tau(0) = 1/(1 + 1e-6)``, so ``dM/dw = tau/4`` at w = 0 and
    ``dL/dM = 4/tau dL/dw``. The model runs in fp64 and the loss is taken in fp64 here (HF's own loss upcasts only to
    fp32, which would quantize the differences at ~1e-3); the gate is fp32 (``pat_parameters``), a relative rounding
    of 6e-8 on M. Measured (h = 1e-3): max abs error 2.0e-5 against scores up to 0.018, the O(h^2) truncation of
    the central difference. The bound 1e-4 + 0.1 % is 5x that floor; a missing ``abs``, a missing batch or a wrong
    gate factor moves scores by tens of percent.
    """
    model, _ = _pat()
    model.double()
    mask = get_mask(model)
    calib = torch.cat([tiny_batch(2, 12, seed=s) for s in (1, 2)])
    got = taylor_scores(model, calib, batch_size=2)
    assert float(mask.importance.abs().sum()) == 0.0  # the accumulator is left as it was
    tau = mask.tau()
    h = 1e-3
    want = torch.zeros(48, dtype=torch.float64)
    with torch.no_grad():
        for ids in calib.split(2):
            for i in range(48):
                losses = []
                for sign in (1, -1):
                    mask.proxy[i] = sign * h
                    mask.clear()
                    logits = model(input_ids=ids).logits.double()  # HF's own loss upcasts only to fp32
                    losses.append(float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())))
                    mask.proxy[i] = 0.0
                want[i] += abs((losses[0] - losses[1]) / (2 * h) * 4 / tau)
    mask.clear()
    assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-4), (got - want).abs().max()
    assert float(want.max()) > 0.01  # the check is not vacuous


def test_flap_scores_equal_the_norm_outputs_variance_times_reader_columns():
    """The hooks on the readers' inputs against the outputs of the norms that feed them (a different route)."""
    model, _ = _pat()
    calib = torch.cat([tiny_batch(2, 12, seed=s) for s in (1, 2)])
    got = flap_scores(model, calib, batch_size=2)

    base = base_model(model)
    arch = get_arch(base)
    outs: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        return lambda m, a, out: outs.setdefault(name, []).append(out.detach().reshape(-1, out.shape[-1]))

    layers = get_module(base, arch.layers)
    handles = []
    for i in range(len(layers)):
        handles.append(get_module(base, f"{arch.layers}.{i}.{arch.attn_norm}").register_forward_hook(keep(f"a{i}")))
        handles.append(get_module(base, f"{arch.layers}.{i}.{arch.mlp_norm}").register_forward_hook(keep(f"m{i}")))
    handles.append(get_module(base, arch.final_norm).register_forward_hook(keep("f")))
    with torch.no_grad():
        for ids in calib.split(2):
            model(input_ids=ids)
    for h in handles:
        h.remove()
    want = torch.zeros(48, dtype=torch.float64)
    for i in range(len(layers)):
        for key, readers in ((f"a{i}", arch.attn_in), (f"m{i}", arch.mlp_in)):
            var = torch.cat(outs[key]).double().var(0)
            for r in readers:
                want += var * get_module(base, f"{arch.layers}.{i}.{r}").weight.double().pow(2).sum(0)
    want += torch.cat(outs["f"]).double().var(0) * get_module(base, arch.lm_head).weight.double().pow(2).sum(0)
    # fp64 sums of fp32 activations: agreement to ~1e-6 relative; 1e-4 leaves margin, a wrong reader or a missing
    # square changes the score by far more
    assert torch.allclose(got.double(), want, rtol=1e-4), (got.double() - want).abs().max()


@pytest.mark.parametrize("by", ["taylor", "flap"])
def test_stage_starts_the_mask_ranked_with_exactly_n_active(by):
    model = tiny_model("llama-gqa-tied")
    stage = PATStage(PATConfig(prune_ratio=0.25, lora_rank=4, mask_init=by, mask_init_samples=4))
    calib = torch.cat([tiny_batch(2, 12, seed=s) for s in (1, 2)])
    model = stage.prepare(model, RunContext(total_steps=30, calibration=lambda n: calib[:n]))
    mask = get_mask(model)
    assert int((mask.proxy > 0).sum()) == mask.target == 36
    rep = stage.report()["mask_init"]
    assert rep["by"] == by and rep["samples"] == 4
    assert rep["kept_channels"] == torch.nonzero(mask.proxy > 0).flatten().tolist()
    assert float(mask.proxy.detach().abs().max()) <= 0.05 + 1e-7
    assert len(set(mask.proxy.detach().tolist())) == 48  # a strict ranking, no ties


def test_zero_init_is_the_default_and_leaves_the_proxy_at_zero():
    model, stage = _pat()
    assert float(get_mask(model).proxy.abs().sum()) == 0.0
    assert "mask_init" not in stage.report()


def test_mask_init_without_calibration_names_the_field():
    with pytest.raises(ValueError, match="mask_init='taylor'"):
        _pat(mask_init="taylor")


@pytest.mark.parametrize("field,value", [("mask_init", "random"), ("mask_init_scale", 0.0),
                                         ("mask_init_samples", 0)])
def test_bad_mask_init_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"PATConfig.{field}="):
        PATConfig(**{field: value})
