from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiolimiter import AsyncLimiter

from asyncbatch.limits import (
    AdaptiveLimiter,
    AdaptiveRate,
    Admission,
    CooldownGate,
    clamp_amount,
    header_pause,
    request_meter,
    token_meter,
)


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def admissions(make: Callable[[], AsyncLimiter], amount: float, seconds: float, step: float = 0.002) -> list[float]:
    """Virtual times at which 50 greedy workers get through a meter, on an event loop whose clock we drive.

    aiolimiter reads ``loop.time()`` and wakes waiters with ``loop.call_at``, so
    patching the loop's clock tests the real meter, not a model of it.
    """
    loop = asyncio.new_event_loop()
    now = [0.0]
    loop.time = lambda: now[0]  # type: ignore[method-assign]

    async def body() -> list[float]:
        meter, times = make(), []

        async def worker() -> None:
            while True:
                await meter.acquire(amount)
                times.append(now[0])

        tasks = [asyncio.create_task(worker()) for _ in range(50)]
        while now[0] < seconds:
            now[0] += step
            for _ in range(3):
                await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        return times

    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()


def most_in_any_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_request_meter_never_exceeds_rpm_per_second_and_stays_close_to_it() -> None:
    times = admissions(lambda: request_meter(7200), 1, seconds=5, step=0.0001)
    assert most_in_any_window(times, 1.0) <= 120  # Azure's check: RPM/60 in any one second
    assert len(times) >= 0.95 * 120 * 5


def test_token_meter_bursts_a_sixth_of_a_minute_then_paces_at_the_quota() -> None:
    tpm, amount = 1_200_000, 325
    times = admissions(lambda: token_meter(tpm), amount, seconds=20, step=0.01)
    first_instant = sum(1 for t in times if t <= 0.01)
    assert first_instant * amount <= tpm / 6  # the burst is a 10 s window's worth, not a minute's
    assert first_instant * amount >= 0.95 * tpm / 6
    steady = [t for t in times if 10 <= t < 20]
    assert 0.95 * tpm / 60 * 10 <= len(steady) * amount <= tpm / 60 * 10  # then just under TPM/60 per second


def test_oversized_request_is_clamped_not_refused() -> None:
    meter = token_meter(600)  # capacity 100
    assert clamp_amount(10_000, meter) == 100
    assert clamp_amount(-5, meter) == 0

    async def go() -> None:
        await Admission(tpm=600, rpm=None, gate=CooldownGate()).acquire(10_000)

    asyncio.run(asyncio.wait_for(go(), timeout=5))  # aiolimiter alone would raise ValueError


def test_adaptive_limiter_changes_rate_while_running() -> None:
    def make() -> AsyncLimiter:
        limiter = AdaptiveLimiter(100, 1.0)
        asyncio.get_running_loop().call_at(2.0, limiter.set_rate, 10)
        return limiter

    times = admissions(make, 1, seconds=6)
    assert 190 <= sum(1 for t in times if t < 2.0) <= 310  # ~100/s plus the first second's burst
    assert 35 <= sum(1 for t in times if 2.0 <= t < 6.0) <= 55  # ~10/s after the change, no new burst


def test_gate_is_open_until_closed() -> None:
    t = FakeTime()
    gate = CooldownGate(clock=t.clock, sleep=t.sleep)
    asyncio.run(gate.wait())
    assert t.sleeps == [] and gate.remaining() == 0


def test_gate_waits_until_reset_and_never_shortens() -> None:
    t = FakeTime()
    gate = CooldownGate(clock=t.clock, sleep=t.sleep)
    gate.close_for(3.0)
    gate.close_for(1.0)  # a shorter pause must not cut the longer one
    assert gate.remaining() == 3.0
    asyncio.run(gate.wait())
    assert t.sleeps == [3.0] and t.now == 103.0


def test_gate_rechecks_when_pushed_further_while_waiting() -> None:
    t = FakeTime()
    gate = CooldownGate(clock=t.clock, sleep=t.sleep)

    async def sleep_and_push(seconds: float) -> None:
        await t.sleep(seconds)
        if len(t.sleeps) == 1:
            gate.close_for(2.0)  # another 429 arrived meanwhile

    gate._sleep = sleep_and_push
    gate.close_for(1.0)
    asyncio.run(gate.wait())
    assert t.sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    ("headers", "rate", "pause"),
    [
        ({"x-ratelimit-remaining-tokens": "5000", "x-ratelimit-remaining-requests": "9"}, 100.0, 0.0),
        ({"x-ratelimit-remaining-tokens": "100"}, 100.0, 2.0),  # 200 short at 100/s
        ({"x-ratelimit-remaining-tokens": "100"}, None, 0.25),  # rate unknown: a short pause
        ({"x-ratelimit-remaining-requests": "0"}, 100.0, 0.1),
        ({"x-ratelimit-remaining-tokens": "0"}, 1.0, 5.0),  # capped
        ({"x-ratelimit-remaining-tokens": "soon"}, 1.0, 0.0),
        ({}, 1.0, 0.0),
    ],
)
def test_header_pause_only_when_the_next_request_would_be_refused(
    headers: dict[str, str], rate: float | None, pause: float
) -> None:
    assert header_pause(headers, 300, rate) == pause


def test_adaptive_first_429_halves_the_observed_rate() -> None:
    t = FakeTime()
    rate = AdaptiveRate(t.clock)
    assert rate.tick() is None  # unlimited until the server pushes back
    for _ in range(10):
        rate.on_admit(1000)
    t.now += 2.0
    rate.on_throttle()
    assert rate.rate == pytest.approx(10_000 / 2.0 / 2)


def test_adaptive_cuts_at_most_once_per_hold_then_grows_after_quiet() -> None:
    t = FakeTime()
    rate = AdaptiveRate(t.clock, decrease=0.5, increase=0.1, hold=0.5)
    rate.on_admit(4000)
    t.now += 1.0
    rate.on_throttle()
    assert rate.rate == 2000
    rate.on_throttle()  # same burst: ignored
    assert rate.rate == 2000
    t.now += 0.5
    rate.on_throttle()
    assert rate.rate == 1000
    t.now += 1.9
    assert rate.tick() == 1000  # not quiet for 2 s yet
    t.now += 0.1
    assert rate.tick() == pytest.approx(1000 * (1 + 0.1 * 2.0))


def test_adaptive_eases_off_when_headers_say_the_budget_is_nearly_gone() -> None:
    t = FakeTime()
    rate = AdaptiveRate(t.clock, ease=0.9, hold=0.5)
    rate.on_admit(1000)
    t.now += 1.0
    rate.on_throttle()
    start = rate.rate
    assert start is not None
    t.now += 0.5
    rate.on_headers({"x-ratelimit-remaining-tokens": "5000"}, 300)
    assert rate.rate == start
    rate.on_headers({"x-ratelimit-remaining-tokens": "400"}, 300)
    assert rate.rate == pytest.approx(start * 0.9)


def test_admission_feeds_throttles_into_the_gate_and_the_adaptive_rate() -> None:
    t = FakeTime()
    admission = Admission(None, None, CooldownGate(t.clock, t.sleep), t.clock)
    asyncio.run(admission.acquire(500))
    t.now += 1.0
    admission.on_throttle(1.5)
    assert admission.gate.remaining() == 1.5
    assert admission.learned_tpm == pytest.approx(500 / 1.0 / 2 * 60)
    fixed = Admission(60_000, None, CooldownGate(t.clock, t.sleep), t.clock)
    fixed.on_reply({"x-ratelimit-remaining-tokens": "0"}, 98)
    assert fixed.gate.remaining() == pytest.approx(98 / (0.98 * 1000))
    assert fixed.learned_tpm is None


def test_adaptive_grows_faster_while_the_headers_show_plenty_of_budget() -> None:
    def grown(remaining: str) -> float:
        t = FakeTime()
        rate = AdaptiveRate(t.clock, increase=0.05)
        rate.on_admit(2000)
        t.now += 1.0
        rate.on_throttle()
        start = rate.rate
        assert start == 1000
        rate.on_headers({"x-ratelimit-remaining-tokens": "10000", "x-ratelimit-remaining-requests": "100"}, 10)
        rate.on_headers({"x-ratelimit-remaining-tokens": remaining, "x-ratelimit-remaining-requests": "90"}, 10)
        t.now += 3.0
        return (rate.tick() or 0) / start

    assert grown("9000") == pytest.approx(1 + 4 * 0.05 * 3.0)  # 90% of the budget left: catch up fast
    assert grown("1000") == pytest.approx(1 + 0.05 * 3.0)  # 10% left: the ordinary pace
