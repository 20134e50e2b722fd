"""The orchestrator: read -> build -> admit -> send (with retries) -> write -> report.

One TaskGroup owns the writers, the ticker and the checkpoint saver; a nested
one owns the reader and the workers, so when the work is done (or stopped)
everything below it has finished before the writers close. Work flows through a
bounded queue, so memory does not grow with the input.

Interrupts (``Interrupt.request``, wired to SIGINT/SIGTERM by the CLI): the
first stops new requests and gives those in flight ``config.grace`` seconds;
the second cancels them at once. Either way, what finished is written and
the checkpoint saved; the unfinished inputs run on the next resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from .checkpoint import ResumeState, drop_failures, fingerprint, recover, save_checkpoint
from .client import Connection, Reply
from .config import RunConfig
from .errors import AttemptError, FatalAPIError, OutputError
from .inputs import BadLine, ParsedLine, count_lines, read_lines
from .limits import Admission, CooldownGate
from .output import JsonlWriter, error_record, failure_record, result_record
from .progress import Reporter
from .redact import Redactor
from .requests import Job, prepare, with_feedback
from .retry import retrying
from .stats import RunStats
from .validate import OutputCheck

Sleep = Callable[[float], Awaitable[None]]
FATAL_STATUSES = {401: "authentication", 403: "authentication", 404: "deployment or endpoint"}
DEFAULT_429_PAUSE = 1.0  # when a 429 carries no retry-after
CHECKPOINT_EVERY = 1.0  # seconds


class Interrupt:
    """Ask a run to stop: the first request is graceful, the second immediate."""

    def __init__(self) -> None:
        self.count = 0
        self._listener: Callable[[int], None] | None = None

    def listen(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(count)`` on every request from now on."""
        self._listener = listener

    def request(self) -> None:
        self.count += 1
        if self._listener is not None:
            self._listener(self.count)


class _Stopped(Exception):
    """Raised inside a worker to abandon its job because the run is stopping."""


async def run(
    config: RunConfig,
    *,
    reporter: Reporter | None = None,
    interrupt: Interrupt | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunStats:
    """Run every input of ``config`` not already recorded; return the counters.

    :param sleep: used for every retry wait and cool-down; tests inject a recorder.
    :raises FatalAPIError: the endpoint rejected the first requests (key, deployment).
    :raises ConfigError: the outputs belong to a different input or options.
    """
    reporter = reporter or Reporter()
    for path in (config.output_path, config.errors_path):
        _check_writable(path)
    expected = run_fingerprint(config)
    state = recover(config.output_path, config.errors_path, config.checkpoint, expected)
    if config.retry_failed and (dropped := drop_failures(config.errors_path, config.checkpoint, state)):
        state.notes.append(f"--retry-failed: {dropped} failed inputs will run again")
    for note in state.notes:
        reporter.info(note)
    # Before the clock starts: building the connection imports the SDK, which is start-up, not run time.
    connection = Connection(config.endpoint, concurrency=config.limits.concurrency, timeout=config.retry.timeout)
    stats = _initial_stats(config, state)
    try:
        batch = _Batch(config, stats, state, reporter, connection, sleep, clock)
        if interrupt is not None:
            interrupt.listen(batch.on_interrupt)
        await batch.run_all(expected)
    except* (FatalAPIError, OutputError) as group:
        fatal = _first_leaf(group)
        stats.aborted = Redactor([config.endpoint.api_key]).text(str(fatal))
        raise fatal from None
    finally:
        stats.finished = clock()
        await connection.close()
    return stats


def _check_writable(path: Path) -> None:
    """Fail before the first request, not after paying for it, if an output cannot be opened."""
    try:
        path.open("ab").close()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def run_fingerprint(config: RunConfig) -> dict[str, str]:
    options = {"deployment": config.endpoint.deployment, **dataclasses.asdict(config.request)}
    return fingerprint(config.input_path, options)


def _initial_stats(config: RunConfig, state: ResumeState) -> RunStats:
    return RunStats(
        simulated=config.endpoint.simulated,
        total=count_lines(config.input_path),
        succeeded=state.results_lines,
        failed=state.errors_lines,
        resumed=len(state.done),
        resent=state.resent,
    )


class _Batch:
    def __init__(
        self,
        config: RunConfig,
        stats: RunStats,
        state: ResumeState,
        reporter: Reporter,
        connection: Connection,
        sleep: Sleep,
        clock: Callable[[], float],
    ) -> None:
        self.config, self.stats, self.state, self.reporter = config, stats, state, reporter
        self.redactor = Redactor([config.endpoint.api_key])
        self.results = JsonlWriter(
            config.output_path, state.done, fsync_interval=config.fsync_interval, redactor=self.redactor
        )
        self.errors = JsonlWriter(
            config.errors_path, state.done, fsync_interval=config.fsync_interval, redactor=self.redactor
        )
        self.connection = connection
        self.sleep, self.clock = sleep, clock
        self.gate = CooldownGate(clock=clock, sleep=sleep)
        self.admission = Admission(config.limits.tpm, config.limits.rpm, self.gate, clock)
        self.check = OutputCheck(config.request.tools, config.request.response_format)
        self.in_flight: set[int] = set()  # line numbers with a request on the wire
        self.any_success = False
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.sending: set[asyncio.Task[Any]] = set()
        self.hard_stop: asyncio.TimerHandle | None = None

    async def run_all(self, expected: dict[str, str]) -> None:
        try:
            await self._run_all(expected)
        finally:
            self.save(expected)  # the writers have finished: this is the final, exact state

    async def _run_all(self, expected: dict[str, str]) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.results.run())
            tg.create_task(self.errors.run())
            ticker = tg.create_task(self.reporter.run(self.stats))
            saver = tg.create_task(self.save_periodically(expected))
            try:
                await self.work()
            finally:
                self.results.close()
                self.errors.close()
                ticker.cancel()
                saver.cancel()
                if self.hard_stop is not None:
                    self.hard_stop.cancel()

    async def work(self) -> None:
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * self.config.limits.concurrency)
        async with asyncio.TaskGroup() as tg:
            self.tasks.append(tg.create_task(self.produce(queue)))
            for _ in range(self.config.limits.concurrency):
                self.tasks.append(tg.create_task(self.consume(queue)))

    def on_interrupt(self, count: int) -> None:
        if count == 1:
            self.stopping = True
            self.stats.interrupted = True
            for task in self.tasks:
                if task not in self.sending:  # idle or waiting: nothing paid for is lost
                    task.cancel()
            loop = asyncio.get_running_loop()
            self.hard_stop = loop.call_later(self.config.grace, self._cancel_all)
        else:
            self._cancel_all()

    def _cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def save_periodically(self, expected: dict[str, str]) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            self.save(expected)

    def save(self, expected: dict[str, str]) -> None:
        """Snapshot (done, offsets) between writer batches: always consistent with the files.

        If it cannot be written (disk full), the previous checkpoint stays: the outputs
        only grow, so it is still true, and resuming reads whatever came after it.
        """
        with contextlib.suppress(OSError):
            self._save(expected)

    def _save(self, expected: dict[str, str]) -> None:
        save_checkpoint(
            self.config.checkpoint,
            {
                "fingerprint": expected,
                "done": self.state.done.encode(),
                "results_offset": self.results.offset,
                "errors_offset": self.errors.offset,
                "results_lines": self.state.results_lines + self.results.lines_written,
                "errors_lines": self.state.errors_lines + self.errors.lines_written,
                "in_flight": sorted(self.in_flight),
            },
        )

    async def produce(self, queue: asyncio.Queue[Job | None]) -> None:
        seen = len(self.state.done)
        for line in read_lines(self.config.input_path, skip=self.state.done):
            seen += 1
            item = (
                prepare(line, self.config.request, self.config.endpoint.deployment)
                if isinstance(line, ParsedLine)
                else line
            )
            if isinstance(item, BadLine):
                self.reject(item)
            else:
                self.stats.estimated_tokens += item.estimate
                await queue.put(item)
        self.stats.total = seen  # exact now: blank lines are not inputs
        for _ in range(self.config.limits.concurrency):
            await queue.put(None)

    def reject(self, bad: BadLine) -> None:
        where = f"{self.config.input_path}:{bad.line_no}"
        self.reporter.warn(f"{where}: {bad.reason} (written to the errors file; the run goes on)")
        self.stats.input_errors += 1
        self.stats.failed += 1
        message = f"{where}: {bad.reason}"
        self.errors.put(
            bad.line_no,
            error_record(
                custom_id=bad.custom_id, line_no=bad.line_no, code="invalid_input", message=message, attempts=0
            ),
        )

    async def consume(self, queue: asyncio.Queue[Job | None]) -> None:
        while not self.stopping and (job := await queue.get()) is not None:
            try:
                ok, record = await self.process(job)
            except _Stopped:
                return
            if ok:
                self.results.put(job.line_no, record)
                self.stats.succeeded += 1
                self.any_success = True
            else:
                self.errors.put(job.line_no, record)
                self.stats.failed += 1

    async def process(self, job: Job) -> tuple[bool, dict[str, Any]]:
        # Most requests succeed first time: try once before building a tenacity loop,
        # whose per-attempt bookkeeping costs more CPU than the HTTP exchange itself.
        tries = [1]  # attempts made for this job, shared with retry()
        try:
            try:
                reply, latency_ms, output = await self.attempt_and_extract(job)
            except AttemptError as exc:
                if not exc.retryable:
                    raise
                reply, latency_ms, output = await self.retry(job, exc, tries)
        except AttemptError as exc:
            self._check_fatal(exc)
            return False, failure_record(custom_id=job.custom_id, line_no=job.line_no, exc=exc, attempts=tries[0])
        self._count_usage(reply.body, latency_ms)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=reply.request_id,
            raw_body=reply.raw,
            body=reply.body,
            output=output,
            attempts=tries[0],
            latency_ms=latency_ms,
        )
        return True, record

    async def retry(self, job: Job, first: AttemptError, tries: list[int]) -> tuple[Reply, float, Any]:
        """The tenacity loop, entered with the first attempt's failure replayed as its attempt 1."""
        replay = [first]
        payload = self._next_payload(job, first, job.payload)
        async for attempt in retrying(self.config.retry, sleep=self.sleep, before_sleep=self._on_retry):
            with attempt:
                if replay:
                    raise replay.pop()
                tries[0] = attempt.retry_state.attempt_number
                try:
                    reply, latency_ms, output = await self.attempt_and_extract(job, payload)
                except AttemptError as exc:
                    payload = self._next_payload(job, exc, payload)
                    raise
        return reply, latency_ms, output

    def _next_payload(self, job: Job, exc: AttemptError, current: bytes) -> bytes:
        """After invalid output, the next attempt tells the model what was wrong (unless --no-feedback)."""
        if exc.feedback and self.config.request.feedback:
            return with_feedback(job.body, exc.feedback)
        return current

    async def attempt_and_extract(self, job: Job, payload: bytes | None = None) -> tuple[Reply, float, Any]:
        reply, latency_ms = await self.attempt(job, payload or job.payload)
        return reply, latency_ms, self.check.extract(reply.body)

    async def attempt(self, job: Job, payload: bytes) -> tuple[Reply, float]:
        await self.admission.acquire(job.estimate)
        self.stats.learned_tpm = self.admission.learned_tpm
        if self.stopping:
            raise _Stopped  # no new attempt once a stop was asked for (retries included)
        task = asyncio.current_task()
        assert task is not None
        self.stats.attempts += 1
        self.stats.in_flight += 1
        self.in_flight.add(job.line_no)
        self.sending.add(task)
        started = self.clock()
        try:
            reply = await self.connection.send(payload)
        except AttemptError as exc:
            if exc.status == 429:
                self.stats.throttled += 1
                self.admission.on_throttle(exc.retry_after if exc.retry_after is not None else DEFAULT_429_PAUSE)
            raise
        finally:
            self.stats.in_flight -= 1
            self.in_flight.discard(job.line_no)
            self.sending.discard(task)
        self.admission.on_reply(reply.headers, job.estimate)
        return reply, (self.clock() - started) * 1000

    def _on_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        if self.stopping:
            raise _Stopped

    def _check_fatal(self, exc: AttemptError) -> None:
        """A wrong key, deployment or endpoint fails every line: stop at once instead of burning retries."""
        if self.any_success:
            return
        if exc.code in ("connection_error", "timeout"):
            slow = " (or raise --timeout, if the model is just slow)" if exc.code == "timeout" else ""
            raise FatalAPIError(
                f"cannot reach {self.connection.url.split('?')[0]}: {exc.message}, on every attempt "
                f"(--max-attempts {self.config.retry.max_attempts}). "
                f"HINT: check AZURE_OPENAI_ENDPOINT (or OPENAI_BASE_URL) and the network{slow}"
            )
        what = FATAL_STATUSES.get(exc.status or 0)
        if what is None:
            return
        hint = {
            "authentication": "check AZURE_OPENAI_API_KEY (or OPENAI_API_KEY) and that it belongs to this endpoint",
            "deployment or endpoint": "check AZURE_OPENAI_DEPLOYMENT_NAME / --deployment and AZURE_OPENAI_ENDPOINT",
        }[what]
        raise FatalAPIError(f"{what} failed: {exc.message}. HINT: {hint}")

    def _count_usage(self, body: dict[str, Any], latency_ms: float) -> None:
        usage = body.get("usage")
        if isinstance(usage, dict):
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.stats.add_latency(latency_ms)
