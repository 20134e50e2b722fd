"""The response cache: answers kept across runs and files, in one SQLite database.

The key is a hash of what decides the answer: the API, the endpoint's identity (its
URL and deployment or model, never its key) and the request body as sent, in
canonical JSON, without ``user`` and ``metadata`` (which tag a request, not what is
asked). The value is the answer's body, as the server sent it, its request id, when
it was stored and a checksum of the three. Only successes are kept.

SQLite in WAL mode lets several runs and processes share one file: each write is
its own transaction, so a ``kill -9`` at any instant leaves the database readable
(a torn write is rolled back), and a lost entry only means a request sent again.
The cache supplies answers; what is recorded, and exactly once, is the store's.

This module is the cache file's one boundary (``check_cache``): a file is used only
if it is ours (our ``application_id``, or the table an older version made), is not a
symbolic link and passes SQLite's ``quick_check``; anything else is refused with a
ConfigError naming it, before a byte of it is changed. Past that, an entry is used
only if its checksum holds; an error while the run goes on turns the cache off for
the rest of the run (with one warning), never the run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from ..config import MODES, CacheMode
from ..errors import ConfigError, option
from ..redact import Redactor
from .files import NOFOLLOW, open_private

LEFT_OUT = ("user", "metadata")  # body fields that tag a request: not part of the key
APPLICATION_ID = int.from_bytes(b"aBch", "big")  # SQLite's header field for "which program's file is this"
SCHEMA_VERSION = 1  # PRAGMA user_version; 0 is an unmarked cache made before the checksum column
MAX_BODY = 256 * 1024 * 1024  # far above any answer the transport accepts: a longer one is damage
COLUMNS = frozenset({"key", "body", "request_id", "stored", "hits"})  # an older version's table: ours
BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's write to end
SIDE_FILES = ("-wal", "-shm", "-journal")
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    request_id TEXT,
    stored REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    checksum BLOB
) WITHOUT ROWID
"""
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # how a write-ahead log begins (either byte order)


def default_path() -> Path:
    """``--cache`` alone: one cache per user, shared by every run."""
    return Path.home() / ".cache" / "asyncbatch" / "responses.sqlite"


def cache_key(api: str, endpoint: Iterable[str], body: Mapping[str, Any]) -> bytes:
    """The canonical hash of what decides an answer (see the module's docstring)."""
    asked = {k: v for k, v in body.items() if k not in LEFT_OUT}
    canonical = orjson.dumps([api, list(endpoint), asked], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=20).digest()


def checksum(key: bytes, body: bytes, request_id: str | None) -> bytes:
    """What an entry must hash to: a page damaged on disk never becomes another answer."""
    digest = hashlib.blake2b(key, digest_size=16)
    digest.update(len(body).to_bytes(8, "little") + body)
    digest.update((request_id or "").encode("utf-8", "surrogatepass"))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    request_id: str | None


# -- this process's descriptors of a cache file ------------------------------------------------


class _Users:
    """Who in this process uses each cache file, so that no descriptor of one is closed under a connection to it.

    POSIX locks belong to a process, not to a descriptor: closing any descriptor of a file drops every lock the
    process holds on it, SQLite's included (sqlite.org/howtocorrupt.html, 2.2). A run that looked at the file while
    another run in this process (``asyncio.gather`` of two ``asyncbatch.map``) had it open would leave that one's
    connection unlocked: another process closing the cache would find itself its last user, checkpoint and delete
    the log this one still writes to, and every answer stored after that would be lost. So a descriptor of a file in
    use here is closed when its last user is done, as SQLite does with its own; and one kept so serves every later
    look at that file, so runs that overlap without end keep one descriptor, not one each.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: Counter[tuple[int, int]] = Counter()  # (st_dev, st_ino) -> connections and lookers using it
        self.kept: dict[tuple[int, int], list[int]] = {}  # descriptors closed when the file's last user is done

    def came(self, key: tuple[int, int]) -> None:
        with self.lock:
            self.count[key] += 1

    def left(self, key: tuple[int, int]) -> None:
        with self.lock:
            self.count[key] -= 1
            if not self.count[key]:
                del self.count[key]
                for fd in self.kept.pop(key, []):
                    os.close(fd)

    @contextmanager
    def descriptor(self, path: Path, open_: Callable[[], int]) -> Iterator[int]:
        """A descriptor of the file ``path`` names: the one kept for it, else ``open_()``'s (closed, or kept, after)."""
        kept = None
        with self.lock, suppress(OSError):
            info = os.lstat(path)  # not followed: a link at ``path`` is ``open_``'s to refuse
            key = (info.st_dev, info.st_ino)
            if stat.S_ISREG(info.st_mode) and key in self.kept:
                kept, self.count[key] = self.kept[key][0], self.count[key] + 1
        if kept is not None:
            try:
                yield kept
            finally:
                self.left(key)
            return
        fd = open_()
        try:
            yield fd
        finally:
            info = os.fstat(fd)
            with self.lock:
                if (key := (info.st_dev, info.st_ino)) in self.count:
                    self.kept.setdefault(key, []).append(fd)
                else:
                    os.close(fd)


_users = _Users()


class _Connection(sqlite3.Connection):
    """A connection counted among its file's users from before its first lock until it is closed."""

    file: tuple[int, int] | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if (key := self.file) is not None:
                self.file = None
                _users.left(key)


def _sqlite(path: Path, uri: str | None = None) -> _Connection:
    """A connection to ``path`` (through ``uri`` if given), counted among its users before it reads a byte."""
    db = sqlite3.connect(
        uri or path,
        uri=uri is not None,
        timeout=BUSY_TIMEOUT,
        isolation_level=None,
        check_same_thread=False,
        factory=_Connection,
    )
    with suppress(OSError):  # no file: SQLite holds no lock on it
        info = os.stat(path)
        db.file = (info.st_dev, info.st_ino)
        _users.came(db.file)
    return db


# -- the boundary: is this file a cache of ours, whole? ------------------------------------------


def _hint(path: Path) -> str:
    moved = shlex.join(["mv", str(path), f"{path}.damaged"])
    return f"HINT: move it aside (`{moved}`) and run again to start a new cache, or run without --cache"


def _damaged(path: Path, why: object) -> ConfigError:
    return ConfigError(f"--cache {path} is damaged ({why}); it is left as it is. {_hint(path)}")


def _foreign(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"--cache {path} is not an asyncbatch response cache ({what}); it is left as it is. "
        "HINT: give --cache a path of its own (a new file is created), or move that file away"
    )


def _link(path: Path) -> ConfigError:
    return ConfigError(
        f"--cache {path} is a symbolic link; asyncbatch does not follow links for its files (its target is "
        "left alone). HINT: give the target's own path, or remove the link"
    )


_verified: set[tuple[int, ...]] = set()  # files this process found whole, as they were then: checked once


def check_cache(path: Path, mode: str = "read-write") -> bool:
    """Refuse, without changing a byte, a cache file that is a link, another program's, or damaged.

    :returns: whether the file holds a cache already (False: none yet, one is made).
    :raises ConfigError: naming the file and what to do.
    """
    path = Path(path)
    for suffix in SIDE_FILES:
        if os.path.islink(f"{path}{suffix}"):
            raise _link(Path(f"{path}{suffix}"))
    header, identity = _header(path)
    if not header:
        if mode == "read":
            what = "does not exist" if identity is None else "is empty"
            raise ConfigError(
                f"--cache {path} {what}, and --cache-mode read adds nothing to it. "
                "HINT: give the path of an existing cache, or leave out --cache-mode read to start one"
            )
        return False
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        raise _foreign(path, f"not an SQLite database: it begins {header[:16]!r}; if it was a cache, it is damaged")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id not in (0, APPLICATION_ID):
        raise _foreign(path, f"another program's SQLite database: application_id {application_id:#010x}")
    if application_id == 0:  # unmarked: an older version's cache, one being made, or not ours
        _judge_unmarked(path, identity)
    if identity is not None and identity + _wal_identity(path) in _verified:
        return True
    with closing(_connect(path, immutable=False)) as db:
        _judge(path, db, whole=True)
    _verified.add((identity or ()) + _wal_identity(path))
    return True


def _judge_unmarked(path: Path, identity: tuple[int, ...] | None) -> None:
    """Judge an unmarked file as it is on disk, no side file made; through SQLite's locks if it is in use.

    A live writer (its log beside the file, or the file changed while it was read: a cache being made, whose
    first checkpoint marks it) is read as every user of it reads: a page read as it is being written is not damage.
    """
    live = os.path.lexists(f"{path}-wal")
    try:
        with closing(_connect(path, immutable=not live)) as db:
            _judge(path, db)
    except ConfigError:
        if live or (_header(path)[1] == identity and not os.path.lexists(f"{path}-wal")):
            raise
        with closing(_connect(path, immutable=False)) as db:
            _judge(path, db)


def _header(path: Path) -> tuple[bytes, tuple[int, ...] | None]:
    """The first 100 bytes of ``path`` (b"" if none) and what identifies it as it is now."""
    try:
        with _users.descriptor(path, lambda: os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)) as fd:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"--cache {path} is not a regular file. HINT: give --cache a file's path")
            return os.pread(fd, 100, 0), (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link(path) from None
        raise ConfigError(f"--cache {path}: cannot read it ({exc.strerror})") from None


def _wal_readable(path: Path) -> bool:
    """Whether the WAL beside ``path`` is absent, empty or begins as a WAL does (its frames are SQLite's to judge).

    SQLite writes a log's header before its first frame, so a run creating the cache meanwhile is never refused.
    """
    try:
        with open(f"{path}-wal", "rb") as f:
            head = f.read(4)
    except OSError:
        return True
    return any(magic.startswith(head) for magic in WAL_MAGIC)  # a header being written: its start


def _wal_identity(path: Path) -> tuple[int, ...]:
    try:
        info = os.lstat(f"{path}-wal")
    except OSError:
        return ()
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _connect(path: Path, *, immutable: bool) -> sqlite3.Connection:
    """A connection that cannot write. ``immutable``: the main file alone, no lock, no side file made.

    A read-only directory leaves SQLite no room for the WAL's index: the file is then read as immutable.
    """
    uri = f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")
    db = None
    try:
        db = _sqlite(path, uri)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as exc:
        if db is not None:
            db.close()
        if immutable or ("readonly" not in str(exc) and "unable to open" not in str(exc)):
            raise _damaged(path, exc) from None
        return _connect(path, immutable=True)
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise _damaged(path, exc) from None


def _open(path: Path) -> sqlite3.Connection:
    """The connection a run reads and writes through (autocommit: one transaction per statement)."""
    try:
        return _sqlite(path)
    except sqlite3.Error as exc:
        raise _damaged(path, exc) from None


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode, once for all its users.

    The switch needs the file to itself, and SQLite refuses it at once (it does not wait, lest two connections
    wait on each other) while another process opens it too: runs or workers starting on a new cache together.
    Asked again until the file is in WAL mode, for as long as a write waits for another.
    """
    for attempt in Retrying(
        retry=retry_if_exception(_busy),
        stop=stop_after_delay(BUSY_TIMEOUT),
        wait=wait_random_exponential(multiplier=0.002, max=0.1),
        reraise=True,
    ):
        with attempt:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")


def _judge(path: Path, db: sqlite3.Connection, *, whole: bool = False) -> None:
    """Refuse what ``db`` shows of ``path`` unless it is a cache of ours; ``whole``: SQLite's quick_check too."""
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        objects = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        columns = {row[1] for row in db.execute("PRAGMA table_info(answers)").fetchall()}
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()] if whole else ["ok"]
    except sqlite3.Error as exc:
        raise _damaged(path, exc) from None
    if application_id not in (0, APPLICATION_ID):
        raise _foreign(path, f"another program's SQLite database: application_id {application_id:#010x}")
    ours = objects == [("table", "answers")] and columns >= COLUMNS
    if application_id == 0 and (version not in (0, SCHEMA_VERSION) or (objects and not ours)):
        names = ", ".join(sorted(name for _, name in objects))[:200] or "none"
        raise _foreign(path, f"an SQLite database of another program: user_version {version}, tables {names}")
    if application_id == APPLICATION_ID and version > SCHEMA_VERSION:
        raise ConfigError(
            f"--cache {path} was made by a newer version of asyncbatch (cache schema {version}); it is left as it "
            "is. HINT: upgrade asyncbatch, or give --cache another path"
        )
    if application_id == APPLICATION_ID and objects and not ours:
        raise _damaged(path, "its table is not a cache's")
    if not objects and not _wal_readable(path):  # a database whose tables may all be in that log: not judged
        raise _damaged(path, "it holds no table, and the write-ahead log beside it is not one SQLite can read")
    if problems != ["ok"]:
        raise _damaged(path, f"SQLite's check: {'; '.join(map(str, problems))[:300]}")


# -- the cache -----------------------------------------------------------------------------------


class ResponseCache:
    """One SQLite file of answers. ``get`` and ``put`` obey ``mode``; ``stats`` and ``prune`` are for the CLI.

    :param clock: wall-clock seconds, for ``stored`` and ``prune``; injected in tests.
    :param redactor: every answer passes through it before it is kept.
    :param warn: told once if the file fails while in use (the cache is then off for this run).
    :raises ConfigError: the file is a link, not ours, damaged, or cannot be opened as ``mode`` asks.
    """

    def __init__(
        self,
        path: Path,
        mode: CacheMode = "read-write",
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"{option('cache_mode')} must be one of {', '.join(MODES)} (got {mode!r})")
        self.path, self.mode, self.clock = Path(path), mode, clock
        self.redactor = redactor or Redactor()  # the cache is an output too: no secret is kept in it
        self.warn = warn
        self.problem: str | None = None  # set when the file failed in use: the cache is off from then on
        self.damaged_entries = 0  # entries whose checksum did not hold: not used
        exists = check_cache(self.path, mode)
        self.db = _connect(self.path, immutable=False) if mode == "read" else self._open_to_write(exists)
        try:
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(answers)")}
        except sqlite3.Error as exc:
            self.db.close()
            raise _damaged(self.path, exc) from None
        self.held = bool(columns)  # an empty SQLite file read as it is has no table yet: nothing in it
        self.checked = "checksum" in columns  # an older version's entries carry no checksum

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open_to_write(self, exists: bool) -> sqlite3.Connection:
        with ExitStack() as stack:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                opened = _users.descriptor(self.path, lambda: open_private(self.path, os.O_RDWR | os.O_CREAT))
                fd = stack.enter_context(opened)  # 0600, like every output; SQLite's side files follow
            except OSError as exc:
                raise ConfigError(
                    f"--cache {self.path}: cannot open it to write ({exc.strerror}). "
                    "HINT: --cache-mode read uses a cache it cannot write to"
                ) from None
            if not exists and os.fstat(fd).st_size:
                check_cache(self.path, self.mode)  # made by another process meanwhile: judged before it is used
            db = _open(self.path)
            if not self._same_file(fd):  # SQLite opens by name: a link swapped in meanwhile is not used
                db.close()
                raise ConfigError(f"--cache {self.path} was replaced while it was opened. HINT: run again")
        try:
            _judge(self.path, db)  # the file SQLite opened, with its WAL: before any write
            return self._prepared(db)
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError(f"--cache {self.path}: cannot write to it ({exc}). {_hint(self.path)}") from None
        except BaseException:
            db.close()
            raise

    def _same_file(self, fd: int) -> bool:
        """Whether ``path`` still names the file opened without following links (a link swapped in does not)."""
        try:
            now, opened = os.lstat(self.path), os.fstat(fd)
        except OSError:
            return False
        return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)

    def _prepared(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """Our schema, mark and journal on a file judged ours."""
        _write_ahead(db)
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last writes, never the file
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(SCHEMA)
            if "checksum" not in {row[1] for row in db.execute("PRAGMA table_info(answers)")}:
                db.execute("ALTER TABLE answers ADD COLUMN checksum BLOB")  # an older cache: its entries unchecked
            if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            db.close()
            raise
        return db

    @property
    def reads(self) -> bool:
        return self.mode in ("read-write", "read") and self.problem is None

    @property
    def writes(self) -> bool:
        return self.mode in ("read-write", "write") and self.problem is None

    def get(self, key: bytes) -> Entry | None:
        """The entry for ``key`` if there is one and its checksum holds (one that does not is dropped)."""
        if not self.reads or not self.held:
            return None
        checksum_column = "checksum" if self.checked else "NULL"
        try:
            row = self.db.execute(
                f"SELECT CASE WHEN length(body) <= ? THEN body END, request_id, {checksum_column} "
                "FROM answers WHERE key = ?",
                (MAX_BODY, key),
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return None
        if row is None:
            return None
        body, request_id, stored_sum = row
        whole = isinstance(body, bytes) and (request_id is None or isinstance(request_id, str))
        if whole and (stored_sum is None or stored_sum == checksum(key, body, request_id)):
            return Entry(body, request_id)
        self.damaged_entries += 1
        self._drop(key)
        return None

    def _drop(self, key: bytes) -> None:
        """A damaged entry goes, so the next answer for its key is kept in its place."""
        if self.writes:
            try:
                self.db.execute("DELETE FROM answers WHERE key = ?", (key,))
            except sqlite3.Error as exc:
                self._failed("write", exc)

    def hit(self, key: bytes) -> None:
        """An entry was used: counted for ``stats``."""
        if self.writes:
            try:
                self.db.execute("UPDATE answers SET hits = hits + 1 WHERE key = ?", (key,))
            except sqlite3.Error as exc:
                self._failed("write", exc)

    def put(self, key: bytes, body: bytes, request_id: str | None, *, replace: bool = False) -> bool:
        """Keep a successful answer; False if another run stored one for this key meanwhile. Never raises.

        :param replace: over the answer held (one the schema no longer takes); ``write`` mode always replaces.
        """
        if not self.writes or len(body) > MAX_BODY:
            return True
        verb = "INSERT OR REPLACE" if replace or self.mode == "write" else "INSERT OR IGNORE"
        kept = self.redactor.json(body)  # every field kept passes the redactor: a server may echo a key anywhere
        kept_id = self.redactor.text(request_id) if request_id is not None else None
        try:
            cursor = self.db.execute(
                f"{verb} INTO answers (key, body, request_id, stored, checksum) VALUES (?, ?, ?, ?, ?)",
                (key, kept, kept_id, self.clock(), checksum(key, kept, kept_id)),
            )
        except sqlite3.Error as exc:
            self._failed("write", exc)
            return True
        return cursor.rowcount == 1

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        """The file failed in use: the run goes on without the cache, and is told once why."""
        if self.problem is None:
            self.problem = (
                f"the response cache {self.path} could not be {'read' if what == 'read' else 'written'} ({exc}): "
                f"the run goes on without it (answers are sent, not looked up). {_hint(self.path)}"
            )
            if self.warn is not None:
                self.warn(self.problem)

    def stats(self) -> dict[str, Any]:
        """:raises ConfigError: the file fails while it is read."""
        entries, hits, oldest, newest = 0, 0, None, None  # no table yet: a cache being made, or its maker killed
        try:
            if self.held:
                entries, hits, oldest, newest = self.db.execute(
                    "SELECT count(*), coalesce(sum(hits), 0), min(stored), max(stored) FROM answers"
                ).fetchone()
        except sqlite3.Error as exc:
            raise _damaged(self.path, exc) from None
        size = 0
        for name in (str(self.path), *(f"{self.path}{suffix}" for suffix in SIDE_FILES)):
            with suppress(OSError):
                size += os.lstat(name).st_size
        return {"entries": entries, "hits": hits, "bytes": size, "oldest": oldest, "newest": newest}

    def prune(self, older_than: float) -> int:
        """Remove the entries stored more than ``older_than`` seconds ago; return how many.

        :raises ConfigError: the file fails while it is written.
        """
        try:
            cursor = self.db.execute("DELETE FROM answers WHERE stored < ?", (self.clock() - older_than,))
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise _damaged(self.path, exc) from None
        return cursor.rowcount

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.db.close()
