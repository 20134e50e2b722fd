"""The metrics log: a run's counters every few seconds, in its state directory, bounded whatever the run's length.

``<results>.state/metrics`` is JSON lines, appended by one task of the run (``MetricsLog``)::

    {"dropped": {"sessions": 40, "cost": 1.25, "since": 1733400000.0}}   sessions dropped whole (see below)
    {"session": 1, "wall": 1733412345.1, "columns": [...], "deployments": ["east", "west"], ...}
    [0.0, 5000, 0, ...]             a row: the columns' values, ``t`` seconds into the session
    {"job": "batch_abc", "part": 0, "status": "in_progress", "t": 12.5, "lines": 1000}
    {"session": 2, ...}             each run of the same command (a resume) starts a session

A row holds cumulative counters (and a few gauges), so any two rows give the rates between them and
a dropped row loses resolution, never a total. Rows come every ``every`` seconds, and the log holds
at most ``MAX_ROWS``: when it is full, every other row is dropped (the file replaced atomically) and
rows come half as often from then on. It keeps the latest ``MAX_SESSIONS`` sessions: an older one is
dropped whole, its cost added to the ``dropped`` line. Batch API job events are bounded too: at most
``PART_EVENTS`` changes a job, ``MAX_EVENTS`` a session and in the file (older sessions' events go
first). The log's size is thus bounded whatever the input's lines, the run's length or the number of
resumes: about 1 MB for a long run (docs/report.md).

``<results>.state/summary`` is the run's summary (``display/summary.py``'s, the JSON log's), replaced
with every row and at the end, so the report shows the same totals as the summary. It is not
fsynced (a crash of the machine may empty it; the report then says so and draws the rows).

The report reads both while a run writes them (``read_log``, ``read_summary``): it takes no lock,
skips a torn last line, and judges every line and field it reads, as bytes from outside: past them,
the report has typed values, finite numbers in range and strings redacted and cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from ..batch.parts import BatchState
from ..config import StatePaths
from ..errors import ConfigError, OutputError
from ..redact import Redactor
from ..stats import MAX_REASONS, RunStats, reason
from ..store.files import atomic_file, cut, open_private, torn_tail, write_all
from .reading import bounded_lines, open_regular

EVERY = 0.5  # seconds between rows at first: a short run still draws a curve
SUMMARY_EVERY = 0.0  # seconds of rows between summary snapshots: 0, with every row (a sort of the latencies, ~2 ms)
MAX_ROWS = 4096  # rows kept in all; past it, every other one goes and rows come half as often
MAX_SESSIONS = 64  # sessions kept; an older one is dropped whole (its cost kept in the ``dropped`` line)
MAX_EVENTS = 1024  # Batch API job events logged a session, and kept in the file (the newest sessions')
PART_EVENTS = 8  # state changes logged per job and session (a job flapping at every poll); then only "merged"
JOB_ID_CHARS = 100  # a job id or status from the server is cut to this
MAX_READ = 16 * 1024 * 1024  # what the report reads of a log or summary at most (a kept log is ~1 MB)
MAX_LINE = 1024 * 1024  # a line of the log (a row of 256 deployments is ~20 kB)

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
        for r in stats.pool
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


HEADER, ROW, JOB, DROPPED = b'{"session"', b"[", b'{"job"', b'{"dropped"'  # how each kind of line begins


@dataclass
class _Kept:
    """One session's lines in the file, as thinning sees them."""

    header: bytes
    rows: list[bytes] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)


def thinned(
    lines: list[bytes], *, halve: bool = True, sessions: int = MAX_SESSIONS, events: int = MAX_EVENTS
) -> list[bytes]:
    """The log's lines, fewer: every other row of each session (``halve``), always its first and its last (its
    totals); the latest ``sessions`` sessions, the older ones' cost added to the ``dropped`` line; the job
    events of the newest sessions, ``events`` at most in all. A line that is none of these goes."""
    dropped = Dropped(0, 0.0, None)
    groups: list[_Kept] = []
    for line in lines:
        if line.startswith(DROPPED):
            dropped = dropped.plus(_dropped(_loads(line)) or Dropped(0, 0.0, None))
        elif line.startswith(HEADER):
            groups.append(_Kept(line))
        elif groups and line.startswith(ROW):
            groups[-1].rows.append(line)
        elif groups and line.startswith(JOB):
            groups[-1].events.append(line)
    cut_at = max(0, len(groups) - sessions)
    for group in groups[:cut_at]:
        dropped = dropped.plus(_summed(group))
    kept, budget = groups[cut_at:], events
    for group in reversed(kept):  # the newest sessions' events, while they fit
        if len(group.events) > budget:
            budget = 0
            group.events = []
        budget -= len(group.events)
    out = [b'{"dropped":' + orjson.dumps(dropped.__dict__) + b"}"] if dropped.sessions else []
    for group in kept:
        out += [group.header, *group.events, *(group.rows[:-1:2] + group.rows[-1:] if halve else group.rows)]
    return out


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _summed(group: _Kept) -> Dropped:
    """A session dropped whole: one session, its cost (its last row's, if priced), its start."""
    value = _loads(group.header)
    session = _session(value, Redactor()) if isinstance(value, dict) else None
    if session is None:
        return Dropped(1, 0.0, None)
    last = _loads(group.rows[-1]) if group.rows else None
    row = _row(last, session) if isinstance(last, list) else None
    cost = row.get("cost") if row is not None and session.priced else None
    return Dropped(1, float(cost or 0.0), session.wall)


class MetricsLog:
    """Writes the metrics log and the summary snapshot of one run (one session of the log).

    ``start`` before the work, ``run`` as a task beside it, ``finish`` once the run's counters are final.
    Writing it never stops a run: on an I/O error it warns once and keeps no more.

    :param summary: the run's summary of ``stats`` (``display.summary.summary_data``): the snapshot's content.
    :param batches: the run uses Batch API jobs: their changes are logged (read from the state's ``batches``).
    :param redactor: the run's: every text written passes it (a server may quote a key in an error code):
        the data, before it is made JSON, never the JSON itself (a key that is a word, ``true`` or ``null``,
        would break every line).
    :param wall: the wall clock, read once, for the session's start; rows are timed by ``stats.clock``.
    :param every: seconds between rows at first; ``max_rows``: rows kept; ``max_sessions``: sessions kept;
        ``max_events``: job events kept; ``summary_every``: seconds of rows between summary snapshots (0: with
        every row).
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
        max_sessions: int = MAX_SESSIONS,
        max_events: int = MAX_EVENTS,
        summary_every: float = SUMMARY_EVERY,
    ) -> None:
        self.paths, self.stats, self.summary, self.warn = paths, stats, summary, warn
        self.batches, self.wall, self.every, self.max_rows = batches, wall, every, max_rows
        self.max_sessions, self.max_events = max_sessions, max_events
        self.summary_every = summary_every
        self.redactor = redactor or Redactor()
        self.session = 0
        self.rows = 0  # rows in the file, all sessions
        self.events = 0  # job events in the file, all sessions
        self._unsummarised: float | None = None  # seconds of rows since the last snapshot; None: none yet
        self._fd: int | None = None
        self._broken = False
        self._jobs: dict[int, tuple[str | None, str]] = {}  # part -> (job id, status) last logged
        self._changes: Counter[int] = Counter()  # part -> events logged this session
        self._logged = 0  # job events logged this session
        self._batches_seen: tuple[int, int] | None = None

    @property
    def t(self) -> float:
        return self.stats.clock() - self.stats.started

    def start(self) -> None:
        """Open the log, cut a torn last line a kill left, and write this session's header, first row and summary."""
        with self._guard():
            last, sessions, self.rows, self.events = _count(self.paths.metrics)
            if tail := torn_tail(self.paths.metrics):
                cut(self.paths.metrics, tail)
            if sessions >= self.max_sessions:
                self._thin(halve=False, sessions=self.max_sessions - 1)
            self.session = last + 1
            self._open()
            stats = self.stats
            header = {
                "session": self.session,
                "wall": round(self.wall() - self.t, 3),
                "columns": COLUMNS,
                "deployment_columns": DEPLOYMENT_COLUMNS,
                "deployments": [self.redactor.text(r.name) for r in stats.pool],
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
            events = self._job_events(t)
            self._write(b"".join([orjson.dumps(row(self.stats, t)) + b"\n", *events]))
            self.rows += 1
            self.events += len(events)
            if self._unsummarised is None or self._unsummarised >= self.summary_every:
                self._snapshot(final=False)
                self._unsummarised = 0.0
            self._unsummarised += self.every
            if self.rows >= self.max_rows:
                self._thin(halve=True)
            elif self.events > self.max_events:
                self._thin(halve=False)

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
        write_all(self._fd, data, self.paths.metrics)  # its texts were redacted before it was made JSON

    def _snapshot(self, *, final: bool) -> None:
        summary = scrubbed(self.summary(self.stats), self.redactor)
        if isinstance(reasons := summary.get("failure_reasons"), dict):  # keyed by the server's codes: data too
            summary["failure_reasons"] = {self.redactor.text(code): n for code, n in reasons.items()}
        snapshot = {"session": self.session, "t": round(self.t, 1), "final": final, SUMMARY_KEY: summary}
        with atomic_file(self.paths.summary, sync=False) as f:
            f.write(orjson.dumps(snapshot))

    def _thin(self, *, halve: bool, sessions: int | None = None) -> None:
        """The file replaced atomically by ``thinned``'s lines; if ``halve``, rows come half as often from now on."""
        writing = self._fd is not None
        self.close()
        before = self.paths.metrics.read_bytes().splitlines()
        lines = thinned(before, halve=halve, sessions=sessions or self.max_sessions, events=self.max_events)
        with atomic_file(self.paths.metrics) as f:
            f.write(b"".join(line + b"\n" for line in lines))
        self.rows = sum(line.startswith(ROW) for line in lines)
        self.events = sum(line.startswith(JOB) for line in lines)
        if halve:
            self.every *= 2
        if writing:
            self._open()

    def _said(self, text: object) -> str | None:
        """A job's id or status, as the server gave it: redacted, then cut short."""
        return self.redactor.text(text)[:JOB_ID_CHARS] if isinstance(text, str) else None

    def _job_events(self, t: float) -> list[bytes]:
        """A line for each Batch API job whose state changed since the last look at the state's ``batches``.

        Bounded: a job's id and status (the server's words) are cut short; a job logs at most ``PART_EVENTS``
        changes a session (then only its end), and a session at most ``max_events``.
        """
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
            job, status = self._said(part.batch_id), self._said(part.status)
            now = (job, "merged" if part.merged else status or "waiting")
            if self._jobs.get(part.index) == now or self._logged >= self.max_events:
                continue
            if self._changes[part.index] >= PART_EVENTS and now[1] != "merged":
                continue  # a job flapping between states: its end is still logged
            self._jobs[part.index] = now
            self._changes[part.index] += 1
            self._logged += 1
            event = {"job": now[0], "part": part.index, "status": now[1], "t": round(t, 1)}
            events.append(orjson.dumps({**event, "lines": part.lines}) + b"\n")
        return events


def scrubbed(value: Any, redactor: Redactor) -> Any:
    """``value`` (JSON-like) with every string in it passed through ``redactor``; keys, its structure, are kept."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {key: scrubbed(item, redactor) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(item, redactor) for item in value]
    return value


def _count(path: Path) -> tuple[int, int, int, int]:
    """(the last session's number, sessions, rows, job events) in a log so far; zeros if there is none."""
    try:
        with path.open("rb") as f:
            lines = f.read(MAX_READ).splitlines()
    except FileNotFoundError:
        return 0, 0, 0, 0
    headers = [line for line in lines if line.startswith(HEADER)]
    last = _loads(headers[-1]) if headers else None
    number = last.get("session") if isinstance(last, dict) else None
    counts = (sum(line.startswith(ROW) for line in lines), sum(line.startswith(JOB) for line in lines))
    return (number if _whole(number) else len(headers)), len(headers), *counts


# -- reading (the report) ----------------------------------------------------------------------
# Every value read is judged here: a number is finite and in range, a count whole, a text redacted and
# cut short. A line or field that is not is skipped; past this point the report trusts what it holds.

MAX_VALUE = 1e15  # any counter or gauge (tokens of a 10M-line run: ~1e10)
MAX_T = 1e9  # seconds into a session (31 years)
MAX_WALL = 1e10  # a session's start, Unix time (the year 2286): any date a browser and Python can show
MAX_NAMES = 256  # deployments (and columns) a session names
NAME_CHARS = 200
TEXT_CHARS = 2000  # a summary's text (why a run stopped)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= MAX_VALUE


def _whole(value: object, most: float = MAX_VALUE) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def _within(value: object, most: float) -> TypeGuard[float]:
    return _number(value) and 0 <= value <= most


def _text(value: object, redactor: Redactor, most: int = NAME_CHARS) -> str | None:
    """A text from a run's file, as the page may show it: redacted, then cut short."""
    return redactor.text(value)[:most] if isinstance(value, str) else None


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


@dataclass(frozen=True)
class Dropped:
    """Sessions dropped whole to keep the log bounded: how many, their cost, when the first one started."""

    sessions: int
    cost: float
    since: float | None

    def plus(self, other: Dropped) -> Dropped:
        starts = [s for s in (self.since, other.since) if s is not None]
        return Dropped(self.sessions + other.sessions, self.cost + other.cost, min(starts) if starts else None)


@dataclass
class Log:
    """A metrics log as read: its sessions, oldest first, and those dropped before them."""

    sessions: list[Session] = field(default_factory=list)
    dropped: Dropped | None = None


def read_log(path: Path, redactor: Redactor | None = None) -> Log:
    """The sessions of a metrics log, judged; a line that is not one of ours (a torn last one) is skipped.

    :raises ConfigError: something other than a regular file is at ``path`` (a FIFO, a directory), named.
    """
    redactor = redactor or Redactor()
    log = Log()
    if (f := open_regular(path)) is None:
        return log
    read = 0
    with f:
        for line in bounded_lines(f, MAX_LINE):
            read += len(line) if line is not None else MAX_LINE
            if read > MAX_READ:
                break
            if line is not None:
                _take(log, _loads(line), redactor)
    if len(log.sessions) > MAX_SESSIONS:  # not the run's own log: keep what it would have kept
        extra, log.sessions = log.sessions[:-MAX_SESSIONS], log.sessions[-MAX_SESSIONS:]
        log.dropped = (log.dropped or Dropped(0, 0.0, None)).plus(Dropped(len(extra), 0.0, extra[0].wall))
    for session in log.sessions:
        session.rows.sort(key=lambda r: float(r["t"]))
    return log


def _take(log: Log, value: Any, redactor: Redactor) -> None:
    sessions = log.sessions
    if isinstance(value, dict):
        if (session := _session(value, redactor)) is not None:
            sessions.append(session)
        elif not sessions and (dropped := _dropped(value)) is not None:
            log.dropped = dropped
        elif sessions and len(sessions[-1].jobs) < MAX_EVENTS and (job := _job(value, redactor)) is not None:
            sessions[-1].jobs.append(job)
    elif sessions and isinstance(value, list) and (found := _row(value, sessions[-1])) is not None:
        sessions[-1].rows.append(found)


def _names(value: object, redactor: Redactor | None = None) -> list[str] | None:
    if not (isinstance(value, list) and len(value) <= MAX_NAMES and all(isinstance(n, str) for n in value)):
        return None
    return [redactor.text(n)[:NAME_CHARS] for n in value] if redactor is not None else value


def _session(value: dict[str, Any], redactor: Redactor) -> Session | None:
    columns, deployment_columns = _names(value.get("columns")), _names(value.get("deployment_columns"))
    names = _names(value.get(NAMES), redactor)
    session, wall = value.get("session"), value.get("wall")
    if not (_whole(session) and _within(wall, MAX_WALL)):
        return None
    if columns is None or "t" not in columns or columns[-1] != "deployments":
        return None
    if deployment_columns is None or names is None:
        return None
    limits = [value[k] if _within(value.get(k), MAX_VALUE) else None for k in ("tpm_limit", "rpm_limit")]
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
    """A row by the session's column names; None unless every value is a number in range or null."""
    if len(value) != len(session.columns) or not all(v is None or _number(v) for v in value[:-1]):
        return None
    routes = value[-1]
    if not isinstance(routes, list) or len(routes) != len(session.deployments):
        return None
    width = len(session.deployment_columns)
    if not all(isinstance(r, list) and len(r) == width and all(v is None or _number(v) for v in r) for r in routes):
        return None
    found = dict(zip(session.columns[:-1], value[:-1], strict=True))
    if not _within(found.get("t"), MAX_T):
        return None
    found["deployments"] = [dict(zip(session.deployment_columns, r, strict=True)) for r in routes]
    return found


def _job(value: dict[str, Any], redactor: Redactor) -> JobEvent | None:
    job, part, status, t, lines = (value.get(k) for k in ("job", "part", "status", "t", "lines"))
    if not ((job is None or isinstance(job, str)) and _whole(part) and isinstance(status, str)):
        return None
    if not (_within(t, MAX_T) and _whole(lines)):
        return None
    return JobEvent(_text(job, redactor, JOB_ID_CHARS), part, redactor.text(status)[:JOB_ID_CHARS], float(t), lines)


def _dropped(value: object) -> Dropped | None:
    found = value.get("dropped") if isinstance(value, dict) else None
    if not isinstance(found, dict):
        return None
    sessions, cost, since = found.get("sessions"), found.get("cost"), found.get("since")
    if not (_whole(sessions) and _within(cost, MAX_VALUE) and (since is None or _within(since, MAX_WALL))):
        return None
    return Dropped(sessions, float(cost), float(since) if since is not None else None)


@dataclass(frozen=True)
class DeploymentSummary:
    """A pool's deployment as the summary gave it (``display.status.deployment_views``), judged."""

    name: str
    answers: int | None
    throttled: int | None
    failed_attempts: int | None
    state: str
    learned_tpm: float | None
    charge_ratio: float | None


@dataclass
class Snapshot:
    """The summary file: the run's summary at session time ``t``, ``final`` once the session ended.

    ``summary`` holds only the keys below, judged (``judged_summary``): numbers in range or None, texts
    redacted and cut, ``deployments`` as ``DeploymentSummary``.
    """

    session: int
    t: float
    final: bool
    summary: dict[str, Any]


SUMMARY_NUMBERS = (
    "succeeded", "failed", "bad_input_lines", "attempts", "retries", "throttled", "prompt_tokens",
    "cached_tokens", "completion_tokens", "estimated_tokens", "cost_usd", "projected_cost_usd", "wall_seconds",
    "requests_per_second", "latency_p50_ms", "latency_p95_ms", "resumed", "resent", "learned_tpm", "charge_ratio",
)  # fmt: skip
SUMMARY_TEXTS = ("stopped", "aborted")
SUMMARY_FLAGS = ("interrupted", "simulated")


def read_summary(path: Path, redactor: Redactor | None = None) -> Snapshot | None:
    """The summary file, judged; None if there is none, or it is being replaced, or it is not ours.

    :raises ConfigError: something other than a regular file is at ``path`` (a FIFO, a directory), named.
    """
    if (f := open_regular(path)) is None:
        return None
    with f:
        data = f.read(MAX_READ + 1)
    value = _loads(data) if len(data) <= MAX_READ else None
    if not isinstance(value, dict) or not isinstance(value.get(SUMMARY_KEY), dict):
        return None
    session, t = value.get("session"), value.get("t")
    if not (_whole(session) and _within(t, MAX_T)):
        return None
    summary = judged_summary(value[SUMMARY_KEY], redactor or Redactor())
    return Snapshot(session, float(t), value.get("final") is True, summary)


def judged_summary(raw: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """The summary's figures the page shows, each of its type and in range, or None; texts redacted."""
    summary: dict[str, Any] = {key: raw.get(key) if _number(raw.get(key)) else None for key in SUMMARY_NUMBERS}
    summary |= {key: _text(raw.get(key), redactor, TEXT_CHARS) for key in SUMMARY_TEXTS}
    summary |= {key: raw.get(key) is True for key in SUMMARY_FLAGS}
    summary["failure_reasons"] = _reasons(raw.get("failure_reasons"), redactor)
    summary["deployments"] = _deployments(raw.get("deployments"), redactor)
    summary["batch_api"] = _wholes(raw.get("batch_api"), ("jobs", "answers"))
    summary["cache"] = _wholes(raw.get("cache"), ("hits", "shared"))
    return summary


def _reasons(value: object, redactor: Redactor) -> dict[str, int]:
    """Failures by code, by the summary's own rule (``stats.reason``): at most ``MAX_REASONS`` names."""
    counted: Counter[str] = Counter()
    items = list(value.items())[: 4 * MAX_REASONS] if isinstance(value, dict) else []
    for code, n in items:
        if isinstance(code, str) and _whole(n):
            counted[reason(counted, redactor.text(code))] += n
    return dict(counted)


def _deployments(value: object, redactor: Redactor) -> list[DeploymentSummary]:
    found = []
    for item in value[:MAX_NAMES] if isinstance(value, list) else []:
        if not isinstance(item, dict) or (name := _text(item.get("name"), redactor)) is None:
            continue
        answers, throttled, failed = (v if _whole(v := item.get(k)) else None for k in DEPLOYMENT_COUNTS)
        learned, ratio = (v if _within(v := item.get(k), MAX_VALUE) else None for k in ("learned_tpm", "charge_ratio"))
        state = _text(item.get("state"), redactor) or ""
        found.append(DeploymentSummary(name, answers, throttled, failed, state, learned, ratio))
    return found


DEPLOYMENT_COUNTS = ("answers", "throttled", "failed_attempts")


def _wholes(value: object, keys: tuple[str, ...]) -> dict[str, int] | None:
    """A dict of counts, all of ``keys`` whole numbers, or None."""
    if not isinstance(value, dict) or not all(_whole(value.get(k)) for k in keys):
        return None
    return {k: value[k] for k in keys}
