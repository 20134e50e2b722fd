"""Calibration on its own: what a server charges, learned from the budget it reports, on the fake clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

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
