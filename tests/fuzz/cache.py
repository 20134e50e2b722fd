"""The response cache file, damaged at random, then opened as a run, ``cache stats`` and ``cache prune`` would.

A case starts from a real file (a cache a ``--simulate`` run made, the same in an older version's
unmarked form, an empty SQLite file, other programs' SQLite databases, files that are not SQLite at
all), maybe with a WAL beside it (one a killed writer left, random bytes, another database's), and
damages it: pages overwritten with random bytes, bytes flipped, ranges zeroed, the file cut short.

Invariants, checked on every case:

* ``no_traceback``: opening, reading, writing, ``stats`` and ``prune`` raise nothing but a ConfigError;
  a CLI run exits 0 or 2 and prints no traceback;
* ``named_refusal``: every refusal names the file and says what to do (``HINT:``);
* ``unchanged_on_refusal``: a refused file is left byte for byte as it was;
* ``foreign_untouched``: another program's file is never changed, whatever is asked of it;
* ``answers_valid``: every answer the cache gives is byte for byte one that was stored for that key,
  and a run's cached records hold those answers (for files whose entries carry checksums: not an
  older version's, whose damaged entries can only be caught where they are no longer JSON answers);
* ``usable_when_accepted``: a file accepted for writing keeps a new answer and gives it back, unless it
  failed in use and said so (one warning; the run goes on without it).

One case in ``RUN_EVERY`` also runs the real command line (``--simulate``) on the damaged file.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import sqlite3
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.errors import ConfigError
from asyncbatch.store.cache import ResponseCache, check_cache

from .report import FuzzReport

PAGE = 4096
LINES = 24
RUN_EVERY = 8  # one case in this many also runs the CLI against the simulator
FOREIGN = ("users", "users-wal", "marked", "lookalike", "extra-table", "versioned", "text", "jsonl")
OURS = ("ours", "ours-wal", "legacy")
BASES = (*OURS, *FOREIGN, "empty-db", "random", "random-sqlite")
MODES = ("read-write", "read", "write")
OLD_SCHEMA = (
    "CREATE TABLE answers (key BLOB PRIMARY KEY, body BLOB NOT NULL, request_id TEXT, stored REAL NOT NULL, "
    "hits INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
)


@dataclass(frozen=True)
class Edit:
    """One damage: ``page`` (a page of random bytes), ``flip`` (a few bytes), ``zero`` (a range), ``cut``."""

    kind: str
    at: int  # a fraction of the file, in millionths, so that the case does not depend on its exact size
    length: int
    seed: int

    def apply(self, data: bytes) -> bytes:
        if not data and self.kind != "page":
            return data
        at = self.at * len(data) // 1_000_000
        noise = random.Random(self.seed)
        if self.kind == "page":
            start = (at // PAGE) * PAGE
            return data[:start] + noise.randbytes(PAGE) + data[start + PAGE :]
        if self.kind == "flip":  # a few bytes: damage SQLite's own check may not see
            size = self.length % 16 + 1
            return data[:at] + noise.randbytes(size) + data[at + size :]
        if self.kind == "zero":
            return data[:at] + bytes(min(self.length, len(data) - at)) + data[at + self.length :]
        if self.kind == "header":
            at = at % 100
            return data[:at] + noise.randbytes(1) + data[at + 1 :]
        return data[:at]  # cut


@dataclass(frozen=True)
class Case:
    base: str
    edits: tuple[Edit, ...]
    wal: str | None  # None, "left" (a killed writer's, with its base), "random", "foreign"
    wal_edits: tuple[Edit, ...]
    mode: str
    run: bool  # also run the CLI on it
    seed: int  # of the random bytes a "random" base is made of

    @property
    def foreign(self) -> bool:
        """Another program's file, as SQLite reads it: a WAL database's tables are in its log, which must be whole.

        Its main file alone (or beside a damaged log, whose frames SQLite drops) is an empty database to SQLite.
        """
        return self.base in FOREIGN and (self.base != "users-wal" or (self.wal == "left" and not self.wal_edits))


def edits(max_size: int = 4) -> st.SearchStrategy[tuple[Edit, ...]]:
    edit = st.builds(
        Edit,
        kind=st.sampled_from(["page", "page", "flip", "flip", "zero", "header", "cut"]),
        at=st.integers(0, 999_999),
        length=st.integers(1, 3 * PAGE),
        seed=st.integers(0, 2**32),
    )
    return st.lists(edit, max_size=max_size).map(tuple)


def cases() -> st.SearchStrategy[Case]:
    return st.builds(
        Case,
        base=st.sampled_from(BASES),
        edits=edits(),
        wal=st.sampled_from([None, None, None, "left", "left", "random", "foreign"]),
        wal_edits=edits(2),
        mode=st.sampled_from(MODES),
        run=st.integers(0, RUN_EVERY - 1).map(lambda n: n == 0),
        seed=st.integers(0, 2**32),
    )


# -- the files a case starts from ------------------------------------------------------------------


@dataclass
class Templates:
    """The real files the cases damage, made once: bytes by base name, and what our caches hold."""

    root: Path
    files: dict[str, bytes]
    wals: dict[str, bytes]  # a WAL a killed writer left beside the base of that name ("ours-wal", "users-wal")
    stored: dict[bytes, tuple[bytes, str | None]]  # key -> (body, request_id) of every answer ever stored
    input_path: Path
    bodies: dict[str, Any]  # custom_id -> the answer's body (parsed) the run got

    @classmethod
    def build(cls, root: Path) -> Templates:
        root.mkdir(parents=True, exist_ok=True)
        input_path = root / "in.jsonl"
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i} " + "w " * (i * 90)}]},
            }
            for i in range(LINES)
        ]
        input_path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        cache = root / "ours.sqlite"
        code, err = _cli(root, [str(input_path), "--simulate", "--sim-latency-ms", "0", "--cache", str(cache)])
        assert code == 0, err
        bodies = {r["custom_id"]: r["response"]["body"] for r in _records(root / "in.results.jsonl")}
        files = {"ours": cache.read_bytes()}
        with contextlib.closing(sqlite3.connect(cache)) as db:
            stored = {k: (b, r) for k, b, r in db.execute("SELECT key, body, request_id FROM answers")}
        files["legacy"] = _legacy(root, cache)
        wals = {}
        files["ours-wal"], wals["ours-wal"], extra = _killed_writer(root, cache)
        stored.update(extra)
        for kind in ("users", "users-wal", "marked", "lookalike", "extra-table", "versioned", "empty-db"):
            files[kind], wal = _foreign(root / f"{kind}.db", kind)
            if wal:
                wals[kind] = wal
        files["text"] = b"a notes file, not a database\n" * 200
        files["jsonl"] = (root / "in.results.jsonl").read_bytes()
        return cls(root, files, wals, stored, input_path, bodies)


def _legacy(root: Path, cache: Path) -> bytes:
    """The same answers as an older version kept them: no mark, no checksum column."""
    path = root / "legacy.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(OLD_SCHEMA)
        db.execute("ATTACH ? AS new", (str(cache),))
        db.execute("INSERT INTO answers SELECT key, body, request_id, stored, hits FROM new.answers")
        db.commit()
    return path.read_bytes()


def _killed_writer(root: Path, cache: Path) -> tuple[bytes, bytes, dict[bytes, tuple[bytes, str | None]]]:
    """Our cache as a writer killed mid-run leaves it: new answers only in its WAL (never checkpointed)."""
    path = root / "killed.sqlite"
    shutil.copy(cache, path)
    stored: dict[bytes, tuple[bytes, str | None]] = {}
    with ResponseCache(path) as kept:
        kept.db.execute("PRAGMA wal_autocheckpoint = 0")
        for i in range(8):
            key, body = bytes([i]) * 20, orjson.dumps({"late": i, "text": "x" * (i * 700)})
            kept.put(key, body, f"req-late-{i}")
            stored[key] = (body, f"req-late-{i}")
        main_bytes, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()
    return main_bytes, wal, stored


def _foreign(path: Path, kind: str) -> tuple[bytes, bytes]:
    """Another program's SQLite database (or an empty one), and the WAL it leaves while it is open."""
    db = sqlite3.connect(path, isolation_level=None)
    if kind == "users-wal":
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
    if kind == "marked":
        db.execute("PRAGMA application_id = 1234567")
    if kind == "versioned":
        db.execute("PRAGMA user_version = 7")
    if kind == "lookalike":
        db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT)")
    elif kind in ("marked", "extra-table"):
        db.execute(OLD_SCHEMA)
        if kind == "extra-table":
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    elif kind != "empty-db":
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO users (name) VALUES (?)", [(f"user {i} " * 30,) for i in range(200)])
        db.execute("COMMIT")
    wal_path = Path(f"{path}-wal")
    state = path.read_bytes(), wal_path.read_bytes() if wal_path.exists() else b""
    db.close()
    return state


# -- one case --------------------------------------------------------------------------------------


def _cli(cwd: Path, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException:  # anything escaping main is a violation to report, not to stop on
            return -1, traceback.format_exc()
    return code, err.getvalue()


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


class Checker:
    """Runs cases in a scratch directory of its own, reporting into ``report``."""

    def __init__(self, templates: Templates, report: FuzzReport) -> None:
        self.t, self.report = templates, report
        self.scratch = templates.root / "case"

    def place(self, case: Case) -> Path:
        """The damaged file (and its WAL), fresh in the scratch directory."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()
        path = self.scratch / "c.sqlite"
        data = self.t.files.get(case.base) or random.Random(case.seed).randbytes(PAGE * 3)
        if case.base == "random-sqlite":
            data = b"SQLite format 3\x00" + data[16:]
        for edit in case.edits:
            data = edit.apply(data)
        path.write_bytes(data)
        wal = {
            "left": self.t.wals.get(case.base, b""),
            "random": random.Random(len(case.wal_edits)).randbytes(PAGE * 2),
            "foreign": self.t.wals["users-wal"],
        }.get(case.wal or "", b"")
        for edit in case.wal_edits if wal else ():
            wal = edit.apply(wal)
        if wal:
            Path(f"{path}-wal").write_bytes(wal)
        return path

    def check(self, case: Case) -> None:
        path = self.place(case)
        before = _state(path)
        refused = self._open(case, path, before)
        self._commands(case, path, before, refused)
        if case.run:
            self._run(case, path)
        if case.foreign and before[path.name]:
            changed = [name for name, data in before.items() if _state(path).get(name) != data]
            self.report.saw("foreign_untouched", f"changed: {changed}" if changed else None, case)
        self.report.cases += 1

    def _open(self, case: Case, path: Path, before: dict[str, bytes]) -> bool:
        """As a run opens it: judged first, then opened in the case's mode, read and written. True if refused."""
        warnings: list[str] = []
        try:
            check_cache(path, case.mode)
            with ResponseCache(path, case.mode, warn=warnings.append) as cache:  # type: ignore[arg-type]
                self._answers(case, cache)
                self._usable(case, cache, warnings)
        except ConfigError as exc:
            self._refusal(case, path, str(exc), before)
            return True
        except Exception:  # the violation: reported with its traceback
            self.report.saw("no_traceback", traceback.format_exc(limit=-3), case)
            return True
        self.report.saw("no_traceback", None, case)
        return False

    def _answers(self, case: Case, cache: ResponseCache) -> None:
        # An older version's entries carry no checksum: nothing holds them to what was stored (documented).
        checked = cache.checked and case.base != "legacy"
        for key, (body, request_id) in self.t.stored.items():
            entry = cache.get(key)
            if entry is None or not checked:
                continue
            problem = None if (entry.body, entry.request_id) == (body, request_id) else f"key {key.hex()[:8]}"
            self.report.saw("answers_valid", problem and f"an answer not as stored: {problem}", case)

    def _usable(self, case: Case, cache: ResponseCache, warnings: list[str]) -> None:
        if case.mode != "read-write":
            return
        key, body = b"\xfe" * 20, b'{"fresh": true}'
        cache.put(key, body, "req-fresh")
        entry = cache.get(key)
        works = entry is not None and entry.body == body
        said = cache.problem is not None and len(warnings) == 1 and str(cache.path) in warnings[0]
        self.report.saw("usable_when_accepted", None if works or said else "accepted, then silently unusable", case)

    def _refusal(self, case: Case, path: Path, message: str, before: dict[str, bytes]) -> None:
        named = str(path) in message and "HINT:" in message
        self.report.saw("named_refusal", None if named else f"message: {message[:200]}", case)
        now = _state(path)
        self.report.saw("unchanged_on_refusal", None if now[path.name] == before[path.name] else "changed", case)

    def _commands(self, case: Case, path: Path, before: dict[str, bytes], refused: bool) -> None:
        """``asyncbatch cache stats`` and ``prune``, as typed."""
        for argv in (["cache", "stats", str(path)], ["cache", "prune", str(path), "--older-than", "3650d"]):
            snapshot = _state(path)
            code, err = _cli(self.scratch, argv)
            broken = code not in (0, 2) or "Traceback" in err or "internal error" in err
            self.report.saw("no_traceback", f"{argv[1]}: exit {code}: {err[-300:]}" if broken else None, case)
            if code == 2 and "no such file" not in err:
                named = str(path) in err and "HINT:" in err
                self.report.saw("named_refusal", None if named else f"{argv[1]}: {err[:200]}", case)
                same = _state(path).get(path.name) == snapshot.get(path.name)
                self.report.saw("unchanged_on_refusal", None if same else f"{argv[1]} changed it", case)

    def _run(self, case: Case, path: Path) -> None:
        """The command line, against the simulator, with the damaged file as its cache."""
        out = self.scratch / "out.jsonl"
        argv = [str(self.t.input_path), "--simulate", "--sim-latency-ms", "0", "--no-progress", "-q"]
        code, err = _cli(self.scratch, [*argv, "--cache", str(path), "--cache-mode", case.mode, "-o", str(out)])
        broken = code not in (0, 2) or "Traceback" in err or "internal error" in err
        self.report.saw("no_traceback", f"run: exit {code}: {err[-300:]}" if broken else None, case)
        if code == 2:
            self.report.saw("named_refusal", None if str(path) in err and "HINT:" in err else err[:200], case)
            return
        records = _records(out)
        lines = sorted(r["line"] for r in records)
        self.report.saw("no_traceback", None if lines == list(range(1, LINES + 1)) else f"lines {lines}", case)
        if case.base in ("ours", "ours-wal"):
            wrong = [r["custom_id"] for r in records if r.get("cached") and self._differs(r)]
            self.report.saw("answers_valid", f"cached records not as stored: {wrong}" if wrong else None, case)

    def _differs(self, record: dict[str, Any]) -> bool:
        return bool(record["response"]["body"] != self.t.bodies[record["custom_id"]])


def _state(path: Path) -> dict[str, bytes]:
    """The file and its side files, as bytes."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name) and p.is_file()}


@contextlib.contextmanager
def checker(report: FuzzReport) -> Iterator[Checker]:
    with tempfile.TemporaryDirectory(prefix="asyncbatch-fuzz-cache-") as root:
        yield Checker(Templates.build(Path(root)), report)


def fuzz(cases: int, seed: int = 0) -> FuzzReport:
    """Run ``cases`` generated cases (see the module's docstring); violations are collected, not raised."""
    report = FuzzReport("cache")
    with checker(report) as check:

        @hypothesis_seed(seed)
        @settings(
            max_examples=cases,
            database=None,
            deadline=None,
            phases=(Phase.generate,),
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases_strategy)
        def each(case: Case) -> None:
            check.check(case)

        each()
    return report


cases_strategy = cases()
