"""The router on its own: which deployment each attempt goes to, on an injected clock (no server needed)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.config import Deployment
from asyncbatch.errors import FatalAPIError, StopRun
from asyncbatch.live.router import Route, Router
from tests.helpers import FakeClock, one_route


def routes(clock: FakeClock, *quotas: tuple[str, int, int]) -> list[Route]:
    """One route per (name, rpm, priority), each with its own admission on ``clock``."""
    made = []
    for name, rpm, priority in quotas:
        route = one_route(Admission(None, rpm, clock=clock, wall=clock), clock, name=name)
        route.deployment = Deployment(name=name, endpoint=route.deployment.endpoint, rpm=rpm, priority=priority)
        made.append(route)
    return made


def run(test: Callable[[FakeClock], Coroutine[Any, Any, None]]) -> None:
    clock = FakeClock()
    clock.run(test(clock))


def test_an_attempt_goes_to_the_best_priority_that_can_admit_then_to_the_next() -> None:
    async def test(clock: FakeClock) -> None:
        ptu, paygo = routes(clock, ("provisioned", 60, 0), ("standard", 60, 1))
        router = Router([ptu, paygo], sleep=clock.sleep, on_aside=print, clock=clock)
        first, _ = await router.acquire(10)
        second, _ = await router.acquire(10)  # the provisioned one's request meter is empty now
        assert (first, second) == (ptu, paygo)
        assert clock.slept == []  # neither had to wait

    run(test)


def test_when_no_route_can_admit_the_router_waits_for_the_soonest_on_the_injected_clock() -> None:
    async def test(clock: FakeClock) -> None:
        a, b = routes(clock, ("a", 60, 0), ("b", 120, 0))
        router = Router([a, b], sleep=clock.sleep, on_aside=print, clock=clock)
        taken = [(await router.acquire(10))[0] for _ in range(3)]
        assert set(taken[:2]) == {a, b}
        assert taken[2] is b  # b's meter refills twice as fast as a's
        # waited on the fake clock only, for b's refill (about 1.04 s), not for a's (2 s)
        assert clock.slept and 1000 + 1.0 <= clock.now < 1000 + 1.5

    run(test)


def test_avoiding_the_route_that_just_failed_is_a_preference_never_a_wait() -> None:
    async def test(clock: FakeClock) -> None:
        a, b = routes(clock, ("a", 6000, 0), ("b", 6000, 0))
        router = Router([a, b], sleep=clock.sleep, on_aside=print, clock=clock)
        route, _ = await router.acquire(10, avoid=a)
        assert route is b
        b.aside = StopRun("down")  # only the avoided route is left: the retry goes there, at once
        route, _ = await router.acquire(10, avoid=a)
        assert route is a and clock.slept == []

    run(test)


def test_setting_aside_the_last_route_stops_resumably_or_fails_for_good() -> None:
    clock, told = FakeClock(), list[str]()
    a, b = routes(clock, ("a", 60, 0), ("b", 60, 0))
    router = Router([a, b], sleep=clock.sleep, on_aside=told.append, clock=clock)
    router.set_aside(a, StopRun("quota exhausted"))
    assert router.live == [b] and told == ["deployment a set aside: quota exhausted; 1 still working"]
    with pytest.raises(StopRun, match=r"outage; every deployment was set aside \(a: quota exhausted\)"):
        router.set_aside(b, StopRun("outage"))
    a, b = routes(clock, ("a", 60, 0), ("b", 60, 0))
    router = Router([a, b], sleep=clock.sleep, on_aside=told.append, clock=clock)
    router.set_aside(a, FatalAPIError("authentication", "authentication failed"))
    with pytest.raises(FatalAPIError, match=r"outage; every deployment was set aside \(a: authentication failed\)"):
        router.set_aside(b, StopRun("outage"))
    # one quota exhausted, the other unreachable: the same command goes on later with the first
    a, b = routes(clock, ("a", 60, 0), ("b", 60, 0))
    router = Router([a, b], sleep=clock.sleep, on_aside=told.append, clock=clock)
    router.set_aside(a, StopRun("quota exhausted"))
    with pytest.raises(StopRun, match=r"cannot reach b; every deployment was set aside \(a: quota exhausted\)"):
        router.set_aside(b, FatalAPIError("unreachable", "cannot reach b"))
    a, b = routes(clock, ("a", 60, 0), ("b", 60, 0))  # every one unreachable: the endpoints are wrong
    router = Router([a, b], sleep=clock.sleep, on_aside=told.append, clock=clock)
    router.set_aside(a, FatalAPIError("unreachable", "cannot reach a"))
    with pytest.raises(FatalAPIError, match=r"cannot reach b"):
        router.set_aside(b, FatalAPIError("unreachable", "cannot reach b"))


def test_one_endpoint_is_a_pool_of_one_set_aside_it_stops_the_run_in_its_own_words() -> None:
    clock, told = FakeClock(), list[str]()
    (only,) = routes(clock, ("a", 60, 0))
    router = Router([only], sleep=clock.sleep, on_aside=told.append, clock=clock)
    with pytest.raises(FatalAPIError, match=r"^cannot reach http://a\.test$") as caught:
        router.set_aside(only, FatalAPIError("unreachable", "cannot reach http://a.test", cause="timeout"))
    assert (caught.value.kind, caught.value.cause, told) == ("unreachable", "timeout", [])


def test_a_router_needs_a_route() -> None:
    with pytest.raises(ValueError, match="at least one route"):
        Router([], sleep=FakeClock().sleep, on_aside=print)
