"""Evaluation: our task YAMLs render exactly the stock lm-eval requests; seeded subsets; the letter protocol;
metrics against an independent log-likelihood computation; the JSON record."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from bench.harness import evaluation as ev
from bench.harness.datadir import DATASETS
from tests.bench.harness.test_perplexity import byte_tokenizer, tiny_lm

DATA = os.environ.get("PAT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA, reason="PAT_DATA_DIR not set")
N_DOCS = 20


def _stock_task(name: str):
    """The stock lm-eval task config, loaded from the installed package and pointed at the same local file."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(ev.stock_yaml_path(name), resolve_func=True)
    split = ev.SPLIT[name]
    for key in ("tag", "group"):
        cfg.pop(key, None)
    cfg.update(dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {split: str(os.path.join(DATA, DATASETS[name]))}},
               training_split=None, validation_split=split if split == "validation" else None,
               test_split=split if split == "test" else None)
    return ConfigurableTask(config=cfg)


def _requests(task) -> list[tuple]:
    task.build_all_requests(limit=N_DOCS, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, tuple(i.args)) for i in task.instances]


def test_stock_yaml_paths_are_the_ones_lm_eval_indexes():
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    for name in ev.STD_TASKS:
        assert os.path.realpath(index[name].yaml_path) == str(ev.stock_yaml_path(name))


@needs_data
def test_our_tasks_render_the_stock_requests():
    ours = ev.load_tasks(list(ev.STD_TASKS))
    for name in ev.STD_TASKS:
        stock = _stock_task(name)
        mine = ours[name]
        assert _requests(mine) == _requests(stock), name
        docs_mine, docs_stock = list(mine.eval_docs)[:N_DOCS], list(stock.eval_docs)[:N_DOCS]
        for a, b in zip(docs_mine, docs_stock):
            assert mine.doc_to_text(a) == stock.doc_to_text(b)
            assert mine.doc_to_choice(a) == stock.doc_to_choice(b)
            assert mine.doc_to_target(a) == stock.doc_to_target(b)
        assert len(_requests(mine)) >= 2 * N_DOCS


@needs_data
def test_known_preprocessing_traps():
    tasks = ev.load_tasks(["hellaswag", "winogrande", "arc_easy", "boolq"])
    hs = tasks["hellaswag"]
    doc = list(hs.eval_docs)[0]
    # hellaswag: activity label + ctx_a + capitalized ctx_b, bracket tags stripped, int gold
    assert hs.doc_to_text(doc) == "Roof shingle removal: A man is sitting on a roof. He"
    assert all("[" not in c for d in list(hs.eval_docs)[:200] for c in hs.doc_to_choice(d))
    wg = tasks["winogrande"]
    _requests(wg)
    # winogrande partial scoring: the context differs per option, the continuation is the text after the blank
    assert [i.args for i in wg.instances[:2]] == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    arc = tasks["arc_easy"]
    _requests(arc)
    assert arc.instances[0].args[0].startswith("Question: ") and arc.instances[0].args[0].endswith("\nAnswer:")
    bq = tasks["boolq"]
    _requests(bq)
    assert [i.args[1] for i in bq.instances[:2]] == [" no", " yes"]


def test_sample_ids_are_seeded_sorted_and_unique():
    a = ev.sample_ids(1000, 50, seed=1)
    assert a == ev.sample_ids(1000, 50, seed=1) and a == sorted(set(a)) and len(a) == 50
    assert a != ev.sample_ids(1000, 50, seed=2)
    assert all(0 <= i < 1000 for i in a)
    assert ev.sample_ids(30, 50, seed=1) == list(range(30)) and ev.sample_ids(30, None, 1) == list(range(30))


def test_unknown_task_fails_before_model_work():
    with pytest.raises(ValueError,
                       match=r"tasks: unknown task\(s\) 'piqaa'; valid names: boolq piqa .* paper_openbookqa"):
        ev.evaluate_tasks(None, None, ["piqa", "piqaa"])
    with pytest.raises(ValueError, match="tasks: no tasks given"):
        ev.validate_tasks("")
    with pytest.raises(ValueError, match="limit: expected a positive integer"):
        ev.evaluate_tasks(None, None, ["piqa"], limit=0)


@needs_data
def test_letter_prompt_matches_pat_files():
    t = ev.load_tasks(["paper_piqa", "paper_winogrande", "paper_arc_challenge"])
    piqa = list(t["paper_piqa"].eval_docs)[0]
    # origin_prompt of item 0 of PAT's dataset_eval/base_piqa/piqa.json, wrapped as in chat.py
    origin = ("How do I ready a guinea pig cage for it's new occupants?\nA. Provide the guinea pig with a cage full "
              "of a "
              "few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle "
              "and a food dish.\nB. Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
              "jeans material, you will also need to supply it with a water bottle and a food dish.\nAnswer:")
    assert piqa["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAnswer the question by replying the index of the correct choice, which should be one of "
        f"'A', 'B'.\n{origin}\nThe index of the answer is\n\n### Response:\n")
    assert piqa["gold_letter"] == "A"
    wg = list(t["paper_winogrande"].eval_docs)[0]
    assert ("Question: Sarah was a much better surgeon than Maria so _ always got the easier cases.\nA. Sarah\nB. "
            "Maria\nAnswer:") in wg["prompt"] and wg["gold_letter"] == "B"
    cfg = t["paper_arc_challenge"].config
    assert cfg.generation_kwargs["max_gen_toks"] == 5 and cfg.generation_kwargs["do_sample"] is False
    assert cfg.filter_list[0]["filter"][0]["regex_pattern"] == "[ABCDE]"


def test_first_capital_filter_takes_the_first_valid_letter():
    from lm_eval.filters.extraction import RegexFilter

    f = RegexFilter(regex_pattern="[AB]", group_select=0, fallback="[invalid]")
    outs = ["The answer is B", "B. Take", "\nA.", "C or D", "b", "Sarah\nQuestion"]
    assert [r[0] for r in f.apply([[o] for o in outs], [{}] * len(outs))] == ["B", "B", "A", "[invalid]", "[invalid]",
                                                                              "[invalid]"]


def _manual_piqa_acc(model, tok, ids: list[int]) -> tuple[float, float]:
    """acc and acc_norm of piqa docs by summing token log-probs ourselves (no lm-eval)."""
    rows = [json.loads(line) for line in open(os.path.join(DATA, "piqa/validation.jsonl"))]
    acc = norm = 0
    for i in ids:
        d = rows[i]
        ctx = f"Question: {d['goal']}\nAnswer:"
        lls, lns = [], []
        for sol in (d["sol1"], d["sol2"]):
            c, full = tok(ctx).input_ids, tok(ctx + " " + sol).input_ids
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1].float(), -1)
            ll = sum(lp[j - 1, full[j]].item() for j in range(len(c), len(full)))
            lls.append(ll)
            lns.append(ll / len(sol))  # lm-eval normalises by the characters of the choice
        acc += int(lls.index(max(lls)) == d["label"])
        norm += int(lns.index(max(lns)) == d["label"])
    return acc / len(ids), norm / len(ids)


@needs_data
def test_tiny_model_metrics_equal_independent_loglik():
    model, tok = tiny_lm(), byte_tokenizer()
    r = ev.evaluate_tasks(model, tok, ["piqa", "paper_winogrande"], limit=12, seed=7, batch_size=4)
    p = r["tasks"]["piqa"]
    assert p["doc_ids"] == ev.sample_ids(1838, 12, 7) and p["n"] == 12 and p["n_docs_total"] == 1838
    acc, norm = _manual_piqa_acc(model, tok, p["doc_ids"])
    assert p["acc"] == pytest.approx(acc) and p["acc_norm"] == pytest.approx(norm)
    assert p["acc_stderr"] == pytest.approx((acc * (1 - acc) / 11) ** 0.5)
    assert p["protocol"] == ev.LOGLIK_PROTOCOL and p["sha256"] == r["data_sha256"]["piqa"] and p["chance"] == 0.5
    w = r["tasks"]["paper_winogrande"]
    assert w["protocol"] == ev.LETTER_PROTOCOL and w["acc_norm"] is None and 0 <= w["invalid_rate"] <= 1
    assert w["n"] == 12 and 0 <= w["acc"] <= 1
    assert r["mean"]["acc"] == p["acc"] and r["means"][ev.LETTER_PROTOCOL]["acc"] == w["acc"]
    assert r["protocols"] == sorted([ev.LOGLIK_PROTOCOL, ev.LETTER_PROTOCOL])


@needs_data
def test_evaluate_writes_a_complete_record_atomically(tmp_path):
    out = tmp_path / "sub" / "r.json"
    model, tok = tiny_lm("qwen2"), byte_tokenizer()
    rec = ev.evaluate(model, "boolq,arc_easy", 4, ppl="wikitext2", seq_len=32, max_tokens=64, out=out, tokenizer=tok,
                      batch_size=2)
    back = json.loads(out.read_text())
    assert back == json.loads(json.dumps(rec))
    assert back["n_params"] == sum(p.numel() for p in model.parameters())
    assert set(back["versions"]) >= {"torch", "transformers", "lm_eval"} and back["versions"]["lm_eval"]
    assert set(back["data_sha256"]) == {"boolq", "arc_easy", "wikitext2"}
    assert back["tasks"]["boolq"]["n"] == 4 and back["perplexity"]["wikitext2"]["n_tokens"] == 64
    assert back["mean"]["acc"] == pytest.approx((back["tasks"]["boolq"]["acc"] + back["tasks"]["arc_easy"]["acc"]) / 2)
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left behind


@needs_data
@pytest.mark.slow
def test_smollm2_piqa_above_chance():
    model, tok = ev.load_model("smollm2-135m")
    r = ev.evaluate_tasks(model, tok, ["piqa"], limit=100, seed=1234)
    # dense n=500 gives 0.620 +- 0.022 (results/dense/smollm2-135m.json); 100 docs must at least beat chance
    assert r["tasks"]["piqa"]["acc"] > 0.5, r["tasks"]["piqa"]
    assert re.fullmatch(r"[0-9a-f]{64}", r["data_sha256"]["piqa"])
