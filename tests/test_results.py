"""Result records: atomic writes (also under SIGKILL), finished/failed detection, schema checks, provenance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import results as R

REPO = Path(__file__).resolve().parents[1]
SPEC = {"run_id": "m--pat--r0.25--s0", "suite": "t", "model": "m", "ratio": 0.25, "pipeline": ["pat"], "seed": 0}


def _ok_record(**over):
    rec = R.make_record(SPEC, "success", {"git": {"sha": "x", "dirty": False}},
                        metrics={"tasks": {"piqa": {"acc": 0.6, "protocol": "lm-eval-loglik-0shot"}}},
                        params={"total": 10})
    rec.update(over)
    return rec


def test_write_is_atomic_and_reloads(tmp_path):
    p = R.write_json_atomic(tmp_path / "a" / "r.json", _ok_record())
    assert R.read_result(p)["metrics"]["tasks"]["piqa"]["acc"] == 0.6
    assert [x.name for x in p.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    p = R.write_json_atomic(tmp_path / "r.json", _ok_record())
    before = p.read_bytes()

    def broken_dump(obj, fh, **kw):
        fh.write('{"half": ')  # a torn write, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(R.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        R.write_json_atomic(p, _ok_record(status="failed"))
    assert p.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "r.json"
    code = ("import sys; from bench.harness.results import write_json_atomic\n"
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


def test_finished_means_success(tmp_path):
    R.write_json_atomic(tmp_path / "ok.json", _ok_record(run_id="ok"))
    R.write_json_atomic(tmp_path / "bad.json", _ok_record(run_id="bad", status="failed", error={"message": "x"}))
    (tmp_path / "torn.json").write_text('{"status": "succ')
    assert R.is_finished(tmp_path, "ok")
    assert not R.is_finished(tmp_path, "bad")
    assert not R.is_finished(tmp_path, "torn")
    assert not R.is_finished(tmp_path, "missing")
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    assert [r["run_id"] for r in R.load_results(tmp_path)] == ["bad", "ok"]  # torn and foreign files skipped


def test_validate_record_names_the_field():
    R.validate_record(_ok_record())
    rec = _ok_record()
    del rec["metrics"]["tasks"]["piqa"]["protocol"]
    with pytest.raises(ValueError, match=r"metrics.tasks.piqa has no 'protocol'"):
        R.validate_record(rec)
    with pytest.raises(ValueError, match="status failed but field 'error' is missing"):
        R.validate_record(_ok_record(status="failed"))
    rec = _ok_record()
    del rec["provenance"]
    with pytest.raises(ValueError, match="missing field 'provenance'"):
        R.validate_record(rec)


def test_provenance_records_git_versions_device_and_data_hashes():
    data_dir = os.environ.get("PAT_DATA_DIR")
    if not data_dir or not Path(data_dir, "manifest.json").exists():
        pytest.skip("needs PAT_DATA_DIR")
    prov = R.provenance(["piqa", "MBZUAI/LaMini-instruction"])
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["sha"]) and isinstance(prov["git"]["dirty"], bool)
    import torch

    assert prov["packages"]["torch"] == torch.__version__.split("+")[0] or prov["packages"]["torch"].startswith(torch.__version__[:4])
    assert prov["device"]["kind"] in ("cpu", "cuda")
    manifest = {f["file"]: f["sha256"] for f in json.loads(Path(data_dir, "manifest.json").read_text())["files"]}
    assert prov["data_sha256"]["piqa"] == manifest["piqa/validation.jsonl"]
    assert prov["data_sha256"]["MBZUAI/LaMini-instruction"] is None  # a hub id: nothing local to hash
