"""Past one machine: what ``asyncbatch.ray`` and ``asyncbatch.spark`` share, whatever runs the workers.

Each worker runs the engine (``asyncbatch.map``) on its batches of rows. Nothing coordinates the
workers but the server and a directory they all reach, ``state_dir``:

    state_dir/
      cache.sqlite             the response cache: an answer paid for once serves every batch, job and worker
      parts/<key>/             one batch's record (``map``'s ``output_path``): results, errors, rows, state
      parts/<key>.lock         held while an attempt runs that batch: another attempt waits for it
      jobs/<job>/fatal.json    the first job-wide mistake a worker met (a wrong key...): every task and the driver
                               read it, so the job fails at once with asyncbatch's own message
      jobs/<job>/stats/<key>.<attempt>.json   each attempt's counters, rewritten every few seconds: the
                               driver's progress and summary add them up

Exactly once: a batch's key is a digest of its rows and of the request options, so a task that runs
again (a retry, a speculative copy, a restarted job) finds the same record and sends only the rows
that have no answer there; the lock makes two attempts of one batch take turns; rows that come in
other batches the next time are answered from the cache. One quota: each worker is given the
deployment's ``tpm``/``rpm`` and follows the server's remaining-budget headers, which every worker
draws on (see docs/distributed.md); the job's ``concurrency`` is split between the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from .config import Deployment, Endpoint, Limits, RequestDefaults, RunConfig, check_options
from .display.reporters import PlainReporter, Reporter, default_reporter
from .errors import AsyncBatchError, ConfigError, FatalAPIError, OutputError
from .export import input_column
from .frames import NOT_RUN, request_defaults
from .frames import map as map_rows
from .redact import Redactor
from .stats import RunStats
from .store.files import replace_atomically

RECORD = "rows.results.jsonl"  # each batch's results file, in its own directory
SNAPSHOT_SECONDS = 2.0  # how often a worker rewrites its counters for the driver
STALE_SECONDS = 30.0  # a snapshot not rewritten for this long is a dead attempt's: its requests are not in flight
LATENCIES = 200  # latencies each snapshot carries (a sample of its run's), for the driver's p50/p95
MAX_STATE_FILE = 1 << 20  # a marker or a snapshot is a few KB: a longer file under jobs/ is not one of ours
OURS = ("line", "status", "custom_id")  # the columns before the input's, as ``asyncbatch export`` writes them
_ROWS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # as ``asyncbatch.map`` writes rows
# Options that name one run's files or phase: a distributed job decides those itself.
_REFUSED = {
    "input_path": "the rows are the input",
    "output_path": "each batch's record is under state_dir",
    "errors_path": "each batch's record is under state_dir",
    "checkpoint_path": "each batch's record is under state_dir",
    "batch": "the Batch API runs one file as jobs on one deployment: use the command line for it",
    "max_cost": "a budget is one run's, and each batch is a run; a budget shared by workers is not kept",
    "given_rows": "each batch is rows",
}
_OWN = (
    "template", "tools", "response_format", "endpoint", "deployments", "limits", "request", "state_dir", "workers",
    "batch_size", "reporter", "ray_remote_args",
)  # fmt: skip


class JobFailed(AsyncBatchError):
    """Raised in a worker when the job must stop (a marker says why); the driver raises the real error."""


class JobStopped(AsyncBatchError):
    """The job stopped early but resumably (an exhausted quota, an outage past ``max_outage``): run it again later;
    rows already answered are not sent again."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Column:
    """One result column: its name and the kind of its values (``int``, ``float``, ``bool``, ``str``, ``json``,
    ``vector``); ``json`` values are written as JSON text."""

    name: str
    kind: str
    key: str | None = None  # for ``output.<key>``: the output object's key


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)  # the endpoint holds the key: no repr
class Spec:
    """Everything a worker needs, pickled into each task. Built on the driver, checked there once."""

    state_dir: str
    job: str
    fingerprint: bytes  # the request options a batch's key includes
    template: str
    options: dict[str, Any]  # ``RunConfig``'s, for ``asyncbatch.map``: request, endpoint, limits (this worker's)...
    front: tuple[Column, ...]  # before the input's columns
    back: tuple[Column, ...]  # after them
    secrets: tuple[str, ...]  # what a message written to state_dir must not hold

    def __repr__(self) -> str:
        return f"Spec(state_dir={self.state_dir!r}, job={self.job!r})"

    @property
    def job_dir(self) -> Path:
        return Path(self.state_dir) / "jobs" / self.job


def prepare(
    *,
    template: str,
    tools: Any,
    response_format: Any,
    endpoint: Endpoint | None,
    deployments: tuple[Deployment, ...],
    limits: Limits | None,
    request: RequestDefaults | None,
    state_dir: str | Path,
    workers: int,
    options: Mapping[str, Any],
    call: str = "map",
) -> Spec:
    """The job's spec, checked on the driver: a mistake in the options is said here, before any worker starts.

    ``limits`` are the job's: ``tpm``/``rpm`` the deployment's, which each worker is given whole and shares
    through the server's headers; ``concurrency`` the job's, split between the ``workers``.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1 (got {workers})")
    check_options(options, call=call, own=_OWN, refused=_REFUSED)
    root = Path(state_dir).absolute()
    job = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    job_limits = limits or Limits()
    concurrency = max(1, math.ceil(job_limits.concurrency / workers))
    share = dataclasses.replace(job_limits, concurrency=concurrency, shared_by=job_limits.shared_by * workers)
    run_options = {"cache": root / "cache.sqlite", **options}
    defaults = request_defaults(request, template=template, tools=tools, response_format=response_format)
    run_options |= {"endpoint": endpoint, "deployments": tuple(deployments), "limits": share, "request": defaults}
    config = RunConfig(input_path=root / "check.jsonl", **run_options)
    (root / "parts").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / job / "stats").mkdir(parents=True, exist_ok=True)
    front, back = result_columns(defaults)
    return Spec(
        state_dir=str(root),
        job=job,
        fingerprint=orjson.dumps(config.fingerprint, option=orjson.OPT_SORT_KEYS),
        template=template,
        options=run_options,
        front=front,
        back=back,
        secrets=tuple(s for d in config.routes for s in d.endpoint.secrets if s),
    )


# -- the columns -----------------------------------------------------------------------------------


def result_columns(request: RequestDefaults) -> tuple[tuple[Column, ...], tuple[Column, ...]]:
    """Our columns, declared before any answer: those before the input's, and those after.

    As ``asyncbatch.map`` (``export``) has them: ``line``, ``status``, ``custom_id``, the input's, then
    ``output``, or ``output.<key>`` for each property of the one schema the answers are validated
    against (a Pydantic model's fields), then the error and usage columns.
    """
    front = (Column(name="line", kind="int"), Column(name="status", kind="str"), Column(name="custom_id", kind="str"))
    usage = (
        Column(name="error_code", kind="str"),
        Column(name="error_message", kind="str"),
        Column(name="attempts", kind="int"),
        Column(name="prompt_tokens", kind="int"),
        Column(name="completion_tokens", kind="int"),
    )
    properties = _properties(_one_schema(request))
    if request.api == "embeddings":
        return front, (Column(name="output", kind="vector"), *usage)
    if properties is None:
        kind = "str" if not (request.tools or request.response_format) else "json"
        return front, (Column(name="output", kind=kind), *usage)
    spread = tuple(Column(name=f"output.{k}", kind=_kind(v), key=k) for k, v in properties.items())
    return front, (*spread, *usage)


def _one_schema(request: RequestDefaults) -> Any:
    """The schema every answer's output follows, when there is exactly one."""
    tools = request.tools or []
    if isinstance(tools, list) and len(tools) == 1:
        return (tools[0].get("function") or {}).get("parameters")
    if isinstance(request.response_format, dict):
        return (request.response_format.get("json_schema") or {}).get("schema")
    return None


def _properties(schema: Any) -> dict[str, Any] | None:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    properties = schema.get("properties")
    return properties if isinstance(properties, dict) and properties else None


_KINDS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


def _kind(schema: Any) -> str:
    """A property's column kind: its JSON type, a nullable one's (``Optional[str]``), else JSON text."""
    if not isinstance(schema, dict):
        return "json"
    kinds = schema.get("type")
    if kinds is None and isinstance(schema.get("anyOf"), list):
        kinds = [k for option in schema["anyOf"] if isinstance(option, dict) for k in _as_list(option.get("type"))]
    if kinds is None and isinstance(schema.get("enum"), list) and all(isinstance(v, str) for v in schema["enum"]):
        return "str"
    named = [k for k in _as_list(kinds) if k != "null"]
    return _KINDS.get(named[0], "json") if len(named) == 1 else "json"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


def cell(kind: str, value: Any) -> Any:
    """A value as its column holds it; one that does not fit is kept as JSON text in a text column, else None."""
    if value is None:
        return None
    if kind in ("str", "json"):
        return value if isinstance(value, str) else _json_text(value)
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int":
        whole = value if type(value) is int else int(value) if type(value) is float and value.is_integer() else None
        return whole if whole is not None and -(2**63) <= whole < 2**63 else None
    if kind == "float":
        return _float(value)
    if kind == "vector":
        numbers = [_float(v) for v in value] if isinstance(value, list) else [None]
        return None if None in numbers else numbers
    raise ValueError(f"unknown column kind {kind!r}")


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits: the standard library writes it
        return json.dumps(value, default=str)


def _float(value: Any) -> float | None:
    if type(value) not in (int, float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer past a double's range
        return None


def input_names(names: Iterable[str]) -> list[str]:
    """The input columns' names in the results, in order: renamed as ``asyncbatch export`` does
    (``export.input_column``) where they would clash with ours (``output.<key>`` too) or each other's."""
    taken: dict[str, None] = dict.fromkeys(OURS)
    for name in names:
        taken[input_column(name, taken)] = None
    return list(taken)[len(OURS) :]


def arrow_type(kind: str) -> Any:
    import pyarrow as pa

    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "vector": pa.list_(pa.float64())}
    return types.get(kind, pa.string())


# -- a worker --------------------------------------------------------------------------------------


def run_batch(spec: Spec, table: Any) -> Any:
    """Run one batch of rows (a pyarrow Table) through the engine; its results, one row per input row, in order.

    :raises JobFailed: the job must stop (a configuration mistake, a wrong key, an exhausted quota): the
        marker under ``state_dir`` says why, for the other tasks and the driver.
    """
    failed(spec.job_dir)
    rows = table.to_pylist()
    data = b"".join(orjson.dumps(row, default=str, option=_ROWS) + b"\n" for row in rows)
    key = hashlib.sha256(spec.fingerprint + b"\n" + data).hexdigest()[:32]
    parts = Path(spec.state_dir) / "parts"
    with _locked(parts / f"{key}.lock"):
        failed(spec.job_dir)  # what another task met while this one waited
        if not rows:
            return results_table(spec, table, [])
        (parts / key).mkdir(exist_ok=True)
        snapshots = Snapshots(spec.job_dir / "stats" / f"{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        try:
            record = parts / key / RECORD
            results = asyncio.run(
                map_rows(rows, template=spec.template, output_path=record, reporter=snapshots, **spec.options)
            )
        except (FatalAPIError, ConfigError, OutputError) as exc:  # the job's mistake, not this batch's
            raise JobFailed(mark_failed(spec, exc)) from None
        stats = snapshots.stats
        if stats is not None and stats.stopped:
            raise JobFailed(mark_failed(spec, JobStopped(f"stopped: {stats.stopped}")))
    return results_table(spec, table, results)


def results_table(spec: Spec, table: Any, results: list[dict[str, Any]]) -> Any:
    """The input's columns with ours around them, as ``asyncbatch.map`` orders them."""
    import pyarrow as pa

    by_line = {row["line"]: row for row in results if row.get("error_code") != NOT_RUN}  # unanswered, as missing
    ordered = [by_line.get(n) for n in range(1, table.num_rows + 1)]
    if any(row is None for row in ordered):  # a run that returned without answering every row: never silently
        missing = sum(row is None for row in ordered)
        raise JobFailed(mark_failed(spec, JobStopped(f"a batch ended with {missing} rows unanswered")))
    names, arrays = [], []
    for column in spec.front:
        names.append(column.name)
        arrays.append(pa.array([cell(column.kind, row.get(column.name)) for row in ordered], arrow_type(column.kind)))  # type: ignore[union-attr]
    for name, array in zip(input_names(table.column_names), table.columns, strict=True):
        names.append(name)
        arrays.append(array)
    for column in spec.back:
        values = [_value(column, row) for row in ordered]  # type: ignore[arg-type]
        names.append(column.name)
        arrays.append(pa.array([cell(column.kind, v) for v in values], arrow_type(column.kind)))
    return pa.Table.from_arrays(arrays, names=names)


def _value(column: Column, row: dict[str, Any]) -> Any:
    if column.key is None:
        return row.get(column.name)
    output = row.get("output")
    return output.get(column.key) if isinstance(output, dict) else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block, waiting for whoever holds it (the OS drops a dead holder's)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


class Snapshots(Reporter):
    """A worker's reporter: the run's counters, written to ``path`` every few seconds and at the end.

    Messages (a bad row's warning) go to the worker's stderr, which Ray and Spark keep in their logs.
    """

    interval = SNAPSHOT_SECONDS

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.stats: RunStats | None = None

    async def run(self, stats: RunStats) -> None:
        self.stats = stats
        try:
            while True:
                self.write(stats, final=False)
                await asyncio.sleep(self.interval)
        finally:
            self.write(stats, final=True)

    def write(self, stats: RunStats, *, final: bool) -> None:
        fields = {name: getattr(stats, name) for name in SUMMED + KEPT}
        fields |= {"failure_reasons": dict(stats.failure_reasons), "final": final}
        fields |= {"learned_tpm": stats.learned_tpm, "charge_ratio": stats.charge_ratio, "in_flight": stats.in_flight}
        fields["latencies"], fields["latencies_seen"] = stats.latency_sample(LATENCIES)
        now = time.time()  # wall clock: comparable between workers (a benchmark's span)
        fields |= {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now - stats.elapsed, "at": now}
        with contextlib.suppress(OSError):  # progress is not worth failing a batch for
            replace_atomically(self.path, [orjson.dumps(fields)])


# Counters each attempt adds to the job's; and those taken from a batch's latest attempt.
SUMMED = (
    "attempts", "retries", "throttled", "estimated_tokens", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cost", "cache_hits", "shared_answers", "sampled_hits", "cache_saved", "cache_raced", "resent", "input_errors",
)  # fmt: skip
KEPT = ("total", "succeeded", "failed", "resumed")
_COUNT = {"type": "integer", "minimum": 0}
SNAPSHOT = Draft202012Validator(  # what the driver takes from a snapshot, as ``Snapshots.write`` writes it
    {
        "type": "object",
        "required": [*SUMMED, *KEPT, "failure_reasons", "latencies", "latencies_seen", "final", "at", "in_flight"],
        "properties": {
            **{
                f.name: _COUNT if f.type == "int" else {"type": "number", "minimum": 0}
                for f in dataclasses.fields(RunStats)
                if f.name in SUMMED + KEPT
            },
            "failure_reasons": {"type": "object", "additionalProperties": _COUNT},
            "latencies": {"type": "array", "items": {"type": "number", "minimum": 0}, "maxItems": LATENCIES},
            "latencies_seen": _COUNT,
            "final": {"type": "boolean"},
            "at": {"type": "number"},
            "in_flight": _COUNT,
        },
    }
)


# -- the job's markers -----------------------------------------------------------------------------


def mark_failed(spec: Spec, error: AsyncBatchError) -> str:
    """Leave the job's marker (the first one stays), with no secret in it; return the message."""
    message = Redactor(spec.secrets).text(str(error))
    marker = spec.job_dir / "fatal.json"
    kind = getattr(error, "kind", None)
    if not marker.exists():
        with contextlib.suppress(OSError):
            replace_atomically(
                marker, [orjson.dumps({"error": type(error).__name__, "kind": kind, "message": message})]
            )
    return message


def failed(job_dir: Path) -> None:
    """Raise the job's marker as the error it records (``FatalAPIError``, ``ConfigError``...), if there is one."""
    if (error := failure(job_dir)) is not None:
        raise error


MARKER = Draft202012Validator(
    {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "kind": {"type": ["string", "null"]},
        },
    }
)


def failure(job_dir: Path) -> AsyncBatchError | None:
    """The error the job's marker records, if a worker left one (a marker that cannot be read stops the job too)."""
    path = job_dir / "fatal.json"
    try:
        marker = _state_file(path)
    except ValueError as exc:
        return _unreadable(path, str(exc))
    if marker is MISSING:
        return None
    if not MARKER.is_valid(marker):
        return _unreadable(path, "not a marker asyncbatch writes")
    message, kind = marker["message"], str(marker.get("kind"))
    error = marker["error"]
    if error == "FatalAPIError":
        return FatalAPIError(kind, message)
    if error == "JobStopped":
        return JobStopped(f"{message}. HINT: run the same job again later: rows already answered are not sent again")
    if error == "OutputError":
        return OutputError(message)
    return ConfigError(message)


def _unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"a worker stopped the job, but its marker {path} cannot be read ({why}). "
        "HINT: the workers' logs (Ray's or Spark's) say what it met; run the job again once it is fixed"
    )


MISSING = object()  # no such file


def _state_file(path: Path) -> Any:
    """The JSON a worker wrote at ``path`` (``MISSING`` if there is no file), read whole and judged here, as bytes from
    disk: a shared file system may hold anything.

    :raises ValueError: the file is too long, or not JSON, saying which.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_FILE + 1)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        raise ValueError(exc.strerror) from None
    if len(raw) > MAX_STATE_FILE:
        raise ValueError(f"longer than {MAX_STATE_FILE} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None


# -- the driver ------------------------------------------------------------------------------------


def driver_reporter() -> Reporter:
    """The driver's default: the library's (a live view in Jupyter), or else a status line every few seconds."""
    reporter = default_reporter()
    return PlainReporter(sys.stderr) if type(reporter) is Reporter else reporter


class Watch:
    """The driver's view of a job: the workers' counters, added up, shown as they change and summed up at the end.

    The reporter runs as it does for one run (``Reporter.run``), on an event loop of its own in a thread, while
    Ray or Spark hold the driver's.
    """

    def __init__(self, spec: Spec, reporter: Reporter | None, total: int | None = None) -> None:
        """:param total: the job's rows, if known before it runs; else the status line shows how many are done,
        with no percentage (batches start one by one: a total added up from them would grow as they do)."""
        self.spec = spec
        self.total = total
        self.reporter = reporter or driver_reporter()
        config = RunConfig(input_path=Path(spec.state_dir) / "check.jsonl", **spec.options)
        self.stats = RunStats(simulated=config.simulated, prices=config.prices)
        if config.prices is None:
            self.stats.unpriced = config.routes[0].endpoint.deployment
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), name="asyncbatch-job", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, *_: object) -> None:
        assert self._loop is not None and self._done is not None
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join()
        self.stats.finished = self.stats.clock()
        if error is not None:  # ours says what happened; Ray's or Spark's follows the summary in full
            said = str(error) if isinstance(error, AsyncBatchError) else f"{type(error).__name__} (below)"
            self.stats.aborted = Redactor(self.spec.secrets).text(said)
        self.reporter.summary(self.stats)

    async def _watch(self) -> None:
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        shown = asyncio.create_task(self.reporter.run(self.stats))
        try:
            while not self._done.is_set():
                self.gather()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), SNAPSHOT_SECONDS)
        finally:
            self.gather(final=True)
            shown.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shown

    def gather(self, *, final: bool = False) -> None:
        """Add up every attempt's counters: ``SUMMED`` over all of them, ``KEPT`` from each batch's furthest;
        the requests in flight of the attempts running; a sample of every attempt's latencies.

        :param final: the job is over: its total is the rows its batches had, whether known before or not.
        """
        snapshots: dict[str, list[dict[str, Any]]] = {}
        for path in (self.spec.job_dir / "stats").glob("*.json"):
            with contextlib.suppress(ValueError):  # a damaged file is left out: progress is not worth a traceback
                if SNAPSHOT.is_valid(snapshot := _state_file(path)):
                    snapshots.setdefault(path.name.split(".")[0], []).append(snapshot)
        stats = self.stats
        for name in (*SUMMED, *KEPT):
            setattr(stats, name, type(getattr(stats, name))(0))
        reasons: Counter[str] = Counter()
        for attempts in snapshots.values():
            furthest = max(attempts, key=lambda s: s["succeeded"] + s["failed"])
            for name in KEPT:
                setattr(stats, name, getattr(stats, name) + furthest[name])
            stats.resumed += min(s["resumed"] for s in attempts) - furthest["resumed"]  # earlier jobs' rows only
            for snapshot in attempts:
                for name in SUMMED:
                    setattr(stats, name, getattr(stats, name) + snapshot[name])
                reasons.update(snapshot["failure_reasons"])
        stats.failure_reasons = reasons
        if not final:
            stats.total = self.total or 0  # 0: not known yet, which the status line shows as such
        everyone = [snapshot for attempts in snapshots.values() for snapshot in attempts]
        now = time.time()  # as the workers stamp their snapshots
        live = [s for s in everyone if not s["final"] and now - s["at"] < STALE_SECONDS]
        stats.in_flight = 0 if final else sum(s["in_flight"] for s in live)
        stats.merge_latencies((s["latencies"], s["latencies_seen"]) for s in everyone)

    def failure(self) -> AsyncBatchError | None:
        """After Ray's or Spark's error: the job's own, if a worker left its marker."""
        return failure(self.spec.job_dir)
