"""scripts/short_diagnostics.py: the selection overlaps, the loss around the freeze and the teacher's share are read
from the records as they are, for the right run and seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "short_diagnostics.py"
spec = importlib.util.spec_from_file_location("short_diagnostics", SCRIPT)
D = importlib.util.module_from_spec(spec)
spec.loader.exec_module(D)


def _rec(pipeline, seed, kept, init=None, lm=None, distill=None, ppl=100.0):
    stage = {"kept_channels": kept, "selection": {"by": "proxy", "freeze_step": 3, "snap_changed": 0}}
    if init is not None:
        stage["mask_init"] = {"by": "taylor", "kept_channels": init}
    curves = [{"step": i + 1, "lm_loss": v} for i, v in enumerate(lm or [])]
    train = {"stages": {"0": stage}, "curves": curves, "train_seconds": 100.0}
    if distill:
        train["distill"] = distill
    return {"schema": 1, "run_id": f"m--{'+'.join(pipeline)}--s{seed}", "suite": "short", "provenance": {},
            "status": "success", "spec": {"pipeline": pipeline, "seed": seed},
            "metrics": {"perplexity": {"wikitext2": {"ppl": ppl}}}, "train": train}


def test_rows_overlap_freeze_and_teacher_share(tmp_path):
    lm = [2.0, 2.0, 2.0, 5.0, 4.0, 3.0] + [1.0] * 10  # freeze at step 3: before = steps 1-3, after = steps 4-6
    recs = [
        _rec(["pat_taylor"], 0, [0, 1, 2, 3]),
        _rec(["pat_taylor"], 1, [4, 5, 6, 7]),
        _rec(["pat_init_kd"], 0, [0, 1, 2, 9], init=[0, 1, 2, 9], lm=lm,
             distill={"teacher_forward_seconds": 25.0, "teacher_forward_flops": 1e12}),
        _rec(["flap", "lora"], 0, [0]) | {"train": {"curves": [], "train_seconds": 50.0}},
    ]
    pat, kd = D.rows_of(recs, massive=[9, 4])
    row = next(r for r in pat if r["arm"] == "pat_init_kd")
    assert row["jaccard_init"] == 1.0
    assert row["jaccard_taylor_snap"] == pytest.approx(3 / 5)  # seed 0's Taylor snap, not seed 1's
    assert row["massive_kept"] == [9]
    assert row["lm_loss"] == {"before": 2.0, "peak_after": 5.0, "last10": 1.0}
    assert row["kd_loss"]["before"] is None
    assert [r["arm"] for r in pat] == ["pat_init_kd", "pat_taylor", "pat_taylor"]  # P->FT runs have no selection
    assert kd == [{"arm": "pat_init_kd", "seed": 0, "train_seconds": 100.0, "teacher_seconds": 25.0,
                   "teacher_share": 0.25, "teacher_flops": 1e12}]
    md = D.markdown(pat, kd, [9, 4])
    assert "| pat_init_kd | 0 | proxy | 3 | 0 | 1.000 | 0.600 | 9 | 100.0 |" in md
    assert "| pat_init_kd | 0 | 100 | 25 | 25 % | 1.00e+12 |" in md


def test_main_writes_json_and_md(tmp_path):
    res = tmp_path / "short"
    res.mkdir()
    (res / "a.json").write_text(json.dumps(_rec(["pat_init"], 0, [1, 2], init=[2, 3], lm=[1.0] * 5)))
    (res / "failed.json").write_text(json.dumps({"status": "failed", "spec": {"pipeline": ["pat"], "seed": 0}}))
    massive = tmp_path / "m.json"
    massive.write_text(json.dumps({"massive": [{"channel": 3}]}))
    assert D.main(["--results", str(res), "--massive", str(massive), "--out", str(tmp_path / "o.json"),
                   "--md", str(tmp_path / "o.md")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["pat"][0]["jaccard_init"] == pytest.approx(1 / 3) and out["pat"][0]["massive_kept"] == []
    assert "## Selections" in (tmp_path / "o.md").read_text()


def test_against_baselines_puts_pat_first(tmp_path):
    cols = "model,ratio,A,B,seeds,wikitext2 ppl ratio,_plo,_phi,Δ acc (above chance),_alo,_ahi\n"
    rows = ["m,0 %,Dense,LoRA-16,seeds 1/1,1.04,1.03,1.05,-1.0,-3.0,1.0",  # unpruned: left out
            "m,25 %,FLAP,PAT x,seeds 3/3,0.5,0.4,0.8,2.0,1.0,4.0",  # PAT second: turned round
            "m,25 %,PAT y,LLM-Pruner,seeds 3/3,0.9,0.8,0.95,1.0,0.5,2.0",
            "m,25 %,PAT x,PAT y,seeds 3/3,1.0,0.9,1.1,0.0,-1.0,1.0"]  # two PAT variants: left out
    (tmp_path / "pairs.csv").write_text(cols + "\n".join(rows) + "\n")
    got = D.against_baselines(tmp_path / "pairs.csv")
    assert [(r["pat"], r["baseline"]) for r in got] == [("PAT x", "FLAP"), ("PAT y", "LLM-Pruner")]
    x = got[0]
    assert (x["ppl_ratio"], x["ppl_lo"], x["ppl_hi"]) == pytest.approx((2.0, 1.25, 2.5))
    assert (x["acc_above"], x["acc_lo"], x["acc_hi"]) == pytest.approx((-2.0, -4.0, -1.0))
    md = D.against_markdown(got)
    assert "| PAT x | FLAP | seeds 3/3 | 2.000 | [1.250, 2.500] | -2.00 | [-4.00, -1.00] | no |" in md
    assert "| PAT y | LLM-Pruner | seeds 3/3 | 0.900 | [0.800, 0.950] | 1.00 | [0.50, 2.00] | yes |" in md


def test_gap_to_lora_reads_only_the_lora_rows(tmp_path):
    cols = "claim,seeds,wikitext2 ppl ratio,_plo,_phi,Δ acc (above chance),_alo,_ahi\n"
    rows = ['"PAT x > LoRA FT at 25 %",seeds 3/3,6.5,6.0,7.0,-12.0,-15.0,-9.0',
            '"PAT x > LLM-Pruner P→FT at 25 %",seeds 3/3,1.1,1.0,1.2,-1.0,-2.0,0.0',
            '"PAT y > LoRA FT at 25 %",,,,,,,']  # no runs yet: left out
    (tmp_path / "claims.csv").write_text(cols + "\n".join(rows) + "\n")
    got = D.gap_to_lora(tmp_path / "claims.csv")
    assert [(r["pat"], r["ppl_ratio"], r["acc_lo"]) for r in got] == [("PAT x", 6.5, -15.0)]
    assert "| PAT x | seeds 3/3 | 6.50 | [6.00, 7.00] | -12.00 | [-15.00, -9.00] |" in D.gap_markdown(got)


def test_per_seed_and_pilot_tables_read_the_records(tmp_path):
    recs = [_rec(["pat_init"], 0, [1], ppl=300.0), _rec(["pat_init"], 2, [1], ppl=310.5),
            _rec(["flap", "lora"], 0, [1], ppl=238.4)]
    md = D.per_seed_markdown(recs)
    assert "| arm | seed 0 | seed 2 |" in md
    assert "| flap+lora | 238.4 | – |" in md and "| pat_init | 300.0 | 310.5 |" in md
    pilot = tmp_path / "scale10"
    pilot.mkdir()
    rec = _rec(["pat_w"], 0, [1], ppl=272.73)
    rec["spec"]["method_args"] = {"pat_w": {"stage": "pat", "mask_init": "flap", "mask_init_scale": 10.0,
                                            "milestone_frac": 2 / 3}}
    (pilot / "r.json").write_text(json.dumps(rec))
    (pilot / "failed.json").write_text(json.dumps({"status": "failed"}))
    md = D.pilots_markdown([pilot])
    assert md.count("| scale10 |") == 1
    assert "| scale10 | pat_w | 0 | flap | 10 | 0.6667 | 272.7 |" in md


def test_a_run_never_snapped_in_training_has_no_freeze_window(tmp_path):
    rec = _rec(["pat_late"], 0, [1, 2], lm=[2.0] * 12)
    rec["train"]["stages"]["0"]["selection"]["freeze_step"] = None  # snapped at finalize, after the last step
    pat, _ = D.rows_of([rec], massive=[2])
    assert pat[0]["lm_loss"] == {"before": None, "peak_after": None, "last10": 2.0}
    assert "| pat_late | 0 | proxy | – | 0 |" in D.markdown(pat, [], [2])


def test_against_baselines_skips_pairs_without_the_metrics(tmp_path):
    cols = "model,ratio,A,B,seeds,wikitext2 ppl ratio,_plo,_phi,Δ acc (above chance),_alo,_ahi\n"
    rows = ["m,25 %,PAT x,FLAP,seeds 3/3,,,,1.0,0.5,2.0",  # no perplexity for this pair: left out
            "m,25 %,PAT x,LLM-Pruner,seeds 3/3,0.9,0.8,0.95,1.0,0.5,2.0"]
    (tmp_path / "pairs.csv").write_text(cols + "\n".join(rows) + "\n")
    assert [r["baseline"] for r in D.against_baselines(tmp_path / "pairs.csv")] == ["LLM-Pruner"]
    (tmp_path / "acc_only.csv").write_text("model,ratio,A,B,seeds,Δ acc\nm,25 %,PAT x,FLAP,seeds 1/1,1.0\n")
    assert D.against_baselines(tmp_path / "acc_only.csv") == []
