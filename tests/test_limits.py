from __future__ import annotations

import asyncio

from asyncbatch.limits import Admission, CooldownGate, clamp_amount, request_meter, token_meter


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


def test_meters_release_at_most_a_window_not_a_minute() -> None:
    tokens = token_meter(1_200_000)
    assert tokens.max_rate == 200_000 and tokens.time_period == 10.0  # a sixth of a minute, 10 s window
    requests = request_meter(7200)
    assert requests.max_rate == 12 and abs(requests.max_rate / requests.time_period - 120) < 1e-9  # 120/s
    small = request_meter(60)
    assert small.max_rate == 1 and small.time_period == 1.0


def test_oversized_request_is_clamped_not_refused() -> None:
    meter = token_meter(600)  # capacity 100
    assert clamp_amount(10_000, meter) == 100
    assert clamp_amount(-5, meter) == 0

    async def go() -> None:
        await Admission(tpm=600, rpm=None, gate=CooldownGate()).acquire(10_000)

    asyncio.run(asyncio.wait_for(go(), timeout=5))  # aiolimiter alone would raise ValueError
