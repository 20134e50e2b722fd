"""Digests of ids and lines, and a compact set of them: duplicate ``custom_id``s found in bounded memory.

``IdSet`` keeps a 64-bit digest of every id seen: 6 bytes each, in 65,536 byte-string buckets (about 60 MB
for 10 million ids, against about 900 MB for a Python set of the ids). Two different ids share a digest with
probability about n^2 / 2^65 (3 in a million for a 10-million-line file); the line would then be reported as
a duplicate, naming its id, never sent. The store keeps the same digests on disk (``store/ids.py``).
"""

from __future__ import annotations

import hashlib

BUCKETS = 1 << 16
SUFFIX = (1 << 48) - 1


def digest(custom_id: str) -> int:
    """A stable 64-bit digest of an id; never 0 (0 marks "no id" in the log)."""
    value = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")
    return value or 1


def line_digest(raw: bytes) -> int:
    """A stable 64-bit digest of an input line's content (its line ending left out)."""
    return int.from_bytes(hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=8).digest(), "little")


def find(bucket: bytearray, suffix: bytes) -> int:
    at = bucket.find(suffix)
    while at >= 0 and at % 6:
        at = bucket.find(suffix, at + 1)
    return at


class IdSet:
    """A compact set of 64-bit digests."""

    def __init__(self) -> None:
        self._buckets = [bytearray() for _ in range(BUCKETS)]
        self.count = 0

    def add(self, value: int) -> bool:
        """Add ``value``; False if it was already there."""
        bucket = self._buckets[value >> 48]
        suffix = (value & SUFFIX).to_bytes(6, "little")
        if find(bucket, suffix) >= 0:
            return False
        bucket += suffix
        self.count += 1
        return True

    def add_new(self, value: int) -> None:
        """Add a value known not to be there (loading a log): no search."""
        self._buckets[value >> 48] += (value & SUFFIX).to_bytes(6, "little")
        self.count += 1
