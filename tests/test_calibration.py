"""Calibration on its own: what a server charges, learned from the budget it reports, on the fake clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.admission.calibration import Calibration, Ticket
from tests.helpers import FakeClock


class Server:
    """A budget of ``size`` tokens refilled at ``refill`` a second, charging each request ``charge(estimate)``."""

    def __init__(self, clock: FakeClock, size: float, refill: float, charge: Callable[[float], float]) -> None:
        self.clock, self.size, self.refill, self.charge = clock, size, refill, charge
        self.left, self.at = size, clock.now

    def answer(self, estimate: float) -> int:
        now = self.clock.now
        self.left = min(self.size, self.left + (now - self.at) * self.refill)
        self.at = now
        self.left -= self.charge(estimate)
        return int(self.left)


def run(calibration: Calibration, server: Server, clock: FakeClock, estimates: list[float]) -> list[Ticket]:
    """Each request admitted, then answered at once with the budget the server reports; 20 ms apart."""
    tickets = []
    for estimate in estimates:
        ticket = calibration.admit(estimate)
        calibration.on_remaining(ticket, server.answer(estimate))
        tickets.append(ticket)
        clock.now += 0.02
    return tickets


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_server_charging_a_multiple_of_the_estimate_is_learned_as_that_multiple(factor: float) -> None:
    clock = FakeClock()
    calibration = Calibration(clock, refill=1000.0)
    assert calibration.charge(100) == 100 and not calibration.learned  # until the server has said: the estimate
    run(calibration, Server(clock, 1_000_000, 1000.0, lambda e: factor * e), clock, [100.0] * 200)
    assert calibration.learned
    assert calibration.ratio == pytest.approx(factor, rel=0.02)
    assert calibration.charge(100) == pytest.approx(factor * 100, rel=0.02)


def test_a_charge_with_a_base_per_request_is_fitted_as_a_slope_and_a_base() -> None:
    clock, rng = FakeClock(), random.Random(3)
    calibration = Calibration(clock, refill=1000.0)
    estimates = [rng.choice([50.0, 500.0, 5000.0]) for _ in range(400)]
    run(calibration, Server(clock, 10_000_000, 1000.0, lambda e: 0.5 * e + 100), clock, estimates)
    assert calibration.slope == pytest.approx(0.5, rel=0.1) and calibration.base == pytest.approx(100, rel=0.2)
    assert calibration.charge(50) == pytest.approx(125, rel=0.1)  # a short request costs 2.5 times its estimate


def test_refused_requests_are_left_out_and_budgets_at_zero_or_the_top_teach_nothing() -> None:
    clock = FakeClock()
    calibration = Calibration(clock, refill=1000.0)
    for _ in range(100):  # the server says 0 on every answer: it may floor its budget there
        calibration.on_remaining(calibration.admit(100), 0)
    assert not calibration.learned
    server = Server(clock, 1_000_000, 1000.0, lambda e: 2 * e)
    for n in range(200):
        ticket = calibration.admit(100)
        if n % 3 == 0:  # refused: the server charged nothing, and its budget says so
            calibration.on_refused(ticket)
            continue
        calibration.on_remaining(ticket, server.answer(100))
        clock.now += 0.02
    assert calibration.ratio == pytest.approx(2.0, rel=0.02)  # the refused requests do not water it down


def test_forgetting_goes_back_to_the_estimate_and_in_flight_is_what_was_sent_since() -> None:
    clock = FakeClock()
    calibration = Calibration(clock, refill=1000.0)
    tickets = run(calibration, Server(clock, 1_000_000, 1000.0, lambda e: 3 * e), clock, [100.0] * 100)
    assert calibration.in_flight(tickets[-3]) == pytest.approx(2 * calibration.charge(100))
    calibration.forget()
    assert calibration.charge(100) == 100 and not calibration.learned and calibration.ratio == 1.0
    assert calibration.refill_rate() == 1000.0
    assert Calibration(clock, refill=None).refill_rate() == 0.0  # unknown: a tenth of the most ever seen left


class Deployment:
    """One deployment's budget as Azure keeps it, whoever draws on it: tokens in a bucket of ``size`` refilled at
    ``refill`` a second, requests counted in 1-second slices. Each admission reports what is left of both."""

    def __init__(self, clock: FakeClock, size: float, refill: float, per_slice: int = 100_000) -> None:
        self.clock, self.size, self.refill, self.per_slice = clock, size, refill, per_slice
        self.left, self.at = size, clock.now
        self.slice, self.count = int(clock.now), 0

    def admit(self, charge: float) -> tuple[int, int]:
        now = self.clock.now
        self.left, self.at = min(self.size, self.left + (now - self.at) * self.refill), now
        if int(now) != self.slice:
            self.slice, self.count = int(now), 0
        self.left -= charge
        self.count += 1
        return int(self.left), self.per_slice - self.count


def share(calibration: Calibration, deployment: Deployment, clock: FakeClock, steps: list[Step], factor: float) -> None:
    """Our requests (charged ``factor`` x their estimate) and others' (charged their size) reach one deployment in
    the order given, ``pause`` seconds apart; each of ours is answered on admission."""
    for ours, size, pause in steps:
        if ours:
            ticket = calibration.admit(size)
            calibration.on_remaining(ticket, *deployment.admit(factor * size))
        else:
            deployment.admit(size)
        clock.now += pause


Step = tuple[bool, float, float]  # ours?, our estimate or their charge, seconds to the next request


def test_others_drawing_on_the_budget_do_not_make_our_requests_look_dearer() -> None:
    """Three workers sending large requests share the budget with one sending small ones (an uneven table split
    four ways): the drop between its answers holds theirs too, which would teach it ten times its charge."""
    clock, rng = FakeClock(), random.Random(5)
    calibration = Calibration(clock, refill=20_000.0)
    steps = [(rng.random() < 0.25, 60.0 if rng.random() < 0.5 else 800.0, 0.008) for _ in range(2000)]
    steps = [(ours, size if not ours else rng.uniform(40, 60), pause) for ours, size, pause in steps]
    share(calibration, Deployment(clock, 50_000_000, 20_000.0), clock, steps, factor=1.2)
    assert calibration.shared and calibration.learned
    assert calibration.ratio == pytest.approx(1.2, rel=0.05)
    assert calibration.charge(50) == pytest.approx(60, rel=0.05)


def test_alone_on_a_budget_that_says_its_requests_the_samples_span_as_many_requests_as_before() -> None:
    clock = FakeClock()
    calibration = Calibration(clock, refill=1000.0)
    share(calibration, Deployment(clock, 1_000_000, 1000.0), clock, [(True, 100.0, 0.05)] * 200, factor=2.0)
    assert not calibration.shared  # new slices of requests on the way are no one else's draws
    assert calibration.ratio == pytest.approx(2.0, rel=0.02)
    assert {n for _, _, n in calibration.samples} == {calibration.span}


@st.composite
def workloads(draw: st.DrawFn) -> list[Step]:
    """Ours and 1 to 4 other clients, each sending at its own rate (random gaps) requests of its own sizes."""
    rng = random.Random(draw(st.integers(0, 2**32)))  # the gaps and sizes: one seed, not thousands of draws
    ours = draw(st.floats(20, 100))  # our requests a second: a busy budget, where sharing it matters
    low, high = sorted(draw(st.tuples(st.floats(200, 2000), st.floats(200, 2000))))
    others = draw(st.lists(st.tuples(st.floats(0.2, 5), st.floats(200, 5000)), min_size=1, max_size=4))
    until = 200 / ours  # about 200 requests of ours
    events = []
    for rate, size, mine in [(ours, 0.0, True), *((ours * r, s, False) for r, s in others)]:
        at = rng.expovariate(rate)
        while at < until:
            events.append((at, mine, rng.uniform(low, high) if mine else rng.uniform(size / 2, size)))
            at += rng.expovariate(rate)
    events.sort()
    later = [at for at, _, _ in events[1:]] + [until]
    return [(mine, size, next_at - at) for (at, mine, size), next_at in zip(events, later, strict=True)]


@settings(max_examples=60, deadline=None)
@given(steps=workloads(), factor=st.sampled_from([0.5, 1.0, 2.0]))
def test_a_budget_shared_with_others_never_inflates_the_learned_charge(steps: list[Step], factor: float) -> None:
    """Whatever others send, and however fast: what is learned is what the server charges our requests."""
    clock = FakeClock()
    calibration = Calibration(clock, refill=100.0)  # slow: the budget drains, and stays below its top
    share(calibration, Deployment(clock, 100_000_000, 100.0), clock, steps, factor)
    assert calibration.shared
    if calibration.learned:
        assert calibration.ratio == pytest.approx(factor, rel=0.05)
        for estimate in (200.0, 1000.0, 2000.0):  # charges of 100 tokens or more: the header's rounding is small
            assert calibration.charge(estimate) == pytest.approx(factor * estimate, rel=0.05)


steps = st.lists(
    st.tuples(st.booleans(), st.floats(200, 2000), st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3, 1.5])),
    min_size=20,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps)
@example(  # another's request between our first two answers: what was learned before is dropped, not kept
    steps=[(False, 200.0, 0.0)] * 6
    + [(True, 200.0, 0.0), (False, 200.0, 0.0)]
    + [(True, 200.0, 0.0)] * 6
    + [(False, 200.0, 1.5)]
    + [(True, 200.0, 0.0)] * 4
)
@example(  # ours 0.6 s apart in one slice, another's between: further than a judged pair (CI's derandomized draw)
    steps=[(False, 200.0, 0.0)] * 17 + [(True, 200.0, 0.3), (False, 200.0, 0.3), (True, 200.0, 0.0)]
)
def test_another_clients_request_between_two_of_ours_in_one_slice_is_seen(steps: list[Step]) -> None:
    clock = FakeClock()
    calibration = Calibration(clock, refill=100.0)
    start = clock.now
    share(calibration, Deployment(clock, 100_000_000, 100.0), clock, steps, 0.5)
    assert calibration.shared or not seen_sharing(steps, start)  # seen across slices too, some of the time


def seen_sharing(steps: list[Step], start: float) -> bool:
    """Whether another's request was admitted between two of ours in one 1-second slice, at most half a slice
    apart (``Calibration._fell``: two answers further apart may straddle a new slice, and are not judged)."""
    now, last_ours, theirs_since = start, None, False
    for ours, _, pause in steps:
        if ours:
            close = last_ours is not None and int(last_ours) == int(now) and now - last_ours <= 0.5
            if close and theirs_since:
                return True
            last_ours, theirs_since = now, False
        else:
            theirs_since = True
        now += pause
    return False
