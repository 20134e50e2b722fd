"""--metrics-port: the run's counters as Prometheus text on 127.0.0.1, for runs that others watch.

Every value is read from ``RunStats`` at the scrape, the counters the display, the summary and the
metrics log read, so a scrape and the summary never disagree. prometheus_client writes the text
(and OpenMetrics, when a scraper asks for it); aiohttp's server, already the simulator's, serves it in
the run's own event loop. Names and meanings: docs/report.md "Prometheus metrics".

A run's end is observable: ``asyncbatch_finished`` turns 1 once the counters are final (the summary's),
and with a linger (``--metrics-linger``) the endpoint stays up after the run until a scrape has read
them, or the linger has passed, or the user interrupts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import ConfigError
from ..stats import RunStats

HOST = "127.0.0.1"  # never another interface: the counters name deployments and failures
PATH = "/metrics"


# Every metric served: name -> (type, help). docs/report.md lists the same (a test checks).
METRICS: dict[str, tuple[str, str]] = {
    "asyncbatch_up": ("gauge", "1 while the run serves its metrics"),
    "asyncbatch_finished": ("gauge", "1 once the run has ended: the counters are final, the summary's"),
    "asyncbatch_input_lines": ("gauge", "inputs in the input file (exact once it is read to the end)"),
    "asyncbatch_inputs_done": ("counter", "inputs recorded in the outputs, by result (succeeded, failed)"),
    "asyncbatch_requests": ("counter", "requests sent (attempts, retries included)"),
    "asyncbatch_answers": ("counter", "attempts back, by status: 2xx (an answer), the HTTP status, or the failure"),
    "asyncbatch_throttled": ("counter", "429 answers"),
    "asyncbatch_retries": ("counter", "attempts made again after a failed one"),
    "asyncbatch_failures": ("counter", "inputs recorded as failed, by error code"),
    "asyncbatch_tokens": ("counter", "billed tokens, by kind (prompt, completion, cached: of the prompt's)"),
    "asyncbatch_charged_tokens": ("counter", "tokens admitted against the quota, in the server's units"),
    "asyncbatch_estimated_tokens": ("counter", "the client's token estimate of the inputs read"),
    "asyncbatch_cost_usd": ("counter", "USD billed for this run's answers, at its prices (when known)"),
    "asyncbatch_cached_answers": ("counter", "inputs answered without a request (the cache, identical requests)"),
    "asyncbatch_in_flight": ("gauge", "requests on the wire"),
    "asyncbatch_queued_inputs": ("gauge", "inputs neither finished nor on the wire"),
    "asyncbatch_elapsed_seconds": ("gauge", "seconds since the run started"),
    "asyncbatch_limit_tokens_per_minute": ("gauge", "--tpm, or the limit learned so far (once known)"),
    "asyncbatch_charge_ratio": ("gauge", "the server's charge per unit of the client's estimate (once learned)"),
    "asyncbatch_latency_milliseconds": ("gauge", "answers' latency, by quantile (0.5, 0.95)"),
    "asyncbatch_batch_jobs_merged": ("counter", "Batch API jobs whose answers are recorded"),
    "asyncbatch_batch_answers": ("counter", "inputs answered by Batch API jobs"),
    "asyncbatch_deployment_answers": ("counter", "a pool's deployment: answers accepted"),
    "asyncbatch_deployment_throttled": ("counter", "a pool's deployment: 429 answers"),
    "asyncbatch_deployment_failed_attempts": ("counter", "a pool's deployment: failed attempts"),
    "asyncbatch_deployment_in_flight": ("gauge", "a pool's deployment: requests on the wire"),
}


def family(name: str, labels: Sequence[str] = ()) -> CounterMetricFamily | GaugeMetricFamily:
    """An empty family of ``name``, typed and described as ``METRICS`` says."""
    kind, documentation = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name, documentation, labels=labels)
    return GaugeMetricFamily(name, documentation, labels=labels)


def one(name: str, value: float) -> Metric:
    metric = family(name)
    metric.add_metric([], value)
    return metric


def labelled(name: str, label: str, values: Iterable[tuple[str, float]]) -> Metric:
    metric = family(name, [label])
    for key, value in values:
        metric.add_metric([key], value)
    return metric


class RunCollector(Collector):
    """The run's counters at each scrape; before the run has any (``stats`` None), only ``asyncbatch_up``."""

    def __init__(self) -> None:
        self.stats: RunStats | None = None
        self.final = False  # the last scrape read the run's final counters

    def collect(self) -> Iterator[Metric]:
        yield one("asyncbatch_up", 1)
        if (stats := self.stats) is not None:
            self.final = stats.finished is not None
            yield one("asyncbatch_finished", int(self.final))
            yield from _run(stats)
            yield from _optional(stats)
            yield from _deployments(stats)


def _run(s: RunStats) -> Iterator[Metric]:
    yield one("asyncbatch_input_lines", s.total)
    yield labelled("asyncbatch_inputs_done", "result", [("succeeded", s.succeeded), ("failed", s.failed)])
    yield one("asyncbatch_requests", s.attempts)
    yield labelled("asyncbatch_answers", "status", sorted(s.answers.items()))
    yield one("asyncbatch_throttled", s.throttled)
    yield one("asyncbatch_retries", s.retries)
    yield labelled("asyncbatch_failures", "code", sorted(s.failure_reasons.items()))
    kinds = [("prompt", s.prompt_tokens), ("completion", s.completion_tokens), ("cached", s.cached_tokens)]
    yield labelled("asyncbatch_tokens", "kind", kinds)
    yield one("asyncbatch_charged_tokens", s.charged_tokens)
    yield one("asyncbatch_estimated_tokens", s.estimated_tokens)
    yield one("asyncbatch_cached_answers", s.cache_hits + s.shared_answers)
    yield one("asyncbatch_in_flight", s.in_flight)
    yield one("asyncbatch_queued_inputs", max(0, s.total - s.progress - s.in_flight))
    yield one("asyncbatch_elapsed_seconds", s.elapsed)


def _optional(s: RunStats) -> Iterator[Metric]:
    """What exists only once known: the cost, the limit, the charge ratio, latency, Batch API jobs."""
    if s.prices is not None:
        yield one("asyncbatch_cost_usd", s.cost)
    if limit := s.tpm_limit or s.learned_tpm:
        yield one("asyncbatch_limit_tokens_per_minute", limit)
    if s.charge_ratio is not None:
        yield one("asyncbatch_charge_ratio", s.charge_ratio)
    quantiles = [(str(q), value) for q in (0.5, 0.95) if (value := s.latency_percentile(q)) is not None]
    if quantiles:
        yield labelled("asyncbatch_latency_milliseconds", "quantile", quantiles)
    if s.batch_jobs:
        yield one("asyncbatch_batch_jobs_merged", s.batch_jobs)
        yield one("asyncbatch_batch_answers", s.batch_answers)


def _deployments(s: RunStats) -> Iterator[Metric]:
    """A pool's deployments, one label each."""
    if not s.pool:
        return
    yield labelled("asyncbatch_deployment_answers", "deployment", [(r.name, r.succeeded) for r in s.pool])
    yield labelled("asyncbatch_deployment_throttled", "deployment", [(r.name, r.throttled) for r in s.pool])
    yield labelled("asyncbatch_deployment_failed_attempts", "deployment", [(r.name, r.failed) for r in s.pool])
    yield labelled("asyncbatch_deployment_in_flight", "deployment", [(r.name, r.in_flight) for r in s.pool])


class MetricsEndpoint:
    """The listening endpoint; ``watch(stats)`` once the run has its counters, ``linger`` once it has ended."""

    def __init__(self, collector: RunCollector, url: str, info: Callable[[str], None]) -> None:
        self.collector, self.url, self.info = collector, url, info
        self.read_final = asyncio.Event()  # a scrape has read the final counters
        self._stopped = asyncio.Event()

    def watch(self, stats: RunStats) -> None:
        self.collector.stats = stats

    def scraped(self) -> None:
        if self.collector.final:
            self.read_final.set()

    async def linger(self, seconds: float, listen: Callable[[Callable[[int], None]], None] | None = None) -> None:
        """Serve the final counters until a scrape has read them, ``seconds`` have passed, or a stop request comes.

        :param listen: registers a callback for the user's stop requests (``runner.Interrupt.listen``).
        """
        if seconds <= 0 or self.read_final.is_set():
            return
        if listen is not None:
            listen(lambda _: self._stopped.set())
        self.info(f"metrics: the run has ended; {self.url} serves its final figures until a scrape reads them "
                  f"({seconds:g} s at most, Ctrl-C to stop)")  # fmt: skip
        waits = [asyncio.ensure_future(event.wait()) for event in (self.read_final, self._stopped)]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


_LOCAL = re.compile(r"(?:127\.0\.0\.1|localhost)(?::\d{1,5})?", re.IGNORECASE)


def local_host(host: str) -> bool:
    """Whether a request's Host header names this machine. A page elsewhere may point a name of its own at
    127.0.0.1 (DNS rebinding) and read what the browser fetches: that request carries its own name."""
    return _LOCAL.fullmatch(host.strip()) is not None


@contextlib.asynccontextmanager
async def serving(port: int | None, info: Callable[[str], None]) -> AsyncIterator[MetricsEndpoint | None]:
    """Serve the metrics on 127.0.0.1:``port`` for the block (None: no endpoint at all; 0: any free port).

    :raises ConfigError: the port cannot be listened on (taken, or privileged): before anything is sent.
    """
    if port is None:
        yield None
        return
    collector = RunCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    prometheus = make_aiohttp_handler(registry)
    endpoint: MetricsEndpoint | None = None

    async def handler(request: web.Request) -> web.StreamResponse:
        if not local_host(request.headers.get("Host", "")):
            return web.Response(status=403, text="asyncbatch metrics answer only to Host 127.0.0.1 or localhost\n")
        response = await prometheus(request)
        if endpoint is not None:
            endpoint.scraped()  # the response is sent before the endpoint closes: a shutdown waits for handlers
        return response

    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc}). "
                "HINT: choose another port, or 0 for any free one"
            ) from None
        bound = runner.addresses[0][1]
        endpoint = MetricsEndpoint(collector, f"http://{HOST}:{bound}{PATH}", info)
        info(f"metrics: {endpoint.url} (Prometheus text)")
        yield endpoint
    finally:
        await runner.cleanup()
