"""``pat-bench evaluate`` / ``python -m bench.evaluate``: bad input exits 2 with one line naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.harness.test_datadir import _mini_data_dir, needs_data

ROOT = Path(__file__).resolve().parents[3]


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "bench.evaluate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@needs_data
def test_cli_missing_dataset_is_one_line_without_traceback(tmp_path):
    root = _mini_data_dir(tmp_path, ["piqa"])
    r = _cli("--model", "no-such-model", "--tasks", "piqa,arc_easy", "--out", str(tmp_path / "o.json"),
             "--data-dir", str(root))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "dataset 'arc_easy' is missing" in r.stderr and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["--tasks", "piqa,hellaswog"], "valid names: boolq piqa hellaswag"),
    (["--tasks", "piqa", "--limit", "0"], "--limit: expected a positive integer"),
    (["--ppl", "wikitext3"], "ppl: unknown dataset(s) wikitext3; valid names: wikitext2 ptb"),
    (["--ppl", "ptb", "--seq-len", "128", "--stride", "256"], "--stride: expected at most --seq-len (128)"),
    ([], "--tasks or --ppl"),
])
def test_cli_bad_arguments(tmp_path, args, needle):
    r = _cli("--model", "smollm2-135m", "--out", str(tmp_path / "o.json"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
