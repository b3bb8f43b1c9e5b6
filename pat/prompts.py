"""Instruction formats for tuning: the tokenizer's chat template or the paper's Alpaca template (spec §9).

``prompt_format``:

* ``"alpaca"``: the paper's ``llama2-base-alpaca`` prompt (``alpaca_prompt``), then the response and EOS; the format
  PAT was trained with in the paper and the authors' code, and the one for base models.
* ``"chat"``: the tokenizer's own chat template (``tokenizer.apply_chat_template``): the prompt is exactly
  ``apply_chat_template([user], add_generation_prompt=True)``, i.e. the text the model sees when it is asked a
  question the way its tokenizer formats a chat (including the template's default system prompt, if it has one);
  the response is the rest of ``apply_chat_template([user, assistant])``, up to and including the end-of-turn token.
* ``"auto"`` (the default of ``pat-tune`` and ``tokenize_example``): ``"chat"`` when the tokenizer has a chat
  template, else ``"alpaca"``. An instruct model is then tuned in its own format instead of out of it.

Labels are ``-100`` on the prompt in both formats, so the loss is on the response tokens and the end-of-turn token
(EOS for Alpaca; for a chat template, the last special token of the assistant turn, e.g. ``<|im_end|>``); what the
template writes after it (ChatML's ``"\\n"``) is masked. Examples are cut at ``seq_len`` (the response end first).

Rows are Alpaca (``instruction``, ``input``, ``output``) or LaMini-style (``instruction``, ``response``); an Alpaca
``input`` is appended to the instruction after a blank line in the chat format (the user turn).

For ``transformers.Trainer`` / TRL ``SFTTrainer`` users (``pat.hf.PATCallback``)::

    from pat.prompts import tokenize_example
    ds = ds.map(lambda r: tokenize_example(r, tok, max_len=512), remove_columns=ds.column_names)  # Trainer

or ``format_example(row, tok)`` for SFTTrainer's prompt-completion datasets (``{"prompt", "completion"}``; SFTTrainer
then masks the prompt itself).
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
PROMPT_FORMATS = ("auto", "chat", "alpaca")

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt (spec §9 ``llama2-base-alpaca``), ending in ``"### Response:\\n"``."""
    if input and input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def check_prompt_format(value: Any, field: str = "prompt_format") -> str:
    """``value`` if it is one of ``PROMPT_FORMATS``; ``ValueError`` naming ``field`` otherwise."""
    if value not in PROMPT_FORMATS:
        raise ValueError(f"{field} = {value!r}: expected one of {', '.join(repr(f) for f in PROMPT_FORMATS)}")
    return value


def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` carries a chat template (``apply_chat_template`` would not raise for want of one)."""
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def resolve_prompt_format(tokenizer, prompt_format: str = "auto") -> str:
    """``"chat"`` or ``"alpaca"``: ``"auto"`` picks ``"chat"`` when the tokenizer has a chat template.

    ``ValueError`` for an unknown value, or for ``"chat"`` with a tokenizer that has no chat template.
    """
    check_prompt_format(prompt_format)
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "alpaca"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise ValueError("prompt_format = 'chat': the tokenizer has no chat template; use 'alpaca' (or 'auto')")
    return prompt_format


def row_fields(row: dict[str, Any], where: str = "row") -> tuple[str, str, str]:
    """``(instruction, input, response)`` of an Alpaca or LaMini-style row; ``ValueError`` naming the field."""
    if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
        raise ValueError(f"{where}: expected a JSON object with a string field 'instruction' "
                         "(Alpaca: instruction/input/output; LaMini: instruction/response)")
    if isinstance(row.get("output"), str):
        return row["instruction"], row.get("input") or "", row["output"]
    if isinstance(row.get("response"), str):
        return row["instruction"], "", row["response"]
    raise ValueError(f"{where}: no string field 'output' (Alpaca) or 'response' (LaMini-style)")


def user_message(instruction: str, input: str = "") -> str:
    """The user turn of the chat format: the instruction, then the Alpaca ``input`` after a blank line if any."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def chat_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """``apply_chat_template`` of one user turn with the generation prompt: what the model is asked at inference."""
    msgs = [{"role": "user", "content": user_message(instruction, input)}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _chat_completion(tokenizer, instruction: str, input: str, response: str) -> tuple[str, str]:
    prompt = chat_prompt(tokenizer, instruction, input)
    msgs = [{"role": "user", "content": user_message(instruction, input)}, {"role": "assistant", "content": response}]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("prompt_format = 'chat': the tokenizer's chat template does not render a conversation as "
                         "its generation prompt followed by the answer; use prompt_format = 'alpaca'")
    return prompt, full[len(prompt):]


def format_example(row: dict[str, Any], tokenizer, prompt_format: str = "auto",
                   where: str = "row") -> dict[str, str]:
    """``{"prompt", "completion"}`` text of one row (SFTTrainer's prompt-completion form).

    Alpaca: the completion is the response (EOS is added at tokenization). Chat: the completion is what the template
    writes after the generation prompt (response, end-of-turn token and whatever follows it).
    """
    instruction, inp, response = row_fields(row, where)
    if resolve_prompt_format(tokenizer, prompt_format) == "alpaca":
        return {"prompt": alpaca_prompt(instruction, inp), "completion": response}
    prompt, completion = _chat_completion(tokenizer, instruction, inp, response)
    return {"prompt": prompt, "completion": completion}


def _end_of_turn_cut(tokenizer, ids: list[int]) -> int:
    """Tokens of a chat completion to train on: through its last special token (the end-of-turn), or all."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for k in range(len(ids) - 1, -1, -1):
        if ids[k] in special:
            return k + 1
    return len(ids)


def encode_example(tokenizer, row: dict[str, Any], prompt_format: str, seq_len: int,
                   where: str = "row") -> tuple[list[int], list[int]]:
    """Token ids and labels of one row, cut at ``seq_len``: prompt (labels -100) + response + end-of-turn.

    ``prompt_format`` must be resolved (``"chat"`` or ``"alpaca"``); see the module docstring for what is labelled.
    """
    instruction, inp, response = row_fields(row, where)
    if prompt_format == "alpaca":
        p = tokenizer(alpaca_prompt(instruction, inp))["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return (p + r)[:seq_len], ([IGNORE_INDEX] * len(p) + r)[:seq_len]
    if prompt_format != "chat":
        raise ValueError(f"encode_example: prompt_format = {prompt_format!r}: expected 'chat' or 'alpaca' "
                         "(resolve 'auto' with resolve_prompt_format)")
    prompt, completion = _chat_completion(tokenizer, instruction, inp, response)
    # the template writes any BOS itself, so no special tokens are added: the prompt's ids are those of
    # apply_chat_template(..., tokenize=True, add_generation_prompt=True)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    n = _end_of_turn_cut(tokenizer, c)
    labels = [IGNORE_INDEX] * len(p) + c[:n] + [IGNORE_INDEX] * (len(c) - n)
    return (p + c)[:seq_len], labels[:seq_len]


def tokenize_example(row: dict[str, Any], tokenizer, prompt_format: str = "auto", max_len: int = 512,
                     where: str = "row") -> dict[str, list[int]]:
    """``input_ids``, ``labels`` (-100 on the prompt) and ``attention_mask`` of one row, for ``Trainer`` datasets.

    Use with ``datasets.Dataset.map`` and a collator that pads ``labels`` with -100 (e.g.
    ``DataCollatorForSeq2Seq(tokenizer)``).
    """
    ids, labels = encode_example(tokenizer, row, resolve_prompt_format(tokenizer, prompt_format), max_len, where)
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
