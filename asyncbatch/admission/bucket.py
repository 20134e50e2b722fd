"""Token buckets shaped like Azure's windows: requests over 1 s, tokens over about 10 s."""

from __future__ import annotations

import time

from ..clock import Clock

MARGIN = 0.98  # stay just under the quota: client and server clocks never agree exactly
# Requests leave evenly spaced, so the only error is arrival jitter: 1% of a second's requests
# is 10 ms of it, many times what one region's network adds.
REQUEST_MARGIN = 0.99
# A timer fires late on a busy event loop (uvloop's resolution alone is 1 ms, an eighth of the gap between
# requests at 7,200 RPM). A bucket of one request would drop what accrued meanwhile, a little on every
# request; up to this much lateness is kept instead, at most one request's worth.
LATE = 0.02


class Bucket:
    """A token bucket: holds at most ``capacity``, refills at ``rate`` per second; starts full.

    A request larger than the bucket waits for a full bucket instead of failing.

    :param clock: monotonic seconds; injected so tests need no sleeping.
    """

    def __init__(self, capacity: float, rate: float, clock: Clock = time.monotonic) -> None:
        self.capacity, self.rate, self.clock = capacity, rate, clock
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

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0 if now)."""
        self._refill()
        deficit = min(amount, self.capacity) - self.level
        return deficit / self.rate if deficit > 1e-6 else 0.0  # below that: rounding, not a shortfall

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


def request_bucket(rpm: float, clock: Clock = time.monotonic) -> Bucket:
    """One request at a time, evenly spaced, so no 1 s window sees more than RPM/60.

    A bucket of ``capacity`` admits up to ``capacity + rate`` in any second: the rate leaves room for it.
    """
    allowed = REQUEST_MARGIN * rpm / 60
    capacity = 1 + min(1.0, allowed * LATE)
    if allowed - capacity < rpm / 120:  # a request every second or more: a late timer costs nothing
        return Bucket(1, max(allowed - 1, rpm / 120), clock)
    return Bucket(capacity, allowed - capacity, clock)
