"""The orchestrator: read -> queue -> workers -> writers -> checkpoint, and interrupts.

One TaskGroup owns the writers, the ticker and the checkpoint saver; a nested
one owns the reader and the workers, so when the work is done (or stopped)
everything below it has finished before the writers close. Work flows through a
bounded queue, so memory does not grow with the input. What happens to one job
(admission, retries, validation) is ``attempts.py``; which deployment it goes to,
``router.py``. With ``--batch-api`` a Batch API phase (``batch/jobs.py``) comes
first and hands its records to the same writers; the live phase then runs what
it left.

Interrupts (``Interrupt.request``, wired to SIGINT/SIGTERM by the CLI): the
first stops new requests and gives those in flight ``config.grace`` seconds;
the second cancels them at once. Either way, what finished is written and
the checkpoint saved; the unfinished inputs run on the next resume. An input
that cannot be read on (``InputError`` from the reader) stops the run the same
way, but waits for every request in flight: they are paid for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .batch.jobs import BatchRunner
from .batch.parts import refuse_live_while_open
from .clock import Sleep
from .config import RunConfig
from .cost import Budget, Prices
from .display.reporters import Reporter, default_reporter
from .display.summary import summary_data
from .errors import ConfigError, FatalAPIError, InputError, OutputError, StopRun
from .input.reader import BadLine, ParsedLine, count_lines, first_lines, read_lines, row_lines, sniff, virtual_lines
from .input.requests import Job, lines_prices, prepare, setup_mistake, where
from .live.attempts import Attempts, Outcome, Stopped, Success
from .live.cached import Cached
from .live.router import Router
from .records import INVALID_INPUT, error_record
from .report.metrics import MetricsLog
from .report.prometheus import serving
from .stats import RunStats
from .store.cache import ResponseCache
from .store.checkpoint import ResumeState
from .store.session import Store, opened
from .store.session import restart as store_restart
from .structured.validate import OutputCheck


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


async def run(
    config: RunConfig,
    *,
    restart: bool = False,
    reporter: Reporter | None = None,
    interrupt: Interrupt | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunStats:
    """Run every input of ``config`` not already recorded; return the counters.

    Await it from any event loop (a script's ``asyncio.run``, or a notebook's running loop).
    The run holds an exclusive lock on its outputs for its whole life: a second run that would
    write the same files, by any name, raises ``AlreadyRunning`` (a ConfigError) at once.

    :param restart: first move the old outputs and state directory aside (never deleted), under the lock.
    :param reporter: progress and messages (default: messages only, on stderr).
    :param interrupt: call ``interrupt.request()`` to stop gracefully (twice: at once).
    :param sleep: used for every retry wait and cool-down; ``clock`` for every time. Tests inject both.
    :raises FatalAPIError: the endpoint refused the key or deployment (at the start, or after answers), or never
        answered; what was answered is recorded, and the lines refused run on the next run.
    :raises ConfigError: the outputs belong to a different input or options, or another run holds them.
    :raises InputError: the input cannot be read on from some row: the run stopped once every answer in
        flight was recorded, and resumes there once the file is fixed.
    :raises OutputError: an output file cannot be written.
    """
    reporter = reporter or default_reporter()
    sniff(config.input_path)  # a whole file that is not JSONL: refused before anything is written
    lines = virtual_lines(config.input_path)  # a Parquet file's rows: what a resume compares
    first = first_lines(config.input_path)
    if mistake := setup_mistake(
        config.input_path, first, config.request, config.routes[0].endpoint, given_rows=config.given_rows
    ):
        raise ConfigError(mistake)  # the options' mistake, said once: not a failure on every line
    prices = config.prices or lines_prices(first)  # a deployment not named after a model: the lines may name one
    async with serving(config.metrics_port, reporter.info) as endpoint:  # a taken port: refused before any write
        with opened(
            config.outputs,
            config.input_path,
            config.fingerprint,
            reporter,
            restart=restart,
            accept_changes=config.accept_changes,
            retry_failed=config.retry_failed,
            lines=lines,
            rows=row_lines(config.input_path),
        ) as state:
            if config.batch is None:
                refuse_live_while_open(config.state)
            for banner in _simulated(config):  # once the configuration is accepted: never before its error
                reporter.info(banner)
            # Before the clock starts: opening the connections imports the SDK, which is start-up, not run time.
            router = await Router.open(
                config.routes,
                config.transport,
                config.patience,
                concurrency=config.limits.concurrency,
                shared_by=config.limits.shared_by,
                redactor=reporter.redactor,
                on_aside=reporter.warn,
                sleep=sleep,
                clock=clock,
            )
            try:
                run = _Run(config, state, router, reporter, sleep, clock, prices)
                if endpoint is not None:
                    endpoint.watch(run.stats)
                stats = await run.run(interrupt)
            finally:
                await router.close()
        if endpoint is not None:  # the run has ended, its files closed: the final figures, for a scraper to read
            await endpoint.linger(config.metrics_linger, interrupt.listen if interrupt is not None else None)
        return stats


def _simulated(config: RunConfig) -> list[str]:
    """What says that a simulator answers, not Azure: one line per simulated deployment."""
    if not config.deployments:
        url = config.routes[0].endpoint.base_url
        return [f"SIMULATED: a local simulator at {url}; nothing goes to Azure"] if config.simulated else []
    return [
        f"SIMULATED deployment {d.name}: local simulator at {d.endpoint.base_url}"
        for d in config.deployments
        if d.endpoint.simulated
    ]


def restart(config: RunConfig) -> list[tuple[Path, Path]]:
    """Start over: move the run's outputs and state directory aside (never deleted); return (old, new) names.

    :raises AlreadyRunning: another run is writing them.
    """
    return store_restart(config.outputs)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class _Run:
    """One run's tasks: the reader, the workers, the writers and the checkpoint saver."""

    def __init__(
        self,
        config: RunConfig,
        state: ResumeState,
        router: Router,
        reporter: Reporter,
        sleep: Sleep,
        clock: Callable[[], float],
        prices: Prices | None,
    ) -> None:
        tpm, rpm = config.quota
        self.stats = stats = RunStats(
            simulated=config.simulated,
            total=count_lines(config.input_path),
            succeeded=state.results_lines,
            failed=state.errors_lines,
            resumed=len(state.done) + state.done.unplaced.count,
            resent=state.resent,
            changed=state.changed,
            prices=prices,
            unpriced=None if prices else config.routes[0].endpoint.deployment,
            tpm_limit=tpm,
            rpm_limit=rpm,
            routes=router.routes,
            clock=clock,
        )
        self.config, self.state, self.reporter, self.router = config, state, reporter, router
        self.store = Store(config.outputs, state, config.fingerprint, stats, reporter.redactor, clock=clock)
        self.recorder = self.store.recorder
        self.check = OutputCheck(config.request.tools, config.request.response_format, config.request.models)
        self.cache, cached = None, None
        if config.cache is not None and config.cache_mode != "off":
            self.cache = ResponseCache(config.cache, config.cache_mode, redactor=reporter.redactor, warn=reporter.warn)
            identity = [route.endpoint.identity for route in config.routes]
            cached = Cached(self.cache, identity, self.check, stats, prices)
        self.cached = cached
        self.attempts = Attempts(
            router=router,
            request=config.request,
            retry=config.retry,
            stats=stats,
            stopping=lambda: self.stopping,
            prices=prices,
            check=self.check,
            budget=Budget(config.max_cost),
            sleep=sleep,
            clock=clock,
            cached=cached,
        )
        self.attempts.on_send, self.attempts.on_turned_away = self.store.sent, self.store.turned_away
        self.metrics = MetricsLog(
            config.state,
            stats,
            summary_data,
            batches=config.batch is not None,
            warn=reporter.warn,
            redactor=reporter.redactor,
        )
        self.stopping = False
        self.fatal: FatalAPIError | None = None
        self.unread: Exception | None = None  # why the reader stopped before the end of the input
        self.sleep, self.clock = sleep, clock
        self.tasks: list[asyncio.Task[None]] = []
        self.hard_stop: asyncio.TimerHandle | None = None

    async def run(self, interrupt: Interrupt | None) -> RunStats:
        if interrupt is not None:
            interrupt.listen(self.on_interrupt)
        try:
            await self._run_all()
        except* (FatalAPIError, OutputError, ConfigError) as group:  # InputError, a damaged state file too
            fatal = _first_leaf(group)
            self.stats.aborted = self.reporter.redactor.text(str(fatal))
            fatal.args = (self.stats.aborted,)  # a server may quote a token back: only the run knows every one
            raise fatal from None
        finally:
            self.stats.finished = self.clock()
            self.metrics.finish()  # the counters are final: the summary the CLI prints next
            if self.cache is not None:
                self.cache.close()
        if self.unread is not None:  # raised now that every answer in flight is recorded and the state saved
            if isinstance(self.unread, InputError):
                self.stats.aborted = str(self.unread)
            raise self.unread
        return self.stats

    async def _run_all(self) -> None:
        self.metrics.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.store.run())
                ticker = tg.create_task(self.reporter.run(self.stats))
                logger = tg.create_task(self.metrics.run())
                try:
                    await self.work()
                finally:
                    self.store.close()
                    ticker.cancel()
                    logger.cancel()
                    if self.hard_stop is not None:
                        self.hard_stop.cancel()
        finally:
            self.store.finish()  # the writers have finished: this is the final, exact state

    async def work(self) -> None:
        if self.config.batch is not None and not await self.batch_phase():
            return
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * self.config.limits.concurrency)
        async with asyncio.TaskGroup() as tg:
            self.tasks.append(tg.create_task(self.produce(queue)))
            for _ in range(self.config.limits.concurrency):
                self.tasks.append(tg.create_task(self.consume(queue)))
        if self.fatal is not None:  # raised once the answers already on their way were recorded
            raise self.fatal
        for outcome in self.attempts.verdict.release():  # failures held back while nothing had succeeded yet
            self.record(outcome)

    async def batch_phase(self) -> bool:
        """--batch-api: jobs first; True when the live phase should run what they left."""
        options = self.config.batch
        assert options is not None
        runner = BatchRunner(
            self.config,
            stats=self.stats,
            recorder=self.recorder,
            written=self.store.written,
            done=self.state.done,
            info=self.reporter.info,
            warn=self.reporter.warn,
            sleep=self.sleep,
            cached=self.cached.result if self.cached is not None else lambda job: None,
            keep=self.cached.keep if self.cached is not None else lambda job, body, request_id: None,
            check=self.check,
        )
        if options.cancel:
            cancelled = await runner.cancel()
            self.stop(f"--cancel: cancelled {cancelled} Batch API job(s); run without --cancel to collect what they "
                      "finished and run the rest")  # fmt: skip
            return False
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(self._batch_jobs(runner))
            self.tasks.append(task)
        if task.cancelled() or self.stopping:
            return False
        self.stats.remote_done, self.stats.notice = 0, None
        return options.live_fallback

    async def _batch_jobs(self, runner: BatchRunner) -> None:
        try:
            await runner.run(self.reject)
        except asyncio.CancelledError:
            open_jobs = [p for p in runner.state.open_parts() if p.batch_id is not None]
            if open_jobs:
                self.reporter.warn(
                    f"{len(open_jobs)} Batch API job(s) keep running on Azure; run the same command again to "
                    "collect their results, or add --cancel to cancel them"
                )
            raise

    def on_interrupt(self, count: int) -> None:
        if count == 1:
            self.stats.interrupted = True
            self.stop()
        else:
            self._cancel_all()

    def stop(self, reason: str | None = None, *, patient: bool = False) -> None:
        """No new requests; those in flight get ``grace`` seconds to finish.

        :param patient: no deadline: each attempt in flight ends by its own ``--timeout`` and no retry starts,
            so every answer on its way is recorded (an interrupt that comes later sets the deadline).
        """
        if reason is not None and self.stats.stopped is None:
            self.stats.stopped = reason
            self.reporter.warn(f"stopping: {reason}")
        if not self.stopping:
            self.stopping = True
            for task in self.tasks:
                if task not in self.attempts.sending and task is not asyncio.current_task():
                    task.cancel()  # idle or waiting: nothing paid for is lost
        if not patient and self.hard_stop is None:
            loop = asyncio.get_running_loop()
            self.hard_stop = loop.call_later(self.config.grace, self._cancel_all)

    def _cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def produce(self, queue: asyncio.Queue[Job | None]) -> None:
        try:
            await self._produce(queue)
        except Exception as exc:  # the reader: InputError, or a defect; either way, the answers on their way count
            self.unread = exc
            if in_flight := len(self.attempts.sending):
                self.reporter.warn(
                    f"stopping: {self.config.input_path} cannot be read on; recording the {in_flight} answers in flight"
                )
            self.stop(patient=True)

    async def _produce(self, queue: asyncio.Queue[Job | None]) -> None:
        request, endpoint = self.config.request, self.config.routes[0].endpoint
        done, unplaced, yielded = len(self.state.done), self.state.done.unplaced.count, 0
        for line in read_lines(self.config.input_path, done=self.state.done, ids=self.store.ids):
            yielded += 1
            item = prepare(line, request, endpoint.deployment, endpoint) if isinstance(line, ParsedLine) else line
            if isinstance(item, BadLine):
                self.reject(item)
                await self.recorder.errors.room()  # a file of bad lines: the writer drains, signals are heard
            else:
                self.stats.estimated_tokens += item.estimate
                await queue.put(item)
        claimed = unplaced - self.state.done.unplaced.count  # recorded lines found by their content
        self.stats.total = done + claimed + yielded  # exact now: blank lines are not inputs
        for _ in range(self.config.limits.concurrency):
            await queue.put(None)

    def reject(self, bad: BadLine) -> None:
        at = where(self.config.input_path, bad.line_no, given_rows=self.config.given_rows)
        self.reporter.warn(f"{at}: {bad.reason} (written to the errors file; the run goes on)")
        record = error_record(
            custom_id=bad.custom_id,
            line_no=bad.line_no,
            code=INVALID_INPUT,
            message=f"{at}: {bad.reason}",
            attempts=0,
            line_hash=bad.line_hash,
        )
        self.recorder.failure(bad.line_no, record, INVALID_INPUT, bad_input=True)

    async def consume(self, queue: asyncio.Queue[Job | None]) -> None:
        while not self.stopping and (job := await queue.get()) is not None:
            try:
                outcome = await self.attempts.carry(job)
                settled = self.attempts.verdict.settle(outcome)
            except Stopped:
                return
            except StopRun as stop:
                self.stop(str(stop))
                return
            except FatalAPIError as fatal:  # no new requests; those in flight are paid for: record them first
                self.fatal = self.fatal or fatal
                self.stop()
                return
            for outcome in settled:
                self.record(outcome)

    def record(self, outcome: Outcome) -> None:
        if isinstance(outcome, Success):
            self.recorder.success(outcome.line_no, outcome.record)
        else:
            self.recorder.failure(outcome.line_no, outcome.record, outcome.error.code)
