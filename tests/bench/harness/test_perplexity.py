"""Perplexity: windowing conventions, numbers against an independent computation, recorded fields, bad input."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from bench.harness.datadir import DataError
from bench.harness.perplexity import _tokenize, load_text, perplexity, window_starts
from tests.tiny import tiny_model

DATA = os.environ.get("PAT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA, reason="PAT_DATA_DIR not set")


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<eos>`` = 257 ids), built in memory, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_lm(name: str = "llama-gqa-tied"):
    """A tiny random model whose vocabulary covers ``byte_tokenizer`` and whose context fits task prompts."""
    return tiny_model(name, vocab_size=260, max_position_embeddings=4096)


def test_window_starts_non_overlapping_drops_remainder():
    assert window_starts(10, 4, 4) == [(0, 3), (4, 3)]
    assert window_starts(3, 4, 4) == []


def test_window_starts_sliding_scores_only_new_tokens():
    w = window_starts(10, 4, 2)
    assert w == [(0, 3), (2, 2), (4, 2), (6, 2)]
    # every target position 1..9 is scored exactly once
    scored = [s + 4 - k + j for s, k in w for j in range(k)]
    assert scored == list(range(1, 10))


@needs_data
def test_texts_follow_the_paper_convention():
    wiki = load_text("wikitext2")
    rows = [json.loads(line)["text"] for line in open(os.path.join(DATA, "wikitext2/wikitext-2-raw-v1_test.jsonl"))]
    assert wiki == "\n\n".join(rows)
    ptb = load_text("ptb")
    assert ptb.startswith("no it was n't black monday") and " <unk> " in ptb
    assert len(ptb.split(" ")) == 78_669  # words of the PTB test set (shared/data README)
    with pytest.raises(ValueError, match="dataset: unknown perplexity dataset 'c4'"):
        load_text("c4")


def _manual_ppl(model, ids: torch.Tensor, seq_len: int) -> float:
    """exp(mean over windows of HF's own mean loss): the LLM-Pruner formula, computed independently."""
    losses = []
    for s in range(0, ids.numel() // seq_len * seq_len, seq_len):
        x = ids[s:s + seq_len][None]
        with torch.no_grad():
            losses.append(model(input_ids=x, labels=x).loss.item())
    return math.exp(sum(losses) / len(losses))


@needs_data
@pytest.mark.parametrize("dataset", ["wikitext2", "ptb"])
def test_ppl_equals_independent_computation(dataset):
    model, tok = tiny_lm(), byte_tokenizer()
    r = perplexity(model, tok, dataset, seq_len=64, max_tokens=64 * 5 + 7, batch_size=2)
    ids = tok(load_text(dataset)[:20_000], return_tensors="pt").input_ids[0][: 64 * 5 + 7]
    assert r["ppl"] == pytest.approx(_manual_ppl(model, ids, 64), rel=1e-5)
    assert (r["seq_len"], r["stride"], r["n_tokens"], r["n_scored"], r["n_windows"]) == (64, 64, 320, 315, 5)
    assert r["max_tokens"] == 64 * 5 + 7
    assert r["dataset"] == dataset and len(r["sha256"]) == 64
    # a random byte model is near-uniform over its 260 logits
    assert 100 < r["ppl"] < 1000


@needs_data
def test_ppl_batch_size_does_not_change_the_number():
    model, tok = tiny_lm("qwen2"), byte_tokenizer()
    a = perplexity(model, tok, "wikitext2", seq_len=32, max_tokens=32 * 6, batch_size=1)
    b = perplexity(model, tok, "wikitext2", seq_len=32, max_tokens=32 * 6, batch_size=4)
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)


@needs_data
def test_sliding_window_matches_hf_recipe():
    model, tok = tiny_lm(), byte_tokenizer()
    seq_len, stride, max_tokens = 32, 16, 32 * 4
    r = perplexity(model, tok, "wikitext2", seq_len=seq_len, stride=stride, max_tokens=max_tokens)
    ids = tok(load_text("wikitext2")[:20_000], return_tensors="pt").input_ids[0][:max_tokens]
    nll, count = 0.0, 0
    for i, (s, k) in enumerate(window_starts(max_tokens, seq_len, stride)):
        x = ids[s:s + seq_len][None]
        labels = x.clone()
        labels[:, : seq_len - k] = -100  # HF recipe: mask the context that was scored before
        with torch.no_grad():
            loss = model(input_ids=x, labels=labels).loss.item()
        nll, count = nll + loss * k, count + k
    assert r["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert r["n_scored"] == count == 31 + 6 * 16 and r["stride"] == 16


@needs_data
@pytest.mark.parametrize("kwargs, field", [
    (dict(seq_len=1), "seq_len"), (dict(seq_len=64, stride=65), "stride"),
    (dict(seq_len=64, max_tokens=10), "max_tokens"), (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        perplexity(tiny_lm(), byte_tokenizer(), "wikitext2", **kwargs)


@needs_data
def test_prefix_tokenization_equals_full_tokenization():
    tok = byte_tokenizer()
    text = load_text("ptb")
    full = tok(text, return_tensors="pt").input_ids[0]
    ids, total = _tokenize(tok, text, 1000)
    assert total is None and torch.equal(ids, full[:1000])
    ids, total = _tokenize(tok, text, None)
    assert total == full.numel() and torch.equal(ids, full)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset 'ptb' is missing: expected .*ptb_text_only_test.jsonl; fix:"):
        perplexity(tiny_lm(), byte_tokenizer(), "ptb", seq_len=16, data_dir=tmp_path)


@pytest.mark.slow
@needs_data
def test_smollm2_wikitext2_ppl_is_sane():
    from bench.harness.evaluation import load_model

    model, tok = load_model("smollm2-135m")
    r = perplexity(model, tok, "wikitext2", seq_len=128, max_tokens=128 * 8)
    assert 5 < r["ppl"] < 80, r
