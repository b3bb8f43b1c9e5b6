"""The training step's speed-ups keep results equal: the LM head on response positions only (issue 18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.harness.data import IGNORE_INDEX
from bench.harness.train import _lm_loss_sum, _output_head
from pat.lora import LoRAConfig, apply_lora
from tests.tiny import VOCAB, tiny_model


def _batch(b: int = 3, t: int = 20) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths, prompts masked with -100 in the labels (as ``collate`` builds them)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels, att = ids.clone(), torch.ones_like(ids)
    for r, (prompt, n) in enumerate([(5, t), (9, t - 6), (3, t - 11)][:b]):
        labels[r, :prompt] = IGNORE_INDEX
        labels[r, n:] = IGNORE_INDEX
        att[r, n:] = 0
        ids[r, n:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": att}


def _full_logits_loss(model, batch) -> torch.Tensor:
    """The previous formulation: logits at every position, -100 targets ignored."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _loss_and_grads(fn, model, batch):
    model.zero_grad(set_to_none=True)
    loss = fn(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["llama-gqa-tied", "qwen2"])
def test_head_on_response_positions_equals_full_logits(name):
    model = apply_lora(tiny_model(name), LoRAConfig(rank=4, alpha=8, dropout=0.0)).train()
    batch = _batch()
    head = _output_head(model)
    rows = []
    probe = head.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[:-1].numel()))
    loss, grads = _loss_and_grads(_lm_loss_sum, model, batch)
    probe.remove()
    ref, ref_grads = _loss_and_grads(_full_logits_loss, model, batch)
    n_resp = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert rows == [n_resp] and n_resp < batch["input_ids"].numel() // 2  # the head saw the response rows only
    assert not head._forward_pre_hooks  # and the hook is gone afterwards
    # fp32 GEMM over a subset of rows may block its reductions differently: each logit moves by at most about
    # k * 2^-24 relative with k = hidden size (48), i.e. ~3e-6; a sum of positive NLL terms keeps that relative bound
    # (rel 1e-5: 3x margin); gradients sum the same per-position terms, so the same relative bound holds per tensor
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for n, g in ref_grads.items():
        assert torch.allclose(grads[n], g, rtol=1e-4, atol=1e-5 * g.abs().max().item()), n


def test_without_reachable_head_the_full_logits_are_selected():
    model = tiny_model("llama-mha").train()
    batch = _batch()
    ref = _full_logits_loss(model, batch)
    model.get_output_embeddings = lambda: None  # a model that does not expose its head
    assert _output_head(model) is None
    assert _lm_loss_sum(model, batch).item() == pytest.approx(ref.item(), rel=1e-6)  # same ops: rounding only


def test_hsm_mask_and_scale_folded_equal_the_two_products():
    """``h * (M * s)`` (one pass) against ``(h * M) * s`` (the formula): output and every gradient."""
    from pat.modules import HybridSparsifier, SharedMask

    torch.manual_seed(0)
    d, r = 48, 6
    mask = SharedMask(d, s0=10)
    with torch.no_grad():
        mask.proxy.copy_(torch.randn(d))
    hsm = HybridSparsifier(torch.nn.Identity(), mask, rank=r, scale=True, diag=False)
    with torch.no_grad():
        hsm.L1.copy_(0.1 * torch.randn(d, r))
        hsm.s.copy_(1 + 0.1 * torch.randn(d))
    x = torch.randn(2, 5, d)
    go = torch.randn(2, 5, d)
    params = [mask.proxy, hsm.L0, hsm.L1, hsm.s]

    def run(f):
        for p in params:
            p.grad = None
        mask.clear()
        out = f()
        out.backward(go)
        return out.detach(), [p.grad.clone() for p in params]

    def formula():
        h = x + (x @ hsm.L0.t()) @ hsm.L1.t()
        return (h * mask.gate()) * hsm.s

    got, g_got = run(lambda: hsm(x))
    ref, g_ref = run(formula)
    # the two orders differ by one float32 rounding per product (2^-24 relative each): rtol 1e-6 is ~8 roundings
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    for a, b in zip(g_got, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())  # sums of such terms over 10 rows


def test_adamw_is_fused_on_cpu_and_equals_the_single_tensor_loop():
    from bench.harness.budget import TrainBudget
    from bench.harness.train import make_optimizer

    budget = TrainBudget(steps=5, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 48), (48, 4), (48,)]
    a = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    init = [p.detach().clone() for p in a]
    opt = make_optimizer([{"params": a, "lr": 1e-2}], budget)
    ref = torch.optim.AdamW([{"params": b, "lr": 1e-2, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.999),
                            eps=1e-8, foreach=False)
    assert opt.defaults["fused"] is True and (opt.defaults["betas"], opt.defaults["eps"]) == ((0.9, 0.999), 1e-8)
    for _ in range(5):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, q, gr in zip(a, b, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    # the fused kernel orders the same float32 operations differently: each update may differ by a few roundings
    # (2^-24 relative) of its terms; lr 1e-2 updates on O(1) parameters over 5 steps: atol 1e-6 is ~100 such roundings
    for p, q, p0 in zip(a, b, init):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
        assert (p - p0).abs().max() > 1e-3  # and both really moved (5 steps of ~lr each)
