"""429s with no hint, judged by what the server admitted; retries first; --max-wait bounds every wait.

Concurrent workers run on the fake clock's event loop (``helpers.FakeClock.run``): admission's clock
is the loop's, which jumps from timer to timer, so minutes of a run take milliseconds and nothing
sleeps. Each server here is a few lines of its own behaviour, not the client's policy.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.admission.turn import NEW, RETRY, Turn
from asyncbatch.config import Patience
from asyncbatch.errors import RateLimited, StopRun
from asyncbatch.live.router import Router

from .helpers import FakeClock, admitting

REFUSED = RateLimited("http_429", "Too many requests.", status=429)  # no retry-after, no rate-limit headers


@dataclass
class Books:
    """What the server saw: requests, refusals, and the line of each request in arrival order."""

    requests: int = 0
    refused: int = 0
    lines: list[int] = field(default_factory=list)


async def run_lines(
    router: Router,
    sizes: list[float],
    refuses: Callable[[int, int, float], bool],
    *,
    concurrency: int,
    latency: float,
) -> Books:
    """Every line through ``router``'s admission as attempts do: a 429 is answered at once and the line asks again
    (a retry); an admitted request is answered ``latency`` later. ``refuses(line, attempt, size)`` is the
    server's verdict on arrival."""
    books, queue = Books(), list(range(len(sizes)))

    async def line(i: int) -> None:
        for attempt in range(1000):
            route, ticket = await router.acquire(sizes[i], retry=attempt > 0)
            admission = route.admission
            books.requests += 1
            books.lines.append(i)
            if refuses(i, attempt, sizes[i]):
                books.refused += 1
                await asyncio.sleep(0.002)
                admission.on_failure(REFUSED, ticket)
                continue
            await asyncio.sleep(latency)
            admission.on_reply({}, ticket)
            return

    async def worker() -> None:
        while queue:
            await line(queue.pop(0))

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return books


def test_a_first_try_refused_without_a_hint_then_admitted_costs_one_refusal_a_line_and_no_window() -> None:
    """A server that refuses each request's first try with a bare 429 and admits the retry is shedding
    load, not out of budget: 40 answers in a minute do not make "the per-minute window is used up"."""

    clock = FakeClock()

    async def main() -> tuple[Books, float, Admission]:
        wall_start = 1_000_000 * 60 + 17.0
        admission = Admission(
            None,
            None,
            Patience(max_wait=20),
            concurrency=20,
            clock=clock,
            wall=lambda: wall_start + clock.now,
            rng=random.Random(1),
        )
        start, router = clock.now, admitting(admission, clock)
        books = await run_lines(router, [60.0] * 300, lambda i, n, size: n == 0, concurrency=20, latency=0.05)
        return books, clock.now - start, admission

    books, span, admission = clock.run(main())
    assert books.requests == 600 and books.refused == 300  # every line refused once, admitted at its first retry
    assert span < 60  # on the injected clock: the bound, with --max-wait 20 never reached
    assert not admission.windows.detected
    assert admission.learned_tpm is None  # nothing here is a limit


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_gateway_with_fixed_minute_windows_is_filled_with_few_refusals_and_its_budget_learned(seed: int) -> None:
    """A gateway counting 400,000 tokens per wall-clock minute, refusing the rest with bare 429s; 2,000
    requests of varied size at concurrency 200, 300 ms answers, starting 15 s into a minute."""
    budget, sizes = 400_000, [float(110 + (i * 7919) % 700) for i in range(2000)]
    used: dict[int, float] = {}

    clock = FakeClock()

    async def main() -> tuple[Books, float, Admission, float]:
        wall_start = 1_000_000 * 60 + 15.0 - clock.now

        def refuses(i: int, attempt: int, size: float) -> bool:
            window = int((wall_start + clock.now) // 60)
            if used.get(window, 0) and used[window] + size > budget:
                return True
            used[window] = used.get(window, 0) + size
            return False

        admission = Admission(
            None,
            None,
            Patience(),
            concurrency=200,
            clock=clock,
            wall=lambda: wall_start + clock.now,
            rng=random.Random(seed),
        )
        start = clock.now
        books = await run_lines(admitting(admission, clock), sizes, refuses, concurrency=200, latency=0.3)
        return books, clock.now - start, admission, start + wall_start

    books, span, admission, started = clock.run(main())
    turns = math.ceil(sum(sizes) / budget) - 1
    floor = 60 - started % 60 + 60 * (turns - 1) + 0.3  # the minute turns the work needs, then one answer
    assert turns >= 2 and span <= 1.10 * floor
    assert books.refused <= 0.03 * books.requests
    assert admission.windows.detected
    assert admission.learned_tpm is not None and budget / 1.5 <= admission.learned_tpm <= budget


def test_max_wait_bounds_every_wait_of_the_server_however_the_holds_add_up_and_however_late_the_loop() -> None:
    """Each 429 asks for 15 s (under --max-wait 20) and a request already on the wire brings the next, so the
    holds add up; and the loop is loaded: every sleep lasts three times what was asked."""
    clock = FakeClock(100.0)

    async def loaded_sleep(seconds: float) -> None:
        clock.now += 3 * seconds
        await asyncio.sleep(0)

    admission = Admission(None, None, Patience(max_wait=20), clock=clock)
    admission.on_throttle(15.0)  # the first 429 closes the gate for 15 s

    async def main() -> None:
        async def refusals() -> None:  # requests on the wire: one answered, the next refused for 15 s more
            while True:
                await asyncio.sleep(0)
                if admission.gate.remaining() < 5:
                    admission.on_reply({}, admission.calibration.admit(1))  # not "every request refused"
                    admission.on_throttle(15.0)

        task = asyncio.ensure_future(refusals())
        try:
            await admitting(admission, clock, sleep=loaded_sleep).acquire(100)
        finally:
            task.cancel()

    with pytest.raises(StopRun, match=r"held for .* longer than max_wait"):
        asyncio.run(main())
    assert 20 < clock.now - 100 <= 20 + 3 * 2.0  # stopped at the first look past --max-wait (a tenth of it, loaded)


def test_retries_go_first_and_a_new_request_steps_aside_for_one_during_a_round() -> None:
    clock = FakeClock()

    async def main() -> list[str]:
        admission = Admission(None, None, clock=clock, rng=random.Random(3))
        router, order = admitting(admission, clock), []
        refused = admission.calibration.admit(10)
        admission.on_failure(REFUSED, refused)  # a round: the gate closes for a moment

        async def ask(name: str, retry: bool) -> None:
            _, ticket = await router.acquire(10, retry=retry)
            order.append(name)
            await asyncio.sleep(0.05)
            admission.on_reply({}, ticket)

        new = asyncio.ensure_future(ask("new", False))  # first in line, and holds the turn
        await asyncio.sleep(0.01)
        await ask("retry", True)  # the refused request asks again: it is the round's probe
        await new
        return order

    assert clock.run(main()) == ["retry", "new"]


def test_the_turn_passes_on_when_its_waiter_is_cancelled() -> None:
    async def main() -> list[int]:
        turn, got = Turn(), []
        await turn.wait(NEW, turn.ticket())  # held by a first caller (arrival 0)

        async def waiter(priority: int) -> None:
            seq = turn.ticket()
            await turn.wait(priority, seq)
            got.append(seq)
            turn.release(seq)

        cancelled = asyncio.ensure_future(waiter(RETRY))
        later = asyncio.ensure_future(waiter(NEW))
        retry = asyncio.ensure_future(waiter(RETRY))
        await asyncio.sleep(0)
        cancelled.cancel()
        turn.release(0)
        await asyncio.gather(later, retry, return_exceptions=True)
        return got

    assert FakeClock().run(main()) == [3, 2]  # the waiting retry first, then the new one; the cancelled one never
