from __future__ import annotations

import asyncio

import pytest

from asyncbatch.config import RetryPolicy
from asyncbatch.errors import AttemptError
from asyncbatch.live.retry import retrying
from asyncbatch.protocol import is_retryable_status


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_never_retried_statuses(status: int) -> None:
    assert not is_retryable_status(status)


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


async def _drive(policy: RetryPolicy, fn: Flaky) -> tuple[str, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async for attempt in retrying(policy, sleep=sleep):
        with attempt:
            result = await fn()
    return result, waits


def _err(retry_after: float | None = None, retryable: bool = True, status: int = 429) -> AttemptError:
    held = status == 429  # what admission marks
    return AttemptError("x", "x", status=status, retry_after=retry_after, retryable=retryable, held=held)


def test_waits_exactly_what_the_server_asks() -> None:
    fn = Flaky(_err(2.5, status=503), _err(0.25, status=503))
    result, waits = asyncio.run(_drive(RetryPolicy(max_attempts=6), fn))
    assert (result, waits, fn.calls) == ("ok", [2.5, 0.25], 3)


def test_a_429_is_not_waited_here_admission_holds_it() -> None:
    fn = Flaky(_err(2.5), _err(None))
    result, waits = asyncio.run(_drive(RetryPolicy(max_attempts=6), fn))
    assert (result, waits, fn.calls) == ("ok", [0.0, 0.0], 3)


def test_without_retry_after_backoff_grows_with_jitter_and_is_capped() -> None:
    fn = Flaky(*[_err(None, status=500) for _ in range(7)])
    policy = RetryPolicy(max_attempts=8, backoff_initial=1.0, backoff_max=10.0)
    result, waits = asyncio.run(_drive(policy, fn))
    assert result == "ok" and len(waits) == 7
    for n, wait in enumerate(waits):
        base = min(10.0, 1.0 * 2**n)
        assert base <= wait <= min(10.0, base + 1.0)  # exponential, plus up to 1 s jitter, capped


def test_non_retryable_error_is_raised_after_one_attempt() -> None:
    fn = Flaky(_err(retryable=False, status=400))
    with pytest.raises(AttemptError):
        asyncio.run(_drive(RetryPolicy(), fn))
    assert fn.calls == 1


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors = [_err(0.0, status=503) for _ in range(5)]
    fn = Flaky(*errors)
    with pytest.raises(AttemptError) as caught:
        asyncio.run(_drive(RetryPolicy(max_attempts=3), fn))
    assert fn.calls == 3 and caught.value is errors[2]


def test_429s_do_not_use_up_the_attempt_budget() -> None:
    fn = Flaky(*[_err(0.1) for _ in range(10)], _err(0.1, status=500))
    result, waits = asyncio.run(_drive(RetryPolicy(max_attempts=2), fn))
    assert result == "ok" and fn.calls == 12 and len(waits) == 11
