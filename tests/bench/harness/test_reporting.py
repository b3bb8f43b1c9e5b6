"""The report, built from fixture run records (tests/fixtures/report: real records of the runner, plus a failed
one)."""

from __future__ import annotations

import json
import re
import shutil
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (same API)
    import tomli as tomllib
from pathlib import Path

import pandas as pd
import pytest

from bench.harness import reporting as REP
from bench.harness.results import load_results

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "report"
SPEC_DOC = Path(__file__).resolve().parents[4] / "shared" / "docs" / "pat-spec.md"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    path = REP.build_report(FIX, "smoke", out)
    return out, re.sub(r" {2,}", " ", path.read_text()), load_results(FIX)  # table cells without their padding


def _expected_mean(rec, protocol="lm-eval-loglik-0shot") -> float:
    accs = [t["acc"] for t in rec["metrics"]["tasks"].values() if t["protocol"] == protocol]
    return 100 * sum(accs) / len(accs)


def test_tables_md_has_every_section_and_the_paper_reference(report):
    out, md, recs = report
    for section in ("## Main table (layout of the paper's Table 1)", "## Reference: the paper's Table 1",
                    "## Delta vs LoRA", "## Per-task accuracy (%): tiny-llama",
                    "## Parameters, perplexity and cost per run",
                    "## Throughput: prefill speedup vs the dense model", "## Failed runs", "## Plots"):
        assert section in md, section
    assert "arXiv:2408.14721" in md
    assert "| 25 % | PAT | PAT | **52.98** | **66.68** | **60.02** | **66.58** | **78.90** |" in md
    n_ok = sum(r["status"] == "success" for r in recs)
    assert f"from {len(recs)} run records" in md and f"({n_ok} succeeded, {len(recs) - n_ok} failed)" in md
    assert "tiny-llama--flap--r0.25--s0 | optimizer got an empty parameter list" in md  # a real failed record
    assert "CPU figures (`comparable=false`)" in md
    assert "## The paper's claims beside ours" in md
    assert "| PAT > LoRA FT at 25 % | 1.26 | tiny-llama |" in md  # 60.02 - 58.76, from paper_table1.toml


def test_claims_compare_pat_with_each_baseline_and_the_speedup_bound(report):
    out, md, recs = report
    runs, tp = REP.runs_frame(recs), REP.throughput_frame(recs)
    cl = REP.claims_table(runs, tp)
    lora = cl[cl["claim"] == "PAT > LoRA FT at 25 %"].iloc[0]
    by_id = {r["run_id"]: r for r in recs}
    want = _expected_mean(by_id["tiny-llama--pat--r0.25--s0"]) - _expected_mean(by_id["tiny-llama--lora--r0.00--s0"])
    assert lora["ours"] == pytest.approx(want)
    assert lora["status"] == "exploratory" and "acc verdict" not in cl  # verdicts only for primary claims
    assert lora["CI from"].startswith("no per-item data")  # fixture records predate per-item outcomes
    pruner = cl[cl["claim"] == "PAT > LLM-Pruner P→FT at 25 %"].iloc[0]
    assert pruner["paper (Llama2-7B)"] == pytest.approx(60.02 - 52.50)
    assert pruner["ours"] == pytest.approx(_expected_mean(by_id["tiny-llama--pat--r0.25--s0"])
                                           - _expected_mean(by_id["tiny-llama--llm_pruner+lora--r0.25--s0"]))
    speed = cl[cl["claim"].str.startswith("25 % model")].iloc[0]
    pat_tp = tp[(tp["family"] == "PAT")]
    assert speed["ours"] == pytest.approx(pat_tp["speedup"].max())


def test_main_table_cells_are_the_records_means(report):
    out, md, recs = report
    main = pd.read_csv(out / "main_table.csv")
    by_id = {r["run_id"]: r for r in recs}
    pat = main[(main["Method"] == "PAT") & (main["Ratio"] == "25 %")]
    assert pat["tiny-llama"].item() == pytest.approx(_expected_mean(by_id["tiny-llama--pat--r0.25--s0"]))
    lora = main[main["Method"].str.startswith("LoRA")]
    assert lora["Method"].item() == "LoRA-2" and lora["Mode"].item() == "FT"
    # Table 1 order: the 0 % rows, then per ratio LLM-Pruner, SliceGPT (P→FT before FT→P), PAT last
    assert list(zip(main["Method"], main["Mode"])) == [
        ("Dense", "—"), ("LoRA-2", "FT"), ("LLM-Pruner", "P→FT"), ("LLM-Pruner", "FT→P"), ("SliceGPT", "P→FT"),
        ("SliceGPT", "FT→P"), ("PAT", "PAT")]
    slice_ft = main[(main["Method"] == "SliceGPT") & (main["Mode"] == "P→FT")]
    expected = _expected_mean(by_id["tiny-llama--slicegpt+lora--r0.25--s0"])
    assert slice_ft["tiny-llama"].item() == pytest.approx(expected)


def test_csvs_reload_and_delta_vs_lora_is_a_difference(report):
    out, md, recs = report
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(recs) and set(runs["status"]) == {"success", "failed"}
    tasks = pd.read_csv(out / "per_task.csv")
    assert set(tasks["task"]) == {"piqa", "arc_easy"} and (tasks["protocol"] == "lm-eval-loglik-0shot").all()
    by_id = {r["run_id"]: r for r in recs}
    dl = REP.delta_vs_lora(REP.runs_frame(recs))
    got = dl[dl["Method"] == "PAT"]["tiny-llama"].item()
    want = _expected_mean(by_id["tiny-llama--pat--r0.25--s0"]) - _expected_mean(by_id["tiny-llama--lora--r0.00--s0"])
    assert got == pytest.approx(want)
    tp = pd.read_csv(out / "throughput.csv")
    pat = tp[(tp["method"] == "PAT") & (tp["batch_size"] == 1)]
    dense = tp[(tp["method"] == "Dense") & (tp["batch_size"] == 1)]
    assert pat["speedup"].item() == pytest.approx(dense["prefill_s"].item() / pat["prefill_s"].item())
    assert pat["bound"].item() == pytest.approx(1 / 0.75)


def test_plots_are_pngs(report):
    out, md, _ = report
    for name in ("acc_vs_params_tiny-llama.png", "ppl_vs_params_tiny-llama.png", "claims_forest.png",
                 "speedup_vs_batch_tiny-llama.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_report_cli_and_missing_results(tmp_path, capsys):
    from bench.report import main

    shutil.copytree(FIX, tmp_path / "smoke")
    assert main(["--suite", "smoke", "--results", str(tmp_path / "smoke")]) == 0
    assert (tmp_path / "smoke" / "TABLES.md").exists()
    assert main(["--suite", "nothing", "--results", str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().err


@pytest.mark.parametrize("pipeline, expected", [
    ([], ("Dense", "—")), (["lora"], ("LoRA-64", "FT")), (["pat"], ("PAT", "PAT")),
    (["llm_pruner", "lora"], ("LLM-Pruner", "P→FT")), (["lora", "slicegpt"], ("SliceGPT", "FT→P")),
    (["wanda_sp"], ("Wanda-SP", "P")),
])
def test_pipeline_labels(pipeline, expected):
    _, name, mode = REP.label(pipeline, {"lora": {"rank": 64}})
    assert (name, mode) == expected


def test_ratio_table_has_one_row_per_method_and_acc_ppl_cells():
    import pandas as pd

    rows = [("Dense", "Dense", "—", 0.0, 40.0, 60.0), ("PAT", "PAT", "PAT", 0.25, 30.0, 300.0),
            ("PAT", "PAT", "PAT", 0.3, 29.0, 400.0), ("LLM-Pruner", "LLM-Pruner", "P→FT", 0.25, 35.0, 250.0)]
    runs = pd.DataFrame([{"run_id": f"r{i}", "model": "m", "status": "success", "family": f, "method": n, "mode": mo,
                          "ratio": r, "acc": a, "ppl_wikitext2": p} for i, (f, n, mo, r, a, p) in enumerate(rows)])
    t = REP.ratio_table(runs, "m")
    assert list(t.columns) == ["Method", "Mode", "0 %", "25 %", "30 %"]
    assert t["Method"].tolist() == ["Dense", "LLM-Pruner", "PAT"]
    pat = t[t["Method"] == "PAT"].iloc[0]
    assert (pat["0 %"], pat["25 %"], pat["30 %"]) == ("", "30.00 / 300.0", "29.00 / 400.0")


def test_named_variants_are_labelled_by_their_display_name_or_stage():
    args = {"pat_taylor": {"stage": "pat", "display": "PAT (Taylor snap)"}, "lp2": {"stage": "llm_pruner"},
            "lora": {"rank": 8}}
    assert REP.label(["pat_taylor"], args) == ("PAT", "PAT (Taylor snap)", "PAT")
    assert REP.label(["lp2", "lora"], args) == ("LLM-Pruner", "LLM-Pruner (lp2)", "P→FT")
    assert REP.label(["lora", "lp2"], args) == ("LLM-Pruner", "LLM-Pruner (lp2)", "FT→P")
    # a named tuning stage (the short suite's LoRA + KD) gets its own name, so it is not pooled with plain LoRA
    kd = {"lora_kd": {"stage": "lora", "display": "LoRA + KD"}}
    assert REP.label(["flap", "lora_kd"], kd) == ("FLAP", "FLAP with LoRA + KD", "P→FT")
    assert REP.label(["lora_kd", "flap"], kd) == ("FLAP", "FLAP with LoRA + KD", "FT→P")
    assert REP.label(["flap", "lora"], kd) == ("FLAP", "FLAP", "P→FT")


def test_claims_are_made_per_pat_variant():
    import pandas as pd

    rows = [("Dense", "Dense", "—", 0.0, 40.0), ("LoRA", "LoRA-8", "FT", 0.0, 42.0),
            ("PAT", "PAT", "PAT", 0.25, 30.0), ("PAT", "PAT (Taylor snap)", "PAT", 0.25, 40.0),
            ("LLM-Pruner", "LLM-Pruner", "P→FT", 0.25, 35.0)]
    runs = pd.DataFrame([{"run_id": f"r{i}", "model": "m", "status": "success", "family": f, "method": n, "mode": mo,
                          "ratio": r, "acc": a, "acc_se": 1.0} for i, (f, n, mo, r, a) in enumerate(rows)])
    c = REP.claims_table(runs, pd.DataFrame())
    got = {row["claim"]: (row["ours"], row["_lo"], row["_hi"]) for _, row in c.iterrows()}
    # no per-item data: normal 95 % intervals from the independent s.e. (1 point each: +-1.96 sqrt(2) = +-2.77)
    h = 1.959964 * 2 ** 0.5
    for claim, d in (("PAT > LLM-Pruner P→FT at 25 %", -5.0), ("PAT (Taylor snap) > LLM-Pruner P→FT at 25 %", 5.0),
                     ("PAT (Taylor snap) > LoRA FT at 25 %", -2.0), ("PAT > LoRA FT at 25 %", -12.0)):
        assert got[claim] == (pytest.approx(d), pytest.approx(d - h, abs=1e-3), pytest.approx(d + h, abs=1e-3))
    assert set(c["status"]) == {"exploratory"}  # no suite claims given: nothing is primary


def test_paper_table_matches_the_spec_transcription():
    with open(REP.PAPER_TABLE, "rb") as fh:
        data = tomllib.load(fh)
    assert len(data["row"]) == 16 and all(len(r["values"]) == 5 for r in data["row"])
    if not SPEC_DOC.exists():
        pytest.skip("shared/docs/pat-spec.md not present")
    lines = [ln for ln in SPEC_DOC.read_text().splitlines() if re.match(r"^\| \d+ % \| (LoRA|LLM|Slice|\*\*PAT)", ln)]
    spec_rows = []
    for ln in lines[:16]:
        cells = [c.strip().strip("*") for c in ln.strip("|").split("|")]
        spec_rows.append([float(c) for c in cells[3:8]])
    assert spec_rows == [r["values"] for r in data["row"]]


def test_timings_on_a_loaded_host_are_flagged(tmp_path):
    for f in FIX.glob("*.json"):
        r = json.loads(f.read_text())
        if r.get("throughput"):
            r["throughput"]["host_load"] = {"loadavg_1min_before": 9.0, "loadavg_1min_after": 8.0, "cpu_count": 2}
        (tmp_path / f.name).write_text(json.dumps(r))
    md = REP.build_report(tmp_path, "smoke").read_text()
    assert "**Warning:** 7 run(s) were timed while the host's load average exceeded its core count" in md
    assert "(UNRELIABLE: timed on a loaded host)" in md


def test_a_partly_finished_suite_without_pruned_runs_still_reports(tmp_path):
    """Mid-run (``pat-bench report`` while the grid is still running) there may be no pruned record yet: no claims,
    no forest plot, and the rest of the report as usual."""
    for f in FIX.glob("*.json"):
        if f.name.split("--")[1] in ("dense", "lora"):
            shutil.copy(f, tmp_path / f.name)
    md = REP.build_report(tmp_path, "smoke").read_text()
    assert "## Main table (layout of the paper's Table 1)" in md and "## Paired comparisons at equal size" in md
    assert not (tmp_path / "claims_forest.png").exists()
    assert (tmp_path / "acc_vs_params_tiny-llama.png").exists()


def test_claims_only_at_ratios_where_the_pat_variant_ran(tmp_path):
    """A baseline at 30 % without a PAT run at 30 % makes no (empty) claim row."""
    for f in FIX.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    rec = json.loads((FIX / "tiny-llama--llm_pruner+lora--r0.25--s0.json").read_text())
    rec["spec"]["ratio"] = 0.30
    rec["run_id"] = rec["spec"]["run_id"] = "tiny-llama--llm_pruner+lora--r0.30--s0"
    (tmp_path / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    recs = load_results(tmp_path)
    runs, tp = REP.runs_frame(recs), REP.throughput_frame(recs)
    assert 0.30 in set(runs["ratio"])
    claims = REP.claims_table(runs, tp)["claim"]
    assert not claims.str.contains("at 30 %").any()
    assert (claims == "PAT > LLM-Pruner P→FT at 25 %").any()


def test_the_report_says_when_pat_masks_trained_too_few_steps(report, tmp_path):
    out, md, recs = report
    steps = [st["milestone_step"] for r in recs if r["status"] == "success"
             for st in (r.get("train") or {}).get("stages", {}).values() if "milestone_step" in st]
    assert steps and max(steps) < REP.FEW_MASK_STEPS
    assert f"**PAT's budget here:** its mask schedule's milestone s0 is at most step {max(steps)} " in md
    for f in FIX.glob("*.json"):
        if "--pat" not in f.name:
            shutil.copy(f, tmp_path / f.name)
    assert "PAT's budget here" not in REP.build_report(tmp_path, "smoke").read_text()
