"""The orchestrator: read -> build -> admit -> send (with retries) -> write -> report.

One TaskGroup owns the writers and the ticker; a nested one owns the reader and
the workers, so when the work is done (or fails) everything below it is
finished before the writers close. Work flows through a bounded queue, so
memory does not grow with the input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import RetryCallState

from .client import Reply, build_client, chat_path, extract_output, send
from .config import RunConfig
from .errors import AttemptError, FatalAPIError
from .inputs import BadLine, ParsedLine, count_lines, read_lines
from .limits import Admission, CooldownGate
from .output import JsonlWriter, error_record, failure_record, result_record
from .progress import Reporter
from .requests import Job, prepare
from .retry import retrying
from .stats import RunStats

Sleep = Callable[[float], Awaitable[None]]
FATAL_STATUSES = {401: "authentication", 403: "authentication", 404: "deployment or endpoint"}
DEFAULT_429_PAUSE = 1.0  # when a 429 carries no retry-after


async def run(
    config: RunConfig,
    *,
    reporter: Reporter | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunStats:
    """Run every input of ``config`` once; return the counters.

    :param sleep: used for every retry wait and cool-down; tests inject a recorder.
    :raises FatalAPIError: the endpoint rejected the first requests (key, deployment).
    """
    reporter = reporter or Reporter()
    stats = RunStats(simulated=config.endpoint.simulated, total=count_lines(config.input_path))
    results = JsonlWriter(config.output_path, fsync_interval=config.fsync_interval)
    errors = JsonlWriter(config.errors_path, fsync_interval=config.fsync_interval)
    client = build_client(config.endpoint, concurrency=config.limits.concurrency, timeout=config.retry.timeout)
    batch = _Batch(config, stats, reporter, results, errors, client, sleep, clock)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(results.run())
            tg.create_task(errors.run())
            ticker = tg.create_task(reporter.run(stats))
            try:
                await batch.work()
            finally:
                await results.close()
                await errors.close()
                ticker.cancel()
    except* FatalAPIError as group:
        stats.aborted = str(group.exceptions[0])
        raise group.exceptions[0] from None
    finally:
        stats.finished = clock()
        await client.close()
    return stats


class _Batch:
    def __init__(
        self,
        config: RunConfig,
        stats: RunStats,
        reporter: Reporter,
        results: JsonlWriter,
        errors: JsonlWriter,
        client: Any,
        sleep: Sleep,
        clock: Callable[[], float],
    ) -> None:
        self.config, self.stats, self.reporter = config, stats, reporter
        self.results, self.errors = results, errors
        self.client, self.path = client, chat_path(config.endpoint)
        self.sleep, self.clock = sleep, clock
        self.gate = CooldownGate(clock=clock, sleep=sleep)
        self.admission = Admission(config.limits.tpm, config.limits.rpm, self.gate)
        self.uses_tools = bool(config.request.tools)

    async def work(self) -> None:
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * self.config.limits.concurrency)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.produce(queue))
            for _ in range(self.config.limits.concurrency):
                tg.create_task(self.consume(queue))

    async def produce(self, queue: asyncio.Queue[Job | None]) -> None:
        seen = 0
        for line in read_lines(self.config.input_path):
            seen += 1
            item = (
                prepare(line, self.config.request, self.config.endpoint.deployment)
                if isinstance(line, ParsedLine)
                else line
            )
            if isinstance(item, BadLine):
                await self.reject(item)
            else:
                self.stats.estimated_tokens += item.estimate
                await queue.put(item)
        self.stats.total = seen  # exact now: blank lines are not inputs
        for _ in range(self.config.limits.concurrency):
            await queue.put(None)

    async def reject(self, bad: BadLine) -> None:
        where = f"{self.config.input_path}:{bad.line_no}"
        self.reporter.warn(f"{where}: {bad.reason} (written to the errors file; the run goes on)")
        self.stats.input_errors += 1
        self.stats.failed += 1
        record = error_record(
            custom_id=bad.custom_id,
            line_no=bad.line_no,
            code="invalid_input",
            message=f"{where}: {bad.reason}",
            attempts=0,
        )
        await self.errors.put(record)

    async def consume(self, queue: asyncio.Queue[Job | None]) -> None:
        while (job := await queue.get()) is not None:
            ok, record = await self.process(job)
            if ok:
                await self.results.put(record)
                self.stats.succeeded += 1
            else:
                await self.errors.put(record)
                self.stats.failed += 1

    async def process(self, job: Job) -> tuple[bool, dict[str, Any]]:
        attempts = 0
        try:
            async for attempt in retrying(self.config.retry, sleep=self.sleep, before_sleep=self._on_retry):
                with attempt:
                    attempts += 1
                    reply, latency_ms = await self.attempt(job)
                    output = extract_output(reply.body, self.uses_tools)
        except AttemptError as exc:
            self._check_fatal(exc)
            return False, failure_record(custom_id=job.custom_id, line_no=job.line_no, exc=exc, attempts=attempts)
        self._count_usage(reply.body, latency_ms)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=reply.request_id,
            raw_body=reply.raw,
            body=reply.body,
            output=output,
            attempts=attempts,
            latency_ms=latency_ms,
        )
        return True, record

    async def attempt(self, job: Job) -> tuple[Reply, float]:
        await self.admission.acquire(job.estimate)
        self.stats.attempts += 1
        self.stats.in_flight += 1
        started = self.clock()
        try:
            reply = await send(self.client, self.path, job.payload, self.config.retry.timeout)
        except AttemptError as exc:
            if exc.status == 429:
                self.stats.throttled += 1
                self.gate.close_for(exc.retry_after if exc.retry_after is not None else DEFAULT_429_PAUSE)
            raise
        finally:
            self.stats.in_flight -= 1
        return reply, (self.clock() - started) * 1000

    def _on_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    def _check_fatal(self, exc: AttemptError) -> None:
        """A wrong key or deployment fails every line: stop at once instead of burning retries."""
        what = FATAL_STATUSES.get(exc.status or 0)
        if what is None or self.stats.succeeded:
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
