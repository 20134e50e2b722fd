"""Admission's gates (aiometer's meters, aiolimiter's buckets): each answers "seconds until ready" on its own.

``Admission.readiness`` asks them in order and the first that is not ready says how long, and whether the
server is what holds the request (what ``--max-wait`` bounds) or the quota given, an outage or an answer
awaited. The token buckets are shaped like Azure's windows: requests over 1 s, tokens over about 10 s.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from ..clock import NAP, Clock

MARGIN = 0.98  # stay just under the quota: client and server clocks never agree exactly
# Requests leave evenly spaced, so the only error is arrival jitter: 1% of a second's requests
# is 10 ms of it, many times what one region's network adds.
REQUEST_MARGIN = 0.99
# A timer fires late on a busy event loop (uvloop's resolution alone is 1 ms, an eighth of the gap between
# requests at 7,200 RPM). A bucket of one request would drop what accrued meanwhile, a little on every
# request; up to this much lateness is kept instead, at most one request's worth.
LATE = 0.02


class Gate(Protocol):
    """One reason a request may have to wait. ``by_server``: the server holds it (a 429's pause, a learned rate),
    not the quota given or an outage; ``source``: who asks, for the notice (None: the gate says it itself);
    ``final``: only time opens it and its wait never shortens, so it is waited out whole (else looked at again)."""

    @property
    def by_server(self) -> bool: ...
    @property
    def source(self) -> str | None: ...
    @property
    def final(self) -> bool: ...

    def wait(self, charge: float, retry: bool) -> float:
        """Seconds until a request of ``charge`` (a ``retry``: refused before) may pass; 0: now."""
        ...


class Bucket:
    """A token bucket: holds at most ``capacity``, refills at ``rate`` per second; starts full.

    A request larger than the bucket waits for a full bucket instead of failing. ``per_request``: each request
    takes 1 (a request meter), else its charge (a token meter).

    :param clock: monotonic seconds; injected so tests need no sleeping.
    """

    source, final = None, False

    def __init__(
        self,
        capacity: float,
        rate: float,
        clock: Clock = time.monotonic,
        *,
        per_request: bool = False,
        by_server: bool = False,
    ) -> None:
        self.capacity, self.rate, self.clock = capacity, rate, clock
        self.per_request, self.by_server = per_request, by_server
        self.level = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def current(self) -> float:
        """The level now, refilled."""
        self._refill()
        return self.level

    def wait(self, charge: float, retry: bool = False) -> float:
        return self.wait_for(1 if self.per_request else charge)

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0 if now)."""
        self._refill()
        deficit = min(amount, self.capacity) - self.level
        return deficit / self.rate if deficit > 1e-6 else 0.0  # below that: rounding, not a shortfall

    def admit(self, charge: float) -> None:
        """A request passed: what it takes from this meter."""
        self.take(1 if self.per_request else charge)

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= min(amount, self.capacity)

    def give(self, amount: float) -> None:
        """Put back what was taken for a request the server refused (and so did not charge)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def set_level(self, level: float, *, lower_only: bool = False) -> None:
        """What is in the bucket now, as someone who knows better says (at most full)."""
        self._refill()
        self.level = min(self.level if lower_only else self.capacity, level)

    def set_rate(self, rate: float, capacity: float) -> None:
        """Refill at the old rate up to now, then switch; a fuller bucket than the new capacity is just full."""
        self._refill()
        self.rate, self.capacity = rate, capacity
        self.level = min(self.level, capacity)


def token_bucket(tpm: float, clock: Clock = time.monotonic) -> Bucket:
    """At most a sixth of a minute's tokens at once, refilled at just under TPM/60 per second."""
    return Bucket(tpm / 6, MARGIN * tpm / 60, clock)


def request_bucket(rpm: float, clock: Clock = time.monotonic, *, by_server: bool = False) -> Bucket:
    """One request at a time, evenly spaced, so no 1 s window sees more than RPM/60.

    A bucket of ``capacity`` admits up to ``capacity + rate`` in any second: the rate leaves room for it.
    """
    allowed = REQUEST_MARGIN * rpm / 60
    capacity = 1 + min(1.0, allowed * LATE)
    rate = allowed - capacity
    if rate < rpm / 120:  # a request every second or more: a late timer costs nothing
        capacity, rate = 1, max(allowed - 1, rpm / 120)
    return Bucket(capacity, rate, clock, per_request=True, by_server=by_server)


class RequestShare:
    """Our part of a request rate that other clients draw on too: our share of what the server admitted lately.

    Each of our answers says how many requests the server admitted since our previous one, ours among them
    (``calibration.Draw``, read from ``x-ratelimit-remaining-requests``). Pacing at ``share x RPM`` scales
    our rate by RPM / (everyone's rate): when every client does the same, together they send the RPM, in
    one step from below or above it. A client that sends less (its rows are done, its tokens hold it)
    leaves the rest a bigger share at once, and one alone has all of it. Without such a reading (no header,
    or a new slice between two answers) nothing changes. Pure apart from the injected clock.

    :param window: seconds of draws to judge by, but never fewer than ``least`` draws.
    """

    def __init__(self, clock: Clock = time.monotonic, *, window: float = 0.5, least: int = 20) -> None:
        self.clock, self.window, self.least = clock, window, least
        self._draws: deque[tuple[float, int, int]] = deque()  # when, admitted, ours
        self._admitted = self._ours = 0

    def on_draw(self, admitted: int, ours: int) -> None:
        now = self.clock()
        self._draws.append((now, admitted, ours))
        self._admitted, self._ours = self._admitted + admitted, self._ours + ours
        while len(self._draws) > self.least and self._draws[0][0] < now - self.window:
            _, gone, mine = self._draws.popleft()
            self._admitted, self._ours = self._admitted - gone, self._ours - mine

    def part(self) -> float | None:
        """Our share of the server's admissions lately (1: alone), once ``least`` answers told; else None."""
        if len(self._draws) < self.least or self._admitted <= 0:
            return None
        return min(1.0, self._ours / self._admitted)


class CooldownGate:
    """After a 429, nobody is admitted until the server's reset: it holds even a request already waiting.

    :param clock: monotonic seconds; injected so tests need no sleeping.
    """

    by_server, source, final = True, None, True

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0

    def close_for(self, seconds: float) -> None:
        """Hold admission for ``seconds`` from now (never shortens an existing pause)."""
        self._until = max(self._until, self._clock() + seconds)

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def wait(self, charge: float = 0.0, retry: bool = False) -> float:
        return self.remaining()


class Breaker:
    """The outage breaker: stops admission while the endpoint is down, probing with one request at growing intervals.

    It opens after ``threshold`` outage failures in a row across the run (connection errors, timeouts,
    5xx) with no success between them. While open, one probe at a time is admitted, the first
    ``first_probe`` seconds after opening, each later one twice as long after the last failed probe, up
    to ``max_interval``. A success closes it: full speed at once.
    """

    by_server, source, final = False, None, False

    def __init__(
        self, clock: Clock = time.monotonic, *, threshold: int = 8, first_probe: float = 1.0, max_interval: float = 30.0
    ) -> None:
        self.clock, self.threshold, self.first_probe, self.max_interval = clock, threshold, first_probe, max_interval
        self.streak = 0
        self.open_since: float | None = None
        self.probing = False
        self.cause = "unreachable"  # or "failing with HTTP 503": what the last outage failure was
        self.status: int | None = None  # its status, if it was an answer
        self._interval = first_probe
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self.open_since is not None

    def on_success(self) -> None:
        self.streak = 0
        self.open_since, self.probing, self._interval = None, False, self.first_probe

    def on_outage(self, status: int | None = None) -> None:
        now = self.clock()
        self.streak += 1
        self.cause = "unreachable" if status is None else f"failing with HTTP {status}"
        self.status = status
        if self.open_since is None and self.streak >= self.threshold:
            self.open_since, self._next_probe = now, now + self.first_probe
        elif self.open_since is not None and self.probing:  # the probe failed: wait longer for the next one
            self.probing = False
            self._interval = min(self._interval * 2, self.max_interval)
            self._next_probe = now + self._interval

    def on_other_failure(self) -> None:
        """An answer that is not an outage (a 4xx): the endpoint is up, whatever that request's fault."""
        self.on_success()

    def wait(self, charge: float = 0.0, retry: bool = False) -> float:
        """Seconds before the next request may go: 0 when closed; NAP while a probe is out."""
        if self.open_since is None:
            return 0.0
        return NAP if self.probing else max(0.0, self._next_probe - self.clock())

    def on_admit(self) -> None:
        if self.open_since is not None:
            self.probing = True
