"""One writer per output: a run holds an exclusive OS lock beside its checkpoint for its whole life.

``fcntl.flock`` locks belong to the open file: the OS drops them when the
process exits, however it exits (``kill -9`` included), so a stale lock never
blocks. The file itself only says who holds it, for the message.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


class AlreadyRunning(ConfigError):
    """Another process is writing these outputs."""


def lock_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".lock")


@contextmanager
def hold(path: Path, writing: Path) -> Iterator[None]:
    """Hold the lock at ``path`` for the block, or raise AlreadyRunning at once (never waits).

    :param writing: the output named in the message.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            raise AlreadyRunning(
                f"another asyncbatch run ({holder}) is writing {writing}. "
                "HINT: wait for it to finish, or stop it (Ctrl-C) and run this command again to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock
