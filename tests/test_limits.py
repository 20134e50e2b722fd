"""Admission policy under a fake clock: meters, the cool-down gate, the adaptive rate. Nothing sleeps."""

from __future__ import annotations

import asyncio
import random

import pytest

from asyncbatch.admission.adaptive import AdaptiveRate
from asyncbatch.admission.admission import Admission, header_pause
from asyncbatch.admission.gates import Bucket, CooldownGate, request_bucket, token_bucket
from asyncbatch.errors import RateLimited
from asyncbatch.protocol import int_header, parse_retry_after
from tests.helpers import FakeClock, admitting


def admissions(t: FakeClock, admission: Admission, amount: float, until: float, workers: int = 50) -> list[float]:
    """Virtual times at which greedy workers get through ``admission`` before ``until``."""
    times: list[float] = []
    router = admitting(admission, t)

    async def worker() -> None:
        while t.now < until:
            await router.acquire(amount)
            if t.now < until:
                times.append(t.now)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())

    asyncio.run(main())
    return times


def most_in_any_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_request_meter_never_exceeds_rpm_per_second_and_stays_close_to_it() -> None:
    t = FakeClock(100.0)
    admission = Admission(None, 7200, clock=t)
    times = admissions(t, admission, 1, until=t.now + 5)
    assert most_in_any_window(times, 1.0) <= 120  # Azure's check: RPM/60 in any one second
    assert len(times) >= 0.95 * 120 * 5


def test_token_meter_bursts_a_sixth_of_a_minute_then_paces_at_the_quota() -> None:
    t = FakeClock(100.0)
    tpm, amount, start = 1_200_000, 325, t.now
    times = admissions(t, Admission(tpm, None, clock=t), amount, until=start + 20)
    first_instant = sum(1 for x in times if x <= start + 0.01)
    assert first_instant * amount <= tpm / 6  # the burst is a 10 s window's worth, not a minute's
    assert first_instant * amount >= 0.95 * tpm / 6
    steady = [x for x in times if start + 10 <= x < start + 20]
    assert 0.95 * tpm / 60 * 10 <= len(steady) * amount <= tpm / 60 * 10  # then just under TPM/60 per second


def test_oversized_request_waits_for_a_full_bucket_instead_of_failing() -> None:
    t = FakeClock(100.0)
    admission = Admission(600, None, clock=t)  # capacity 100
    asyncio.run(admitting(admission, t).acquire(10_000))
    assert t.slept == []  # full at the start
    asyncio.run(admitting(admission, t).acquire(10_000))
    assert t.now == pytest.approx(100 + 100 / (0.98 * 10))  # waited for a full bucket, then went


def test_bucket_rate_change_applies_to_what_is_already_waiting() -> None:
    t = FakeClock(100.0)
    bucket = Bucket(1000, 1000, t)
    bucket.take(1000)
    assert bucket.wait_for(322) == pytest.approx(0.322)
    bucket.set_rate(50, 50)  # a cut below what the waiter asked for: it waits for a full (smaller) bucket
    assert bucket.wait_for(322) == pytest.approx(1.0)


def test_a_rate_cut_below_a_queued_request_never_stalls_it() -> None:
    """The defect of the aiolimiter-based limiter: a waiter larger than the new bucket waited forever."""
    t = FakeClock(100.0)
    admission = Admission(None, None, clock=t)
    asyncio.run(admitting(admission, t).acquire(2000))
    t.now += 1.0
    admission.on_throttle(0.0)  # learn a rate: half of 2000 tokens/s = 1000
    admission.adaptive.rate = 1000.0  # type: ignore[union-attr]
    asyncio.run(admitting(admission, t).acquire(1000))  # drain the learned bucket
    t.at(t.now + 0.1, lambda: setattr(admission.adaptive, "rate", 50.0))
    asyncio.run(asyncio.wait_for(admitting(admission, t).acquire(322), timeout=5))
    assert t.now - 100 < 10  # admitted after about a second at 50/s, not never


def test_nothing_is_admitted_while_the_gate_is_closed_even_a_request_already_waiting_in_a_meter() -> None:
    t = FakeClock(100.0)
    admission = Admission(6000, None, clock=t)  # 1000 tokens, refilled at 98/s
    asyncio.run(admitting(admission, t).acquire(1000))  # the bucket is empty now
    start = t.now
    t.at(start + 1.0, lambda: admission.on_throttle(10.0))  # a 429 while the next request waits for tokens
    asyncio.run(admitting(admission, t).acquire(500))  # would have been admitted at start + 5.1 s
    assert t.now >= start + 11.0
    assert admission.gate.remaining() == 0


def test_gate_is_open_until_closed_and_never_shortens() -> None:
    t = FakeClock(100.0)
    gate = CooldownGate(t)
    assert gate.remaining() == 0
    gate.close_for(3.0)
    gate.close_for(1.0)  # a shorter pause must not cut the longer one
    assert gate.remaining() == 3.0
    t.now += 3.0
    assert gate.remaining() == 0


def test_429s_without_any_hint_pause_with_jitter_doubling_until_a_success() -> None:
    t = FakeClock(100.0)
    wall = 1_000_000 * 60 + 5.0  # 5 s into a minute: the next boundary is far
    admission = Admission(None, None, clock=t, wall=lambda: wall, rng=random.Random(1))
    pauses = []
    for _ in range(6):
        pauses.append(admission.on_throttle(None))
        assert admission.on_throttle(None) == pytest.approx(
            pauses[-1]
        )  # sent before the pause: the same round, no escalation
        t.now += pauses[-1]
    for n, pause in enumerate(pauses):
        base = min(8.0, 0.5 * 2**n)
        assert 0.75 * base <= pause <= 1.25 * base
    assert len(set(pauses)) == 6  # jittered: workers do not all come back at once
    admission.on_reply({}, admission.calibration.admit(10))
    small = admission.on_throttle(None)
    assert 0.375 <= small <= 0.625  # the server answered: start small again
    t.now += small
    wall = 1_000_000 * 60 + 59.5
    assert admission.on_throttle(None) == pytest.approx(0.7)  # never past a minute's turn: always worth a try


def _window_used_up(admission: Admission, t: FakeClock, admitted: int) -> None:
    """A gateway's fixed window: ``admitted`` requests of 100 go through, then every probe is refused with no
    hint until the wall-clock minute turns, and the first one after it is admitted (``t.clock`` is the wall too)."""
    for _ in range(admitted):
        admission.on_reply({}, admission.take(100))
    window = int(t.now // 60)
    while int(t.now // 60) == window:
        admission.on_failure(RateLimited("http_429", "busy", status=429), admission.take(100))
        t.now += admission.gate.remaining()
    admission.on_reply({}, admission.take(100))


def test_fixed_minute_windows_are_noticed_from_two_windows_then_waited_out_instead_of_probed() -> None:
    t = FakeClock(100.0)
    t.now = 1_000_000 * 60 + 40.0  # 40 s into a wall-clock minute
    admission = Admission(None, None, clock=t, wall=t, rng=random.Random(2))
    _window_used_up(admission, t, 10)
    assert not admission.windows.detected  # one window refusing until the minute turned could be chance
    assert admission.learned_tpm is None  # and a rate guessed from bare refusals is no limit to show yet
    _window_used_up(admission, t, 10)  # the next window, used up at the same budget: a limit
    assert admission.windows.detected
    assert admission.learned_tpm == pytest.approx(1100)  # what a window admitted, in the client's estimate
    t.now += 5.0
    for _ in range(5):
        admission.on_reply({}, admission.take(100))  # half the budget used
    assert admission.on_throttle(None) == pytest.approx(60 - t.now % 60 + 0.2)  # the window's turn, no probing
    assert admission.status() is not None and "minute" in admission.status()


def test_a_window_used_up_short_of_its_budget_lowers_it() -> None:
    """Another client has come to share the gateway: this window refused after 700 of the 1,100 it used to take."""
    t = FakeClock(100.0)
    t.now = 1_000_000 * 60 + 40.0
    admission = Admission(None, None, clock=t, wall=t, rng=random.Random(7))
    _window_used_up(admission, t, 10)
    _window_used_up(admission, t, 10)
    for _ in range(6):
        admission.on_reply({}, admission.take(100))
    admission.on_failure(RateLimited("http_429", "busy", status=429), admission.take(100))
    assert admission.gate.remaining() > 50  # the window's turn
    assert admission.learned_tpm == pytest.approx(700)  # the probe and six more: what this window took
    t.now += admission.gate.remaining()
    assert admission.readiness(100)[0] == 0
    for _ in range(7):
        admission.take(100)
    assert admission.readiness(100)[0] > 50  # the next window is paced inside the lower budget


def test_a_hintless_429_well_short_of_the_windows_budget_is_not_the_window() -> None:
    """Judged by what the window admitted: a refusal after a tenth of the budget is not "the window is used up"."""
    t = FakeClock(100.0)
    t.now = 1_000_000 * 60 + 40.0
    admission = Admission(None, None, clock=t, wall=t, rng=random.Random(5))
    _window_used_up(admission, t, 20)
    _window_used_up(admission, t, 20)
    assert admission.windows.detected
    t.now += 1.0
    pause = admission.on_failure(RateLimited("http_429", "busy", status=429), admission.take(100))
    assert pause and admission.gate.remaining() < 1  # a short pause of its own, not the 58 s to the minute
    t.now += admission.gate.remaining()
    admission.on_reply({}, admission.take(100))  # and the window admitted again after refusing: not windows
    assert not admission.windows.detected


def test_once_fixed_windows_are_known_each_window_is_paced_inside_its_budget() -> None:
    t = FakeClock(100.0)
    t.now = 1_000_000 * 60 + 40.0
    admission = Admission(None, None, clock=t, wall=t, rng=random.Random(6))
    _window_used_up(admission, t, 10)
    _window_used_up(admission, t, 10)
    for _ in range(10):  # the window's first request (the probe) and ten more: 1,100, what each window admitted
        t.now += 0.01
        assert admission.readiness(100)[0] == 0
        admission.take(100)
    assert admission.readiness(100)[0] == pytest.approx(60 - t.now % 60 + 0.2)  # the budget is used: the next minute
    assert admission.readiness(100)[1]  # the server's hold, which --max-wait bounds


def test_against_fixed_minute_windows_the_learned_limit_is_what_a_window_admitted_never_more() -> None:
    """A gateway admitting 20,000 tokens per wall-clock minute and refusing without a word past that."""
    t = FakeClock(100.0)
    t.now = 60 * 1_000 + 15.0  # the run starts 15 s into a minute; the wall clock is the same clock here
    notices: list[str | None] = []

    async def sleep(seconds: float) -> None:  # each look during a wait for the window: does it name it?
        if admission.windows.detected and (admission.gate.remaining() or admission.windows.wait(500)) > 2:
            notices.append(admission.status())
        await t.sleep(seconds)

    admission = Admission(None, None, clock=t, wall=t, rng=random.Random(4))
    router = admitting(admission, t, sleep=sleep)
    window, used, refused, again = -1, 0, 0, False

    async def main() -> None:
        nonlocal window, used, refused, again
        while t.now < 60 * 1_005:  # five minutes
            _, ticket = await router.acquire(500, retry=again)  # a refused request asks again
            if int(t.now // 60) != window:
                window, used = int(t.now // 60), 0
            again = used + 500 > 20_000
            if not again:
                used += 500
                admission.on_reply({}, ticket)
            else:
                refused += 1
                admission.on_failure(RateLimited("http_429", "busy", status=429), ticket)
            await t.sleep(0.05)  # each answer takes 50 ms

    asyncio.run(main())
    assert admission.windows.detected
    assert admission.learned_tpm is not None and 20_000 / 1.5 <= admission.learned_tpm <= 20_000
    assert notices and all(n and "minute" in n for n in notices), "each wait for a window is named"
    assert refused <= 2 * 10  # one probe per pause until the windows are known, none after: at most ~10 a window


def test_recoveries_away_from_the_minute_are_not_taken_for_fixed_windows() -> None:
    t = FakeClock(100.0)
    wall = [1_000_000 * 60 + 10.0]
    admission = Admission(None, None, clock=t, wall=lambda: wall[0], rng=random.Random(3))
    for _ in range(5):
        pause = admission.on_throttle(None)
        wall[0] += pause
    wall[0] += 0.1  # recovered mid-minute: an ordinary limit, not a window
    admission.on_reply({}, admission.calibration.admit(10))
    assert not admission.windows.detected


class FakeServer:
    """A token bucket charging ``factor`` x the estimate + ``overhead``: the server's own count, not the client's."""

    def __init__(self, t: FakeClock, tpm: int, factor: float, overhead: float = 0.0) -> None:
        self.bucket = Bucket(tpm / 6, tpm / 60, t)
        self.factor, self.overhead = factor, overhead

    def answer(self, estimate: float) -> dict[str, str] | float:
        """The headers of a success, or the retry-after of a 429."""
        charge = estimate * self.factor + self.overhead
        if (wait := self.bucket.wait_for(charge)) > 0:
            return wait
        self.bucket.take(charge)
        return {"x-ratelimit-remaining-tokens": str(int(self.bucket.level))}


def serve(admission: Admission, server: FakeServer, t: FakeClock, estimates: list[float]) -> int:
    """Send every estimate through ``admission`` to ``server`` (concurrency 100, 0.3 s answers); return the 429s."""
    in_flight: list[tuple[float, object, dict[str, str] | float]] = []
    throttled = 0
    router = admitting(admission, t)

    async def main() -> None:
        nonlocal throttled
        for estimate in estimates:
            if len(in_flight) >= 100:  # concurrency 100: wait for the oldest answer
                t.now = max(t.now, in_flight[0][0] + 0.3)
            _, ticket = await router.acquire(estimate)
            in_flight.append((t.now, ticket, server.answer(estimate)))  # the server counts it now; answers 0.3 s later
            while in_flight and in_flight[0][0] <= t.now - 0.3:
                _, done, answer = in_flight.pop(0)
                if isinstance(answer, float):  # as attempts tell it: a 429 with its retry-after
                    throttled += 1
                    admission.on_failure(RateLimited("http_429", "busy", status=429, retry_after=answer), done)  # type: ignore[arg-type]
                else:
                    admission.on_reply(answer, done)  # type: ignore[arg-type]
            await t.sleep(0.001)

    asyncio.run(main())
    return throttled


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_the_servers_charge_ratio_is_learned_from_its_remaining_tokens(factor: float) -> None:
    t = FakeClock(100.0)
    tpm = 600_000
    admission = Admission(tpm, None, clock=t)
    throttled = serve(admission, FakeServer(t, tpm, factor), t, [300] * 3000)
    assert admission.ratio == pytest.approx(factor, rel=0.05)
    assert throttled <= 0.02 * 3000


def test_a_charge_of_another_structure_is_learned_as_the_quota_sees_it_a_ratio_of_sums() -> None:
    """Half the estimate plus 100 a request, on requests of very different sizes.

    Per request the ratio runs from 0.52 (the long ones) to 2.5 (the short ones); what the quota
    counts is the total charge over the total estimate, and that is what admission must learn.
    """
    t = FakeClock(100.0)
    tpm = 600_000
    rng = random.Random(7)
    estimates = [5000.0 if rng.random() < 0.1 else 50.0 for _ in range(4000)]
    admission = Admission(tpm, None, clock=t)
    throttled = serve(admission, FakeServer(t, tpm, 0.5, overhead=100), t, estimates)
    quota_view = sum(0.5 * e + 100 for e in estimates) / sum(estimates)
    assert admission.ratio == pytest.approx(quota_view, rel=0.03)
    assert throttled <= 0.02 * len(estimates)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"x": "5"}, 5), ({"x": "-1"}, None), ({"x": "lots"}, None), ({}, None), ({"x": "0"}, 0)],
)
def test_header_values_of_minus_one_are_unknown(headers: dict[str, str], expected: int | None) -> None:
    assert int_header(headers, "x") == expected


def test_retry_after_ms_wins_over_seconds_and_dates_work() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_meters_are_shaped_like_azure() -> None:
    assert token_bucket(1_200_000).capacity == 200_000
    meter = request_bucket(7200)
    assert 1 <= meter.capacity <= 2 and meter.capacity + meter.rate <= 0.99 * 120  # never over RPM/60 in a second
    assert request_bucket(30).rate == pytest.approx(0.25)  # below 60 RPM: one every 4 s, never refused


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
    t = FakeClock(100.0)
    rate = AdaptiveRate(t)
    assert rate.tick() is None  # unlimited until the server pushes back
    for _ in range(10):
        rate.on_admit(1000)
    t.now += 2.0
    rate.on_throttle()
    assert rate.rate == pytest.approx(10_000 / 2.0 / 2)


def test_adaptive_cuts_at_most_once_per_hold_then_grows_after_quiet() -> None:
    t = FakeClock(100.0)
    rate = AdaptiveRate(t, decrease=0.5, increase=0.1, hold=0.5)
    rate.on_admit(4000)
    t.now += 1.0
    rate.on_throttle()
    assert rate.rate == 2000
    rate.on_throttle()  # same burst: ignored
    assert rate.rate == 2000
    t.now += 0.5
    rate.on_throttle()  # nothing was admitted at the new rate: no news about it
    assert rate.rate == 2000
    rate.on_admit(100)
    rate.on_throttle()
    assert rate.rate == 1000
    t.now += 1.9
    assert rate.tick() == 1000  # not quiet for 2 s yet
    t.now += 0.1
    assert rate.tick() == pytest.approx(1000 * (1 + 0.1 * 2.0))


def test_adaptive_eases_off_when_headers_say_the_budget_is_nearly_gone() -> None:
    t = FakeClock(100.0)
    rate = AdaptiveRate(t, ease=0.9, hold=0.5)
    rate.on_admit(1000)
    t.now += 1.0
    rate.on_throttle()
    start = rate.rate
    assert start is not None
    t.now += 0.5
    rate.on_headers({"x-ratelimit-remaining-tokens": "5000"}, 300)
    assert rate.rate == start
    rate.on_admit(300)
    rate.on_headers({"x-ratelimit-remaining-tokens": "400"}, 300)
    assert rate.rate == pytest.approx(start * 0.9)


def test_admission_feeds_throttles_into_the_gate_and_the_adaptive_rate() -> None:
    t = FakeClock(100.0)
    admission = Admission(None, None, clock=t)
    asyncio.run(admitting(admission, t).acquire(500))
    t.now += 1.0
    admission.on_throttle(1.5)
    assert admission.gate.remaining() == 1.5
    assert admission.learned_tpm == pytest.approx(500 / 1.0 / 2 * 60)
    fixed = Admission(60_000, None, clock=t)
    fixed.on_reply({"x-ratelimit-remaining-tokens": "0"}, fixed.calibration.admit(98))
    assert fixed.gate.remaining() == pytest.approx(98 / (0.98 * 1000))
    assert fixed.learned_tpm is None


def test_adaptive_grows_faster_while_the_headers_show_plenty_of_budget() -> None:
    def grown(remaining: str) -> float:
        t = FakeClock(100.0)
        rate = AdaptiveRate(t, increase=0.05)
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


def test_adaptive_sends_a_first_wave_then_waits_for_the_servers_first_answer() -> None:
    """Knowing nothing of the server, a burst of the whole concurrency would be refused past its first second."""
    from asyncbatch.admission.admission import PROBE

    t = FakeClock(100.0)
    admission = Admission(None, None, clock=t)
    first: list[object] = []
    router = admitting(admission, t)

    async def main() -> None:
        for _ in range(PROBE):
            first.append((await router.acquire(100))[1])
        assert t.slept == []  # the first wave goes at once
        t.at(t.now + 0.3, lambda: admission.on_reply({"x-ratelimit-remaining-requests": "99"}, first[0]))  # type: ignore[arg-type]
        await router.acquire(100)  # waits for that answer
        assert t.now >= 100.3

    asyncio.run(main())
    assert admission.learned_rpm == 60 * 100  # and the answer said how many a second the server takes
