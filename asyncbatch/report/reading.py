"""How the report opens a run's files: regular files only, never through a link, lines of bounded length.

The report reads files a run is writing (the metrics log, the summary, the errors file), and whatever
else may stand at those names: a FIFO would block a plain ``open`` for ever, a directory fails only at
the first read, and a file of NUL bytes with no newline is one line as long as the file. Every file the
report reads is opened here, so each of those is refused (named) or bounded once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError

CHUNK = 1 << 16  # how much of an over-long line is read at a time, to skip it


def open_regular(path: Path) -> BinaryIO | None:
    """``path`` opened to read if it is a regular file; None if nothing is there.

    Opened without blocking (a FIFO would wait for a writer) and without following a link.

    :raises ConfigError: something else is there (a directory, a FIFO, a device, a link), or it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link; asyncbatch report does not follow links") from None
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigError(f"{path} is {kind}; a run keeps a regular file there. HINT: move it away")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Each line of ``f`` (its newline left on), or None for one longer than ``limit`` bytes (skipped
    without holding it: memory stays bounded whatever the file holds)."""
    while line := f.readline(limit + 1):
        if line.endswith(b"\n") or len(line) <= limit:  # whole, or the last line, within the limit
            yield line
            continue
        while (rest := f.readline(CHUNK)) and not rest.endswith(b"\n"):
            pass
        yield None
