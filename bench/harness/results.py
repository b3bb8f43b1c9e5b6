"""Run results: one JSON per run, written atomically, with provenance; skip-if-finished for resume.

Layout: ``<out>/<run_id>.json`` (``out`` defaults to ``results/<suite>``). A record holds ``status``
(``success`` / ``failed``), the resolved run spec and budget, metrics with their protocol, achieved parameters and
kept widths, throughput, timings and provenance (git sha + dirty flag, package versions, device, data sha256s).
A failed run records its error and traceback; a rerun skips ``success`` records and retries failed ones.

Writes go through ``pat.io.write_json_atomic`` (a temp file in the same directory, then ``os.replace``): a reader
(or a killed writer) never sees a half-written JSON.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "peft", "accelerate", "lm_eval", "datasets", "safetensors", "numpy", "pat-bench")
REQUIRED_KEYS = ("schema", "run_id", "suite", "status", "spec", "provenance")


def result_path(out_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def read_result(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` if it is missing or unreadable (a torn file is never produced)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_finished(out_dir: str | os.PathLike, run_id: str) -> bool:
    rec = read_result(result_path(out_dir, run_id))
    return rec is not None and rec.get("status") == "success"


def load_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run record under ``out_dir`` (non-recursive), sorted by run id; malformed files are skipped with a
    warning."""
    recs = []
    for p in sorted(Path(out_dir).glob("*.json")):
        rec = read_result(p)
        if rec is None or any(k not in rec for k in REQUIRED_KEYS):
            log.warning("skipping %s: not a run record (needs keys %s)", p, REQUIRED_KEYS)
            continue
        recs.append(rec)
    return recs


def validate_record(rec: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first missing or malformed field of a run record."""
    for k in REQUIRED_KEYS:
        if k not in rec:
            raise ValueError(f"result record: missing field {k!r}")
    if rec["status"] not in ("success", "failed"):
        raise ValueError(f"result record {rec['run_id']}: status = {rec['status']!r}; expected 'success' or 'failed'")
    if rec["status"] == "success":
        for k in ("metrics", "params"):
            if k not in rec:
                raise ValueError(f"result record {rec['run_id']}: status success but field {k!r} is missing")
        for task, m in rec["metrics"].get("tasks", {}).items():
            if "protocol" not in m:
                raise ValueError(f"result record {rec['run_id']}: metrics.tasks.{task} has no 'protocol'")
    else:
        if "error" not in rec:
            raise ValueError(f"result record {rec['run_id']}: status failed but field 'error' is missing")


# ---------------------------------------------------------------------------------------------- provenance
def git_state(root: Path | None = None) -> dict[str, Any]:
    """``{"sha", "dirty"}`` of the checkout holding this code (else of the working directory); ``None`` outside git."""
    for where in ([root] if root else [REPO_ROOT, Path.cwd()]):
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return {"sha": sha.stdout.strip(), "dirty": bool(dirty)}
        except (OSError, subprocess.SubprocessError):
            continue
    return {"sha": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def device_info() -> dict[str, Any]:
    """Accelerator and host description; imports torch (only called by the runner, never by ``--list``)."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(kind="cuda", name=torch.cuda.get_device_name(0), count=torch.cuda.device_count())
    else:
        info.update(kind="cpu", name=platform.processor() or platform.machine(), count=0)
    return info


def data_hashes(names: list[str], data_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """sha256 of each named dataset file (checked against the manifest); hub ids and unknown names map to ``None``."""
    from bench.harness.datadir import DATASETS, dataset_sha256

    out: dict[str, str | None] = {}
    for n in names:
        if n in DATASETS:
            out[n] = dataset_sha256(n, data_dir)
        elif Path(n).is_file():
            from bench.harness.datadir import sha256_file

            out[n] = sha256_file(Path(n))
        else:
            out[n] = None
    return out


def provenance(datasets: list[str], data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    return {
        "git": git_state(), "packages": package_versions(), "device": device_info(),
        "data_sha256": data_hashes(datasets, data_dir),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def make_record(spec: dict[str, Any], status: str, prov: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A run record: schema, ids, status, the resolved spec, provenance and any further fields."""
    return {"schema": SCHEMA_VERSION, "run_id": spec["run_id"], "suite": spec["suite"], "status": status,
            "spec": spec, **fields, "provenance": prov}
