"""Cell locks: one process trains a grid cell at a time, across shards, hosts and resubmitted array jobs.

Protocol (``claim(run_dir)``):

1. Create ``<run_dir>/.lock`` with ``os.open(O_CREAT | O_EXCL)``: atomic on a local disk and on NFSv3+/Lustre/GPFS,
   so of two processes exactly one creates it. The file holds JSON ``{pid, host, token, started}``.
2. The holder refreshes the file's mtime every ``heartbeat_s`` seconds from a daemon thread while it runs.
3. A process that finds the lock decides whether it is stale:
   * same host: stale iff the pid is no longer alive (``os.kill(pid, 0)``);
   * other host: stale iff the mtime is older than ``stale_s`` (default 600 s, ``$PAT_LOCK_STALE_S``): the holder
     died without releasing and its heartbeat stopped;
   * an unreadable (half-written) lock is judged by its mtime alone.
4. A stale lock is taken over by renaming it to a unique name (only one contender's rename succeeds), checking that
   the renamed file is the one judged stale (its token), deleting it and creating a fresh lock (step 1). A contender
   that renamed a fresh lock by mistake links it back.
5. ``release`` stops the heartbeat and removes the lock if it still holds its token.

A live lock is not waited for: ``claim`` returns ``None`` and the runner skips the cell (another process is
training it; a later rerun of the suite finds it finished, or resumes it from its checkpoint if that process died).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
DEFAULT_STALE_S = 600.0
DEFAULT_HEARTBEAT_S = 30.0


def _stale_after() -> float:
    raw = os.environ.get("PAT_LOCK_STALE_S")
    if raw is None:
        return DEFAULT_STALE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"PAT_LOCK_STALE_S={raw!r}: expected a number of seconds, e.g. 600") from None
    if value <= 0:
        raise ValueError(f"PAT_LOCK_STALE_S={raw!r}: expected a positive number of seconds")
    return value


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as alive until reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's JSON, or ``None`` when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, info: dict[str, Any] | None, stale_s: float, now: float | None = None) -> bool:
    """Whether the lock at ``path`` (content ``info``) was left by a dead holder (rules: module docstring)."""
    try:
        age = (time.time() if now is None else now) - os.stat(path).st_mtime
    except FileNotFoundError:
        return False  # gone: not stale, just free
    if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not pid_alive(info["pid"])
    return age > stale_s


class CellLock:
    """A held lock; ``release()`` (or leaving the ``with`` block) frees it."""

    def __init__(self, path: Path, token: str, heartbeat_s: float):
        self.path, self.token = Path(path), token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name=f"lock {path}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # removed under us (taken over after a long stall); the owner finds out at release
                return

    def release(self) -> None:
        self._stop.set()
        info = read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        elif info is not None:
            log.warning("lock %s is now held by %s:%s; leaving it", self.path, info.get("host"), info.get("pid"))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, token: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _take_over(path: Path, info: dict[str, Any] | None) -> None:
    """Remove the stale lock judged from ``info``, unless someone replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another contender took it over first
    moved = read_lock(aside)
    if info is not None and (moved or {}).get("token") != info.get("token"):
        try:  # we moved a fresh lock created after our judgement: put it back (fails if a third one exists)
            os.link(aside, path)
        except FileExistsError:
            pass
    else:
        log.warning("took over the stale lock %s of %s:%s", path, (info or {}).get("host"), (info or {}).get("pid"))
    aside.unlink(missing_ok=True)


def claim(run_dir: str | os.PathLike, stale_s: float | None = None,
          heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> CellLock | None:
    """Claim the cell whose run directory is ``run_dir``; ``None`` when a live process holds it.

    Args:
        run_dir: the cell's directory (created if missing); the lock is ``run_dir/.lock``.
        stale_s: age after which another host's lock without heartbeat is stale (default ``$PAT_LOCK_STALE_S``
            or 600 s); keep it well above ``heartbeat_s``.
        heartbeat_s: how often the holder refreshes the lock's mtime.
    """
    stale_s = _stale_after() if stale_s is None else float(stale_s)
    if stale_s <= heartbeat_s:
        raise ValueError(f"lock stale_s = {stale_s} must exceed heartbeat_s = {heartbeat_s}")
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    for _ in range(3):
        if _create(path, token):
            return CellLock(path, token, heartbeat_s)
        info = read_lock(path)
        if info is None and path.exists():
            time.sleep(0.2)  # possibly being written right now: read again before judging it by its mtime
            info = read_lock(path)
        if not path.exists():
            continue  # released meanwhile: try to create it again
        if not is_stale(path, info, stale_s):
            return None
        _take_over(path, info)
    return None


def holder(run_dir: str | os.PathLike) -> str:
    """``host:pid`` of the lock's holder, for messages."""
    info = read_lock(Path(run_dir) / LOCK_NAME) or {}
    return f"{info.get('host', '?')}:{info.get('pid', '?')}"
