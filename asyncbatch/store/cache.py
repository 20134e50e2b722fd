"""The response cache: answers kept across runs and files, in one SQLite database.

The key is a hash of what decides the answer: the API, the endpoint's identity (its
URL and deployment or model, never its key) and the request body as sent, in
canonical JSON, without ``user`` and ``metadata`` (which tag a request, not what is
asked). The value is the answer's body, as the server sent it, its request id and
when it was stored. Only successes are kept.

SQLite in WAL mode lets several runs and processes share one file: each write is
its own transaction, so a ``kill -9`` at any instant leaves the database readable
(a torn write is rolled back), and a lost entry only means a request sent again.
The cache supplies answers; what is recorded, and exactly once, is the store's.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from ..errors import ConfigError, option
from ..redact import Redactor
from .files import open_private

CacheMode = Literal["read-write", "read", "write", "off"]
MODES: tuple[str, ...] = get_args(CacheMode)
LEFT_OUT = ("user", "metadata")  # body fields that tag a request: not part of the key
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    request_id TEXT,
    stored REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


def default_path() -> Path:
    """``--cache`` alone: one cache per user, shared by every run."""
    return Path.home() / ".cache" / "asyncbatch" / "responses.sqlite"


def cache_key(api: str, endpoint: Iterable[str], body: Mapping[str, Any]) -> bytes:
    """The canonical hash of what decides an answer (see the module's docstring)."""
    asked = {k: v for k, v in body.items() if k not in LEFT_OUT}
    canonical = orjson.dumps([api, list(endpoint), asked], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=20).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    request_id: str | None


class ResponseCache:
    """One SQLite file of answers. ``get`` and ``put`` obey ``mode``; ``stats`` and ``prune`` are for the CLI.

    :param clock: wall-clock seconds, for ``stored`` and ``prune``; injected in tests.
    :param redactor: every answer passes through it before it is kept.
    """

    def __init__(
        self,
        path: Path,
        mode: CacheMode = "read-write",
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"{option('cache_mode')} must be one of {', '.join(MODES)} (got {mode!r})")
        self.path, self.mode, self.clock = Path(path), mode, clock
        self.redactor = redactor or Redactor()  # the cache is an output too: no secret is kept in it
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(
                open_private(self.path, os.O_RDWR | os.O_CREAT)
            )  # 0600, like every output; SQLite's side files follow
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last writes, never the file
            self.db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--cache {self.path}: cannot open it as a cache ({exc})") from None

    @property
    def reads(self) -> bool:
        return self.mode in ("read-write", "read")

    @property
    def writes(self) -> bool:
        return self.mode in ("read-write", "write")

    def get(self, key: bytes) -> Entry | None:
        if not self.reads:
            return None
        row = self.db.execute("SELECT body, request_id FROM answers WHERE key = ?", (key,)).fetchone()
        return Entry(row[0], row[1]) if row else None

    def hit(self, key: bytes) -> None:
        """An entry was used: counted for ``stats``."""
        if self.writes:
            self.db.execute("UPDATE answers SET hits = hits + 1 WHERE key = ?", (key,))

    def put(self, key: bytes, body: bytes, request_id: str | None, *, replace: bool = False) -> bool:
        """Keep a successful answer; False if another run stored one for this key meanwhile.

        :param replace: over the answer held (one the schema no longer takes); ``write`` mode always replaces.
        """
        if not self.writes:
            return True
        verb = "INSERT OR REPLACE" if replace or self.mode == "write" else "INSERT OR IGNORE"
        cursor = self.db.execute(
            f"{verb} INTO answers (key, body, request_id, stored) VALUES (?, ?, ?, ?)",
            (key, self.redactor.bytes(body), request_id, self.clock()),
        )
        return cursor.rowcount == 1

    def stats(self) -> dict[str, Any]:
        entries, hits, oldest, newest = self.db.execute(
            "SELECT count(*), coalesce(sum(hits), 0), min(stored), max(stored) FROM answers"
        ).fetchone()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {"entries": entries, "hits": hits, "bytes": size, "oldest": oldest, "newest": newest}

    def prune(self, older_than: float) -> int:
        """Remove the entries stored more than ``older_than`` seconds ago; return how many."""
        cursor = self.db.execute("DELETE FROM answers WHERE stored < ?", (self.clock() - older_than,))
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cursor.rowcount

    def close(self) -> None:
        self.db.close()
