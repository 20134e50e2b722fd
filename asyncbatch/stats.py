"""Counters for one run. Told of events by the runner, attempts and the Batch API; read by the display.

Each event is a method (``count_sent``, ``count_success``, ``count_failure``...): nothing here
costs more than a few adds per request.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .cost import Prices, projected
from .protocol import read_usage

RESERVOIR = 20_000  # latency samples kept for p50/p95, whatever the input size
RECENT = 2_000  # of the latest ones, for the metrics log's row (``take_recent_latencies``)
# A failure's code may come from a server (its error body's ``code``), of any length and variety: the
# summary, the display, the report and the Prometheus labels count at most MAX_REASONS codes by name,
# each cut to REASON_CHARS, and the rest under OTHER_REASONS, so a hostile server cannot swell them.
REASON_CHARS = 64
MAX_REASONS = 50
OTHER_REASONS = "other"


def reason(counted: Counter[str], code: str) -> str:
    """The name under which a failure with ``code`` is counted in ``counted``: cut short, or ``OTHER_REASONS``
    once ``MAX_REASONS`` names are taken. The one rule for every counter of failures by code."""
    name = code if len(code) <= REASON_CHARS else code[: REASON_CHARS - 1] + "…"
    if name not in counted and len(counted) >= MAX_REASONS:
        return OTHER_REASONS
    return name


class RouteView(Protocol):
    """What the display reads of one deployment of the run (``live.router.Route``)."""

    @property
    def name(self) -> str: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def learned_tpm(self) -> float | None: ...
    @property
    def charge_ratio(self) -> float | None: ...
    def state(self) -> str: ...
    def notice(self) -> str | None: ...
    def waiting(self) -> float | None: ...


class Reservoir:
    """At most ``size`` samples of a stream, each one kept with the same chance (Vitter's algorithm R).

    Percentiles stay honest in bounded memory, whatever the input size.
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng = size, rng
        self.samples: list[float] = []
        self.seen = 0
        self._sorted: list[float] | None = None  # until the next sample: p50 and p95 share one sort

    def add(self, value: float) -> None:
        self.seen += 1
        self._sorted = None
        if len(self.samples) < self.size:
            self.samples.append(value)
        elif (slot := self.rng.randrange(self.seen)) < self.size:
            self.samples[slot] = value

    def percentile(self, q: float) -> float | None:
        if not self.samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self.samples)
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    def sample(self, k: int) -> list[float]:
        """At most ``k`` of the samples, each with the same chance: what another process merges (``merged``)."""
        return list(self.samples) if len(self.samples) <= k else self.rng.sample(self.samples, k)

    @classmethod
    def merged(cls, parts: Iterable[tuple[Sequence[float], int]], size: int, rng: random.Random) -> Reservoir:
        """One reservoir of several streams, each given as a sample of it and how many values it saw: each
        stream's share of ``size`` is drawn from its sample, so a percentile weighs each stream by its count."""
        given = [(samples, seen) for samples, seen in parts if samples and seen > 0]
        total = sum(seen for _, seen in given)
        merged = cls(size, rng)
        for samples, seen in given:
            for value in rng.choices(samples, k=max(1, round(size * seen / total))):
                merged.add(value)
        merged.seen = total
        return merged


@dataclass
class RunStats:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    answers: Counter[str] = field(default_factory=Counter)  # attempts back: "2xx", the HTTP status, or "timeout"...
    in_flight: int = 0
    estimated_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served from the prompt cache
    cost: float = 0.0  # USD billed for this run's answers, when prices are known
    prices: Prices | None = None  # what ``cost`` was counted at
    remote_done: int = 0  # --batch-api: lines the server has finished in jobs not merged yet
    batch_answers: int = 0  # --batch-api: inputs answered by Batch API jobs (billed at half price)
    batch_jobs: int = 0
    tpm_limit: float | None = None  # --tpm, in the server's tokens (the unit of ``charged_tokens``)
    rpm_limit: float | None = None
    resumed: int = 0  # inputs already recorded when this run started
    resent: int = 0  # inputs that were in flight when the last run stopped
    changed: list[str] = field(default_factory=list)  # options changed at this resume (--accept-changes)
    charged_tokens: float = 0.0  # admitted, in the server's units (estimate x ratio): what the quota counts
    unpriced: str | None = None  # no prices: the deployment name the price table does not know (said in the summary)
    cache_hits: int = 0  # lines answered from the response cache, no request sent
    shared_answers: int = 0  # lines answered by an identical request of this run
    sampled_hits: int = 0  # of those, requests with temperature > 0 or n > 1: an earlier sample reused
    cache_saved: float = 0.0  # USD those answers cost when they were first paid for
    cache_raced: int = 0  # answers another run stored meanwhile: sent by both at the same time
    simulated: bool = False
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early, resumably (outage, quota)
    aborted: str | None = None
    notice: str | None = None  # a state the user should see now (the Batch API phase's jobs)
    failure_reasons: Counter[str] = field(default_factory=Counter)  # error code -> inputs failed with it
    routes: Sequence[RouteView] = field(default_factory=list, repr=False)  # the run's deployments (one endpoint: one)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # the run's (injected) clock
    started: float = field(init=False)
    finished: float | None = None
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)
    _latencies: Reservoir = field(init=False, repr=False)
    _recent: Reservoir = field(init=False, repr=False)  # since the metrics log last took them

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._latencies, self._recent = Reservoir(RESERVOIR, self._rng), Reservoir(RECENT, self._rng)

    def current_notice(self) -> str | None:
        """What the user should know now: the phase's notice, or what one endpoint's admission is waiting for
        (a pool's deployments say theirs on their own lines)."""
        return self.notice or (self.routes[0].notice() if len(self.routes) == 1 else None)

    def known_wait(self) -> float:
        """Seconds until the first deployment that is waiting (a 429's pause, a window's turn) may send again:
        0 when one may send now, or none says."""
        waits = [wait for route in self.routes if (wait := route.waiting()) is not None]
        return min(waits, default=0.0)

    @property
    def pool(self) -> Sequence[RouteView]:
        """The deployments shown one by one: a pool's (one endpoint's figures are the run's own)."""
        return self.routes if len(self.routes) > 1 else []

    @property
    def learned_tpm(self) -> float | None:
        """The limit learned so far, in the server's tokens per minute: the deployments' together, once each has one."""
        limits = [route.learned_tpm for route in self.routes]
        return sum(t for t in limits if t is not None) if limits and None not in limits else None

    @property
    def charge_ratio(self) -> float | None:
        """The server's charge per unit of the client's estimate, once every deployment has shown it: their mean."""
        ratios = [route.charge_ratio for route in self.routes]
        return sum(r for r in ratios if r is not None) / len(ratios) if ratios and None not in ratios else None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def progress(self) -> int:
        """Inputs finished: recorded, plus those Batch API jobs have finished and are not merged yet."""
        return self.done + self.remote_done

    @property
    def elapsed(self) -> float:
        return (self.clock() if self.finished is None else self.finished) - self.started

    @property
    def requests_per_second(self) -> float:
        """This run's inputs per second: lines already recorded when it started are not its work."""
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    # -- events -----------------------------------------------------------------------------------

    def count_success(self, *, batch: bool = False) -> None:
        """An input recorded in the results (``batch``: answered by a Batch API job)."""
        self.succeeded += 1
        self.batch_answers += batch

    def count_failure(self, code: str, *, bad_input: bool = False) -> None:
        """An input recorded in the errors file, with its error code (``bad_input``: a line that is no request)."""
        self.failed += 1
        self.input_errors += bad_input
        self.failure_reasons[reason(self.failure_reasons, code)] += 1

    def count_sent(self, charge: float) -> None:
        """An attempt on the wire, charged ``charge`` tokens of the quota (in the server's units)."""
        self.attempts += 1
        self.in_flight += 1
        self.charged_tokens += charge

    def count_returned(self) -> None:
        """An attempt back, answered, failed or cancelled."""
        self.in_flight -= 1

    def count_answered(self) -> None:
        """An attempt answered (any status the connection takes for an answer)."""
        self.answers["2xx"] += 1

    def count_failed_attempt(self, *, throttled: bool, status: int | None = None, code: str = "error") -> None:
        """An attempt failed (``throttled``: with a 429); the input may still succeed.

        :param status: the HTTP status it was answered with; ``code`` names the failure when there was none.
        """
        self.throttled += throttled
        self.answers[reason(self.answers, str(status) if status is not None else code)] += 1

    def count_retry(self) -> None:
        self.retries += 1

    def count_usage(self, body: dict[str, Any], prices: Prices | None) -> float:
        """Count an answer's tokens (every 200 answer is billed, valid output or not); return its cost."""
        prompt, completion, cached = read_usage(body)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached
        if prices is None:
            return 0.0
        spent = prices.cost(prompt, completion, cached)
        self.cost += spent
        return spent

    def count_cached(self, body: dict[str, Any], prices: Prices | None, *, shared: bool, sampled: bool) -> None:
        """A line answered without a request: from the cache, or (``shared``) by an identical one of this run."""
        self.cache_hits += not shared
        self.shared_answers += shared
        self.sampled_hits += sampled
        if prices is not None:
            self.cache_saved += prices.cost(*read_usage(body))

    @property
    def projected_cost(self) -> float | None:
        """This run's cost once every remaining input is done, at the cost per input so far."""
        work = self.done - self.resumed
        if self.prices is None or work <= 0 or self.total <= 0:
            return None
        return self.cost + projected(self.cost, work, max(0, self.total - self.done))

    def add_latency(self, ms: float) -> None:
        self._latencies.add(ms)
        self._recent.add(ms)

    def latency_percentile(self, q: float) -> float | None:
        return self._latencies.percentile(q)

    def latency_sample(self, k: int) -> tuple[list[float], int]:
        """At most ``k`` of the latencies kept, and how many there were: for a driver adding up workers'."""
        return self._latencies.sample(k), self._latencies.seen

    def merge_latencies(self, parts: Iterable[tuple[Sequence[float], int]]) -> None:
        """The latencies of other runs (each a ``latency_sample``) in place of this one's: a driver's summary."""
        self._latencies = Reservoir.merged(parts, RECENT, self._rng)

    def take_recent_latencies(self) -> Reservoir:
        """The latencies since the last call (a sample of them), for one row of the metrics log."""
        recent, self._recent = self._recent, Reservoir(RECENT, self._rng)
        return recent


TREND_WINDOW = 30.0  # seconds of recent work the smoothed rate looks at


class Trend:
    """This run's recent rates: requests done and tokens charged, per second, over the last ``TREND_WINDOW``.

    Sampled by the display's ticker (never per request). Until a sample is older than the
    window, the rates are taken from the run's start, so an early figure includes the
    first answers' latency and is not a burst's.
    """

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats
        self._samples: deque[tuple[float, int, float]] = deque([(stats.started, stats.progress, 0.0)])

    def sample(self) -> None:
        now = self.clock()
        self._samples.append((now, self.stats.progress, self.stats.charged_tokens))
        while len(self._samples) > 2 and self._samples[1][0] <= now - TREND_WINDOW:
            self._samples.popleft()

    def clock(self) -> float:
        return self.stats.clock()

    def _rates(self) -> tuple[float, float] | None:
        (t0, done0, charged0), (t1, done1, charged1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2 or done1 == done0:
            return None
        return (done1 - done0) / (t1 - t0), (charged1 - charged0) / (t1 - t0)

    @property
    def per_second(self) -> float | None:
        """Inputs finished per second, recently; None until there is something to go on."""
        rates = self._rates()
        return rates[0] if rates else None

    @property
    def charged_per_minute(self) -> float | None:
        """Tokens charged against the quota per minute, recently (the server's units, like --tpm)."""
        rates = self._rates()
        return rates[1] * 60 if rates else None

    def eta(self) -> float | None:
        """Seconds to finish: the quota's bound when it is known, or the recent rate if that is slower, counted
        from the end of the wait now known (a 429's pause, the next window), if one is running."""
        stats = self.stats
        remaining = stats.total - stats.progress
        if stats.total <= 0:
            return None
        if remaining <= 0:
            return 0.0
        bounds = []
        tpm = stats.tpm_limit or stats.learned_tpm
        if tpm and stats.attempts:
            bounds.append(remaining * (stats.charged_tokens / stats.attempts) / (tpm / 60))
        if stats.rpm_limit:
            bounds.append(remaining / (stats.rpm_limit / 60))
        wait = stats.known_wait()  # nothing finishes before a known wait ends (a window's next minute)
        if rate := self.per_second:
            bounds.append(wait + remaining / rate)
        elif wait:
            bounds.append(wait)
        return max(bounds) if bounds else None

    def projected_cost(self) -> float | None:
        return self.stats.projected_cost
