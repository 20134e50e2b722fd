"""When one input asks again, how long it waits first, and when it gives up: tenacity, used as designed.

Each strategy is a pure function of tenacity's ``RetryCallState``, whose ``outcome`` is the attempt that
just failed: ``asked_again`` says by its class whether another attempt may help, ``wait_for_server`` waits
what the server asked for (else backs off), and ``stop_after_attempt`` counts what tenacity saw.

What tenacity never sees is "not yet": a 429, a failure while the breaker holds the endpoint, a retry on
another deployment or with a fresh token. Those wait in admission and use up none of ``--max-attempts``
(``attempts.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential_jitter

from ..clock import Sleep
from ..config import RetryPolicy
from ..errors import ASKED_AGAIN, AttemptError, EndpointRefused, InvalidOutput


class Failover(Exception):
    """A failure a pool routes around: it counts, and the next attempt goes at once to another deployment,
    so the failed one's hint (its ``retry-after``) is not waited out."""

    def __init__(self, error: AttemptError) -> None:
        super().__init__(str(error))
        self.error = error


# What tenacity asks again: what another attempt may fix; and a refusal of the key or the deployment, which
# reaches tenacity only while too few answers agree on it to stop the run (``attempts.py``).
RETRIED = (*ASKED_AGAIN, EndpointRefused, Failover)


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def asked_again(state: RetryCallState) -> bool:
    return isinstance(_failure(state), RETRIED)


def wait_for_server(fallback: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    """What the server asked for (``retry-after``); at once after invalid output or a failover; else ``fallback``."""

    def wait(state: RetryCallState) -> float:
        failure = _failure(state)
        if isinstance(failure, Failover | InvalidOutput):
            return 0.0
        if isinstance(failure, AttemptError) and failure.retry_after is not None:
            return failure.retry_after
        return fallback(state)

    return wait


def backoff(policy: RetryPolicy) -> wait_exponential_jitter:
    """initial x 2^(n-1), plus up to ``initial`` of jitter, capped at ``backoff_max``."""
    return wait_exponential_jitter(
        multiplier=policy.backoff_initial, jitter=policy.backoff_initial, max=policy.backoff_max
    )


def retrying(
    policy: RetryPolicy, *, sleep: Sleep, before_sleep: Callable[[RetryCallState], None] | None = None
) -> AsyncRetrying:
    """The tenacity policy for one input: up to ``max_attempts`` attempts, then the last failure re-raised."""
    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait_for_server(backoff(policy)),
        retry=asked_again,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
