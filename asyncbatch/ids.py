"""Duplicate ``custom_id`` detection in bounded memory, and a record of it that makes resuming fast.

* ``IdSet`` keeps a 64-bit digest of every id seen: 6 bytes each, in 65,536
  byte-string buckets (about 60 MB for 10 million ids, against about 900 MB
  for a Python set of the ids). Two different ids share a digest with
  probability about n^2 / 2^65 (3 in a million for a 10-million-line file);
  the line would then be reported as a duplicate, naming its id, never sent.
* ``IdLog`` is the run's side file (``<checkpoint>.ids``): one 8-byte digest
  per input line read, in order, 0 for a line that is a duplicate or has no
  usable id. On resume the lines it covers need no parsing at all: a done
  line is skipped unread, and the others already know whether they repeat an
  earlier id. Only its checkpointed length is trusted.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_BUCKETS = 1 << 16
_SUFFIX = (1 << 48) - 1
_CHUNK = 1 << 16  # digests read at a time


def ids_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".ids")


def digest(custom_id: str) -> int:
    """A stable 64-bit digest of an id; never 0 (0 marks "no id" in the log)."""
    value = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")
    return value or 1


class IdSet:
    """A compact set of 64-bit digests."""

    def __init__(self) -> None:
        self._buckets = [bytearray() for _ in range(_BUCKETS)]
        self.count = 0

    def add(self, value: int) -> bool:
        """Add ``value``; False if it was already there."""
        bucket = self._buckets[value >> 48]
        suffix = (value & _SUFFIX).to_bytes(6, "little")
        at = bucket.find(suffix)
        while at >= 0:
            if at % 6 == 0:
                return False
            at = bucket.find(suffix, at + 1)
        bucket += suffix
        self.count += 1
        return True

    def add_new(self, value: int) -> None:
        """Add a value known not to be there (loading a log): no search."""
        self._buckets[value >> 48] += (value & _SUFFIX).to_bytes(6, "little")
        self.count += 1


class IdLog:
    """The side file of digests, one per input line read, and how many input bytes those lines are.

    :param path: the file; None keeps nothing on disk (``--dry-run``).
    :param known: how many lines the checkpoint says are recorded; the rest is cut off.
    :param offset: the input bytes those ``known`` lines take.
    If the file holds fewer than ``known`` digests, none is trusted (``known`` and ``offset`` are 0).
    """

    def __init__(self, path: Path | None, known: int = 0, offset: int = 0) -> None:
        self.path = path
        trusted = path is not None and path.exists() and path.stat().st_size >= 8 * known
        self.known = known if trusted else 0
        self.offset = offset if trusted else 0  # input bytes covered by the lines written so far
        self.written = self.known
        self._file: BinaryIO | None = None
        if path is not None:
            self._file = path.open("r+b" if path.exists() else "w+b")
            self._file.truncate(8 * self.known)
            self._file.seek(8 * self.known)
        self._pending = array("Q")

    def recorded(self) -> Iterator[int]:
        """The trusted digests, in line order."""
        if self._file is None or self.path is None:
            return
        with self.path.open("rb") as f:
            left = self.known
            while left > 0:
                chunk = array("Q")
                chunk.frombytes(f.read(8 * min(left, _CHUNK)))
                left -= len(chunk)
                yield from chunk

    def append(self, value: int, size: int) -> None:
        """The next input line's digest (0: no id, or a duplicate) and its size in bytes."""
        self.offset += size
        self._pending.append(value)
        if len(self._pending) >= _CHUNK:
            self.flush()

    def flush(self) -> tuple[int, int]:
        """Hand what is pending to the OS; return (lines recorded, input bytes they cover) for the checkpoint."""
        if self._file is not None and self._pending:
            self._file.write(self._pending.tobytes())
            self._file.flush()
        self.written += len(self._pending)
        self._pending = array("Q")
        return self.written, self.offset

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
