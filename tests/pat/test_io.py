"""Atomic writes (pat.io): no torn file, also under SIGKILL; the old file survives a failed write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pat.io
from pat.io import atomic_dir, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
RECORD = {"schema": 1, "run_id": "m--pat--r0.25--s0", "status": "success",
          "metrics": {"tasks": {"piqa": {"acc": 0.6}}}, "path": Path("x"), "widths": (1, 2)}


def test_write_is_atomic_and_reloads(tmp_path):
    p = write_json_atomic(tmp_path / "a" / "r.json", RECORD)
    assert json.loads(p.read_text())["metrics"]["tasks"]["piqa"]["acc"] == 0.6
    assert [x.name for x in p.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    p = write_json_atomic(tmp_path / "r.json", RECORD)
    before = p.read_bytes()

    def broken_dump(obj, fh, **kw):
        fh.write('{"half": ')  # a torn write, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(pat.io.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(p, {**RECORD, "status": "failed"})
    assert p.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "r.json"
    code = ("import sys; from pat.io import write_json_atomic\n"
            "big = {'schema': 1, 'run_id': 'x', 'suite': 't', 'status': 'success', 'spec': {}, 'provenance': {},"
            " 'data': list(range(200000))}\n"
            "while True:\n    write_json_atomic(sys.argv[1], big)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO)
    try:
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let it be mid-way through further writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(json.loads(target.read_text())["data"]) == 200000  # the visible file is always a whole record


def test_json_values_that_json_cannot_hold(tmp_path):
    p = write_json_atomic(tmp_path / "r.json", RECORD)
    back = json.loads(p.read_text())
    assert back["path"] == "x" and back["widths"] == [1, 2]


def test_atomic_dir_replaces_or_keeps(tmp_path):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed")
    assert (tmp_path / "d" / "a").read_text() == "1" and sorted(x.name for x in tmp_path.iterdir()) == ["d"]
    with atomic_dir(tmp_path / "d", replace=False) as tmp:  # another writer got there first: keep its directory
        (tmp / "a").write_text("3")
    assert (tmp_path / "d" / "a").read_text() == "1" and sorted(x.name for x in tmp_path.iterdir()) == ["d"]
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a").write_text("4")
    assert (tmp_path / "d" / "a").read_text() == "4"


def test_pat_imports_neither_bench_nor_baselines():
    """The core is usable alone: importing pat and its modules pulls in no module of the layers above it."""
    code = ("import sys; import pat, pat.stage, pat.lora, pat.models, pat.method, pat.merge, pat.io, pat.offline; "
            "from pat import PATStage, finalize; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'baselines')); "
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
