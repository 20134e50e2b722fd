"""The outage breaker: failures with no answer, or 5xx, across the run stop admission; one probe at a time."""

from __future__ import annotations

import time

from ..clock import NAP, Clock
from ..errors import AttemptError


def no_answer(exc: AttemptError) -> bool:
    """No HTTP answer at all (refused, reset, DNS, TLS, a timeout): the only failure that can mean "unreachable".

    A 5xx is an answer: the endpoint is up, and busy or failing.
    """
    return exc.status is None


def is_outage(exc: AttemptError) -> bool:
    """A failure of the endpoint rather than of one input: no answer, or a 5xx."""
    return no_answer(exc) or (exc.status is not None and exc.status >= 500)


class Breaker:
    """Stops admission while the endpoint is down, probing with one request at growing intervals.

    It opens after ``threshold`` outage failures in a row across the run with no
    success between them. While open, one probe at a time is admitted, the first
    ``first_probe`` seconds after opening, each later one twice as long after
    the last failed probe, up to ``max_interval``. A success closes it: full
    speed at once.
    """

    def __init__(
        self, clock: Clock = time.monotonic, *, threshold: int = 8, first_probe: float = 1.0, max_interval: float = 30.0
    ) -> None:
        self.clock, self.threshold, self.first_probe, self.max_interval = clock, threshold, first_probe, max_interval
        self.streak = 0
        self.open_since: float | None = None
        self.probing = False
        self.cause = "unreachable"  # or "failing with HTTP 503": what the last outage failure was
        self._interval = first_probe
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self.open_since is not None

    def on_success(self) -> None:
        self.streak = 0
        self.open_since, self.probing, self._interval = None, False, self.first_probe

    def on_outage(self, status: int | None = None) -> None:
        now = self.clock()
        self.streak += 1
        self.cause = "unreachable" if status is None else f"failing with HTTP {status}"
        if self.open_since is None and self.streak >= self.threshold:
            self.open_since, self._next_probe = now, now + self.first_probe
        elif self.open_since is not None and self.probing:  # the probe failed: wait longer for the next one
            self.probing = False
            self._interval = min(self._interval * 2, self.max_interval)
            self._next_probe = now + self._interval

    def on_other_failure(self) -> None:
        """An answer that is not an outage (a 4xx): the endpoint is up, whatever that request's fault."""
        self.on_success()

    def wait(self) -> float:
        """Seconds before the next request may go: 0 when closed; NAP while a probe is out."""
        if self.open_since is None:
            return 0.0
        return NAP if self.probing else max(0.0, self._next_probe - self.clock())

    def on_admit(self) -> None:
        if self.open_since is not None:
            self.probing = True
