"""The one writer of each JSONL output file, and the shapes of the lines it writes.

Each record is serialised to a complete line (ending in a newline) before any
byte of it reaches the file. The writer takes whatever has queued up, writes it
in one call and flushes, so output costs one syscall per batch, not per row.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .checkpoint import DoneSet
from .errors import AttemptError, OutputError
from .redact import Redactor

_CLOSE = object()


class JsonlWriter:
    """Owns one output file. ``put`` from any task; ``run`` in exactly one.

    After each batch reaches the file, its input lines are marked in ``done``
    and ``offset`` moves past it, so (done, offset) is always a consistent
    snapshot for the checkpoint.

    :param fsync_interval: seconds between fsyncs (0 = after every batch,
        None = never); the file is always fsynced when the writer closes.
    """

    def __init__(
        self, path: Path, done: DoneSet, *, fsync_interval: float | None = 1.0, redactor: Redactor | None = None
    ) -> None:
        self.path = path
        self.redactor = redactor or Redactor(())
        self.done = done
        self.fsync_interval = fsync_interval
        self.lines_written = 0
        self.offset = path.stat().st_size if path.exists() else 0
        # Unbounded on purpose: putting a finished record must never block (or be
        # cancelled) between receiving a paid-for answer and queueing it for disk.
        self._queue: asyncio.Queue[tuple[int, bytes] | object] = asyncio.Queue()
        self._last_sync = time.monotonic()
        self.opened = asyncio.Event()

    def put(self, line_no: int, record: dict[str, Any]) -> None:
        self._queue.put_nowait((line_no, self.redactor.bytes(orjson.dumps(record)) + b"\n"))

    def close(self) -> None:
        """Ask the writer to finish once everything queued before this is written."""
        self._queue.put_nowait(_CLOSE)

    async def run(self) -> None:
        try:
            await self._run()
        except OSError as exc:
            raise OutputError(
                f"cannot write {self.path}: {exc.strerror or exc}. Every line written before this is kept; "
                "HINT: fix the cause (space, permissions) and run the same command again to resume"
            ) from None

    async def _run(self) -> None:
        with self.path.open("ab") as f:
            self.opened.set()
            try:
                while True:
                    first = await self._queue.get()
                    batch, closing = self._drain(first)
                    self._write(f, batch)
                    if closing:
                        return
            finally:
                # Cancelled or closing: whatever was handed to us still reaches the disk.
                self._write(f, self._drain(None)[0])
                _sync(f)

    def _drain(self, first: object) -> tuple[list[tuple[int, bytes]], bool]:
        items = [] if first is None else [first]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        lines = [i for i in items if isinstance(i, tuple)]
        return lines, any(i is _CLOSE for i in items)

    def _write(self, f: BinaryIO, lines: list[tuple[int, bytes]]) -> None:
        if not lines:
            return
        data = b"".join(raw for _, raw in lines)
        f.write(data)
        f.flush()
        self.offset += len(data)
        self.lines_written += len(lines)
        for line_no, _ in lines:
            self.done.add(line_no)
        now = time.monotonic()
        if self.fsync_interval is not None and now - self._last_sync >= self.fsync_interval:
            _sync(f)
            self._last_sync = now


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def new_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def body_fragment(raw: bytes, parsed: dict[str, Any]) -> Any:
    """The server's body byte for byte, unless it holds a newline that would break JSONL."""
    if b"\n" in raw or b"\r" in raw:
        return parsed
    return orjson.Fragment(raw)


def result_record(
    *,
    custom_id: str,
    line_no: int,
    request_id: str | None,
    raw_body: bytes,
    body: dict[str, Any],
    output: Any,
    attempts: int,
    latency_ms: float,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body_fragment(raw_body, body)},
        "error": None,
        "output": output,
        "attempts": attempts,
        "latency_ms": round(latency_ms, 1),
        "line": line_no,
    }


def error_record(*, custom_id: str, line_no: int, code: str, message: str, attempts: int) -> dict[str, Any]:
    return {
        "id": new_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
        "attempts": attempts,
        "line": line_no,
    }


def failure_record(*, custom_id: str, line_no: int, exc: AttemptError, attempts: int) -> dict[str, Any]:
    record = error_record(custom_id=custom_id, line_no=line_no, code=exc.code, message=exc.message, attempts=attempts)
    if exc.status is not None:
        record["response"] = {"status_code": exc.status, "request_id": exc.request_id, "body": exc.body}
    return record
