"""The metrics log: a run's counters every few seconds, in its state directory, bounded whatever the run's length.

``<results>.state/metrics`` is JSON lines, appended by one task of the run (``MetricsLog``)::

    {"session": 1, "wall": 1733412345.1, "columns": [...], "deployments": ["east", "west"], ...}
    [0.0, 5000, 0, ...]             a row: the columns' values, ``t`` seconds into the session
    {"job": "batch_abc", "part": 0, "status": "in_progress", "t": 12.5, "lines": 1000}
    {"session": 2, ...}             each run of the same command (a resume) starts a session

A row holds cumulative counters (and a few gauges), so any two rows give the rates between them and
a dropped row loses resolution, never a total. Rows come every ``every`` seconds, and the log holds
at most ``MAX_ROWS``: when it is full, every other row is dropped (the file replaced atomically) and
rows come half as often from then on. Its size is bounded by the rows, never by the input's lines:
about 1 MB for a run of any length (docs/report.md).

``<results>.state/summary`` is the run's summary (``display/summary.py``'s, the JSON log's), replaced
with every row and at the end, so the report shows the same totals as the summary. It is not
fsynced (a crash of the machine may empty it; the report then says so and draws the rows).

The report reads both while a run writes them (``read_log``, ``read_summary``): it takes no lock,
skips a torn last line, and judges every line it reads, as bytes from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from ..batch.parts import BatchState
from ..errors import ConfigError, OutputError
from ..redact import Redactor
from ..stats import RunStats
from ..store.files import StatePaths, atomic_file, cut, open_private, torn_tail, write_all

EVERY = 0.5  # seconds between rows at first: a short run still draws a curve
SUMMARY_EVERY = 0.0  # seconds of rows between summary snapshots: 0, with every row (a sort of the latencies, ~2 ms)
MAX_ROWS = 4096  # rows kept in all; past it, every other one goes and rows come half as often
MAX_READ = 64 * 1024 * 1024  # what the report reads of a log at most (a kept log is ~1 MB)

COLUMNS = (
    "t",
    "total",
    "done",
    "succeeded",
    "failed",
    "attempts",
    "retries",
    "throttled",
    "in_flight",
    "prompt_tokens",
    "completion_tokens",
    "charged_tokens",
    "cost",
    "limit_tpm",
    "charge_ratio",
    "p50",
    "p95",
    "deployments",
)
DEPLOYMENT_COLUMNS = ("answers", "throttled", "failed", "in_flight", "limit_tpm", "charge_ratio")
SUMMARY_KEY = "summary"
NAMES = "deployments"


def _round(value: float | None, digits: int = 0) -> float | int | None:
    if value is None:
        return None
    return round(value, digits) if digits else round(value)


def row(stats: RunStats, t: float) -> list[Any]:
    """One row of the log: ``stats`` now, ``t`` seconds into the session (``COLUMNS``' order)."""
    recent = stats.take_recent_latencies()
    routes = [
        [r.succeeded, r.throttled, r.failed, r.in_flight, _round(r.learned_tpm), _round(r.charge_ratio, 3)]
        for r in stats.routes
    ]
    return [
        round(t, 1),
        stats.total,
        stats.progress,
        stats.succeeded,
        stats.failed,
        stats.attempts,
        stats.retries,
        stats.throttled,
        stats.in_flight,
        stats.prompt_tokens,
        stats.completion_tokens,
        round(stats.charged_tokens),
        round(stats.cost, 6),
        _round(stats.tpm_limit or stats.learned_tpm),
        _round(stats.charge_ratio, 3),
        _round(recent.percentile(0.5), 1),
        _round(recent.percentile(0.95), 1),
        routes,
    ]


def thinned(lines: list[bytes]) -> list[bytes]:
    """Every other row of each session, and always its last (its totals); headers and job events all kept."""
    kept: list[bytes] = []
    rows: list[bytes] = []

    def close_session() -> None:
        kept.extend(rows[:-1:2] + rows[-1:])
        rows.clear()

    for line in lines:
        if line.startswith(b"["):
            rows.append(line)
            continue
        if line.startswith(b'{"session"'):
            close_session()
        kept.append(line)
    close_session()
    return kept


class MetricsLog:
    """Writes the metrics log and the summary snapshot of one run (one session of the log).

    ``start`` before the work, ``run`` as a task beside it, ``finish`` once the run's counters are final.
    Writing it never stops a run: on an I/O error it warns once and keeps no more.

    :param summary: the run's summary of ``stats`` (``display.summary.summary_data``): the snapshot's content.
    :param batches: the run uses Batch API jobs: their changes are logged (read from the state's ``batches``).
    :param redactor: the run's: every byte written passes it (a server may quote a key in an error code).
    :param wall: the wall clock, read once, for the session's start; rows are timed by ``stats.clock``.
    :param every: seconds between rows at first; ``max_rows``: rows kept; ``summary_every``: seconds of rows
        between summary snapshots (0: with every row).
    """

    def __init__(
        self,
        paths: StatePaths,
        stats: RunStats,
        summary: Callable[[RunStats], dict[str, Any]],
        *,
        batches: bool = False,
        warn: Callable[[str], None] = lambda _: None,
        redactor: Redactor | None = None,
        wall: Callable[[], float] = time.time,
        every: float = EVERY,
        max_rows: int = MAX_ROWS,
        summary_every: float = SUMMARY_EVERY,
    ) -> None:
        self.paths, self.stats, self.summary, self.warn = paths, stats, summary, warn
        self.batches, self.wall, self.every, self.max_rows = batches, wall, every, max_rows
        self.summary_every = summary_every
        self.redactor = redactor or Redactor()
        self.session = 0
        self.rows = 0  # rows in the file, all sessions
        self._unsummarised: float | None = None  # seconds of rows since the last snapshot; None: none yet
        self._fd: int | None = None
        self._broken = False
        self._jobs: dict[int, tuple[str | None, str]] = {}  # part -> (job id, status) last logged
        self._batches_seen: tuple[int, int] | None = None

    @property
    def t(self) -> float:
        return self.stats.clock() - self.stats.started

    def start(self) -> None:
        """Open the log, cut a torn last line a kill left, and write this session's header, first row and summary."""
        with self._guard():
            self.session, self.rows = _count(self.paths.metrics)
            if tail := torn_tail(self.paths.metrics):
                cut(self.paths.metrics, tail)
            self.session += 1
            self._open()
            stats = self.stats
            header = {
                "session": self.session,
                "wall": round(self.wall() - self.t, 3),
                "columns": COLUMNS,
                "deployment_columns": DEPLOYMENT_COLUMNS,
                "deployments": [r.name for r in stats.routes],
                "priced": stats.prices is not None,
                "simulated": stats.simulated,
                "tpm_limit": stats.tpm_limit,
                "rpm_limit": stats.rpm_limit,
                "every": self.every,
            }
            self._write(orjson.dumps(header) + b"\n")
            self.tick()

    async def run(self) -> None:
        """A row every ``every`` seconds until cancelled (the last one is ``finish``'s)."""
        while not self._broken:
            await asyncio.sleep(self.every)
            self.tick()

    def tick(self) -> None:
        """One row now, the jobs that changed and the summary; thinned when full."""
        if self._fd is None:
            return  # not started, or broken
        with self._guard():
            t = self.t
            lines = [orjson.dumps(row(self.stats, t)) + b"\n", *self._job_events(t)]
            self._write(b"".join(lines))
            self.rows += 1
            if self._unsummarised is None or self._unsummarised >= self.summary_every:
                self._snapshot(final=False)
                self._unsummarised = 0.0
            self._unsummarised += self.every
            if self.rows >= self.max_rows:
                self._thin()

    def finish(self) -> None:
        """The run's final row and summary (its counters are final now); the log closed."""
        if self._fd is None:
            return
        self.tick()
        if self._fd is not None:
            with self._guard():
                self._snapshot(final=True)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- inside ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """An error writing the log is told once and ends the log, never the run."""
        try:
            yield
        except (OSError, OutputError, ConfigError) as exc:
            self._broken = True
            self.close()
            self.warn(f"the metrics log stops here ({exc}); the run goes on, and asyncbatch report shows less")

    def _open(self) -> None:
        self._fd = open_private(self.paths.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        write_all(self._fd, self.redactor.bytes(data), self.paths.metrics)

    def _snapshot(self, *, final: bool) -> None:
        summary = self.summary(self.stats)
        snapshot = {"session": self.session, "t": round(self.t, 1), "final": final, SUMMARY_KEY: summary}
        with atomic_file(self.paths.summary, sync=False) as f:
            f.write(self.redactor.bytes(orjson.dumps(snapshot)))

    def _thin(self) -> None:
        """Every other row goes (the file replaced atomically); rows come half as often from now on."""
        self.close()
        lines = thinned(self.paths.metrics.read_bytes().splitlines())
        with atomic_file(self.paths.metrics) as f:
            f.write(b"".join(line + b"\n" for line in lines))
        self.rows = sum(line.startswith(b"[") for line in lines)
        self.every *= 2
        self._open()

    def _job_events(self, t: float) -> list[bytes]:
        """A line for each Batch API job whose state changed since the last look at the state's ``batches``."""
        if not self.batches:
            return []
        try:
            info = os.stat(self.paths.batches)
            seen = (info.st_mtime_ns, info.st_size)
            if seen == self._batches_seen:
                return []
            state = BatchState.load(self.paths.batches)
        except (OSError, ValueError, TypeError, KeyError):
            return []  # not written yet, or being replaced: the next look sees it
        self._batches_seen = seen
        events = []
        for part in state.parts if state is not None else []:
            now = (part.batch_id, "merged" if part.merged else part.status or "waiting")
            if self._jobs.get(part.index) != now:
                self._jobs[part.index] = now
                event = {"job": part.batch_id, "part": part.index, "status": now[1], "t": round(t, 1)}
                events.append(orjson.dumps({**event, "lines": part.lines}) + b"\n")
        return events


def _count(path: Path) -> tuple[int, int]:
    """(sessions, rows) in a log so far; (0, 0) if there is none."""
    try:
        with path.open("rb") as f:
            lines = f.read(MAX_READ).splitlines()
    except FileNotFoundError:
        return 0, 0
    return sum(line.startswith(b'{"session"') for line in lines), sum(line.startswith(b"[") for line in lines)


# -- reading (the report) ----------------------------------------------------------------------


@dataclass
class JobEvent:
    job: str | None
    part: int
    status: str
    t: float
    lines: int


@dataclass
class Session:
    """One run of the command, as the log kept it: each row a dict by column name (its deployments too)."""

    number: int
    wall: float  # when it started, Unix time
    columns: list[str]
    deployment_columns: list[str]
    deployments: list[str]
    priced: bool
    simulated: bool
    tpm_limit: float | None
    rpm_limit: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[JobEvent] = field(default_factory=list)


def read_log(path: Path) -> list[Session]:
    """The sessions of a metrics log; a line that is not one of ours (a torn last one) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_READ)
    sessions: list[Session] = []
    for line in data.splitlines():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and (session := _session(value)) is not None:
            sessions.append(session)
        elif sessions and isinstance(value, list) and (found := _row(value, sessions[-1])) is not None:
            sessions[-1].rows.append(found)
        elif sessions and isinstance(value, dict) and (job := _job(value)) is not None:
            sessions[-1].jobs.append(job)
    for session in sessions:
        session.rows.sort(key=lambda r: float(r["t"]))
    return sessions


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(value: object) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(n, str) for n in value) else None


def _session(value: dict[str, Any]) -> Session | None:
    columns, deployment_columns, names = (_names(value.get(k)) for k in ("columns", "deployment_columns", NAMES))
    session, wall = value.get("session"), value.get("wall")
    if not (isinstance(session, int) and _number(wall)):
        return None
    if columns is None or "t" not in columns or columns[-1] != "deployments":
        return None
    if deployment_columns is None or names is None:
        return None
    limits = [value[k] if _number(value.get(k)) else None for k in ("tpm_limit", "rpm_limit")]
    return Session(
        number=session,
        wall=float(wall),
        columns=columns,
        deployment_columns=deployment_columns,
        deployments=names,
        priced=value.get("priced") is True,
        simulated=value.get("simulated") is True,
        tpm_limit=limits[0],
        rpm_limit=limits[1],
    )


def _row(value: list[Any], session: Session) -> dict[str, Any] | None:
    """A row by the session's column names; None unless every value is a number or null."""
    if len(value) != len(session.columns) or not all(v is None or _number(v) for v in value[:-1]):
        return None
    routes = value[-1]
    if not isinstance(routes, list) or len(routes) != len(session.deployments):
        return None
    width = len(session.deployment_columns)
    if not all(isinstance(r, list) and len(r) == width and all(v is None or _number(v) for v in r) for r in routes):
        return None
    found = dict(zip(session.columns[:-1], value[:-1], strict=True))
    if not _number(found["t"]):
        return None
    found["deployments"] = [dict(zip(session.deployment_columns, r, strict=True)) for r in routes]
    return found


def _job(value: dict[str, Any]) -> JobEvent | None:
    job, part, status, t, lines = (value.get(k) for k in ("job", "part", "status", "t", "lines"))
    if not ((job is None or isinstance(job, str)) and isinstance(part, int) and isinstance(status, str)):
        return None
    if not (_number(t) and isinstance(lines, int)):
        return None
    return JobEvent(job, part, status, float(t), lines)


@dataclass
class Snapshot:
    """The summary file: the run's summary at session time ``t``, ``final`` once the session ended."""

    session: int
    t: float
    final: bool
    summary: dict[str, Any]


def read_summary(path: Path) -> Snapshot | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_READ)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get(SUMMARY_KEY), dict):
        return None
    session, t = value.get("session"), value.get("t")
    if not (isinstance(session, int) and _number(t)):
        return None
    return Snapshot(session, float(t), value.get("final") is True, value[SUMMARY_KEY])
