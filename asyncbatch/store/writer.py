"""The one writer of each JSONL output file.

Each record is serialised to a complete line (ending in a newline) before any
byte of it reaches the file, and ``put`` never raises: a record the encoder refuses
is not queued, and ``put`` says so (``Recorder`` writes an error line instead).
The writer takes whatever has queued up and writes it in one call, so output costs
one syscall per batch, not per row. A write that fails part-way (disk full) is cut
back at once: the file never keeps half a line.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..errors import OutputError
from ..records import encode
from ..redact import Redactor
from .files import open_private

_CLOSE = object()
ROOM = 1_000  # lines a producer may have waiting (``room``): a few hundred kB at most
OnWritten = Callable[[list[int], int], None]  # (input line numbers, bytes) of a batch now in the file


class JsonlWriter:
    """Owns one output file. ``put`` from any task; ``run`` in exactly one.

    After each batch reaches the file, ``on_written`` is told its input line
    numbers and its size, so whoever keeps the resume state sees the file and
    the state move together.

    :param fsync_interval: seconds between fsyncs (0 = after every batch,
        None = never); the file is always fsynced when the writer closes.
    :param clock: monotonic seconds, injected: what the interval is measured by.
    """

    def __init__(
        self,
        path: Path,
        on_written: OnWritten,
        *,
        fsync_interval: float | None = 1.0,
        redactor: Redactor | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.path = path
        self.on_written = on_written
        self.redactor = redactor or Redactor(())
        self.fsync_interval = fsync_interval
        # Unbounded on purpose: putting a finished record must never block (or be
        # cancelled) between receiving a paid-for answer and queueing it for disk.
        self._queue: asyncio.Queue[tuple[int, bytes] | object] = asyncio.Queue()
        self.clock = clock
        self._last_sync = clock()
        self.opened = asyncio.Event()  # set once the file is open: anything put from then on is written
        self._pending = 0  # lines put and not yet written
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, line_no: int, record: dict[str, Any]) -> bool:
        """Queue ``record`` as one line; False (nothing queued) if it cannot be encoded. Never raises."""
        line = encode(record)
        if line is None:
            return False
        self._queue.put_nowait((line_no, self.redactor.json(line)))
        self._pending += 1
        self._idle.clear()
        return True

    async def room(self, lines: int = ROOM) -> None:
        """Return once fewer than ``lines`` lines wait to be written; yield to the loop meanwhile.

        For a producer that can put faster than the file takes them (the reader's bad lines, a million in a
        row): it waits here, so the queue stays bounded and signals are heard. Never for a paid answer,
        which must be queued at once (``put``).
        """
        if self._pending >= lines:
            await self._idle.wait()

    async def written(self) -> None:
        """Return once every line put so far is in the file (and told to ``on_written``)."""
        await self._idle.wait()

    def close(self) -> None:
        """Ask the writer to finish once everything queued before this is written."""
        self._queue.put_nowait(_CLOSE)

    async def run(self) -> None:
        try:
            await self._run()
        except OSError as exc:
            raise OutputError(
                f"cannot write {self.path}: {exc.strerror or exc}. Every line written before this is kept whole; "
                "HINT: fix the cause (space, permissions) and run the same command again to resume"
            ) from None

    async def _run(self) -> None:
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # 0600, never through a link
        try:
            self.opened.set()
            try:
                while True:
                    first = await self._queue.get()
                    batch, closing = self._drain(first)
                    self._write(fd, batch)
                    if closing:
                        return
            finally:
                # Cancelled or closing: whatever was handed to us still reaches the disk.
                self._write(fd, self._drain(None)[0])
                os.fsync(fd)
        finally:
            os.close(fd)

    def _drain(self, first: object) -> tuple[list[tuple[int, bytes]], bool]:
        items = [] if first is None else [first]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        lines = [i for i in items if isinstance(i, tuple)]
        return lines, any(i is _CLOSE for i in items)

    def _write(self, fd: int, lines: list[tuple[int, bytes]]) -> None:
        if not lines:
            return
        data = b"".join(raw for _, raw in lines)
        _append(fd, data)
        self.on_written([line_no for line_no, _ in lines], len(data))
        self._pending -= len(lines)
        if self._pending <= 0:
            self._idle.set()
        now = self.clock()
        if self.fsync_interval is not None and now - self._last_sync >= self.fsync_interval:
            os.fsync(fd)
            self._last_sync = now


def _append(fd: int, data: bytes) -> None:
    """Append all of ``data``, or nothing: a partial write is cut back before the error is raised."""
    size = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.ftruncate(fd, size)
        raise
