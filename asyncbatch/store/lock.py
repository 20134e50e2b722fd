"""One writer per output, whatever its name: a run holds an exclusive OS lock on each output file itself.

``fcntl.flock`` locks belong to the file (its inode), not to a name: a second run
that would write the same results or errors file, through a hard link or another
``--checkpoint``, meets the lock (a symbolic link is refused before, as every link
is). The OS drops it when the process exits, however it exits (``kill -9``
included), so a stale lock never blocks. The state directory's ``lock`` file says who holds the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from ..errors import ConfigError
from .files import open_private, private_dir, write_all


class AlreadyRunning(ConfigError):
    """Another process is writing these outputs."""


class OutputLock:
    """Exclusive locks on the outputs (created empty if missing) and on the state directory's lock file.

    ``acquire`` never waits: it raises AlreadyRunning, naming the other run's pid when the OS can tell.
    """

    def __init__(self, outputs: list[Path], info: Path) -> None:
        self.outputs, self.info = outputs, info
        self._fds: list[int] = []

    def acquire(self) -> None:
        try:
            for path in self.outputs:
                fd = open_private(path, os.O_RDONLY | os.O_CREAT)  # never through a link (check_paths refused one)
                self._fds.append(fd)
                self._lock(fd, path)
            private_dir(self.info.parent)
            fd = open_private(self.info, os.O_RDWR | os.O_CREAT)
            self._fds.append(fd)
            self._lock(fd, self.outputs[0])
            os.ftruncate(fd, 0)
            write_all(fd, f"pid {os.getpid()}, started at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), self.info)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing drops the lock
        self._fds.clear()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def _lock(self, fd: int, path: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(os.fstat(fd))
            who = f"pid {pid}" if pid else "another process"
            with contextlib.suppress(OSError):  # the same state directory: it says when that run started
                said = self.info.read_text()[:100].strip()
                who = said if pid and said.startswith(f"pid {pid},") else who
            raise AlreadyRunning(
                f"another asyncbatch run ({who}) is writing {path} (by this name or another). "
                "HINT: wait for it to finish, or stop it (Ctrl-C) and run this command again to resume"
            ) from None


def holder(info: os.stat_result) -> int | None:
    """The pid holding a flock on the file ``info`` describes, from Linux's /proc/locks (None elsewhere)."""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4]) if int(fields[4]) != os.getpid() else None
    return None
