"""Which failures are retried, and how long to wait before the next attempt.

The classification and the wait are pure; ``retrying()`` composes them into a
tenacity policy with an injectable ``sleep`` so tests can record the waits.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from .config import RetryPolicy
from .errors import AttemptError

Sleep = Callable[[float], Awaitable[None]]

RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status: int) -> bool:
    """408, 409, 429 and every 5xx are worth another attempt; other 4xx never are."""
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class wait_retry_after_or:
    """Wait what the server asked for; otherwise fall back to ``fallback``."""

    def __init__(self, fallback: Callable[[RetryCallState], float]) -> None:
        self.fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptError) and exc.retry_after is not None:
            return exc.retry_after
        return self.fallback(state)


class stop_after_failures:
    """Give up after ``max_attempts`` failed attempts, or ``max_throttled`` 429s.

    A 429 is the server saying "not yet", not a failure of the request, so it
    does not use up the attempt budget; it has a larger budget of its own so a
    quota that is gone for the day still ends the run. One instance per input.
    """

    def __init__(self, max_attempts: int, max_throttled: int) -> None:
        self.max_attempts, self.max_throttled = max_attempts, max_throttled
        self.failures = self.throttled = 0

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptError) and exc.status == 429:
            self.throttled += 1
        else:
            self.failures += 1
        return self.failures >= self.max_attempts or self.throttled >= self.max_throttled


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, AttemptError) and exc.retryable


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """The tenacity policy for one input: up to ``max_attempts`` tries, then re-raise."""
    return AsyncRetrying(
        stop=stop_after_failures(policy.max_attempts, policy.max_throttled),
        wait=wait_retry_after_or(wait_exponential_jitter(policy.backoff_initial, policy.backoff_max)),
        retry=retry_if_exception(_is_retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
