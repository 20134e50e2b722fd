"""Which failures are retried, and how long one input waits before its next attempt.

The classification and the wait are pure; ``retrying()`` composes them into a
tenacity policy with an injectable ``sleep`` so tests can record the waits.

A failure that admission holds (a 429, or any failure while the endpoint is
down: ``AttemptError.held``, set in ``admission/admission.py``) is not this module's business
beyond "try again": it does not use up ``max_attempts``, and its wait is
admission's, which every attempt passes before it is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from ..clock import Sleep
from ..config import RetryPolicy
from ..errors import AttemptError


def is_held(exc: BaseException | None) -> bool:
    return isinstance(exc, AttemptError) and exc.held


class wait_server_or:
    """No wait when admission holds the next attempt; what the server asked for; else ``fallback``."""

    def __init__(self, fallback: Callable[[RetryCallState], float]) -> None:
        self.fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if is_held(exc):
            return 0.0
        if isinstance(exc, AttemptError) and exc.retry_after is not None:
            return exc.retry_after
        return self.fallback(state)


class stop_after_failures:
    """Give up after ``max_attempts`` failed attempts; held ones (429s, outages) are "not yet". One per input."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.failures = 0

    def __call__(self, state: RetryCallState) -> bool:
        if not is_held(state.outcome.exception() if state.outcome else None):
            self.failures += 1
        return self.failures >= self.max_attempts


def backoff(policy: RetryPolicy) -> wait_exponential_jitter:
    """initial x 2^(n-1), plus up to ``initial`` of jitter, capped at ``backoff_max``."""
    return wait_exponential_jitter(
        multiplier=policy.backoff_initial, jitter=policy.backoff_initial, max=policy.backoff_max
    )


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, AttemptError) and exc.retryable


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """The tenacity policy for one input: up to ``max_attempts`` failed tries, then re-raise."""
    return AsyncRetrying(
        stop=stop_after_failures(policy.max_attempts),
        wait=wait_server_or(backoff(policy)),
        retry=retry_if_exception(_is_retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
