"""Duplicate ``custom_id`` detection in bounded memory, and a record of it that makes resuming fast.

* ``input.ids.IdSet`` keeps the digests in memory, for the reader.
* ``IdLog`` is the run's side file (``<results>.state/ids``): one 8-byte digest
  per input line read, in order, 0 for a line that is a duplicate or has no
  usable id. On resume the lines it covers need no parsing at all: a done
  line is skipped unread, and the others already know whether they repeat an
  earlier id. Only its checkpointed length is trusted. It also hashes the input
  bytes the reader consumed, so the checkpoint's input hash is of what was read.
* ``DigestBag`` holds the line digests of records whose input line is not known
  by number (recovery without a checkpoint): the reader matches lines to them
  by content.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..input.ids import SUFFIX, find
from .files import open_private, write_all

_CHUNK = 1 << 16  # digests read at a time


class DigestBag:
    """A multiset of 64-bit digests, stored as IdSet stores them."""

    def __init__(self) -> None:
        self._buckets: dict[int, bytearray] = {}
        self.count = 0

    def add(self, value: int) -> None:
        self._buckets.setdefault(value >> 48, bytearray()).extend((value & SUFFIX).to_bytes(6, "little"))
        self.count += 1

    def take(self, value: int) -> bool:
        """Remove one ``value``; False if there is none."""
        bucket = self._buckets.get(value >> 48)
        if bucket is None:
            return False
        at = find(bucket, (value & SUFFIX).to_bytes(6, "little"))
        if at < 0:
            return False
        del bucket[at : at + 6]
        self.count -= 1
        return True


class IdLog:
    """The side file of digests, one per input line read, how many input bytes those lines are, and their hash.

    :param path: the file; None keeps nothing on disk (``--dry-run``).
    :param known: how many lines the checkpoint says are recorded; the rest is cut off.
    :param offset: the input bytes those ``known`` lines take.
    :param prefix: the hash of those bytes, as verified against the input (checkpoint.PrefixHash).
    If the file holds fewer than ``known`` digests, or no hash is given, none is trusted (``known`` is 0).
    """

    def __init__(self, path: Path | None, known: int = 0, offset: int = 0, prefix: Any = None) -> None:
        self.path = path
        trusted = path is not None and prefix is not None and path.exists() and path.stat().st_size >= 8 * known
        self.known = known if trusted else 0
        self.offset = offset if trusted else 0  # input bytes covered by the lines written so far
        self.hash = prefix.copy() if trusted else hashlib.blake2b(digest_size=16)
        self.written = self.known
        self._fd: int | None = None
        if path is not None:
            self._fd = open_private(path, os.O_RDWR | os.O_CREAT)
            os.ftruncate(self._fd, 8 * self.known)
        self._pending = array("Q")

    def recorded(self) -> Iterator[int]:
        """The trusted digests, in line order."""
        if self._fd is None:
            return
        at, left = 0, self.known
        while left > 0:
            chunk = array("Q")
            chunk.frombytes(os.pread(self._fd, 8 * min(left, _CHUNK), at))
            if not chunk:
                return
            left -= len(chunk)
            at += 8 * len(chunk)
            yield from chunk

    def feed(self, data: bytes) -> None:
        """Input bytes the reader consumed beyond the known lines."""
        self.hash.update(data)

    def append(self, value: int, size: int) -> None:
        """The next input line's digest (0: no id, or a duplicate) and its size in bytes."""
        self.offset += size
        self._pending.append(value)
        if len(self._pending) >= _CHUNK:
            self.flush()

    def flush(self) -> tuple[int, int, str]:
        """Hand what is pending to the OS; return (lines recorded, input bytes they cover, their hash).

        Each chunk goes at its own place, so a failed write (disk full) leaves nothing misplaced.
        """
        if self._fd is not None and self._pending:
            assert self.path is not None
            write_all(self._fd, self._pending.tobytes(), self.path, at=8 * self.written)
        self.written += len(self._pending)
        self._pending = array("Q")
        return self.written, self.offset, self.hash.hexdigest()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
