"""The data-directory setting and integrity checks for the offline datasets.

Every dataset is resolved through one setting: an explicit ``data_dir`` argument first, then ``$PAT_DATA_DIR``.
The layout is the one of ``shared/data`` (see its README): ``<name>/<file>`` plus a ``manifest.json`` holding each
file's sha256. A file is checked against its sha256 on first use in a process; a missing or altered file raises
``DataError`` naming the dataset, the expected path and the fix. Nothing is ever downloaded implicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

# dataset name -> file inside the data directory (the layout of shared/data)
DATASETS: dict[str, str] = {
    "boolq": "boolq/validation.jsonl",
    "piqa": "piqa/validation.jsonl",
    "hellaswag": "hellaswag/validation.jsonl",
    "winogrande": "winogrande/validation.jsonl",
    "arc_easy": "arc_easy/test.jsonl",
    "arc_challenge": "arc_challenge/test.jsonl",
    "openbookqa": "openbookqa/test.jsonl",
    "wikitext2": "wikitext2/wikitext-2-raw-v1_test.jsonl",
    "ptb": "ptb/ptb_text_only_test.jsonl",
    "alpaca": "alpaca/alpaca_data.jsonl",
    "c4": "c4/c4-train.00000-of-01024_first1000.jsonl",
}


class DataError(FileNotFoundError):
    """A dataset that is missing, altered or unknown; the message names the dataset, the path and the fix."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$PAT_DATA_DIR``; raises ``DataError`` if neither is set."""
    raw = data_dir if data_dir is not None else os.environ.get("PAT_DATA_DIR")
    if not raw:
        raise DataError(
            "no data directory: pass --data-dir DIR or set PAT_DATA_DIR to a folder laid out like shared/data "
            "(e.g. export PAT_DATA_DIR=../shared/data)"
        )
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist; set PAT_DATA_DIR or --data-dir to a folder laid out "
                        f"like shared/data")
    return path


@lru_cache(maxsize=None)
def _manifest(data_dir: Path) -> dict[str, str]:
    mf = data_dir / "manifest.json"
    if not mf.exists():
        return {}
    return {f["file"]: f["sha256"] for f in json.loads(mf.read_text())["files"]}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _checked(path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise DataError(
            f"{path}: sha256 {actual[:16]}… does not match manifest.json ({expected[:16]}…); "
            "the file is altered or truncated; fix: restore it from the original data directory"
        )
    return actual


def dataset_path(name: str, data_dir: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Absolute path of dataset ``name`` (a key of ``DATASETS``), sha256-checked against ``manifest.json``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(DATASETS))}")
    root = resolve_data_dir(data_dir)
    rel = DATASETS[name]
    path = root / rel
    if not path.exists():
        raise DataError(
            f"dataset '{name}' is missing: expected {path}; fix: point PAT_DATA_DIR (or --data-dir) at a folder "
            f"that holds {rel}, laid out like shared/data"
        )
    if verify:
        _checked(path, _manifest(root).get(rel))
    return path


def dataset_sha256(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The verified sha256 of a dataset file (for provenance records)."""
    path = dataset_path(name, data_dir)
    return _checked(path, _manifest(resolve_data_dir(data_dir)).get(DATASETS[name]))
