"""Ask a model three fixed questions, greedy, in its own chat template (or the Alpaca prompt); print the answers.

    PYTHONPATH=. python scripts/ask.py runs/demo-pat-25                # a pat-tune output directory
    PYTHONPATH=. python scripts/ask.py smollm2-135m                    # the dense model (a registered name)
    PYTHONPATH=. python scripts/ask.py runs/demo-pat-25 --format alpaca --json answers.json

The prompt is ``tokenizer.apply_chat_template([user], add_generation_prompt=True)`` (``--format chat``, the default),
exactly what ``pat.prompts.chat_prompt`` builds, or the paper's Alpaca prompt (``--format alpaca``). Decoding is
greedy (``do_sample=False``) for ``--max-new-tokens`` tokens, stopping at the tokenizer's EOS; the answer is printed
with special tokens, so an answer that is only the end-of-turn token shows as ``<|im_end|>``; ``p_eos`` is the
probability of EOS as the first answer token (why a model answers nothing).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from baselines.pruned_io import load_model
from pat.prompts import alpaca_prompt, chat_prompt

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the ocean.",
)


def ask(model, tok, question: str, fmt: str = "chat", max_new_tokens: int = 40) -> tuple[str, float]:
    """The greedy continuation of ``question``'s prompt, special tokens kept, up to and including EOS, and the
    probability of EOS as its first token."""
    if fmt == "chat":
        ids = tok(chat_prompt(tok, question), add_special_tokens=False, return_tensors="pt").input_ids
    else:
        ids = tok(alpaca_prompt(question), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                             output_scores=True, return_dict_in_generate=True)
    p_eos = float(torch.softmax(out.scores[0][0].float(), -1)[tok.eos_token_id])
    return tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=False), p_eos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model directory (pat-tune --out) or a registered name (smollm2-135m)")
    p.add_argument("--format", choices=["chat", "alpaca"], default="chat", help="prompt format (default: chat)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--json", default=None, help="also write the answers to this JSON file")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_model(a.model)
    model.eval()
    answers = []
    for q in QUESTIONS:
        text, p_eos = ask(model, tok, q, a.format, a.max_new_tokens)
        answers.append({"question": q, "answer": text, "p_eos_first": p_eos})
        print(f"Q: {q}\nA: {text!r}\np(EOS first) = {p_eos:.3g}\n")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"model": a.model, "format": a.format, "max_new_tokens": a.max_new_tokens, "greedy": True,
                       "answers": answers}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
