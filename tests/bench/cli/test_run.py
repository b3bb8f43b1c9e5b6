"""``pat-bench run`` / ``python -m bench.run``: listing suites and runs without torch, errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.cli.main import main as pat_bench

REPO = Path(__file__).resolve().parents[3]


def test_list_and_dry_run_do_not_import_torch():
    code = ("import sys; from bench.run import main; "
            "rc = main(['--suite', 'cpu', '--list']) + main(['--suite', 'paper', '--dry-run', '--only', '*pat*']); "
            "assert rc == 0, rc; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "smollm2-135m--lora+slicegpt--r0.30--s0" in lines
    assert any(line.startswith("llama2-7b--pat--r0.25--s42  [todo]") for line in lines)


def test_run_cli_reports_a_bad_suite_field_with_exit_code_2(tmp_path, capsys):
    from bench.run import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[suite]\nname = "bad"\n[models.m]\nregistered = "smollm2-135m"\n'
                   '[[grid]]\nmodels = ["m", "ghost"]\nratios = [0.0]\npipelines = [[]]\n')
    assert main(["--suite", str(bad), "--list"]) == 2
    assert "grid[0].models: unknown model 'ghost'" in capsys.readouterr().err


def test_list_without_a_suite_lists_every_suite_with_its_description():
    code = ("import sys; from bench.cli.main import main; rc = main(['run', '--list']); assert rc == 0, rc; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert set(names) == {p.stem for p in (REPO / "bench" / "suites").glob("*.toml")}
    assert "accuracy regression" in names["ci"]


def test_python_m_shim_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "bench.run", "--list"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("smoke ") for line in out.stdout.splitlines())


def test_run_without_suite_or_list_is_a_usage_error(capsys):
    assert pat_bench(["run"]) == 2
    assert "--suite NAME is required" in capsys.readouterr().err


def test_unknown_command_names_the_commands(capsys):
    assert pat_bench(["nope"]) == 2
    assert "expected one of run, report, evaluate" in capsys.readouterr().err


def test_precision_sets_every_budget_and_the_evaluation():
    from bench.cli.run import _selection, parse_args

    suite, _, runs, _ = _selection(parse_args(["--suite", "cpu", "--precision", "bf16", "--only", "*lora--r0.00--s0"]))
    assert suite.eval["precision"] == "bf16"
    assert {b["precision"] for b in suite.budgets.values()} == {"bf16"}
    assert runs and all(r.budget["precision"] == "bf16" for r in runs)
    suite, _, _, _ = _selection(parse_args(["--suite", "cpu"]))
    assert suite.eval.get("precision", "fp32") == "fp32"
    assert {b["precision"] for b in suite.budgets.values()} == {"fp32"}
