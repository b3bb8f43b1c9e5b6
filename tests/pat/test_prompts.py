"""Instruction formats (``pat.prompts``): the chat template path, the Alpaca path, ``auto``, and bad values."""

from __future__ import annotations

import pytest

from pat.prompts import (
    IGNORE_INDEX, alpaca_prompt, check_prompt_format, encode_example, format_example, resolve_prompt_format,
    tokenize_example,
)

ROW = {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."}
ROW_INPUT = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
LAMINI = {"instruction": "Name a color.", "response": "Blue."}


class NoTemplateTokenizer:
    """A tokenizer without a chat template (a base model's): one id per character, EOS = 0."""

    eos_token_id, pad_token_id = 0, 0
    chat_template = None
    all_special_ids = [0]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ord(c) % 100 for c in text]}


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2[1]


def _user(row):
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


@pytest.mark.parametrize("row", [ROW, ROW_INPUT, LAMINI], ids=["alpaca", "alpaca-input", "lamini"])
def test_chat_prompt_is_exactly_apply_chat_template_and_labels_cover_response_and_end_of_turn(tok, row):
    response = row.get("output", row.get("response"))
    msgs = [{"role": "user", "content": _user(row)}]
    want_prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    want_ids = tok(want_prompt, add_special_tokens=False)["input_ids"]
    # the tokens the model is asked with at inference (apply_chat_template's own tokenization) start every example
    gen_ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    gen_ids = list(gen_ids["input_ids"]) if hasattr(gen_ids, "keys") else list(gen_ids)  # BatchEncoding in v5
    assert want_ids == gen_ids
    ids, labels = encode_example(tok, row, "chat", seq_len=512)
    n = len(want_ids)
    assert ids[:n] == want_ids
    assert labels[:n] == [IGNORE_INDEX] * n  # the prompt, system turn included, is masked
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(trained) == response + "<|im_end|>"  # the answer and the end-of-turn token, nothing else
    assert trained[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # the whole example is the template's full conversation; what follows <|im_end|> ("\n") is masked
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    assert tok.decode(ids) == full
    assert labels[-1] == IGNORE_INDEX and tok.decode(ids[-1:]) == "\n"
    assert format_example(row, tok, "chat") == {"prompt": want_prompt, "completion": full[len(want_prompt):]}


def test_chat_truncation_cuts_the_response_end_first(tok):
    full_ids, full_labels = encode_example(tok, ROW, "chat", seq_len=512)
    ids, labels = encode_example(tok, ROW, "chat", seq_len=len(full_ids) - 4)
    assert ids == full_ids[:-4] and labels == full_labels[:-4]


def test_alpaca_path_is_the_papers_prompt_response_and_eos(tok):
    ids, labels = encode_example(tok, ROW_INPUT, "alpaca", seq_len=512)
    p = tok(alpaca_prompt("Add the numbers.", "2 and 3"))["input_ids"]
    r = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == p + r and labels == [IGNORE_INDEX] * len(p) + r
    assert format_example(ROW_INPUT, tok, "alpaca") == {"prompt": alpaca_prompt("Add the numbers.", "2 and 3"),
                                                        "completion": "5"}


def test_auto_picks_chat_for_smollm2_instruct_and_alpaca_without_a_template(tok):
    assert resolve_prompt_format(tok, "auto") == "chat"
    assert resolve_prompt_format(tok, "alpaca") == "alpaca"
    base = NoTemplateTokenizer()
    assert resolve_prompt_format(base, "auto") == "alpaca"
    assert tokenize_example(ROW, base) == tokenize_example(ROW, base, "alpaca")
    with pytest.raises(ValueError, match="prompt_format = 'chat': the tokenizer has no chat template"):
        resolve_prompt_format(base, "chat")


def test_tokenize_example_for_trainer_users(tok):
    out = tokenize_example(ROW, tok, max_len=512)  # auto -> chat for the instruct tokenizer
    ids, labels = encode_example(tok, ROW, "chat", 512)
    assert out == {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


@pytest.mark.parametrize("bad", ["chatml", "", None, "Alpaca"])
def test_bad_format_names_the_field(tok, bad):
    with pytest.raises(ValueError, match=r"prompt_format = .*expected one of 'auto', 'chat', 'alpaca'"):
        check_prompt_format(bad)
    with pytest.raises(ValueError, match=r"prompt_format = "):
        tokenize_example(ROW, tok, bad)
    with pytest.raises(ValueError, match=r"--prompt-format = "):
        check_prompt_format(bad, field="--prompt-format")
