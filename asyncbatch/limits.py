"""Client-side admission: TPM and RPM meters, a shared cool-down, and an adaptive rate.

Azure checks RPM over 1 s windows and TPM over about 10 s, so the meters are
shaped like that instead of releasing a whole minute's quota at start-up:

* requests: one at a time, spread evenly at just under RPM/60 per second;
* tokens:   a bucket of TPM/6 (the 10 s window) refilled at just under TPM/60 per second.

With no quota given, ``AdaptiveRate`` learns the token rate from 429s and the
``x-ratelimit-remaining-*`` headers (AIMD), and ``AdaptiveLimiter`` enforces it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from aiolimiter import AsyncLimiter

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MARGIN = 0.98  # stay just under the quota: client and server clocks never agree exactly
WINDOW = 10.0  # seconds over which Azure checks TPM


def token_meter(tpm: int) -> AsyncLimiter:
    """At most a sixth of a minute's tokens at once, refilled at just under TPM/60 per second."""
    return AsyncLimiter(tpm / 6, tpm / 6 / (MARGIN * tpm / 60))


def request_meter(rpm: int) -> AsyncLimiter:
    """One request at a time, evenly spaced, so no 1 s window sees more than RPM/60."""
    per_second = MARGIN * rpm / 60 - 1  # a bucket of 1 admits up to 1 + rate in any second
    return AsyncLimiter(1, 1 / max(per_second, rpm / 120))


def clamp_amount(amount: float, meter: AsyncLimiter) -> float:
    """aiolimiter raises for amount > max_rate; a larger request waits for a full bucket."""
    return min(max(amount, 0.0), meter.max_rate)


def header_pause(headers: Mapping[str, str], estimate: int, token_rate: float | None) -> float:
    """Seconds to hold admission when the server says its budget is about to run out.

    Only an imminent 429 pauses: fewer tokens left than the next request needs,
    or no requests left in the current second.
    """
    tokens = _int_header(headers, "x-ratelimit-remaining-tokens")
    requests = _int_header(headers, "x-ratelimit-remaining-requests")
    pause = 0.0
    if tokens is not None and tokens < estimate:
        pause = (estimate - tokens) / token_rate if token_rate else 0.25
    if requests is not None and requests <= 0:
        pause = max(pause, 0.1)
    return min(pause, 5.0)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class CooldownGate:
    """After a 429, every worker waits until the server's reset before sending again.

    :param clock: monotonic seconds; injected so tests need no sleeping.
    :param sleep: how to wait; injected likewise.
    """

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0

    def close_for(self, seconds: float) -> None:
        """Hold admission for ``seconds`` from now (never shortens an existing pause)."""
        self._until = max(self._until, self._clock() + seconds)

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        # Re-check after each sleep: another 429 may have pushed the reset further out.
        while (left := self.remaining()) > 0:
            await self._sleep(left)


class AdaptiveRate:
    """AIMD on the admitted token rate, for when the quota is not given.

    Starts unlimited (bounded by the concurrency). The first 429 sets the rate
    to half of what was admitted over the last window (like TCP's slow start
    ending); each later 429 cuts it by ``decrease``, and a response reporting
    fewer than two requests' worth of tokens left cuts it by ``ease``, so the
    rate settles before the server has to refuse. One burst yields many 429s,
    so cuts happen at most once per ``hold`` seconds. After two quiet seconds,
    the rate grows by ``increase`` per second, or four times that while the
    remaining-budget headers say at least half of the budget is unused.

    :param clock: monotonic seconds; injected so the policy is tested without sleeping.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        decrease: float = 0.75,
        ease: float = 0.95,
        increase: float = 0.04,
        hold: float = 0.5,
        floor: float = 50.0,
    ) -> None:
        self.clock = clock
        self.decrease, self.ease, self.increase, self.hold, self.floor = decrease, ease, increase, hold, floor
        self.rate: float | None = None  # tokens per second; None = not learned yet
        self._admitted: deque[tuple[float, int]] = deque()
        self._admitted_sum = 0
        self._last_cut = self._last_grow = self._last_trouble = clock()
        self._most_left: dict[str, int] = {}  # highest remaining-budget header seen, per header
        self._plenty = False  # the last response said at least half the budget was left

    def on_admit(self, tokens: int) -> None:
        now = self.clock()
        self._admitted.append((now, tokens))
        self._admitted_sum += tokens
        while self._admitted and self._admitted[0][0] < now - WINDOW:
            self._admitted_sum -= self._admitted.popleft()[1]

    def observed_rate(self) -> float:
        """Tokens per second admitted over the last window."""
        if not self._admitted:
            return 0.0
        span = max(1.0, self.clock() - self._admitted[0][0])
        return self._admitted_sum / span

    def on_throttle(self) -> None:
        if self.rate is None:
            self._set(max(self.floor, self.observed_rate() / 2))
        else:
            self._cut(self.decrease)

    def on_headers(self, headers: Mapping[str, str], estimate: int) -> None:
        tokens = _int_header(headers, "x-ratelimit-remaining-tokens")
        if tokens is not None and tokens < 2 * estimate and self.rate is not None:
            self._cut(self.ease)
        plenty = None
        for name in ("x-ratelimit-remaining-tokens", "x-ratelimit-remaining-requests"):
            if (left := _int_header(headers, name)) is not None:
                most = self._most_left[name] = max(left, self._most_left.get(name, 0))
                plenty = (plenty is not False) and left * 2 >= most
        self._plenty = bool(plenty)

    def _cut(self, factor: float) -> None:
        now = self.clock()
        self._last_trouble = now
        if self.rate is not None and now - self._last_cut >= self.hold:
            self._set(max(self.floor, self.rate * factor))

    def _set(self, rate: float) -> None:
        self.rate = rate
        self._last_cut = self._last_grow = self._last_trouble = self.clock()

    def tick(self) -> float | None:
        """Apply the additive increase due since the last growth; return the rate."""
        now = self.clock()
        if self.rate is not None and now - self._last_trouble >= 2.0 and now - self._last_grow >= 1.0:
            boost = 4 if self._plenty else 1  # the server says half its budget is unused: catch up faster
            self.rate *= 1 + boost * self.increase * (now - self._last_grow)
            self._last_grow = now
        return self.rate


class AdaptiveLimiter(AsyncLimiter):
    """An aiolimiter bucket whose rate can change while it runs (one second's burst)."""

    def set_rate(self, per_second: float) -> None:
        # aiolimiter has no public setter: leak at the old rate up to now, then switch.
        # A bucket fuller than the new capacity is just "full": otherwise a cut would
        # stall admission until the old level drained at the new, slower rate.
        self._leak()
        self.max_rate = max(per_second, 1.0)
        self.time_period = 1.0
        self._rate_per_sec = self.max_rate
        self._level = min(self._level, self.max_rate)
        self._wake_next()


class Admission:
    """What every attempt passes before it is sent."""

    def __init__(self, tpm: int | None, rpm: int | None, gate: CooldownGate, clock: Clock = time.monotonic) -> None:
        self.tokens = token_meter(tpm) if tpm else None
        self.requests = request_meter(rpm) if rpm else None
        self.gate = gate
        self.adaptive = AdaptiveRate(clock) if tpm is None and rpm is None else None
        self.learned: AdaptiveLimiter | None = None
        self.token_rate = MARGIN * tpm / 60 if tpm else None

    async def acquire(self, estimate: int) -> None:
        await self.gate.wait()
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(clamp_amount(estimate, self.tokens))
        if self.adaptive is not None:
            await self._acquire_adaptive(estimate)

    async def _acquire_adaptive(self, estimate: int) -> None:
        assert self.adaptive is not None
        rate = self.adaptive.tick()
        if rate is not None:
            if self.learned is None:
                self.learned = AdaptiveLimiter(rate, 1.0)
            elif abs(self.learned.max_rate - rate) > 0.01 * rate:
                self.learned.set_rate(rate)
            await self.learned.acquire(clamp_amount(estimate, self.learned))
        self.adaptive.on_admit(estimate)

    def on_reply(self, headers: Mapping[str, str], estimate: int) -> None:
        """Feed a response's rate-limit headers back into admission."""
        rate = self.token_rate if self.adaptive is None else self.adaptive.rate
        if pause := header_pause(headers, estimate, rate):
            self.gate.close_for(pause)
        if self.adaptive is not None:
            self.adaptive.on_headers(headers, estimate)

    def on_throttle(self, retry_after: float) -> None:
        self.gate.close_for(retry_after)
        if self.adaptive is not None:
            self.adaptive.on_throttle()

    @property
    def learned_tpm(self) -> float | None:
        """The adaptive rate in tokens per minute, for the progress display."""
        rate = self.adaptive.rate if self.adaptive is not None else None
        return rate * 60 if rate is not None else None
