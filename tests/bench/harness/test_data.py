"""Instruction data: Alpaca template, response-only labels, truncation, seeded subsets, order."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.harness.data import (
    IGNORE_INDEX, PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt, global_batch_indices,
    load_instruction_data, normalize_row,
)
from bench.harness.datadir import DataError
from tests.bench.harness.test_train import CharTokenizer, write_alpaca


def _labelled_text(tok, labels):
    return tok.decode([v for v in labels if v != IGNORE_INDEX])


def test_template_matches_alpaca():
    assert format_prompt("Say hi") == PROMPT_NO_INPUT.format(instruction="Say hi")
    assert format_prompt("Sum", "1 2").endswith("### Instruction:\nSum\n\n### Input:\n1 2\n\n### Response:\n")
    assert format_prompt("Sum", "  ") == format_prompt("Sum")  # blank input -> the no-input template
    assert PROMPT_WITH_INPUT.startswith("Below is an instruction that describes a task, paired with an input")


def test_alpaca_and_lamini_rows():
    assert normalize_row({"instruction": "a", "input": "b", "output": "c"}) == (format_prompt("a", "b"), "c")
    assert normalize_row({"instruction": "a", "response": "c"}) == (format_prompt("a"), "c")
    with pytest.raises(ValueError, match="'output'.*'response'"):
        normalize_row({"instruction": "a", "answer": "c"}, where="f.jsonl row 3")
    with pytest.raises(ValueError, match="'instruction'"):
        normalize_row({"prompt": "a"})


def test_labels_are_response_only_with_eos(tmp_path):
    tok = CharTokenizer()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "Name a color.", "response": "Blue."}) + "\n")
    d = load_instruction_data(str(path), tok, seq_len=512)
    ids, labels = d.input_ids[0], d.labels[0]
    prompt = format_prompt("Name a color.")
    assert len(ids) == len(labels) == len(prompt) + len("Blue.") + 1
    assert all(v == IGNORE_INDEX for v in labels[: len(prompt)])
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id
    assert _labelled_text(tok, labels) == "Blue.\0"
    batch = d.collate([0, 0])
    assert batch["input_ids"].shape == (2, len(ids)) and int(batch["attention_mask"].sum()) == 2 * len(ids)


def test_truncation_and_dropped_examples(tmp_path):
    tok = CharTokenizer()
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "x", "output": "y" * 500}, {"instruction": "z" * 400, "output": "w"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = load_instruction_data(str(path), tok, seq_len=200)
    assert len(d) == 1 and d.record["dropped_no_response"] == 1  # the prompt of row 2 alone exceeds seq_len
    assert len(d.input_ids[0]) == 200 and d.labels[0][-1] != IGNORE_INDEX  # cut at seq_len, response end first
    padded = d.collate([0])
    assert padded["labels"].shape == (1, 200)


def test_seeded_subset_is_recorded_and_reproducible(tmp_path):
    tok = CharTokenizer()
    path = write_alpaca(tmp_path / "a.jsonl", n=40)
    a = load_instruction_data(str(path), tok, 512, subset_size=10, seed=1)
    b = load_instruction_data(str(path), tok, 512, subset_size=10, seed=1)
    c = load_instruction_data(str(path), tok, 512, subset_size=10, seed=2)
    assert a.input_ids == b.input_ids and a.input_ids != c.input_ids
    assert a.record["subset_size"] == 10 and a.record["data_seed"] == 1 and a.record["rows"] == 40
    assert len(a.record["sha256"]) == 64
    with pytest.raises(ValueError, match="subset_size = 41"):
        load_instruction_data(str(path), tok, 512, subset_size=41)


def test_alpaca_from_data_dir_by_name():
    d = load_instruction_data("alpaca", CharTokenizer(), 512, subset_size=50, seed=0)
    assert d.record["rows"] == 52002 and d.record["source"] == "alpaca"
    assert d.record["sha256"] == "8a752e792250510d2271085ce06eaef584ce03ecd94e47947fbc1942f949fd4b"
    assert len(d) + d.record["dropped_no_response"] == 50


def test_unknown_source_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="offline"):
        load_instruction_data("someone/some-dataset", CharTokenizer(), 64)
    with pytest.raises(DataError, match="not a known dataset"):
        load_instruction_data("no_such_thing", CharTokenizer(), 64)


def test_global_batch_order_covers_each_epoch_once():
    n, gb = 10, 4
    stream = [i for s in range(5) for i in global_batch_indices(n, s, gb, seed=7)]  # 20 = two epochs
    assert Counter(stream[:10]) == Counter(range(10)) and Counter(stream[10:]) == Counter(range(10))
    assert stream[:10] != stream[10:]  # a new permutation each epoch
    assert global_batch_indices(n, 3, gb, 7) == stream[12:16]  # a pure function of the step: resume needs no state
    assert global_batch_indices(n, 0, gb, 8) != stream[:4]


@pytest.mark.slow
def test_smollm2_tokenizer_labels():
    from pat.models import load

    _, tok = load("smollm2-135m")
    d = load_instruction_data("alpaca", tok, 256, subset_size=8, seed=0)
    for ids, labels in zip(d.input_ids, d.labels):
        n_prompt = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
        assert tok.decode(ids[:n_prompt]).endswith("### Response:\n")
        assert labels[n_prompt:] == ids[n_prompt:] and len(ids) <= 256
    full = [i for i, ids in enumerate(d.input_ids) if len(ids) < 256]
    assert full and all(d.input_ids[i][-1] == tok.eos_token_id for i in full)


def test_format_is_recorded_and_a_bad_value_names_the_field(tmp_path):
    path = write_alpaca(tmp_path / "a.jsonl", n=4)
    d = load_instruction_data(str(path), CharTokenizer(), 512)
    assert d.record["prompt_format"] == "alpaca" and d.record["template"] == "alpaca"  # the harness default
    d = load_instruction_data(str(path), CharTokenizer(), 512, prompt_format="auto")  # no chat template: alpaca
    assert d.record["prompt_format"] == "auto" and d.record["template"] == "alpaca"
    with pytest.raises(ValueError, match=r"prompt_format = 'chatml': expected one of 'auto', 'chat', 'alpaca'"):
        load_instruction_data(str(path), CharTokenizer(), 512, prompt_format="chatml")
    with pytest.raises(ValueError, match="prompt_format = 'chat': the tokenizer has no chat template"):
        load_instruction_data(str(path), CharTokenizer(), 512, prompt_format="chat")


@pytest.mark.slow
def test_smollm2_chat_format_from_the_data_dir(smollm2):
    """``auto`` trains SmolLM2-Instruct in its own template: every prompt is apply_chat_template's, the labelled
    tokens end in <|im_end|> wherever the example was not cut."""
    _, tok = smollm2
    d = load_instruction_data("alpaca", tok, 256, subset_size=8, seed=0, prompt_format="auto")
    assert d.record["template"] == "chat"
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for ids, labels in zip(d.input_ids, d.labels):
        n_prompt = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
        assert tok.decode(ids[:n_prompt]).endswith("<|im_end|>\n<|im_start|>assistant\n")
        trained = [v for v in labels if v != IGNORE_INDEX]
        if len(ids) < 256:
            assert trained[-1] == end and labels[-1] == IGNORE_INDEX  # the "\n" after <|im_end|> is not trained
