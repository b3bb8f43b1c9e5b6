"""Cell locks (``bench.harness.locks``): atomic claim, heartbeat, stale-lock takeover, and two real processes
contending for the same cell of a suite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness.locks import LOCK_NAME, claim, holder, is_stale, read_lock

ROOT = Path(__file__).resolve().parents[3]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(run_dir: Path, pid: int, host: str, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host, "token": f"{host}:{pid}:x", "started": "then"}))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_claim_is_exclusive_and_release_frees_it(tmp_path):
    lock = claim(tmp_path / "cell")
    assert lock is not None
    info = read_lock(tmp_path / "cell" / LOCK_NAME)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert claim(tmp_path / "cell") is None  # held by a live process (this one)
    assert holder(tmp_path / "cell") == f"{socket.gethostname()}:{os.getpid()}"
    lock.release()
    assert not (tmp_path / "cell" / LOCK_NAME).exists()
    with claim(tmp_path / "cell") as again:
        assert again is not None


def test_stale_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path):
    write_lock(tmp_path / "cell", dead_pid(), socket.gethostname())
    lock = claim(tmp_path / "cell")
    assert lock is not None
    assert read_lock(tmp_path / "cell" / LOCK_NAME)["pid"] == os.getpid()
    assert sorted(p.name for p in (tmp_path / "cell").iterdir()) == [LOCK_NAME]  # the stale copy is gone
    lock.release()


def test_live_pid_on_this_host_is_not_stale_however_old(tmp_path):
    path = write_lock(tmp_path / "cell", os.getppid(), socket.gethostname(), age_s=10_000)
    assert not is_stale(path, read_lock(path), stale_s=60)
    assert claim(tmp_path / "cell", stale_s=60) is None


def test_other_host_lock_is_stale_only_after_the_timeout(tmp_path):
    write_lock(tmp_path / "fresh", 12345, "node-that-does-not-exist", age_s=5)
    assert claim(tmp_path / "fresh", stale_s=600) is None
    write_lock(tmp_path / "old", 12345, "node-that-does-not-exist", age_s=601)
    lock = claim(tmp_path / "old", stale_s=600)
    assert lock is not None and read_lock(lock.path)["host"] == socket.gethostname()
    lock.release()


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    lock = claim(tmp_path / "cell", stale_s=2.0, heartbeat_s=0.1)
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(0.5)
    assert time.time() - os.stat(lock.path).st_mtime < 1.0
    lock.release()


def test_bad_stale_setting_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PAT_LOCK_STALE_S", "ten minutes")
    with pytest.raises(ValueError, match="PAT_LOCK_STALE_S"):
        claim(tmp_path / "cell")


# ------------------------------------------------------------------------- two processes, one cell
SUITE = """
[suite]
name = "locktest"
train_data = "alpaca"
runs_here = "smoke"

[throughput]
enabled = false

[budget.tiny]
steps = 2
global_batch = 2
micro_batch = 2
seq_len = 256
lr = 1e-3
schedule = "constant"
subset_size = 8
data_seed = 0

[models.tiny-llama.random]
model_type = "llama"
hidden_size = 48
intermediate_size = 96
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
tie_word_embeddings = true
seed = 0

[stages.lora]
rank = 2

[[grid]]
models = ["tiny-llama"]
ratios = [0.0]
pipelines = [["lora"]]
budget = "tiny"
"""

# Process A: the real runner, whose run_one first announces that it is inside the cell (lock held) and waits for
# the test's go-ahead, so process B certainly starts while A holds the cell.
HOLDER = """
import sys, time
from pathlib import Path
from bench.harness import runner
from bench.run import main
inside, go = Path(sys.argv[1]), Path(sys.argv[2])
real = runner.run_one
def run_one(*a, **k):
    inside.write_text("x")
    while not go.exists():
        time.sleep(0.1)
    return real(*a, **k)
runner.run_one = run_one
sys.exit(main(sys.argv[3:]))
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.mark.integration
def test_two_processes_one_cell_exactly_one_trains(tmp_path):
    suite = tmp_path / "locktest.toml"
    suite.write_text(SUITE)
    out, work = tmp_path / "results", tmp_path / "work"
    args = ["--suite", str(suite), "--out", str(out), "--work-dir", str(work), "--no-progress"]
    inside, go = tmp_path / "inside", tmp_path / "go"
    a = subprocess.Popen([sys.executable, "-c", HOLDER, str(inside), str(go), *args], cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not inside.exists():
            assert a.poll() is None, a.stdout.read()
            assert time.time() < deadline, "process A never entered the cell"
            time.sleep(0.2)
        cell = work / "locktest" / "tiny-llama--lora--r0.00--s0"
        assert read_lock(cell / LOCK_NAME)["pid"] == a.pid
        b = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=300, check=False)
        assert b.returncode == 0, b.stdout + b.stderr
        assert "0 done, 0 skipped (finished), 1 held by another process" in b.stdout, b.stdout + b.stderr
        assert not (cell / "run.json").exists() and not list(out.glob("*.json"))  # B trained nothing
    finally:
        go.write_text("x")
        a_out = a.communicate(timeout=300)[0]
    assert a.returncode == 0, a_out
    assert "1 done" in a_out
    rec = json.loads((out / "tiny-llama--lora--r0.00--s0.json").read_text())
    assert rec["status"] == "success" and rec["train"]["steps_done"] == 2
    assert not (cell / LOCK_NAME).exists()  # released
    # a resubmitted job finds it finished; a lock left by a dead process does not block a rerun either
    write_lock(cell, dead_pid(), socket.gethostname())
    (out / "tiny-llama--lora--r0.00--s0.json").unlink()
    c = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300, check=False)
    assert c.returncode == 0 and "1 done" in c.stdout, c.stdout + c.stderr
    assert "took over the stale lock" in c.stderr
