"""The pruning baselines on tiny random models of every architecture, plus a few slow checks on SmolLM2."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from baselines import flap, llm_pruner, pruned_io, slicegpt, wanda_sp
from baselines.common import (
    LayerCost, attn_geom, attn_module_path, get_module, group_q_rows, prune_attention_groups,
    prune_mlp_channels,
    solve_uniform_ratio,
)
from pat.arch import count_params, decoder_layers, get_arch, head_dim
from pat.stage import RunContext, Stage
from tests.tiny import TINY, tiny_batch, tiny_model

CALIB = tiny_batch(8, 16, seed=3)
X = tiny_batch()

PRUNERS = {
    "llm_pruner": lambda m, r: llm_pruner.prune(m, r, CALIB, layer_start=0, layer_end=3),
    "llm_pruner_second_vector": lambda m, r: llm_pruner.prune(m, r, CALIB, importance="second", mode="vector",
                                                              layer_start=1, layer_end=3),
    "llm_pruner_random": lambda m, r: llm_pruner.prune(m, r, None, importance="random", layer_start=0, layer_end=3),
    "wanda_sp": lambda m, r: wanda_sp.prune(m, r, CALIB),
    "flap": lambda m, r: flap.prune(m, r, CALIB),
    "slicegpt": lambda m, r: slicegpt.prune(m, r, CALIB),
}


def _check_shapes(model, group: int) -> None:
    arch, cfg = get_arch(model), model.config
    hd = head_dim(cfg)
    for layer in decoder_layers(model):
        g = attn_geom(layer, arch, cfg)
        assert g.n_heads == g.n_kv * group  # a KV head always leaves with its whole query group
        assert get_module(layer, arch.attn_in[2]).out_features == g.n_kv * hd
        assert get_module(layer, arch.attn_out).in_features == g.n_heads * hd
        assert get_module(layer, attn_module_path(arch)).num_key_value_groups == group
        inter = get_module(layer, arch.mlp_out).in_features
        assert all(get_module(layer, p).out_features == inter for p in arch.mlp_in)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("method", list(PRUNERS))
def test_every_method_every_arch(name, method, tmp_path):
    m = tiny_model(name, num_hidden_layers=3)
    group = m.config.num_attention_heads // m.config.num_key_value_heads
    before = count_params(m)
    m, rep = PRUNERS[method](m, 0.3)
    assert rep["params_before"] == before and rep["params_after"] == count_params(m) < before
    _check_shapes(m, group)
    y = m(X).logits
    assert torch.isfinite(y).all()
    pruned_io.save_pruned(m, None, tmp_path / "ck")
    if pruned_io.is_pruned_checkpoint(tmp_path / "ck"):
        back = pruned_io.load_pruned(tmp_path / "ck")
    else:
        from transformers import AutoModelForCausalLM

        back = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert torch.equal(back(X).logits, y)


@pytest.mark.parametrize("name", ["llama-mha", "llama-gqa-tied", "qwen2"])
def test_removing_a_group_equals_zeroing_its_output_columns(name):
    """Removing KV group 0 (k/v head 0 and its query heads) == zeroing those heads' o_proj columns."""
    m = tiny_model(name)
    arch = get_arch(m)
    ref = copy.deepcopy(m)
    layer, ref_layer = decoder_layers(m)[0], decoder_layers(ref)[0]
    g = attn_geom(layer, arch, m.config)
    with torch.no_grad():
        get_module(ref_layer, arch.attn_out).weight[:, group_q_rows(torch.tensor([0]), g)] = 0
        get_module(ref_layer, arch.mlp_out).weight[:, :10] = 0
    prune_attention_groups(layer, arch, m.config, torch.arange(1, g.n_kv))
    prune_mlp_channels(layer, arch, torch.arange(10, 96))
    # the same sums minus exact zeros: only reassociation, measured 6e-8 (1 and 2 threads); a wrong group or row
    # index gives O(0.1)
    torch.testing.assert_close(m(X).logits, ref(X).logits, atol=1e-5, rtol=0)


def test_taylor_first_order_matches_manual_gradient():
    m = tiny_model("llama-gqa-tied")
    arch = get_arch(m)
    groups, chans = llm_pruner.taylor_scores(m, CALIB, [1])
    assert all(p.grad is None and p.requires_grad for p in m.parameters())  # no leftovers, flags restored
    m.zero_grad()
    m(input_ids=CALIB, labels=CALIB).loss.backward()
    layer = decoder_layers(m)[1]
    g = attn_geom(layer, arch, m.config)
    s = {p: (get_module(layer, p).weight * get_module(layer, p).weight.grad).abs() for p in
         (*arch.attn_in, arch.attn_out, *arch.mlp_in, arch.mlp_out)}
    q, kv = group_q_rows(torch.tensor([1]), g), torch.arange(g.hd, 2 * g.hd)
    want = (s[arch.attn_in[0]][q].sum() + s[arch.attn_in[1]][kv].sum() + s[arch.attn_in[2]][kv].sum()
            + s[arch.attn_out][:, q].sum())
    # the same fp32 products |w * grad|, summed in another order (fp64 in the scorer, fp32 here): relative error
    # <= eps 1.2e-7 x sqrt(terms <= 48 x 12) ~ 3e-6; a wrong row or column set changes the score by O(1) relative
    torch.testing.assert_close(groups[0][1], want.double(), rtol=1e-5, atol=0)
    want_c = s[arch.mlp_in[0]][5].sum() + s[arch.mlp_in[1]][5].sum() + s[arch.mlp_out][:, 5].sum()
    torch.testing.assert_close(chans[0][5], want_c.double(), rtol=1e-5, atol=0)


def test_ratio_solver_hits_smollm2_like_targets():
    """SmolLM2 geometry (24 pruned layers of 3 KV groups, 1536 channels): within 1 % at 20/25/30 %."""
    costs = [LayerCost(3, 294_912, 1536, 1728) for _ in range(24)]
    for target in (0.2, 0.25, 0.3):
        sol = solve_uniform_ratio(costs, 134_515_008, target)
        assert abs(sol["achieved"] - target) <= 0.01, sol
    with pytest.raises(ValueError, match="ratio"):
        solve_uniform_ratio(costs, 1, 1.5)


@pytest.mark.parametrize("name", list(TINY))
def test_slicegpt_computational_invariance(name):
    m = tiny_model(name)
    ref = m(X).logits
    # exact transformations in fp32 on the tiny models: |logit| <= 1.2 x eps 1.2e-7 x sqrt(48) x 9 stages ~ 9e-6
    # worst case; measured <= 2.7e-7 (fold, sliced, fp64 shortcut) on every architecture, 1 and 2 threads. A wrong
    # rotation or an unfolded norm gain gives >= 1e-2
    folded = slicegpt.fold_norms(copy.deepcopy(m))
    assert (folded(X).logits - ref).abs().max() < 1e-4
    sliced, rep = slicegpt.prune(copy.deepcopy(m), 0.0, CALIB)
    assert rep["hidden_after"] == m.config.hidden_size
    assert (sliced(X).logits - ref).abs().max() < 1e-4
    precise, _ = slicegpt.prune(copy.deepcopy(m), 0.0, CALIB, fp64_shortcut=True)
    assert (precise(X).logits - ref).abs().max() < 1e-4 and decoder_layers(precise)[0].fp64_shortcut
    assert isinstance(decoder_layers(sliced)[0], slicegpt.ShortcutDecoderLayer)


def test_slicegpt_shapes_and_ratio_report():
    m, rep = slicegpt.prune(tiny_model("llama-gqa-tied"), 0.3, CALIB)
    assert rep["hidden_after"] == 32 and m.config.hidden_size == 32  # int(0.7 * 48) = 33 -> multiple of 8
    assert rep["achieved_ratio"] != pytest.approx(0.3, abs=0.02)  # shortcut matrices and the untied head cost
    assert not m.config.tie_word_embeddings
    assert decoder_layers(m)[0].mlp_shortcut_Q.shape == (32, 32)
    assert decoder_layers(m)[1].mlp_shortcut_Q.shape == (32, 48)  # the head path stays d wide (slice_head=False)


def test_flap_bias_compensation_is_exact_for_constant_inputs():
    lin = nn.Linear(6, 4, bias=False)
    x = torch.randn(20, 6)
    x[:, [1, 4]] = torch.tensor([0.7, -1.3])  # removed channels never fluctuate
    want = lin(x)
    flap._ensure_bias(lin)
    flap._compensate(lin, x.double().mean(0), torch.tensor([1, 4]))
    kept = torch.tensor([0, 2, 3, 5])
    got = x[:, kept] @ lin.weight[:, kept].T + lin.bias
    # exact algebra in fp32 (the test is unseeded: any draw): |y| <= 3 x eps 1.2e-7 ~ 4e-7 per rounding; measured
    # worst 2.4e-7 over 2000 seeds. Compensating with the wrong mean (or none) gives ~0.5
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_flap_global_selection_is_adaptive_and_keeps_one_per_layer():
    costs = [LayerCost(2, 100, 4, 10), LayerCost(2, 100, 4, 10)]
    groups = [torch.tensor([5.0, 4.0]), torch.tensor([-5.0, -4.0])]
    chans = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([-1.0, -2.0, -3.0, -4.0])]
    gm, cm = flap.global_select(groups, chans, costs, remove=240)
    assert gm[0].all() and cm[0].all()  # layer 0 scores high everywhere: untouched
    assert gm[1].sum() == 1 and cm[1].sum() >= 1  # layer 1 pays the budget, but keeps one of each


def test_flap_sets_llama_bias_flags_and_reloads(tmp_path):
    m, _ = flap.prune(tiny_model("llama-mha", num_hidden_layers=3), 0.25, CALIB)
    assert m.config.attention_bias and m.config.mlp_bias
    assert all(get_module(layer, "mlp.gate_proj").bias is not None for layer in decoder_layers(m))


ONE_SHOT_STAGES = {"llm_pruner": llm_pruner.LLMPrunerStage, "wanda_sp": wanda_sp.WandaSPStage,
                   "flap": flap.FLAPStage, "slicegpt": slicegpt.SliceGPTStage}


@pytest.mark.parametrize("stage_name", list(ONE_SHOT_STAGES))
def test_stages_follow_the_stage_protocol(stage_name):
    cls = ONE_SHOT_STAGES[stage_name]
    stage = cls(ratio=0.25)
    assert isinstance(stage, Stage) and stage.param_groups(None, 1e-4) == []
    ctx = RunContext(calibration=lambda n=128, seq_len=128: tiny_batch(4, 16, seed=5), extra={"stage_index": 0})
    m = tiny_model("llama-gqa-tied")
    n0 = count_params(m)
    m = stage.prepare(m, ctx)  # first stage: prunes now (P->FT)
    assert count_params(m) < n0 and stage.report()["when"] == "prepare"
    assert stage.finalize(m, ctx) is m  # and passes through at the end
    late = cls(ratio=0.25)
    ctx.extra["stage_index"] = 1
    m2 = tiny_model("llama-gqa-tied")
    assert count_params(late.prepare(m2, ctx)) == n0  # after tuning (FT->P): nothing in prepare
    assert count_params(late.finalize(m2, ctx)) < n0 and late.report()["when"] == "finalize"


def test_bad_inputs_name_the_field():
    m = tiny_model("llama-mha")
    with pytest.raises(ValueError, match="calibration"):
        wanda_sp.prune(m, 0.2, [[1, 2]])
    with pytest.raises(ValueError, match="importance"):
        llm_pruner.prune(m, 0.2, CALIB, importance="third")
    with pytest.raises(ValueError, match="layer range"):
        llm_pruner.prune(m, 0.2, CALIB, layer_start=1, layer_end=9)
    with pytest.raises(ValueError, match="ratio"):
        llm_pruner.LLMPrunerStage(ratio=1.2)
    with pytest.raises(ValueError, match="taylor"):
        llm_pruner.LLMPrunerStage(ratio=0.2, taylor="param_first")


# ---------------------------------------------------------------------------------------------- slow: SmolLM2
@pytest.mark.slow
def test_smollm2_llm_pruner_ratio_and_slicegpt_invariance(smollm2):
    model, tok = smollm2
    for target in (0.2, 0.25, 0.3):
        _, rep = llm_pruner.prune(copy.deepcopy(model), target, None, importance="random")
        assert abs(rep["achieved_ratio"] - target) <= 0.01, rep["achieved_ratio"]
        assert rep["layer_range"] == [4, 28]
    # SmolLM2 (30 layers, logits up to ~35) sits at the fp32 noise floor, and that floor depends on the CPU's kernel
    # path (a fresh clone on an AMX Xeon measured err64 = 1.0e-4 against the old fixed bound 1e-4). So the floor is
    # measured here, on this machine's kernels: ``floor`` = dense fp32 vs its fp64 copy on the same tokens (AVX2,
    # 1 and 2 threads: 7.6e-5 and 6.2e-5). Measured in units of that floor, 1 thread / 2 threads:
    # - folding: 0.86 / 1.1 -> bound 4 floor;
    # - slicing at 0 % with fp64 skip-path products: 2.26 / 2.15 -> bound 7 floor;
    # - slicing with fp32 skip-path products, which rotate residual channels of magnitude ~23 000 into all channels:
    #   6.7 / 9.1 -> bound 30 floor (docs/baselines.md: 2.9e-4 on C4 text, 4.5e-4 on these tokens).
    # A real bug (a wrong rotation, a lost channel, an unfolded gain) moves logits by >= 1e-2, > 130 floor.
    ids = tiny_batch(2, 32, seed=7) + 1000
    calib = tiny_batch(8, 32, seed=8) + 1000
    with torch.no_grad():
        ref = model(ids).logits
        floor = float((copy.deepcopy(model).double()(ids).logits - ref.double()).abs().max())
        folded = slicegpt.fold_norms(copy.deepcopy(model))
        err_fold = float((folded(ids).logits - ref).abs().max())
        sliced, _ = slicegpt.prune(copy.deepcopy(folded), 0.0, calib)
        err = float((sliced(ids).logits - ref).abs().max())
        precise, _ = slicegpt.prune(folded, 0.0, calib, fp64_shortcut=True)
        err64 = float((precise(ids).logits - ref).abs().max())
    print(f"floor {floor:.2e}  fold {err_fold:.2e}  sliced {err:.2e}  sliced fp64 shortcut {err64:.2e}")
    assert 0 < floor < 1e-3, floor  # fp32 rounding on |logit| ~ 35 over 30 layers, not a broken model
    assert err_fold <= 4 * floor
    assert err <= 30 * floor
    assert err64 <= 7 * floor


def test_wanda_sp_layer_range_leaves_other_layers_alone():
    m, rep = wanda_sp.prune(tiny_model("llama-mha", num_hidden_layers=4), 0.2, CALIB, layer_start=1, layer_end=3)
    assert rep["layer_range"] == [1, 3] and [w["layer"] for w in rep["widths"]] == [1, 2]
    for i in (0, 3):
        assert get_module(decoder_layers(m)[i], "mlp.down_proj").in_features == 96
    assert abs(rep["achieved_ratio"] - 0.2) < 0.01
