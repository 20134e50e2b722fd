"""Budget headers as evidence, not orders: one that the server's own admissions contradict is discounted.

Workers run on the fake clock's event loop (``helpers.FakeClock.run``); the server here admits everything
and says what it is told to in ``x-ratelimit-remaining-*``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.admission.admission import Admission
from asyncbatch.admission.calibration import Ticket
from asyncbatch.admission.evidence import LEAST, Testimony
from asyncbatch.config import Patience
from asyncbatch.errors import RateLimited

from .helpers import FakeClock, admitting

Says = dict[str, str] | Callable[[], dict[str, str]]  # what the server says on every answer, or anew on each


async def _rate(
    admission: Admission, clock: FakeClock, says: Says, *, lines: int, concurrency: int, estimate: float = 22
) -> float:
    """Requests a second that ``admission`` lets through to a server that refuses nothing and says ``says``."""
    queue, start, router = list(range(lines)), clock.now, admitting(admission, clock)

    async def worker() -> None:
        while queue:
            queue.pop()
            _, ticket = await router.acquire(estimate)
            await asyncio.sleep(0.05)
            admission.on_reply(says() if callable(says) else says, ticket)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return lines / (clock.now - start)


def _run(
    says: Says, tpm: int | None, rpm: int | None, *, concurrency: int = 50, estimate: float = 22
) -> tuple[float, Admission]:
    clock = FakeClock()

    async def main() -> tuple[float, Admission]:
        admission = Admission(tpm, rpm, Patience(), concurrency=concurrency, clock=clock)
        rate = await _rate(admission, clock, says, lines=2000, concurrency=concurrency, estimate=estimate)
        return rate, admission

    return clock.run(main())


SAYS = {
    "tokens 0": {"x-ratelimit-remaining-tokens": "0"},
    "tokens -1": {"x-ratelimit-remaining-tokens": "-1"},
    "both 0": {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "0"},
    "both -1": {"x-ratelimit-remaining-tokens": "-1", "x-ratelimit-remaining-requests": "-1"},
}


@pytest.mark.parametrize("says", SAYS.values(), ids=SAYS.keys())
@pytest.mark.parametrize(("tpm", "rpm"), [(None, None), (30_000, None), (600_000, 3_000)], ids=str)
def test_a_budget_said_to_be_gone_on_every_answer_while_nothing_is_refused_costs_at_most_half(
    says: dict[str, str], tpm: int | None, rpm: int | None
) -> None:
    """Azure's Responses API has been reported to send 0 and -1 and never refuse: at least half the rate of
    the same server saying nothing, with the quota given or learned."""
    plain, _ = _run({}, tpm, rpm)
    told, admission = _run(says, tpm, rpm)
    assert told >= 0.5 * plain
    assert not admission.said_tokens.believed or says["x-ratelimit-remaining-tokens"] == "-1"


@settings(max_examples=25, deadline=None, derandomize=True)  # the same draws every run: see the known case below
@given(
    seed=st.integers(0, 2**16),
    most=st.integers(1, 30),
    estimate=st.integers(5, 40),
    concurrency=st.integers(2, 50),
)
@example(seed=0, most=5, estimate=7, concurrency=10)  # 0.002x: 0 and 5 in turn
@example(seed=34, most=26, estimate=5, concurrency=33)  # 0.25x: a budget of 5 requests mirrored, 33 in flight
def test_a_small_budget_said_on_every_answer_while_nothing_is_refused_costs_at_most_half_when_learning(
    seed: int, most: int, estimate: int, concurrency: int
) -> None:
    """Small budgets above zero (5 tokens on every answer, 0 and 5 in turn, 0 to 5 at random) from a server that
    refuses nothing. Followed, such a budget paces the run to its own claim, so slowly that too few answers come
    back to judge it: it is heard, but orders nothing until the server shows that it keeps it."""
    rng = random.Random(seed)

    def liar() -> dict[str, str]:
        return {"x-ratelimit-remaining-tokens": str(rng.randint(0, most))}

    plain, _ = _run({}, None, None, concurrency=concurrency, estimate=estimate)
    told, _ = _run(liar, None, None, concurrency=concurrency, estimate=estimate)
    assert told >= 0.5 * plain


@pytest.mark.xfail(strict=True, reason="known: mirrored at a charge learned from the lie itself")
def test_known_a_budget_of_0_to_26_tokens_at_random_mirrored_before_it_is_judged_costs_more_than_half() -> None:
    """Found by the property above (random draws, seed 413): a budget said to be 0 to 26 tokens at random, on
    5-token requests, 26 at once. Calibration learns a charge from its drops as low as a tenth of the estimate,
    at which 26 tokens "holds a whole concurrency", so it is mirrored and paces the run until the testimony
    disbelieves it: 86 requests a second against 517 (a sixth). Kept until mirroring waits for the testimony."""
    rng = random.Random(413)
    plain, _ = _run({}, None, None, concurrency=26, estimate=5)
    told, _ = _run(
        lambda: {"x-ratelimit-remaining-tokens": str(rng.randint(0, 26))}, None, None, concurrency=26, estimate=5
    )
    assert told >= 0.5 * plain


def _ticket(seq: int, sent_at: float, estimate: float = 100.0) -> Ticket:
    return Ticket(seq, sent_at, seq * estimate, estimate)


def test_a_budget_that_falls_with_what_is_admitted_is_believed_down_to_zero() -> None:
    """Azure's own bucket, followed by a client near its floor: 1,000 a second refilled, 100 a request."""
    said, left = Testimony(per_estimate=LEAST, per_request=0.0), 2000.0
    for seq in range(1, 400):
        left = max(0.0, min(10_000.0, left + 1000 * 0.1) - 100)  # one request every 0.1 s: exactly the refill
        assert said.hear(_ticket(seq, seq * 0.1), int(left), refill=1000.0) == int(left)
    assert said.believed


def test_a_budget_that_stays_at_zero_while_everything_is_admitted_is_discounted_until_a_refusal() -> None:
    said = Testimony(per_estimate=LEAST, per_request=0.0)
    heard = [said.hear(_ticket(seq, seq * 0.001), 0, refill=1000.0) for seq in range(1, 20)]
    assert heard[:8] == [0] * 8  # believed until the evidence is in: 8 requests apart, 3 times
    assert heard[-1] is None and not said.believed
    said.on_refused(_ticket(20, 0.02))  # the server refused one: it does keep a budget
    assert said.believed and said.hear(_ticket(21, 0.021), 0, refill=1000.0) == 0


def test_a_request_budget_of_zero_on_every_answer_is_not_a_rate_of_one_a_second() -> None:
    loop_rate, admission = _run({"x-ratelimit-remaining-requests": "0"}, None, None)
    assert admission.learned_rpm is None and not admission.said_requests.believed
    assert loop_rate > 60  # far more than the 1 a second that "0 left, plus this one" would have made


def test_a_refused_request_makes_the_header_heard_again() -> None:
    admission = Admission(60_000, None, Patience(), clock=FakeClock())
    for _ in range(20):
        admission.on_reply({"x-ratelimit-remaining-tokens": "0"}, admission.take(100))
    assert not admission.said_tokens.believed
    admission.on_failure(RateLimited("http_429", "slow down", status=429, retry_after=1.0), admission.take(100))
    assert admission.said_tokens.believed


def test_a_shared_deployments_budget_falling_faster_than_our_own_admissions_is_believed() -> None:
    """Another run draws on the same budget: it falls by more than we sent, which contradicts nothing."""
    rng = random.Random(2)
    said, left, refused = Testimony(per_estimate=LEAST, per_request=0.0), 5000.0, 0
    for seq in range(1, 600):
        left = min(10_000.0, left + 1000 * 0.1) - rng.uniform(0, 150)  # the refill, less what the others take
        left = max(0.0, left)
        if left < 100:  # a true budget at its floor refuses
            refused += 1
            said.on_refused(_ticket(seq, seq * 0.1))
            continue
        left -= 100
        assert said.hear(_ticket(seq, seq * 0.1), int(left), refill=1000.0) == int(left)
    assert said.believed and refused
