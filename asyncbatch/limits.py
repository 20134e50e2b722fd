"""Client-side admission: TPM and RPM meters plus a shared cool-down after a 429.

Azure checks RPM over 1 s windows and TPM over about 10 s, so the meters are
shaped like that instead of releasing a whole minute's quota at start-up:

* requests: a bucket of RPM/600 (at least 1) refilled at RPM/60 per second;
* tokens:   a bucket of TPM/6 refilled at TPM/60 per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def token_meter(tpm: int) -> AsyncLimiter:
    """At most a sixth of a minute's tokens at once, refilled at TPM/60 per second."""
    return AsyncLimiter(tpm / 6, 10.0)


def request_meter(rpm: int) -> AsyncLimiter:
    """Requests spread across each second: a burst of RPM/600 (at least one)."""
    burst = max(1.0, rpm / 600)
    return AsyncLimiter(burst, burst * 60 / rpm)


def clamp_amount(amount: float, meter: AsyncLimiter) -> float:
    """aiolimiter raises for amount > max_rate; a larger request waits for a full bucket."""
    return min(max(amount, 0.0), meter.max_rate)


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


class Admission:
    """What every attempt passes before it is sent."""

    def __init__(self, tpm: int | None, rpm: int | None, gate: CooldownGate) -> None:
        self.tokens = token_meter(tpm) if tpm else None
        self.requests = request_meter(rpm) if rpm else None
        self.gate = gate

    async def acquire(self, estimate: int) -> None:
        await self.gate.wait()
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(clamp_amount(estimate, self.tokens))
