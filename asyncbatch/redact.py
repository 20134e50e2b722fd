"""Keep secrets out of everything asyncbatch writes or prints.

One ``Redactor`` per run sees every byte before it reaches a file or a terminal:
the writers pass records through it, the reporters their stream, the client the
server's error bodies, before any of them is cut short. Where text must be cut,
``clip`` redacts first and then masks a secret's beginning left at the cut.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TextIO

Bytes = bytes  # the method ``bytes`` below shadows the type in annotations

MASK = "***"
PARTIAL = 4  # a secret's first characters left at a cut are masked from this many on


class Redactor:
    """Replaces each secret (4 characters or longer) with ``***`` in text and in bytes."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._fixed: list[str] = []  # keys and header values: kept for good
        self._learned: deque[str] = deque(maxlen=16)  # bearer tokens: the latest few
        self.extend(secrets)

    def extend(self, secrets: Iterable[str | None]) -> None:
        """Secrets known from the configuration."""
        self._fixed += [s for s in secrets if s and len(s) >= 4 and s not in self._fixed]
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
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def bytes(self, value: bytes) -> bytes:
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, MASK.encode())
        return value

    def clip(self, value: Bytes, limit: int) -> Bytes:
        """Redact, then keep at most ``limit`` bytes; a secret's beginning left at the end is masked too."""
        value = self.bytes(value)
        return self.cut_short(value[:limit]) if len(value) > limit else value

    def cut_short(self, value: Bytes) -> Bytes:
        """``value`` was cut before it was redacted (read only so far): mask a secret begun at its end."""
        value = self.bytes(value)
        for secret in self._bytes:
            for size in range(min(len(secret) - 1, len(value)), PARTIAL - 1, -1):
                if value.endswith(secret[:size]):
                    return value[:-size] + MASK.encode()
        return value


class RedactingStream:
    """A text stream that passes every write through a Redactor (a terminal's stdout or stderr)."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self.stream, self.redactor = stream, redactor

    def write(self, text: str) -> int:
        return self.stream.write(self.redactor.text(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> object:  # encoding, errors, buffer...: those of the stream
        return getattr(self.stream, name)
