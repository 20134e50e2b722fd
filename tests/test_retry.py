"""Retries: which statuses another attempt may fix, and tenacity's strategies as pure functions of one call's state."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import RetryCallState

from asyncbatch.config import RetryPolicy
from asyncbatch.errors import AttemptError, InvalidOutput, Malformed, Outage, RateLimited, Rejected, Transient
from asyncbatch.live.retry import Failover, asked_again, backoff, retrying, wait_for_server
from asyncbatch.protocol import should_retry


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert should_retry(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_never_retried_statuses(status: int) -> None:
    assert not should_retry(status)


def test_the_server_s_x_should_retry_wins_over_the_status() -> None:
    assert not should_retry(503, {"x-should-retry": "false"}) and should_retry(400, {"x-should-retry": "true"})
    assert should_retry(503, {"x-should-retry": "maybe"})  # anything else: the status decides


def failed(exc: BaseException, attempt: int = 1) -> RetryCallState:
    """tenacity's state of one call whose attempt ``attempt`` just raised ``exc``."""
    state = RetryCallState(retry_object=retrying(RetryPolicy(), sleep=asyncio.sleep), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_strategies_are_pure_functions_of_the_failure() -> None:
    wait = wait_for_server(lambda state: 99.0)
    assert wait(failed(Outage("x", "x", retry_after=2.5))) == 2.5  # what the server asked for, exactly
    assert wait(failed(Outage("x", "x"))) == 99.0  # else the fallback's backoff
    assert wait(failed(InvalidOutput("x", "x"))) == 0.0  # the model is asked again at once
    assert wait(failed(Failover(Outage("x", "x", retry_after=30.0)))) == 0.0  # another deployment, at once
    for again in (Transient("x", "x"), Outage("x", "x"), Malformed("x", "x"), Failover(Outage("x", "x"))):
        assert asked_again(failed(again))
    assert not asked_again(failed(Rejected("x", "x"))) and not asked_again(failed(RateLimited("x", "x")))


def test_without_retry_after_backoff_grows_with_jitter_and_is_capped() -> None:
    wait = backoff(RetryPolicy(backoff_initial=1.0, backoff_max=10.0))
    for n in range(1, 9):
        base = min(10.0, 2.0 ** (n - 1))
        assert base <= wait(failed(Outage("x", "x"), attempt=n)) <= min(10.0, base + 1.0)


class Flaky:
    """Fails with the given errors in order, then returns 'ok'."""

    def __init__(self, *errors: AttemptError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _drive(policy: RetryPolicy, fn: Flaky) -> tuple[str, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    result: str = asyncio.run(retrying(policy, sleep=sleep)(fn))
    return result, waits


def test_waits_exactly_what_the_server_asks() -> None:
    fn = Flaky(Outage("x", "x", retry_after=2.5), Outage("x", "x", retry_after=0.25))
    assert (*_drive(RetryPolicy(max_attempts=6), fn), fn.calls) == ("ok", [2.5, 0.25], 3)


def test_a_refusal_is_raised_after_one_attempt() -> None:
    fn = Flaky(Rejected("x", "x", status=400))
    with pytest.raises(Rejected):
        _drive(RetryPolicy(), fn)
    assert fn.calls == 1


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors = [Outage("x", "x", retry_after=0.0) for _ in range(5)]
    fn = Flaky(*errors)
    with pytest.raises(AttemptError) as caught:
        _drive(RetryPolicy(max_attempts=3), fn)
    assert fn.calls == 3 and caught.value is errors[2]
