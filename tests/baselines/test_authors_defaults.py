"""Each baseline's default is its authors' algorithm; the old behaviour stays reachable through a named option."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines import flap, llm_pruner, pruned_io, slicegpt, wanda_sp
from baselines.common import LayerCost, attn_geom, count_params, removed_count, uniform_counts
from pat.arch import decoder_layers, get_arch, get_module
from tests.tiny import TINY, tiny_batch, tiny_model

CALIB = tiny_batch(8, 16, seed=3)
X = tiny_batch()


# ------------------------------------------------------------------------------------------------------ SliceGPT
@pytest.mark.parametrize("name", list(TINY))
def test_slicegpt_full_width_head_is_invariant_at_zero_slicing(name):
    m = tiny_model(name)
    with torch.no_grad():
        ref = m(X).logits
        sliced, rep = slicegpt.prune(copy.deepcopy(m), 0.0, CALIB)
        assert rep["slice_head"] is False and rep["head_hidden"] == m.config.hidden_size
        # the tiny-model invariance bound of test_baselines.test_slicegpt_computational_invariance (derived there)
        assert (sliced(X).logits - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["llama-gqa-tied", "qwen2", "gemma"])
def test_slicegpt_head_path_stays_d_wide_and_reloads(name, tmp_path):
    d = 48
    m, rep = slicegpt.prune(tiny_model(name), 0.3, CALIB)
    arch = get_arch(m)
    last = decoder_layers(m)[-1]
    assert rep["hidden_after"] == 32 and m.config.hidden_size == 32
    assert get_module(last, arch.mlp_out).out_features == d and last.mlp_shortcut_Q.shape == (32, d)
    assert get_module(m, arch.final_norm).weight.shape == (d,)
    assert get_module(m, arch.lm_head).in_features == d
    assert get_module(decoder_layers(m)[0], arch.mlp_out).out_features == 32
    with torch.no_grad():
        y = m(X).logits
    pruned_io.save_pruned(m, None, tmp_path / "ck")
    back = pruned_io.load_pruned(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(back(X).logits, y)


def test_slicegpt_slice_head_option_slices_everything():
    m, rep = slicegpt.prune(tiny_model("llama-mha"), 0.3, CALIB, slice_head=True)
    arch = get_arch(m)
    assert rep["head_hidden"] == 32 and get_module(m, arch.lm_head).in_features == 32
    assert decoder_layers(m)[-1].mlp_shortcut_Q.shape == (32, 32)


@pytest.mark.parametrize("slice_head", [False, True])
@pytest.mark.parametrize("name", list(TINY))
def test_slicegpt_analytic_param_count_is_exact(name, slice_head):
    m = tiny_model(name)
    for ratio, dn in ((0.3, 32), (0.6, 16)):
        pruned, rep = slicegpt.prune(copy.deepcopy(m), ratio, CALIB, slice_head=slice_head)
        assert rep["hidden_after"] == dn
        assert count_params(pruned) == slicegpt.sliced_params(m, dn, slice_head)


# ---------------------------------------------------------------------------------------------------------- FLAP
def _authors_flap_head_scores(model, calib):
    """FLAP's attention score written from the paper / authors' definition, independently of baselines.flap:
    fluctuation var_j of o_proj's input channel j over all tokens, WIFV_j = var_j * sum_i W_ij^2, squared,
    standardized over the layer's channels (mean, unbiased std), then averaged over each head's columns (with GQA:
    over the KV group's query heads)."""
    arch = get_arch(model)
    xs = {}
    hooks = [get_module(layer, arch.attn_out).register_forward_pre_hook(
        lambda mod, a, i=i: xs.setdefault(i, []).append(a[0].reshape(-1, a[0].shape[-1]).double()))
        for i, layer in enumerate(decoder_layers(model))]
    with torch.no_grad():
        for i in range(0, calib.shape[0], 8):
            model(input_ids=calib[i:i + 8])
    for h in hooks:
        h.remove()
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        x = torch.cat(xs[i])
        var = ((x - x.mean(0)) ** 2).mean(0)
        W = get_module(layer, arch.attn_out).weight.double()
        metric = (var * (W ** 2).sum(0)) ** 2
        z = (metric - metric.mean()) / metric.std(unbiased=True)
        g = attn_geom(layer, arch, model.config)
        out.append(z.reshape(g.n_kv, -1).mean(1))
    return out


@pytest.mark.parametrize("name", ["llama-mha", "qwen2"])
def test_flap_squared_attention_metric_equals_the_authors_formula(name):
    m = tiny_model(name)
    want = _authors_flap_head_scores(m, CALIB)
    stats = flap.flap_stats(m, CALIB)
    groups, _ = flap.wifv_scores(m, stats)
    for g, w in zip(groups, want):
        # both fp64 over the same fp32 statistics, in another order: relative ~1e-15; rtol 1e-6 leaves room for an
        # fp32 step in either path (eps 1.2e-7). Unsquared vs squared metrics differ by O(1) (asserted below)
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)
    plain, chans_plain = flap.wifv_scores(m, stats, square_attn=False)
    _, chans = flap.wifv_scores(m, stats)
    assert not torch.allclose(plain[0], groups[0])  # the option really is the unsquared metric
    for a, b in zip(chans, chans_plain):  # the MLP metric is never squared
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------------ Wanda-SP
def test_sequential_wanda_sp_sees_the_pruned_earlier_layers():
    m = tiny_model("llama-mha", num_hidden_layers=3)
    one_g, one_c = wanda_sp.wanda_scores(copy.deepcopy(m), CALIB)
    seq_g, seq_c, widths = wanda_sp.prune_sequential(copy.deepcopy(m), CALIB, [0, 1, 2], 0.25, 0.25)
    # layer 0 sees the same (unpruned) inputs through the same fp64 code: equal up to fp64 reassociation (~1e-15);
    # pruned inputs would differ at O(1e-2)
    torch.testing.assert_close(seq_g[0], one_g[0], rtol=1e-9, atol=0)  # layer 0: the same (unpruned) inputs
    torch.testing.assert_close(seq_c[0], one_c[0], rtol=1e-9, atol=0)
    for i in (1, 2):  # later layers read the outputs of pruned layers
        assert (seq_c[i] - one_c[i]).abs().max() > 1e-4 * one_c[i].abs().max()
    assert [w["kv_heads"] for w in widths] == [3, 3, 3] and [w["intermediate"] for w in widths] == [72, 72, 72]


def test_wanda_sp_defaults_to_sequential_and_one_pass_is_an_option():
    _, r1 = wanda_sp.prune(tiny_model("llama-mha", num_hidden_layers=3), 0.25, CALIB)
    _, r2 = wanda_sp.prune(tiny_model("llama-mha", num_hidden_layers=3), 0.25, CALIB, sequential=False)
    assert r1["sequential"] is True and r2["sequential"] is False and r1["rounding"] == "down"
    assert r1["params_after"] == r2["params_after"]  # same widths, (possibly) different units
    assert abs(r1["achieved_ratio"] - 0.25) <= 0.01


# ---------------------------------------------------------------------------------------------------- LLM-Pruner
@pytest.mark.parametrize("n,r", [(3, 0.25), (3, 0.34), (3, 0.5), (32, 0.2), (1536, 0.3), (1536, 0.333), (8, 0.0)])
def test_llm_pruner_rounding_removes_what_the_authors_formula_says(n, r):
    assert removed_count(n, r, "up") == n - int(n * (1 - r))
    assert removed_count(n, r, "nearest") == round(r * n)
    assert removed_count(n, r, "down") == int(r * n)
    cost = LayerCost(n, 1, 2 * n, 1)
    assert uniform_counts(cost, r, r, "up") == (min(n - int(n * (1 - r)), n - 1), 2 * n - int(2 * n * (1 - r)))


def test_llm_pruner_applies_the_authors_rounding_per_layer():
    _, rep = llm_pruner.prune(tiny_model("llama-mha", num_hidden_layers=3), 0.3, CALIB, layer_start=0, layer_end=3)
    assert rep["rounding"] == "up"
    for w in rep["widths"]:
        assert w["kv_heads"] == 4 - removed_count(4, rep["attn_ratio"], "up")
        assert w["intermediate"] == 96 - removed_count(96, rep["mlp_ratio"], "up")
    with pytest.raises(ValueError, match="rounding"):
        llm_pruner.prune(tiny_model("llama-mha"), 0.3, CALIB, rounding="ceil")
