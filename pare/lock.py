"""One ``pare run`` per run folder at a time.

The lock is a file, ``.pare.lock``, holding the owner's pid, host, start time and command, and
an exclusive ``flock`` on it for as long as the run lasts. The kernel drops the ``flock`` when
its process dies however it dies (SIGKILL included), so a lock left by a dead run is told apart
from a live one without guessing from pids, and is taken over with a message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pare.errors import PareError

LOCK = ".pare.lock"


@contextlib.contextmanager
def run_lock(folder: str | Path, say=print) -> Iterator[dict]:
    """Hold ``folder``'s lock for the block, or raise ``PareError`` naming the run that holds it."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        earlier = _read(fd)
        if earlier:
            say(
                f"taking over the lock of an earlier run that stopped without releasing it "
                f"(pid {earlier.get('pid')} on {earlier.get('host')}, started {earlier.get('started')})"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        yield me
        path.unlink(missing_ok=True)  # while still holding it: a waiting run then sees a fresh file
    finally:
        os.close(fd)  # releases the flock


def _acquire(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                if holder
                else "another process"
            )
            raise PareError(
                f"{path.parent} is in use by another pare run ({who}); wait for it to finish, "
                f"or choose another --out"
            ) from None
        try:  # the holder may have released and deleted the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {"pid": "?", "host": "?", "started": "? (lock file unreadable)"}
    return data if isinstance(data, dict) else {}
