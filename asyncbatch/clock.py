"""Time, injected: every policy takes a ``Clock`` and a ``Sleep``, so tests can drive time themselves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Clock = Callable[[], float]  # seconds, monotonic (time.monotonic)
Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's fake
NAP = 0.25  # the longest a waiting admission sleeps before looking again (rates and the gate change)
