"""PAT core on tiny random models of every supported architecture: identity, schedule, losses, merge, reload."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from pat.stage import RunContext, trainable_count
from pat import PATConfig, PATStage, attach, finalize, get_mask, hsms, merge_check, pat_loss, pat_param_count, set_step
from pat import schedule
from pat.arch import UnsupportedArchitectureError
from pat.losses import active_loss
from pat.modules import SharedMask
from tests.tiny import TINY, randomize_pat, tiny_batch, tiny_config, tiny_model

ARCHS = list(TINY)


def _prepare(name, steps=30, **kw):
    model = tiny_model(name)
    method = PATStage(PATConfig(**{"hio_rank": 4, "lora_rank": 4, **kw}))
    return method, method.prepare(model, RunContext(total_steps=steps))


def _randomize(model, seed=0):
    randomize_pat(model, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("lora", [0, 4])
def test_identity_at_init(name, lora):
    model = tiny_model(name)
    x = tiny_batch()
    ref = model(x).logits
    m = PATStage(PATConfig(hio_rank=4, lora_rank=lora, embed_hsm="full")).prepare(model, RunContext(total_steps=30))
    # identity at init: L1 = 0 and M = 1 make the HSM exact, so only fp32 reassociation remains (|logit| <= 1 x
    # eps 1.2e-7 x 9 stages ~ 1e-6); a non-identity init (L1 != 0, a gate != 1) moves logits by >= 1e-3
    assert (m(x).logits - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("identity", ["official", "paper", "none"])
@pytest.mark.parametrize("embed", ["full", "mask_only"])
def test_merge_equivalence_and_reload(name, identity, embed, tmp_path):
    method, model = _prepare(name, identity_loss=identity, embed_hsm=embed)
    _randomize(model)
    x = tiny_batch(seed=3)
    small = method.finalize(model, RunContext(extra={"heldout_ids": x}))
    rep = method.report()
    # fp32 merge bound of the tiny models: |logit| <= 1 (measured 0.995) x fp32 eps 1.2e-7 x sqrt(d = 48) ~ 7 x 9
    # rounding stages in series (2 layers x 4 + head) ~ 7.5e-6 worst case; measured 2.9e-7 on every architecture,
    # identity form and embedding mode, with 1 and 2 threads (two kernel paths). A fold bug (the official merge's
    # dropped scale, test_official_quirk_dropping_scale_breaks_equivalence) gives > 1e-3
    assert rep["merge_max_abs_logit_diff"] <= 1e-4
    assert type(small).__module__.startswith("transformers.")  # a stock class, no custom code
    assert small.config.hidden_size == rep["hidden_size_after"] == get_mask(model).target == 36
    small.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(again(x).logits, small(x).logits)
    if embed == "mask_only":
        assert small.config.tie_word_embeddings == bool(tiny_config(name).tie_word_embeddings)


@pytest.mark.parametrize("name", ["llama-mha", "llama-gqa-tied", "mistral", "gemma"])
def test_parameters_drop_by_achieved_ratio(name):
    # every weight of these architectures has exactly one hidden-size side, so params scale by d'/d exactly
    method, model = _prepare(name, embed_hsm="mask_only")
    _randomize(model)
    method.finalize(model, None)
    rep = method.report()
    assert rep["achieved_ratio"] == pytest.approx(0.25)
    assert rep["params_after"] == pytest.approx(rep["params_before"] * (1 - rep["achieved_ratio"]), abs=1)


def test_untying_costs_vocab_times_width():
    method, model = _prepare("llama-gqa-tied", embed_hsm="full")
    _randomize(model)
    small = method.finalize(model, None)
    rep = method.report()
    assert not small.config.tie_word_embeddings
    assert rep["params_after"] == round(rep["params_before"] * 0.75) + 128 * 36


def test_mask_only_embedding_keeps_gemma_tied_and_exact():
    method, model = _prepare("gemma", embed_hsm="auto")
    assert get_mask(model).embed_mode == "mask_only"
    _randomize(model)
    small = method.finalize(model, RunContext(extra={"heldout_ids": tiny_batch()}))
    assert small.config.tie_word_embeddings
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()
    assert method.report()["merge_max_abs_logit_diff"] <= 1e-4


def test_official_quirk_dropping_scale_breaks_equivalence():
    # the official merge ignores the learned scale s (pat-spec.md §8); reproducible only on request
    method, model = _prepare("llama-mha", official_quirks=True)
    _randomize(model)
    method.finalize(model, RunContext(extra={"heldout_ids": tiny_batch()}))
    assert method.report()["merge_max_abs_logit_diff"] > 1e-3


def test_gate_is_computed_once_per_forward():
    _, model = _prepare("llama-gqa-tied")
    mask = get_mask(model)
    before = mask.gate_computations
    model(tiny_batch())
    model(tiny_batch())
    assert mask.gate_computations - before == 2


@pytest.mark.parametrize(
    "s, tau, beta",
    [(0, 1.0, 0.5), (1000, 4.0, 0.4), (2500, 6.6, 0.25), (5000, 13.3, 0.0), (8000, 41.3, 0.0), (9999, 41.3, 0.0)],
)
def test_schedule_matches_spec_table(s, tau, beta):
    # pat-spec.md §4.2, G = 10 000
    assert schedule.tau(s, 10_000) == pytest.approx(tau, abs=0.05)
    assert schedule.beta(s, 10_000) == pytest.approx(beta)


@pytest.mark.parametrize("s, pos, neg", [(0, 1.12, 0.88), (1000, 1.28, 0.52), (2500, 1.22, 0.28), (5000, 0.9987,
                                                                                                   0.0013)])
def test_gate_values_match_spec_table(s, pos, neg):
    m = SharedMask(2, s0=10_000)
    with torch.no_grad():
        m.proxy.copy_(torch.tensor([0.5, -0.5]))
    m.set_step(s)
    g = m.compute_gate()
    assert g[0].item() == pytest.approx(pos, abs=0.01)
    assert g[1].item() == pytest.approx(neg, abs=0.01)


def test_task_gradient_stops_at_freeze_point_and_hard_after_s0_with_paper_schedule():
    m = SharedMask(4, s0=100)
    m.set_step(79)
    assert m.compute_gate().requires_grad
    m.set_step(80)
    assert not m.compute_gate().requires_grad
    assert schedule.tau(150, 100, freeze_frac=1.0) == schedule.HARD_TAU


@pytest.mark.parametrize("inclusive", [False, True])
def test_losses_finite_at_step0(inclusive):
    _, model = _prepare("llama-mha", keep_threshold="ge0" if inclusive else "gt0")
    loss = pat_loss(model)
    loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(get_mask(model).proxy.grad).all()


def test_active_loss_alone_lands_on_exactly_n():
    # a loss that treats every channel alike cannot split identical proxies, so start from small noise
    # (in training the task gradient through the gate breaks the tie)
    _, model = _prepare("llama-mha")
    mask = get_mask(model)
    torch.manual_seed(0)
    with torch.no_grad():
        mask.proxy.normal_(0, 0.1)
    opt = torch.optim.Adam([mask.proxy], lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        active_loss(mask, mask.target).backward()
        opt.step()
    assert int(mask.active().sum()) == mask.target == 36


def test_count_loss_pushes_the_right_way():
    m = SharedMask(10, s0=100)
    with torch.no_grad():
        m.proxy.copy_(torch.linspace(-1, 1, 10))  # 5 active
    active_loss(m, 8).backward()  # too few active: gradient descent must raise the proxies
    assert (m.proxy.grad < 0).any() and m.proxy.grad.mean() < 0


def test_identity_loss_reaches_every_hsm_unless_quirks():
    for quirks, expect_all in ((False, True), (True, False)):
        _, model = _prepare("llama-mha", official_quirks=quirks)
        pat_loss(model).backward()
        grads = [h.L0.grad is not None and h.L0.grad.abs().sum() > 0 for h in hsms(model)]
        assert all(grads) == expect_all
        assert grads[0] and grads[-1]


def test_snap_at_freeze_makes_count_exact():
    # s0 = 10, freeze at schedule step int(0.8 * 10) = 8, which the gate (one behind the optimizer, as the official
    # code) reaches after 9 optimizer steps
    _, model = _prepare("llama-mha", steps=30)
    mask = get_mask(model)
    with torch.no_grad():
        mask.proxy.copy_(torch.linspace(-1, 1, 48))
    set_step(model, 8)
    assert int(mask.active().sum()) == 24 and int(mask.step) == 7
    set_step(model, 9)
    assert int(mask.active().sum()) == mask.target == 36 and int(mask.snap_step) == 9


def test_gate_step_follows_the_official_trainer():
    # the official patched trainer writes global_step into the model before incrementing it: the forward of optimizer
    # step i (0-based) reads max(i - 1, 0); the freeze is at int(0.8 s0), not the float 0.8 s0
    assert [schedule.gate_step(done) for done in range(4)] == [0, 0, 1, 2]
    assert [schedule.gate_step(done, lag=0) for done in range(4)] == [0, 1, 2, 3]
    assert schedule.freeze_step(7) == 5 and schedule.mask_frozen(5, 7) and not schedule.mask_frozen(4, 7)
    assert schedule.tau(6, 7) == schedule.tau(5, 7) != schedule.tau(5.6, 7, freeze_frac=1.0)
    for lag, snap_at in ((1, 9), (0, 8)):  # gate_step_lag=0: the earlier schedule, one step ahead
        _, model = _prepare("llama-mha", steps=30, gate_step_lag=lag)
        mask = get_mask(model)
        set_step(model, snap_at - 1)
        assert not bool(mask.snapped)
        set_step(model, snap_at)
        assert bool(mask.snapped) and int(mask.step) == 8


def test_param_count_formula_matches_model():
    for embed in ("full", "mask_only"):
        method, model = _prepare("llama-mha", embed_hsm=embed)
        n = trainable_count(method.param_groups(model, 1e-3))
        assert n == pat_param_count(model.config, 4, 4, embed, "official")


def test_target_width_rounding():
    cfg = PATConfig(prune_ratio=0.25)
    assert [PATConfig(prune_ratio=r).target_keep(576, 9) for r in (0.2, 0.25, 0.3)] == [459, 432, 405]
    assert PATConfig(prune_ratio=0.25).target_keep(4096, 32) == 3072
    assert PATConfig(prune_ratio=0.3, align=1).target_keep(4096, 32) == 2867
    assert cfg.target_keep(48, 4) == 36


@pytest.mark.parametrize("field, value", [("prune_ratio", 1.0), ("prune_ratio", 0), ("hio_rank", 0),
                                          ("identity_loss", "orthogonal"), ("milestone_step", 1), ("align", -2)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"PATConfig.{field}="):
        PATConfig(**{field: value})


def test_rank_larger_than_hidden_is_rejected():
    with pytest.raises(ValueError, match="hio_rank"):
        attach(tiny_model("llama-mha"), PATConfig(hio_rank=49), total_steps=30)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama"):
        PATStage(PATConfig()).prepare(model, RunContext(total_steps=10))


def test_merge_check_detects_a_wrong_model():
    method, model = _prepare("llama-mha")
    _randomize(model)
    other = tiny_model("llama-mha", seed=5)
    small = finalize(model)
    assert merge_check(model, small, tiny_batch()) <= 1e-4
    other_small = PATStage(PATConfig(hio_rank=4)).prepare(other, RunContext(total_steps=30))
    get_mask(other_small).snap(36)
    assert merge_check(model, finalize(other_small), tiny_batch()) > 1e-2


def test_taylor_snap_keeps_the_channels_the_task_loss_depends_on():
    # channel importance |dL/dM_i * M_i| is accumulated from the task loss only; the snap keeps the top N by it
    method, model = _prepare("llama-mha", steps=30, snap_by="taylor")  # s0 = 10, snap after 9 optimizer steps
    mask = get_mask(model)
    x = tiny_batch(4, 12)
    for step in range(1, 10):
        out = model(input_ids=x, labels=x)
        (out.loss + pat_loss(model)).backward()
        set_step(model, step)
    imp = mask.importance.clone()
    assert (imp > 0).all() and bool(mask.snapped)
    assert set(torch.nonzero(mask.active()).flatten().tolist()) == set(torch.topk(imp, 36).indices.tolist())
    state = method.state_dict(model)
    assert torch.equal(state["pat_mask.importance"], imp) and bool(state["pat_mask.snapped"])
    before = mask.active().clone()
    set_step(model, 10)  # already snapped: nothing changes
    assert torch.equal(mask.active(), before)


@pytest.mark.parametrize("identity,quirks,ckpt", [("official", False, False), ("paper", False, False),
                                                  ("official", True, False), ("official", False, True)])
def test_identity_term_from_the_forward_equals_the_weights(identity, quirks, ckpt):
    """The HSMs compute their identity terms in their forward (so FSDP2 may reshard them after it); pat_loss sums
    those: value to 1e-7 and gradients equal to computing from the weights, also under activation checkpointing
    (its recompute must neither add a term nor replace the consumed one)."""
    _, model = _prepare("llama-mha", identity_loss=identity, official_quirks=quirks)
    _randomize(model)
    if ckpt:  # non-reentrant activation checkpointing of the HF layers, under the peft wrapper
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    covered = [h for h in hsms(model) if h.identity_form is not None and h.L0 is not None]
    assert len(covered) == (3 if quirks else len([h for h in hsms(model) if h.L0 is not None]))
    x = tiny_batch(2, 8)
    results = []
    for stashed in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same LoRA dropout in both runs
        out = model(input_ids=x, labels=x)
        assert all(h._identity is not None for h in covered)
        if not stashed:  # drop the stash: pat_loss computes from the weights
            for h in covered:
                h.take_identity_term(identity)
        loss = pat_loss(model)
        assert all(h._identity is None for h in covered)  # consumed
        (out.loss + loss).backward()
        assert all(h._identity is None for h in covered)  # the checkpoint recompute stashes nothing
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (la, ga), (lb, gb) = results
    assert abs(float(la - lb)) <= 1e-7
    assert ga.keys() == gb.keys() and any(".L0" in k for k in ga)
    for k in ga:
        # LoRA and the mask: bit for bit; L0/L1 sum their LM and identity gradients in another order (~1 ulp)
        tol = {"rtol": 1e-6, "atol": 1e-7} if k.endswith((".L0", ".L1")) else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(ga[k], gb[k], msg=k, **tol)
    model(input_ids=x)
    h = covered[0]
    with torch.no_grad():
        h.L0.add_(0.1)  # an optimizer step in place: the stashed term is stale, pat_loss recomputes it
    assert h.take_identity_term(identity) is None
