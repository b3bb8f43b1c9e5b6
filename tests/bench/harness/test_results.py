"""Result records: finished/failed detection, schema checks, provenance (the atomic writer: tests/pat/test_io.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench.harness import results as R
from pat.io import write_json_atomic

REPO = Path(__file__).resolve().parents[3]
SPEC = {"run_id": "m--pat--r0.25--s0", "suite": "t", "model": "m", "ratio": 0.25, "pipeline": ["pat"], "seed": 0}


def _ok_record(**over):
    rec = R.make_record(SPEC, "success", {"git": {"sha": "x", "dirty": False}},
                        metrics={"tasks": {"piqa": {"acc": 0.6, "protocol": "lm-eval-loglik-0shot"}}},
                        params={"total": 10})
    rec.update(over)
    return rec


def test_finished_means_success(tmp_path):
    write_json_atomic(tmp_path / "ok.json", _ok_record(run_id="ok"))
    write_json_atomic(tmp_path / "bad.json", _ok_record(run_id="bad", status="failed", error={"message": "x"}))
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

    assert (prov["packages"]["torch"] == torch.__version__.split("+")[0]
            or prov["packages"]["torch"].startswith(torch.__version__[:4]))
    assert prov["device"]["kind"] in ("cpu", "cuda")
    manifest = {f["file"]: f["sha256"] for f in json.loads(Path(data_dir, "manifest.json").read_text())["files"]}
    assert prov["data_sha256"]["piqa"] == manifest["piqa/validation.jsonl"]
    assert prov["data_sha256"]["MBZUAI/LaMini-instruction"] is None  # a hub id: nothing local to hash
