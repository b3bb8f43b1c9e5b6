"""Documents of the paper's letter protocol (PAT spec §10), built from the same local files as the stock tasks.

Each ``process_<task>`` maps the raw rows to ``{"prompt", "gold_letter", "letters"}``:

- ``origin`` is the OpenCompass "gen"-style lettered question that PAT's ``dataset_eval/*.json`` files hold
  (``"Question: ...\\nA. ...\\nB. ...\\nAnswer:"``; BoolQ
  ``"{passage}\\nQuestion: {question}\\nA. Yes\\nB. No\\nAnswer:"``;
  PIQA ``"{goal}\\nA. {sol1}\\nB. {sol2}\\nAnswer:"``).
- ``prompt`` wraps it exactly as PAT's ``chat.py --chat debug-all`` does: the instruction
  ``"Answer the question by replying the index of the correct choice, which should be one of 'A', 'B'.\\n" + origin +
  "\\nThe index of the answer is"`` inside the Alpaca template of ``llama2-base-alpaca`` (the literal ``<s>`` of that
  template is left to the tokenizer).

Known differences from the paper's files: OpenBookQA uses the ``main`` config (the paper's ``openbookqa_fact`` adds
the supporting fact, which the local file does not hold); ARC keeps its 3- and 5-choice items (OpenCompass drops
them, hence the paper's 295/567 items); HellaSwag's prompt is OpenCompass's ``hellaswag_gen`` wording, rebuilt (the
paper's file was not available), on lm-eval's cleaned context and endings.
"""

from __future__ import annotations

import re

from bench.harness.data import format_prompt

LETTERS = "ABCDEFGH"


def alpaca(instruction: str) -> str:
    """The ``llama2-base-alpaca`` template of PAT (``bench.harness.data.format_prompt``), without the BOS text."""
    return format_prompt(instruction)


def letter_prompt(origin: str, n_choices: int) -> str:
    """PAT's instruction around an OpenCompass question, wrapped in the Alpaca template."""
    golds = ", ".join(repr(c) for c in LETTERS[:n_choices])
    instruction = (
        f"Answer the question by replying the index of the correct choice, which should be one of {golds}.\n"
        + origin + "\nThe index of the answer is"
    )
    return alpaca(instruction)


def _lettered(choices: list[str]) -> str:
    return "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices))


def _doc(origin: str, choices: list[str], gold: int) -> dict:
    return {"prompt": letter_prompt(origin, len(choices)), "gold_letter": LETTERS[gold],
            "letters": LETTERS[:len(choices)]}


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag preprocess (lm_eval/tasks/hellaswag/utils.py)
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def doc_boolq(d: dict) -> dict:
    origin = f"{d['passage']}\nQuestion: {d['question']}\nA. Yes\nB. No\nAnswer:"
    return _doc(origin, ["Yes", "No"], 0 if int(d["label"]) == 1 else 1)


def doc_piqa(d: dict) -> dict:
    return _doc(f"{d['goal']}\n{_lettered([d['sol1'], d['sol2']])}Answer:", [d["sol1"], d["sol2"]], int(d["label"]))


def doc_winogrande(d: dict) -> dict:
    opts = [d["option1"], d["option2"]]
    return _doc(f"Question: {d['sentence']}\n{_lettered(opts)}Answer:", opts, int(d["answer"]) - 1)


def doc_arc(d: dict) -> dict:
    texts = list(d["choices"]["text"])
    gold = list(d["choices"]["label"]).index(d["answerKey"])
    return _doc(f"Question: {d['question']}\n{_lettered(texts)}Answer:", texts, gold)


def doc_openbookqa(d: dict) -> dict:
    texts = list(d["choices"]["text"])
    gold = list(d["choices"]["label"]).index(d["answerKey"].strip())
    return _doc(f"Question: {d['question_stem']}\n{_lettered(texts)}Answer:", texts, gold)


def doc_hellaswag(d: dict) -> dict:
    ctx = _hellaswag_clean(d["ctx_a"] + " " + d["ctx_b"].capitalize())
    endings = [_hellaswag_clean(e) for e in d["endings"]]
    origin = (
        f"{ctx}\nQuestion: Which ending makes the most sense?\n{_lettered(endings)}"
        "You may choose from 'A', 'B', 'C', 'D'.\nAnswer:"
    )
    return _doc(origin, endings, int(d["label"]))


DOC_FUNCS = {
    "boolq": doc_boolq,
    "piqa": doc_piqa,
    "hellaswag": doc_hellaswag,
    "winogrande": doc_winogrande,
    "arc_easy": doc_arc,
    "arc_challenge": doc_arc,
    "openbookqa": doc_openbookqa,
}


def _process(task: str):
    fn = DOC_FUNCS[task]

    def process_docs(dataset):
        return dataset.map(fn, remove_columns=list(dataset.column_names))

    process_docs.__name__ = f"process_{task}"
    return process_docs


process_boolq = _process("boolq")
process_piqa = _process("piqa")
process_hellaswag = _process("hellaswag")
process_winogrande = _process("winogrande")
process_arc_easy = _process("arc_easy")
process_arc_challenge = _process("arc_challenge")
process_openbookqa = _process("openbookqa")
