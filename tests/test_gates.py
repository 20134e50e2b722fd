"""Admission's gates on their own, each answering "seconds until ready" on the fake clock: the breaker above all."""

from __future__ import annotations

import heapq

import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.admission.calibration import Ticket
from asyncbatch.admission.gates import Breaker, Bucket, CooldownGate, RequestShare
from asyncbatch.clock import NAP
from asyncbatch.errors import NoAnswer, RateLimited, Rejected
from asyncbatch.protocol import REMAINING_REQUESTS, REMAINING_TOKENS
from asyncbatch.simulator.quota import Quota, Verdict
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


# -- one RPM shared by several clients: each paces at its part (RequestShare) ----------------------------


def test_a_client_alone_has_the_whole_rpm_and_one_of_four_equal_ones_a_quarter() -> None:
    clock = FakeClock()
    alone, shared = RequestShare(clock), RequestShare(clock)
    assert alone.part() is None  # nothing seen: nothing to say
    for _ in range(30):
        alone.on_draw(1, 1)  # every request the server admitted between our answers was ours
        shared.on_draw(4, 1)  # three others' for each of ours
        clock.now += 0.01
    assert alone.part() == 1.0 and shared.part() == pytest.approx(0.25)


def test_the_part_follows_what_the_server_admitted_lately_never_fewer_than_the_least_answers() -> None:
    clock = FakeClock()
    share = RequestShare(clock, window=0.5, least=20)
    for _ in range(40):
        share.on_draw(4, 1)
        clock.now += 0.01
    clock.now += 5.0  # long ago now: still what is known, until newer answers replace it
    assert share.part() == pytest.approx(0.25)
    for _ in range(20):
        share.on_draw(1, 1)  # the others are done
        clock.now += 0.01
    assert share.part() == 1.0


def serve(
    clients: list[Admission], quota: Quota, clock: FakeClock, wanted: list[float]
) -> tuple[list[float], list[float]]:
    """Each client sends as fast as its admission lets it, until its own ``wanted`` time, to one deployment (the
    simulator's own model of Azure's windows) that answers after ``LATENCY``: when the server admitted each
    request, and when it refused one."""
    admitted: list[float] = []
    refused: list[float] = []
    answers: list[tuple[float, int, Admission, Ticket, Verdict]] = []  # a heap: (due, order, ...)
    while clock.now < max(wanted) or answers:
        while answers and answers[0][0] <= clock.now:
            _, _, client, ticket, verdict = heapq.heappop(answers)
            if verdict.allowed:
                client.on_reply({REMAINING_REQUESTS: str(verdict.remaining_requests)} | PLENTY, ticket)
            else:
                client.on_failure(RateLimited("http_429", "busy", status=429, retry_after=verdict.retry_after), ticket)
        for client, until in zip(clients, wanted, strict=True):
            if clock.now < until and client.readiness(100).wait == 0:
                ticket = client.take(100)
                verdict = quota.admit(100)
                (admitted if verdict.allowed else refused).append(clock.now)
                heapq.heappush(answers, (clock.now + LATENCY, len(admitted) + len(refused), client, ticket, verdict))
        clock.now += 0.001
    return admitted, refused


LATENCY = 0.3
PLENTY = {REMAINING_TOKENS: "500000"}  # tokens are never short here: the RPM is what is shared


def test_four_clients_given_the_whole_rpm_send_it_together_and_the_last_one_working_all_of_it() -> None:
    clock = FakeClock(1000.0)
    quota = Quota(60_000_000, 7200, clock)
    clients = [Admission(60_000_000, 7200, concurrency=1000, shared_by=4, clock=clock) for _ in range(4)]
    admitted, refused = serve(clients, quota, clock, [1005.0, 1005.0, 1005.0, 1010.0])  # the last works 5 s more
    assert len(refused) <= 0.03 * (len(admitted) + len(refused))  # each follows its part: they do not storm it
    assert len(admitted) >= 0.85 * 120 * 10  # together they use it (less the meter's margin, and a lag at changes)
    assert len([t for t in admitted if t >= 1006.0]) >= 0.85 * 120 * 4  # and the last one, alone, all of it


def test_clients_not_told_they_share_the_rpm_are_refused_until_their_parts_are_read_then_not() -> None:
    clock = FakeClock(1000.0)
    quota = Quota(60_000_000, 7200, clock)
    clients = [Admission(60_000_000, 7200, concurrency=1000, clock=clock) for _ in range(4)]
    admitted, refused = serve(clients, quota, clock, [1005.0] * 4)
    assert refused and len([t for t in refused if t >= 1002.0]) <= 0.01 * len(admitted)
    assert len(admitted) >= 0.9 * 120 * 5
