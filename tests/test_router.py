"""The router on its own: which deployment each attempt goes to, on an injected clock (no server needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.config import Deployment, Endpoint
from asyncbatch.errors import FatalAPIError, StopRun
from asyncbatch.live.client import Connection
from asyncbatch.live.router import Route, Router
from tests.helpers import Time


@asynccontextmanager
async def routes(time: Time, *quotas: tuple[str, int, int]) -> AsyncIterator[list[Route]]:
    """One route per (name, rpm, priority), each with its own admission on ``time``."""
    made = []
    for name, rpm, priority in quotas:
        endpoint = Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment=name)
        connection = Connection({"chat": f"http://127.0.0.1:9/{name}"}, {}, concurrency=1, timeout=1)  # type: ignore[dict-item]
        admission = Admission(None, rpm, clock=time, sleep=time.sleep, wall=time)
        made.append(Route(Deployment(name=name, endpoint=endpoint, rpm=rpm, priority=priority), connection, admission))
    try:
        yield made
    finally:
        for route in made:
            await route.connection.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_an_attempt_goes_to_the_best_priority_that_can_admit_then_to_the_next() -> None:
    async def test() -> None:
        time = Time()
        async with routes(time, ("provisioned", 60, 0), ("standard", 60, 1)) as (ptu, paygo):
            router = Router([ptu, paygo], sleep=time.sleep, on_aside=print)
            first, _ = await router.acquire(10)
            second, _ = await router.acquire(10)  # the provisioned one's request meter is empty now
            assert (first, second) == (ptu, paygo)
            assert time.slept == []  # neither had to wait

    run(test)


def test_when_no_route_can_admit_the_router_waits_for_the_soonest_on_the_injected_clock() -> None:
    async def test() -> None:
        time = Time()
        async with routes(time, ("a", 60, 0), ("b", 120, 0)) as (a, b):
            router = Router([a, b], sleep=time.sleep, on_aside=print)
            taken = [(await router.acquire(10))[0] for _ in range(3)]
            assert set(taken[:2]) == {a, b}
            assert taken[2] is b  # b's meter refills twice as fast as a's
            # waited on the fake clock only, for b's refill (about 1.04 s), not for a's (2 s)
            assert time.slept and 1.0 <= time.now < 1.5

    run(test)


def test_avoiding_the_route_that_just_failed_is_a_preference_never_a_wait() -> None:
    async def test() -> None:
        time = Time()
        async with routes(time, ("a", 6000, 0), ("b", 6000, 0)) as (a, b):
            router = Router([a, b], sleep=time.sleep, on_aside=print)
            route, _ = await router.acquire(10, avoid=a)
            assert route is b
            b.aside = "down"  # only the avoided route is left: the retry goes there, at once
            route, _ = await router.acquire(10, avoid=a)
            assert route is a and time.slept == []

    run(test)


def test_setting_aside_the_last_route_stops_resumably_or_fails_for_good() -> None:
    async def test() -> None:
        time = Time()
        told: list[str] = []
        async with routes(time, ("a", 60, 0), ("b", 60, 0)) as (a, b):
            router = Router([a, b], sleep=time.sleep, on_aside=told.append)
            router.set_aside(a, "quota exhausted", resumable=True)
            assert router.live == [b] and told == ["deployment a set aside: quota exhausted; 1 still working"]
            with pytest.raises(StopRun, match="every deployment was set aside"):
                router.set_aside(b, "outage", resumable=True)
        async with routes(time, ("a", 60, 0), ("b", 60, 0)) as (a, b):
            router = Router([a, b], sleep=time.sleep, on_aside=told.append)
            router.set_aside(a, "authentication failed", resumable=False)
            with pytest.raises(FatalAPIError, match="a: authentication failed; b: outage"):
                router.set_aside(b, "outage", resumable=True)

    run(test)


def test_a_router_needs_a_route() -> None:
    with pytest.raises(ValueError, match="at least one route"):
        Router([], sleep=Time().sleep, on_aside=print)
