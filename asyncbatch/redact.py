"""Keep secrets out of everything asyncbatch writes or prints."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

MASK = "***"


class Redactor:
    """Replaces each secret (4 characters or longer) with ``***`` in text and in bytes."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._fixed = [s for s in secrets if s and len(s) >= 4]  # keys and header values: kept for good
        self._learned: deque[str] = deque(maxlen=16)  # bearer tokens: the latest few
        self._index()

    def add(self, secret: str) -> None:
        """A secret learned during the run (a new bearer token)."""
        if len(secret) >= 4 and secret not in self._text:
            self._learned.append(secret)
            self._index()

    def _index(self) -> None:
        self._text = sorted({*self._fixed, *self._learned}, key=len, reverse=True)
        self._bytes = [s.encode() for s in self._text]

    def text(self, value: str) -> str:
        for secret in self._text:
            value = value.replace(secret, MASK)
        return value

    def bytes(self, value: bytes) -> bytes:
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, MASK.encode())
        return value
