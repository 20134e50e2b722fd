"""Admission's gates on their own, each answering "seconds until ready" on the fake clock: the breaker above all."""

from __future__ import annotations

import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.admission.gates import Breaker, Bucket, CooldownGate
from asyncbatch.clock import NAP
from asyncbatch.errors import NoAnswer, RateLimited, Rejected
from tests.helpers import FakeClock


def test_the_breaker_opens_after_outages_in_a_row_and_a_success_between_them_resets_the_count() -> None:
    clock = FakeClock()
    breaker = Breaker(clock, threshold=3)
    breaker.on_outage(503)
    breaker.on_outage(503)
    breaker.on_success()
    breaker.on_outage(None)
    breaker.on_outage(None)
    assert not breaker.is_open and breaker.wait() == 0
    breaker.on_outage(None)
    assert breaker.is_open and breaker.open_since == clock.now and breaker.cause == "unreachable"


def test_an_open_breaker_lets_one_probe_through_at_growing_intervals_until_an_answer_closes_it() -> None:
    clock = FakeClock()
    breaker = Breaker(clock, threshold=1, first_probe=1.0, max_interval=4.0)
    breaker.on_outage(500)
    assert breaker.cause == "failing with HTTP 500" and breaker.wait() == 1.0
    waits = []
    for _ in range(5):
        clock.now += breaker.wait()
        assert breaker.wait() == 0  # the probe may go
        breaker.on_admit()
        assert breaker.wait() == NAP  # the others wait while it is out
        breaker.on_outage(500)  # and it failed
        waits.append(breaker.wait())
    assert waits == [2.0, 4.0, 4.0, 4.0, 4.0]  # doubling, up to the cap
    breaker.on_other_failure()  # a 4xx is an answer: the endpoint is up
    assert not breaker.is_open and breaker.wait() == 0


def test_the_cooldown_gate_holds_until_the_server_s_reset_and_never_shortens() -> None:
    clock = FakeClock()
    gate = CooldownGate(clock)
    gate.close_for(3.0)
    gate.close_for(1.0)
    assert gate.wait() == 3.0 and gate.by_server and gate.final
    clock.now += 3.0
    assert gate.wait() == 0


def test_readiness_asks_the_gates_in_order_and_the_first_not_ready_says_how_long_and_whose_hold() -> None:
    clock = FakeClock()
    admission = Admission(None, 60, clock=clock, concurrency=1)
    admission.take(10)  # the request meter is empty now
    assert admission.readiness(10) == (pytest.approx(2.0), False, False)  # 60 RPM: one every 2 s; ours, not a hold
    admission.on_failure(RateLimited("x", "x", retry_after=5.0), admission.take(10))
    assert admission.readiness(10) == (5.0, True, True)  # the server's pause: held, waited out whole
    for _ in range(2):  # threshold: concurrency + 1
        admission.on_failure(NoAnswer("x", "x"), admission.calibration.admit(10))
    assert admission.breaker.is_open and admission.readiness(10) == (1.0, False, False)  # an outage before all
    admission.on_failure(Rejected("x", "x", status=400), admission.calibration.admit(10))  # an answer
    assert not admission.breaker.is_open and admission.answered


def test_a_bucket_charges_each_request_its_charge_or_one_and_a_larger_one_waits_for_a_full_bucket() -> None:
    clock = FakeClock()
    tokens, requests = Bucket(100, 10, clock), Bucket(2, 1, clock, per_request=True)
    tokens.admit(60)
    requests.admit(60)
    assert (tokens.level, requests.level) == (40, 1)
    assert tokens.wait(500) == pytest.approx(6.0)  # more than it holds: until it is full
    assert requests.wait(500) == 0  # a request meter counts the request, whatever its size
