"""The budget sweep's report (issue 20): arms x budgets from real cpu-suite records re-labelled as two budgets, with
one learned arm made better than the best importance arm at the larger budget by a known factor."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.harness.reporting import budget as B
from bench.harness.suites import SuiteError, expand, load_suite, parse_suite

CPU = Path(__file__).resolve().parents[3] / "results" / "cpu"
ARMS = {  # cpu-suite record -> (pipeline of the sweep, budget suffix)
    "smollm2-135m--pat--r0.25--s0": "pat",
    "smollm2-135m--pat_taylor--r0.25--s0": "pat_taylor",
    "smollm2-135m--llm_pruner+lora--r0.25--s0": "llm_pruner+lora",
    "smollm2-135m--flap+lora--r0.25--s0": "flap+lora",
    "smollm2-135m--lora--r0.00--s0": "lora",
}
SHIFT = 0.5  # at 80 steps the learned arm's per-token NLL is the best importance arm's minus this


def _load(name: str) -> dict:
    with open(CPU / f"{name}.json") as fh:
        return json.load(fh)


def _as_sweep(rec: dict, steps: int) -> dict:
    r = copy.deepcopy(rec)
    s = r["spec"]
    s0 = steps - 32
    pat = s["pipeline"][0].startswith("pat")
    s["suite"] = r["suite"] = "budget"
    s["budget"]["steps"] = steps
    s["budget_name"] = f"s0_{s0}" + ("_pat" if pat else "")
    if pat:
        for a in s["method_args"].values():
            a["milestone_step"] = s0
        for st in r["train"]["stages"].values():
            st["milestone_step"] = s0
    r["run_id"] = s["run_id"] = (f"{s['model']}--{'+'.join(s['pipeline'])}--r{s['ratio']:.2f}--{s['budget_name']}"
                                 f"--s{s['seed']}")
    return r


def _set_nll(rec: dict, nll: list[float], tokens: list[int]) -> None:
    p = rec["metrics"]["perplexity"]["wikitext2"]
    p["windows"] = {"nll": nll, "tokens": tokens}
    p["ppl"] = math.exp(sum(nll) / sum(tokens))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    if not all((CPU / f"{n}.json").exists() for n in ARMS):
        pytest.skip("the cpu suite's records are not here")
    out = tmp_path_factory.mktemp("budget")
    recs = {}
    for steps in (48, 80):
        for name in ARMS:
            r = _as_sweep(_load(name), steps)
            recs[(ARMS[name], steps)] = r
    flap = recs[("flap+lora", 80)]["metrics"]["perplexity"]["wikitext2"]["windows"]
    _set_nll(recs[("pat", 80)], [n - SHIFT * t for n, t in zip(flap["nll"], flap["tokens"])], flap["tokens"])
    # a learned arm with probes (the mask probe's record fields)
    recs[("pat", 80)]["train"]["probes"] = [
        {"step": s, "active": 432, "heldout_nll": 6.0 - s / 10, "heldout_ppl": math.exp(6.0 - s / 10),
         "proxy_topn": list(range(432)), "taylor_topn": list(range(10, 442)), "jaccard_proxy_taylor": 0.95,
         "jaccard_proxy_final": 1.0, "jaccard_taylor_final": 0.95} for s in (1, 2, 4, 8, 16)]
    dense = _load("smollm2-135m--dense--r0.00--s0")
    dense["suite"] = dense["spec"]["suite"] = "budget"
    for r in [*recs.values(), dense]:
        (out / f"{r['run_id']}.json").write_text(json.dumps(r))
    return out


CLAIMS = tuple(parse_suite({"suite": {"name": "t"}, "grid": [{"models": ["m"], "ratios": [0.0], "pipelines": [[]]}],
                            "claims": [{"a": ["pat"], "b": ["flap", "lora"], "ratio": 0.25, "metric": "ppl",
                                        "direction": "a_better", "steps": st} for st in (48, 80)]}).claims)


@pytest.fixture(scope="module")
def built(sweep):
    return B.build_budget_report(sweep, "budget", claims=CLAIMS, seed_records=CPU)


def test_sweep_frame_has_one_row_per_arm_and_budget(sweep, built):
    f = pd.read_csv(sweep / "sweep.csv")
    trained = f[f["arm"] != "dense"]
    assert sorted(trained["steps"].unique()) == [48, 80]
    assert len(trained) == 2 * len(ARMS)
    kinds = dict(zip(trained["arm"], trained["kind"]))
    assert kinds == {"pat": "learned", "pat_taylor": "importance", "llm_pruner+lora": "importance",
                     "flap+lora": "importance", "lora": "reference"}
    assert set(f[f["arm"] == "pat"]["s0"]) == {16, 48}
    assert set(trained["tokens"]) == {48 * 8 * 128, 80 * 8 * 128}


def test_the_pivot_holds_each_runs_perplexity(sweep, built):
    f = pd.read_csv(sweep / "sweep.csv")
    p = B.pivot(B.sweep_frame([json.loads(x.read_text()) for x in sweep.glob("*.json")], {}, "wikitext2"))
    assert list(p.columns) == ["arm [kind]", "48 steps (s0 = 16)", "80 steps (s0 = 48)"]
    assert p["arm [kind]"].iloc[0].endswith("[learned]") and p["arm [kind]"].iloc[-1].endswith("[reference]")
    row = p[p["arm [kind]"].str.startswith("FLAP")].iloc[0]
    assert row["80 steps (s0 = 48)"] == pytest.approx(f[(f["arm"] == "flap+lora") & (f["steps"] == 80)]["ppl"].iloc[0])
    assert "## Cost" in built.read_text()


def test_learned_arm_against_best_importance_arm_is_the_known_ratio(sweep, built):
    c = pd.read_csv(sweep / "comparisons.csv")
    row = c[(c["steps"] == 80) & (c["vs"] == "best importance arm")].iloc[0]
    assert "FLAP" in row["B"]  # the lowest importance perplexity of the cpu suite at 25 %
    assert row["ppl ratio A/B"] == pytest.approx(math.exp(-SHIFT), rel=1e-9)
    lo, hi = (float(x) for x in row["95 % CI"].split("]")[0].strip("[").split(","))
    # the pooled seed component widens it (one seed a side); a 0.5 nat cut stays below 1
    assert lo < math.exp(-SHIFT) < hi < 1.0
    row48 = c[(c["steps"] == 48) & (c["vs"] == "best importance arm")].iloc[0]
    assert row48["ppl ratio A/B"] > 10  # the count snap at 48 steps (ppl ~4e4) against FLAP P->FT (~237)


def test_crossover_sentence_names_the_first_winning_budget(built):
    md = built.read_text()
    assert "first beats the best importance-based arm" in md and "at 80 steps (s0 = 48)" in md


def test_no_crossover_is_stated_as_such(sweep):
    f = B.sweep_frame(json.loads("[]"), {}, "wikitext2")
    assert f.empty
    assert "No budget has" in B.crossover(pd.DataFrame())
    recs = [json.loads(p.read_text()) for p in sweep.glob("*.json") if "--s0_48" not in p.name]
    above = {"smollm2-135m": ["piqa", "hellaswag", "arc_easy"]}
    frame = B.sweep_frame(recs, above, "wikitext2")
    text = B.crossover(B.comparisons(recs, frame, None, above, "wikitext2"))
    assert text.startswith("No crossover within the budgets run (48 steps)")


def test_primary_claims_take_the_side_at_their_budget(sweep, built):
    p = pd.read_csv(sweep / "primary.csv")
    assert len(p) == 2
    at48, at80 = p.iloc[0], p.iloc[1]
    assert "48 steps" in at48["claim"] and "80 steps" in at80["claim"]
    assert at80["estimate"] == pytest.approx(math.exp(-SHIFT), rel=1e-9)
    assert at80["verdict"] == "ahead" and at80["as hypothesised"] == "yes"
    assert at48["verdict"] == "behind"


def test_selection_overlap_between_pat_arms(sweep, built):
    o = pd.read_csv(sweep / "selection_overlap.csv")
    assert set(o["steps"]) == {48, 80} and set(zip(o["A"], o["B"])) == {("pat", "pat_taylor")}
    a = json.loads((CPU / "smollm2-135m--pat--r0.25--s0.json").read_text())
    t = json.loads((CPU / "smollm2-135m--pat_taylor--r0.25--s0.json").read_text())
    ka, kt = (set(next(iter(r["train"]["stages"].values()))["kept_channels"]) for r in (a, t))
    assert o["jaccard"].iloc[0] == pytest.approx(len(ka & kt) / len(ka | kt))


def test_probe_table_and_plots(sweep, built):
    pr = pd.read_csv(sweep / "probes.csv")
    assert list(pr["step"]) == [1, 2, 4, 8, 16] and (pr["s0"] == 48).all()
    for name in ("ppl_vs_tokens", "acc_vs_tokens", "ratio_vs_tokens", "mask_probes"):
        assert (sweep / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    md = built.read_text()
    assert "## The mask's learning curve inside each PAT run" in md
    curve = B.probe_pivot(pr, "heldout_ppl")  # one row per learned run, one column per probe step
    assert list(curve["arm, budget"]) == ["pat (x1), s0 = 48"]
    assert list(curve.columns[1:]) == [f"step {s}" for s in (1, 2, 4, 8, 16)]
    assert curve["step 8"].iloc[0] == pytest.approx(math.exp(6.0 - 0.8))
    assert "| pat (x1), s0 = 48" in md
    vs_best = md.split("Against the best importance arm:")[1].split("Against LoRA:")[0]
    vs_lora = md.split("Against LoRA:")[1].split("## ")[0]
    assert "FLAP" in vs_best and "LoRA-16" not in vs_best and "LoRA-16" in vs_lora and "FLAP" not in vs_lora
    assert set(pr["kind"]) == {"learned"}
    assert B.probe_pivot(pr.assign(arm="pat_taylor", kind="importance"), "heldout_ppl").empty  # not a learned curve
    no_scale = pr.assign(mask_lr_scale=float("nan"), seed=1)
    assert list(B.probe_pivot(no_scale, "heldout_ppl")["arm, budget"]) == ["pat (x1), s0 = 48, seed 1"]


def test_budget_in_id_names_the_budget_and_claim_steps_are_checked():
    data = {"suite": {"name": "t", "budget_in_id": True},
            "budget": {"a": {"steps": 2}, "b": {"steps": 3}},
            "grid": [{"models": ["m"], "ratios": [0.0], "pipelines": [["lora"]], "budget": "a"},
                     {"models": ["m"], "ratios": [0.0], "pipelines": [["lora"]], "budget": "b"},
                     {"models": ["m"], "ratios": [0.0], "pipelines": [[]]}]}
    ids = [r.run_id for r in expand(parse_suite(data))]
    assert ids == ["m--lora--r0.00--a--s0", "m--lora--r0.00--b--s0", "m--dense--r0.00--s0"]
    data["suite"]["budget_in_id"] = False
    with pytest.raises(SuiteError, match="appears twice"):
        expand(parse_suite(data))
    data["suite"]["budget_in_id"] = "yes"
    with pytest.raises(SuiteError, match=r"\[suite\].budget_in_id"):
        parse_suite(data)
    bad = {"suite": {"name": "t"}, "grid": data["grid"][:1],
           "claims": [{"a": ["pat"], "b": [], "ratio": 0.25, "metric": "ppl", "direction": "a_better", "steps": 0}]}
    with pytest.raises(SuiteError, match=r"claims\[0\].steps"):
        parse_suite(bad)


def test_a_claim_at_steps_no_budget_has_is_refused():
    from bench.harness.suites import validate

    data = {"suite": {"name": "t", "budget_in_id": True}, "budget": {"a": {"steps": 2}},
            "models": {"m": {"random": {"kind": "llama"}}}, "stages": {"lora": {"rank": 2}},
            "grid": [{"models": ["m"], "ratios": [0.0], "pipelines": [["lora"], []], "budget": "a"}],
            "claims": [{"a": ["lora"], "b": [], "ratio": 0.0, "metric": "ppl", "direction": "a_better",
                        "steps": 3}]}
    with pytest.raises(SuiteError, match=r"claims\[0\].steps: the suite runs \['lora'\] at ratio 0.0 with no budget "
                                         r"of 3 steps"):
        validate(parse_suite(data))
    data["claims"][0]["steps"] = 2  # against the dense model, which has no budget
    assert validate(parse_suite(data))


def test_the_shipped_sweep_suite_runs_every_arm_at_every_budget():
    suite = load_suite("budget")
    runs = expand(suite)
    by = {}
    for r in runs:
        if r.pipeline:
            by.setdefault(r.budget["steps"], set()).add(r.pipeline_id)
            for name in r.pipeline:
                if r.stage_args.get(name, {}).get("stage", name) == "pat":
                    assert r.stage_args[name]["milestone_step"] == r.budget["steps"] - 32
    assert sorted(by) == [48, 80, 192, 544]
    assert all(v == {"pat", "pat_m10", "pat_m100", "pat_taylor", "flap+lora", "llm_pruner+lora", "lora"}
               for v in by.values())
    assert all(c.get("steps") == 544 for c in suite.claims) and len(suite.claims) == 6


def test_accuracy_above_chance_before_the_dense_run(sweep, tmp_path):
    """The sweep runs its dense model last: until then the model's recorded chance set decides the tasks."""
    for p in sweep.glob("*.json"):
        if "--dense--" not in p.name:
            (tmp_path / p.name).write_text(p.read_text())
    B.build_budget_report(tmp_path, "budget", claims=(), seed_records=None)
    f = pd.read_csv(tmp_path / "sweep.csv")
    assert "dense" not in set(f["arm"]) and f["acc_above_chance"].notna().all()
    full = pd.read_csv(sweep / "sweep.csv")
    assert list(f["acc_above_chance"]) == list(full[full["arm"] != "dense"]["acc_above_chance"])


def test_pat_bench_report_dispatches_a_sweep_to_its_report(sweep, tmp_path, capsys):
    from bench.cli.report import main

    assert main(["--suite", "budget", "--results", str(sweep), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "TABLES.md").read_text()
    assert "## The answer so far" in md and (tmp_path / "sweep.csv").exists()
    assert main(["--suite", "cpu", "--results", str(tmp_path / "none")]) == 2  # the suite report, no records


def test_run_seconds_count_the_processes_before_a_resume():
    """Cost of a resumed run: records with ``resumed_wall_seconds`` already count every process; older ones add the
    earlier processes' training seconds (``train_seconds`` sums all processes, ``wall_seconds`` is the last one's)."""
    straight = {"seconds": 100.0, "train": {"train_seconds": 70.0, "wall_seconds": 80.0}}
    assert B._run_seconds(straight) == 100.0
    old_resumed = {"seconds": 100.0, "train": {"train_seconds": 170.0, "wall_seconds": 80.0}}
    assert B._run_seconds(old_resumed) == 190.0  # + 90 s: at least that much earlier training (a lower bound)
    new_resumed = {"seconds": 230.0, "train": {"train_seconds": 170.0, "wall_seconds": 80.0,
                                                "resumed_wall_seconds": 120.0}}
    assert B._run_seconds(new_resumed) == 230.0  # the runner already added it
    assert B._run_seconds({"seconds": 5.0}) == 5.0 and B._run_seconds({"seconds": None}) is None
