"""The pruned-checkpoint format: exact round trips, plain-HF fallback for uniform widths, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from baselines import pruned_io
from baselines.common import prune_attention_groups, prune_mlp_channels, sync_config
from pat.arch import decoder_layers, get_arch
from tests.tiny import TINY, tiny_batch, tiny_model


def _heterogeneous(name: str):
    """Layer 0 loses one KV group (with its query heads, when it has more than one), layer 1 loses MLP channels."""
    m = tiny_model(name, num_hidden_layers=2)
    arch, layers = get_arch(m), decoder_layers(m)
    n_kv = m.config.num_key_value_heads
    if n_kv > 1:
        prune_attention_groups(layers[0], arch, m.config, torch.arange(1, n_kv))
    prune_mlp_channels(layers[1], arch, torch.arange(0, 96, 2))
    sync_config(m)
    return m


@pytest.mark.parametrize("name", list(TINY))
def test_heterogeneous_round_trip_is_exact(name, tmp_path):
    m = _heterogeneous(name)
    x = tiny_batch()
    want = m(x).logits
    pruned_io.save_pruned(m, None, tmp_path / "ck")
    assert pruned_io.is_pruned_checkpoint(tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / pruned_io.MANIFEST).read_text())
    assert manifest["layers"][1]["linears"]["mlp.down_proj"][0] == 48
    back = pruned_io.load_pruned(tmp_path / "ck")
    assert torch.equal(back(x).logits, want)
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(Exception):  # stock loading refuses the per-layer widths (and we never ignore mismatches)
        AutoModelForCausalLM.from_pretrained(tmp_path / "ck")


def test_uniform_widths_save_as_plain_hf(tmp_path):
    m = tiny_model("llama-gqa-tied")
    arch = get_arch(m)
    for layer in decoder_layers(m):
        prune_attention_groups(layer, arch, m.config, torch.tensor([1]))
        prune_mlp_channels(layer, arch, torch.arange(40))
    sync_config(m)
    assert not pruned_io.needs_pruned_format(m)
    pruned_io.save_pruned(m, tmp_path / "hf")  # the (model, out_dir) form used by the trainer
    assert not pruned_io.is_pruned_checkpoint(tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    x = tiny_batch()
    assert torch.equal(back(x).logits, m(x).logits)


def test_load_model_reads_the_pruned_format(tmp_path):
    """``pruned_io.load_model`` recognises the format (model + tokenizer) and honours ``dtype``; ``pat.models.load``
    (stock checkpoints only) names the loader to use."""
    from transformers import AutoTokenizer

    from pat.models import ModelNotFoundError, load, resolve

    try:
        tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    except ModelNotFoundError as e:  # pragma: no cover
        pytest.skip(str(e))
    m = _heterogeneous("llama-mha")
    pruned_io.save_pruned(m, tok, tmp_path / "ck")
    back, tok2 = pruned_io.load_model(tmp_path / "ck", dtype=torch.float64)
    assert next(back.parameters()).dtype == torch.float64
    with pytest.raises(ModelNotFoundError, match="baselines.pruned_io.load_model"):
        load(tmp_path / "ck")
    assert tok2.vocab_size == tok.vocab_size
    x = tiny_batch()
    # fp64 model vs the fp32 original: the fp32 side's rounding, |logit| <= 1 x eps 1.2e-7 x sqrt(48) x 9 stages
    # ~ 8e-6 worst case; measured 1.2e-7 (1 and 2 threads). A weight loaded into the wrong slot gives >= 1e-2
    torch.testing.assert_close(back(x).logits.float(), m(x).logits, atol=1e-5, rtol=0)


def test_manifest_errors_name_the_field(tmp_path):
    m = _heterogeneous("mistral")
    pruned_io.save_pruned(m, None, tmp_path / "ck")
    mf = tmp_path / "ck" / pruned_io.MANIFEST
    bad = json.loads(mf.read_text())
    bad["layers"][0]["linears"]["self_attn.q_proj"] = [48, 24]
    mf.write_text(json.dumps(bad))
    with pytest.raises(pruned_io.PrunedCheckpointError, match=r"layers\[0\]\.linears\.self_attn\.q_proj"):
        pruned_io.load_pruned(tmp_path / "ck")
    bad["layers"][0]["linears"]["self_attn.q_proj"] = [48, 12, False]  # wrong width: weights no longer fit
    mf.write_text(json.dumps(bad))
    with pytest.raises((pruned_io.PrunedCheckpointError, RuntimeError)):
        pruned_io.load_pruned(tmp_path / "ck")
    bad["version"] = 99
    mf.write_text(json.dumps(bad))
    with pytest.raises(pruned_io.PrunedCheckpointError, match="format/version"):
        pruned_io.load_pruned(tmp_path / "ck")


def test_sliced_checkpoint_with_an_odd_width_loads(tmp_path):
    """SliceGPT leaves hidden sizes that stock configs refuse (SmolLM2: 456 with 9 heads); loading the model and its
    tokenizer must not go through that validation (regression: the tokenizer read config.json)."""
    from transformers import AutoTokenizer

    from baselines import slicegpt
    from pat.models import ModelNotFoundError, resolve

    try:
        tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    except ModelNotFoundError as e:  # pragma: no cover
        pytest.skip(str(e))
    m = tiny_model("llama-mha", num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3)  # head_dim 16
    calib = torch.randint(0, m.config.vocab_size, (4, 16))
    m, _ = slicegpt.prune(m, 0.2, calib)
    width = m.model.embed_tokens.weight.shape[1]
    assert width % m.config.num_attention_heads != 0, width  # the case stock validation refuses
    pruned_io.save_pruned(m, tok, tmp_path / "ck")
    back, tok2 = pruned_io.load_model(tmp_path / "ck")
    assert back.model.embed_tokens.weight.shape[1] == width and tok2.vocab_size == tok.vocab_size
    x = tiny_batch()
    # same weights, same dtype, same layer classes: measured bit-exact (1 and 2 threads); the bound only admits a
    # different kernel choice for a reshaped layer (reassociation, ~1e-7). A wrong shortcut matrix gives >= 1e-2
    torch.testing.assert_close(back(x).logits, m(x).logits, atol=1e-6, rtol=0)
