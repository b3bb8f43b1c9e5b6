"""Suite files: expansion into runs, stable run ids, validation of every name before any work, selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness.suites import (
    SUITES_DIR, SuiteError, expand, load_suite, parse_shard, parse_suite, resolve_stage, select, validate,
)

REPO = Path(__file__).resolve().parents[3]
STAGES = {"pat", "lora", "llm_pruner", "slicegpt", "flap", "wanda_sp"}
TASKS = {"piqa", "boolq", "arc_easy", "paper_piqa"}


def _suite(**over) -> dict:
    data = {
        "suite": {"name": "t", "seeds": [0], "train_data": "alpaca"},
        "eval": {"tasks": ["piqa"], "limit": 4},
        "budget": {"b": {"steps": 2, "global_batch": 2, "micro_batch": 2, "seq_len": 32}},
        "models": {"m1": "smollm2-135m", "m2": {"path": "/nowhere"}},
        "stages": {"lora": {"rank": 4}},
        "grid": [{"models": ["m1", "m2"], "ratios": [0.2, 0.25], "pipelines": [["pat"], ["llm_pruner", "lora"]],
                  "budget": "b"},
                 {"models": ["m1"], "ratios": [0.0], "pipelines": [[], ["lora"]], "budget": "b"}],
    }
    for k, v in over.items():
        data[k] = v
    return data


def test_expand_product_and_stable_ids():
    runs = expand(parse_suite(_suite()))
    assert len(runs) == 2 * 2 * 2 + 2
    ids = [r.run_id for r in runs]
    assert ids[:4] == ["m1--pat--r0.20--s0", "m1--llm_pruner+lora--r0.20--s0", "m1--pat--r0.25--s0",
                       "m1--llm_pruner+lora--r0.25--s0"]
    assert ids[-2:] == ["m1--dense--r0.00--s0", "m1--lora--r0.00--s0"]
    assert [r.run_id for r in expand(parse_suite(_suite()))] == ids  # pure: same input, same output
    lora = runs[-1]
    assert lora.budget == {"steps": 2, "global_batch": 2, "micro_batch": 2, "seq_len": 32, "seed": 0}
    assert lora.stage_args == {"lora": {"rank": 4}}
    assert runs[-2].budget == {} and not runs[-2].trains  # the dense run trains nothing


def test_seeds_and_per_grid_stage_args():
    d = _suite()
    d["grid"] = [{"models": ["m1"], "ratios": [0.0], "pipelines": [["lora"]], "seeds": [1, 2], "budget": "b",
                  "stage_args": {"lora": {"alpha": 8.0}}}]
    runs = expand(parse_suite(d))
    assert [r.run_id for r in runs] == ["m1--lora--r0.00--s1", "m1--lora--r0.00--s2"]
    assert runs[0].stage_args["lora"] == {"rank": 4, "alpha": 8.0}
    assert runs[1].budget["seed"] == 2


def test_shipped_suites_expand_to_the_documented_grids():
    ids = [r.run_id for r in expand(load_suite("cpu"))]
    assert len(ids) == 29 and ids[0] == "smollm2-135m--dense--r0.00--s0" and "smollm2-135m--pat--r0.25--s0" in ids
    assert {i.split("--")[1] for i in ids} == {"dense", "lora", "pat", "pat_taylor", "llm_pruner+lora",
                                              "lora+llm_pruner", "slicegpt+lora", "lora+slicegpt", "flap+lora",
                                              "wanda_sp+lora", "slicegpt_pct+lora"}
    for p in ("lora--r0.00", "pat_taylor--r0.25", "llm_pruner+lora--r0.25", "slicegpt+lora--r0.25"):
        assert {i.rsplit("--", 1)[1] for i in ids if f"--{p}--" in i} == {"s0", "s1", "s2"}, p
    for p in ("flap+lora--r0.25", "wanda_sp+lora--r0.25", "pat--r0.25", "slicegpt_pct+lora--r0.25"):
        assert [i for i in ids if f"--{p}--" in i] == [f"smollm2-135m--{p}--s0"], p
    trains = [("+" not in i.split("--")[1] or i.split("--")[1].endswith("+lora")) and "dense" not in i for i in ids]
    assert sum(trains) == 22 and sum(trains[0::2]) == sum(trains[1::2])  # --jobs 2: 11 trainings per shard
    assert len(expand(load_suite("paper"))) == 5 + 5 * 3 * 5
    short = expand(load_suite("short"))
    assert len(short) == 37  # 31 + the two exploratory wide-ramp arms, 3 seeds each
    kd = {r.pipeline_id for r in short if r.budget.get("distill_weight", 0) > 0}
    assert kd == {"pat_init_kd", "pat_taylor_kd", "pat_flapinit_kd", "pat_flapinit_wide_kd", "pat_init_wide_kd",
                  "llm_pruner+lora_kd", "flap+lora_kd"}
    assert {r.stage_args["pat_init"]["mask_init"] for r in short if r.pipeline_id == "pat_init"} == {"taylor"}
    assert {r.stage_args["pat_flapinit_kd"]["mask_init"] for r in short if r.pipeline_id == "pat_flapinit_kd"} == {
        "flap"}
    wide = {(a["mask_init"], a["mask_init_scale"]) for r in short if r.pipeline_id.endswith("_wide_kd")
            for a in [r.stage_args[r.pipeline_id]]}
    assert wide == {("flap", 3.0), ("taylor", 3.0)}
    assert [r.run_id for r in expand(load_suite("ci"))] == [
        "smollm2-135m--dense--r0.00--s0", "smollm2-135m--lora--r0.00--s0", "smollm2-135m--pat--r0.25--s0"]


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_suite_validates_against_the_real_registry_and_tasks(path):
    suite = load_suite(path)
    runs = validate(suite)  # the registry's stages, the evaluation's task names, TrainBudget fields
    assert runs and all(r.model in suite.models for r in runs)
    assert suite.claims, "every shipped suite names its primary claims ([[claims]], docs/statistics.md)"


_CLAIM = {"a": ["pat"], "b": ["llm_pruner", "lora"], "ratio": 0.25, "metric": "ppl", "direction": "a_better"}


def test_primary_claims_parse_with_b_ratio_defaulting_to_ratio():
    lora = {**_CLAIM, "b": ["lora"], "b_ratio": 0.0, "metric": "acc_above_chance", "name": "vs LoRA"}
    suite = parse_suite(_suite(claims=[_CLAIM, lora]))
    validate(suite, stages=STAGES, tasks=TASKS)
    assert suite.claims[0]["b_ratio"] == 0.25 and suite.claims[1]["b_ratio"] == 0.0
    assert parse_suite(_suite()).claims == ()


@pytest.mark.parametrize("claim, field", [
    ({k: v for k, v in _CLAIM.items() if k != "metric"}, "claims[0].metric is missing"),
    ({k: v for k, v in _CLAIM.items() if k != "direction"}, "claims[0].direction is missing"),
    ({**_CLAIM, "metric": "bleu"}, "claims[0].metric: 'bleu'"),
    ({**_CLAIM, "direction": "up"}, "claims[0].direction: 'up'"),
    ({**_CLAIM, "ratio": 1.2}, "claims[0].ratio: 1.2"),
    ({**_CLAIM, "b_ratio": "0"}, "claims[0].b_ratio: '0'"),
    ({**_CLAIM, "a": "pat"}, "claims[0].a: expected a pipeline"),
    ({**_CLAIM, "metrc": "ppl"}, "unknown key(s) ['metrc'] in claims[0]"),
])
def test_bad_claim_fields_are_named(claim, field):
    with pytest.raises(SuiteError) as e:
        parse_suite(_suite(claims=[claim]))
    assert field in str(e.value)


def test_a_claim_on_runs_the_suite_does_not_make_is_an_error():
    with pytest.raises(SuiteError, match=r"claims\[0\].b: the suite runs no pipeline \['slicegpt', 'lora'\] at ratio"):
        validate(parse_suite(_suite(claims=[{**_CLAIM, "b": ["slicegpt", "lora"]}])), stages=STAGES, tasks=TASKS)


@pytest.mark.parametrize("mutate, field, bad", [
    (lambda d: d["grid"][0].update(models=["m1", "nope-7b"]), "grid[0].models", "nope-7b"),
    (lambda d: d["grid"][0].update(pipelines=[["pat"], ["magic", "lora"]]), "grid[0].pipelines[1]", "magic"),
    (lambda d: d["eval"].update(tasks=["piqa", "mmlu_fake"]), "eval.tasks", "mmlu_fake"),
    (lambda d: d["grid"][0].update(budget="huge"), "grid[0].budget", "huge"),
    (lambda d: d["grid"][0].update(ratios=[1.5]), "grid[0].ratios", "1.5"),
    (lambda d: d["stages"].update(sparsegpt={}), "[stages.sparsegpt]", "sparsegpt"),
])
def test_unknown_names_fail_before_any_work_naming_the_field(mutate, field, bad):
    d = _suite()
    mutate(d)
    with pytest.raises(SuiteError) as e:
        validate(parse_suite(d), stages=STAGES, tasks=TASKS)
    assert field in str(e.value) and bad in str(e.value)


def test_structural_errors_name_the_key():
    with pytest.raises(SuiteError, match=r"unknown key\(s\) \['ratio'\] in grid\[0\]"):
        parse_suite(_suite(grid=[{"models": ["m1"], "ratio": [0.2], "ratios": [0.2], "pipelines": [["pat"]]}]))
    with pytest.raises(SuiteError, match=r"unknown key\(s\) \['limt'\] in \[eval\]"):
        parse_suite(_suite(eval={"tasks": ["piqa"], "limt": 3}))
    with pytest.raises(SuiteError, match=r"grid\[0\].pipelines is missing"):
        parse_suite(_suite(grid=[{"models": ["m1"], "ratios": [0.2]}]))
    with pytest.raises(SuiteError, match="pipelines must be a list of lists"):
        expand(parse_suite(_suite(grid=[{"models": ["m1"], "ratios": [0.2], "pipelines": ["pat"]}])))


def test_bad_budget_field_is_named():
    pytest.importorskip("bench.harness.budget")
    d = _suite()
    d["budget"]["b"]["lr"] = -1.0
    with pytest.raises(SuiteError, match=r"\[budget.b\].*TrainBudget.lr"):
        validate(parse_suite(d), stages=STAGES, tasks=TASKS)


def test_duplicate_runs_and_pruning_without_a_pruner_are_errors():
    d = _suite()
    d["grid"].append({"models": ["m1"], "ratios": [0.0], "pipelines": [["lora"]], "budget": "b"})
    with pytest.raises(SuiteError, match=r"m1--lora--r0.00--s0 appears twice"):
        expand(parse_suite(d))
    d = _suite(grid=[{"models": ["m1"], "ratios": [0.25], "pipelines": [["lora"]], "budget": "b"}])
    with pytest.raises(SuiteError, match="needs a pruning stage"):
        validate(parse_suite(d), stages=STAGES, tasks=TASKS)


def test_select_filters_and_shards_partition_the_grid():
    runs = expand(parse_suite(_suite()))
    assert {r.model for r in select(runs, models=["m2"])} == {"m2"}
    assert {r.ratio for r in select(runs, ratios=[0.25])} == {0.25}
    assert [r.run_id for r in select(runs, only="*pat--r0.2*")] == ["m1--pat--r0.20--s0", "m1--pat--r0.25--s0",
                                                                   "m2--pat--r0.20--s0", "m2--pat--r0.25--s0"]
    shards = [select(runs, shard=(i, 3)) for i in range(3)]
    assert sorted(r.run_id for s in shards for r in s) == sorted(r.run_id for r in runs)
    assert not set(r.run_id for r in shards[0]) & set(r.run_id for r in shards[1])


@pytest.mark.parametrize("text", ["3/3", "a/b", "1", "-1/2", "0/0"])
def test_bad_shard_is_rejected(text):
    with pytest.raises(SuiteError, match="expected i/n"):
        parse_shard(text)


def test_unknown_suite_lists_the_known_ones():
    with pytest.raises(SuiteError, match="known suites: .*cpu.*smoke"):
        load_suite("no-such-suite")


def test_named_variant_of_a_stage_gets_its_own_runs_and_args():
    d = _suite()
    d["stages"]["pat_taylor"] = {"stage": "pat", "display": "PAT (Taylor snap)", "snap_by": "taylor", "hio_rank": 8}
    d["grid"] = [{"models": ["m1"], "ratios": [0.25], "pipelines": [["pat"], ["pat_taylor"]], "budget": "b"}]
    suite = parse_suite(d)
    runs = validate(suite, stages=STAGES, tasks=TASKS)
    assert [r.run_id for r in runs] == ["m1--pat--r0.25--s0", "m1--pat_taylor--r0.25--s0"]
    assert runs[0].stage_args == {} and resolve_stage("pat", runs[0].stage_args) == ("pat", {})
    assert resolve_stage("pat_taylor", runs[1].stage_args) == ("pat", {"snap_by": "taylor", "hio_rank": 8})


@pytest.mark.parametrize("table, needle", [
    ({"stage": "nope"}, "[stages.pat_taylor].stage: 'nope' is not a registered stage"),
    ({"stage": 3}, "[stages.pat_taylor].stage: 3 is not a registered stage"),
])
def test_named_variant_of_an_unknown_stage_fails_naming_the_field(table, needle):
    d = _suite()
    d["stages"]["pat_taylor"] = table
    d["grid"] = [{"models": ["m1"], "ratios": [0.25], "pipelines": [["pat_taylor"]], "budget": "b"}]
    with pytest.raises(SuiteError) as e:
        validate(parse_suite(d), stages=STAGES, tasks=TASKS)
    assert needle in str(e.value)


def test_a_variant_may_not_shadow_a_registered_stage():
    d = _suite()
    d["stages"]["lora"] = {"stage": "pat"}
    with pytest.raises(SuiteError, match=r"\[stages.lora\] has stage = 'pat' but 'lora' is itself a registered stage"):
        validate(parse_suite(d), stages=STAGES, tasks=TASKS)


def test_old_section_names_fail_naming_the_new_ones():
    d = _suite()
    d["methods"] = d.pop("stages")
    with pytest.raises(SuiteError, match=r"the top level: \[methods.X\] was renamed to \[stages.X\]"):
        parse_suite(d)
    d = _suite()
    d["grid"][0]["method_args"] = {"lora": {"rank": 2}}
    with pytest.raises(SuiteError, match=r"grid\[0\]: method_args was renamed to stage_args"):
        parse_suite(d)


def test_prompt_format_is_pinned_by_every_shipped_suite_and_keeps_recorded_specs():
    from bench.harness import suites
    from pat.prompts import PROMPT_FORMATS

    assert suites.PROMPT_FORMATS == PROMPT_FORMATS  # suites.py keeps a torch-free copy
    for path in sorted(SUITES_DIR.glob("*.toml")):
        assert 'prompt_format = "alpaca"' in path.read_text(), path.name  # pinned in the file, not defaulted
        runs = expand(load_suite(path))
        assert {r.prompt_format for r in runs} == {"alpaca"}
        # the spec of an Alpaca run is the spec every recorded result has (no new key): finished runs stay finished
        assert all("prompt_format" not in r.to_dict() for r in runs)
    d = _suite()
    d["suite"]["prompt_format"] = "chat"
    runs = expand(parse_suite(d))
    assert {r.prompt_format for r in runs} == {"chat"} and all(r.to_dict()["prompt_format"] == "chat" for r in runs)


@pytest.mark.parametrize("bad", ["chatml", 1, ""])
def test_bad_prompt_format_names_the_field(bad):
    d = _suite()
    d["suite"]["prompt_format"] = bad
    with pytest.raises(SuiteError, match=r"\[suite\].prompt_format = .*expected one of 'auto', 'chat', 'alpaca'"):
        parse_suite(d)
