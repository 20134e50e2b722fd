"""Rounds of 429s with no hint: how long everyone waits, one probe at a time, and what a round says."""

from __future__ import annotations

import random
import time

from ..clock import NAP, Clock


class Rounds:
    """A 429 with no hint says "too many" and nothing else: not how many, nor for how long.

    The first one begins a round: admission closes for a jittered pause (``first`` seconds), then
    lets one probe through at a time: a retry (``turn.py``), as new requests wait for the round to
    end. Each refused probe doubles the pause (up to ``cap``). The round ends when a request sent
    since it began is admitted. A refusal of a request sent before
    the current pause began is old news, and a success of a request sent before the round began
    does not end it: the server admitted that one before it began refusing.

    What a round says is judged by what the server admitted: a round whose first probe was
    admitted was a refusal of one request (a gateway shedding load, a first try refused), not a
    limit reached; only a round whose probes were refused too (``streak``) says the rate was too high.
    So the opening pause halves after each round that ended at its first probe, and is whole again
    after one whose probes were refused. Once it is down to none, the server is shedding, and a
    first try it refuses begins no round at all: that request asks again at once (retries go
    first), the others carry on; only a retry refused again begins a round, with the whole pause.

    :param clock: monotonic seconds; ``rng`` jitters the pauses so that workers do not all return at once.
    :param patience: seconds after which a probe with no answer yet (its job cancelled) no longer holds the others.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        *,
        first: float = 0.5,
        cap: float = 8.0,
        patience: float = 10.0,
    ) -> None:
        self.clock, self.rng = clock, rng or random.Random()
        self.first, self.cap, self.patience = first, cap, patience
        self.began: float | None = None  # when the request whose refusal began the round was sent (monotonic)
        self.streak = 0  # probes refused in this round
        self.pause = 0.0  # the latest pause
        self.opening = first  # the pause that begins the next round
        self._paused_at = 0.0
        self._probe_at: float | None = None  # when the probe now out was admitted

    def on_refused(self, sent_at: float, longest: float = float("inf"), *, retry: bool = False) -> float | None:
        """A hint-less 429 of a request sent at ``sent_at`` (``retry``: refused before): how long to hold everyone
        (at most ``longest``), or None: old news, or a first try shed by a server that admits the retries."""
        if self.began is not None and sent_at < self._paused_at:
            return None
        if self.began is None and not self.opening:
            if not retry:
                return None
            self.opening = self.first  # a retry refused again: that is a limit after all
        if self.began is None:
            self.began, self.streak = sent_at, 0
            pause = self.opening
        else:
            self.streak += 1
            pause = min(self.cap, self.first * 2**self.streak)
        self._probe_at, self._paused_at = None, self.clock()
        self.pause = min(longest, pause * self.rng.uniform(0.75, 1.25))
        return self.pause

    def on_admitted(self, sent_at: float) -> bool:
        """A success of a request sent at ``sent_at``; True when it ends the round."""
        if self.began is None or sent_at < self.began:
            return False
        self.began, self._probe_at = None, None
        if self.streak:
            self.opening = self.first
        else:  # admitted at the first probe: a refusal of one request, not of the rate
            self.opening = self.opening / 2 if self.opening >= self.first / 4 else 0.0
        return True

    def on_admit(self) -> None:
        """A request admitted while a round runs is its probe."""
        if self.began is not None and self._probe_at is None:
            self._probe_at = self.clock()

    def on_other_failure(self) -> None:
        """The probe failed some other way (a 5xx, no answer): it says nothing, and another may go."""
        self._probe_at = None

    by_server, source, final = False, None, False  # a gate (``gates.Gate``): while a probe is out, an answer is awaited

    def wait(self, charge: float = 0.0, retry: bool = False) -> float:
        """Seconds before looking again (0: may go): while a probe is out, the others wait for its answer; and
        during a round the probes are retries, the requests refused asking again, unless none comes for a while."""
        if self.began is None:
            return 0.0
        now = self.clock()
        if self._probe_at is not None and now - self._probe_at < self.patience:
            return NAP / 10
        if not retry and now - self._paused_at < self.pause + self.patience:
            return NAP / 10
        return 0.0
