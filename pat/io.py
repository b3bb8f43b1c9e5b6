"""Atomic writes: a reader (or a killed writer) never sees a half-written file or directory.

``write_json_atomic(path, obj)`` writes a temp file in the same directory, then ``os.replace``; ``atomic_dir(path)``
builds a directory beside its destination, then swaps it in; ``write_atomic(path, save)`` does the same for any
file written by a ``save(tmp_path)`` callable (``torch.save``, ``safetensors.torch.save_file``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def write_atomic(path: str | os.PathLike, save: Callable[[str], Any]) -> Path:
    """Call ``save(tmp)`` on a temp file beside ``path``, then move it to ``path``; the temp file goes on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return repr(o)


def _write_synced(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    def save(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    return write_atomic(path, save)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, synced to disk before the rename."""
    return _write_synced(path, lambda fh: fh.write(text))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; scalars, paths and sets become JSON values, anything else its
    ``repr``."""

    def write(fh) -> None:
        json.dump(obj, fh, indent=indent, default=_json_default)
        fh.write("\n")

    return _write_synced(path, write)


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed.

    Readers never see a half-written ``path``: it is either the old directory or the complete new one. With
    ``replace=False`` an existing ``path`` (e.g. built meanwhile by another process) is kept and the new one dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not replace:
                return
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
