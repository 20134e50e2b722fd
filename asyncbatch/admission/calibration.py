"""The server's charge per unit of the client's estimate, learned from its rate-limit headers."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from ..clock import Clock


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request, as calibration needs it."""

    seq: int
    sent_at: float
    cum: float  # the estimates of every request admitted up to and including this one
    estimate: float


class Calibration:
    """The server's charge per unit of the client's estimate, learned from ``x-ratelimit-remaining-tokens``.

    Between two answers ``i`` and ``j`` (``j`` admitted ``span`` or more requests
    later), the server's remaining budget fell by what it charged the requests
    admitted in between, less what it refilled meanwhile::

        ratio = (remaining_i - remaining_j + refill x (t_j - t_i)) / (estimates admitted in (i, j])

    A request refused with a 429 was not charged: its estimate is left out of the
    sum once its answer is known. Samples are taken only while the budget is below
    its top (a full bucket wastes its refill) and above zero (a server may floor it).
    ``ratio`` is the median of the recent samples: one reordered answer cannot move it.

    :param refill: the server's refill in its tokens per second (TPM/60) when the quota
        is given; None: assume Azure's 10-second bucket, whose top is the most ever seen remaining.
    """

    def __init__(self, clock: Clock, refill: float | None, *, span: int = 8, keep: int = 48) -> None:
        self.clock, self.refill, self.span = clock, refill, span
        self.ratio = 1.0
        self.samples: deque[float] = deque(maxlen=keep)
        self._seq = 0
        self._cum = 0.0
        self._seen: deque[tuple[int, float, float, int]] = deque(maxlen=4 * span)  # seq, sent_at, cum, remaining
        self._most = 0
        self._refused: deque[tuple[int, float]] = deque(maxlen=256)  # (seq, estimate) answered 429

    def admit(self, estimate: float) -> Ticket:
        self._seq += 1
        self._cum += estimate
        return Ticket(self._seq, self.clock(), self._cum, estimate)

    def charge(self, estimate: float) -> float:
        return estimate * self.ratio

    def on_refused(self, ticket: Ticket) -> None:
        self._refused.append((ticket.seq, ticket.estimate))

    def on_remaining(self, ticket: Ticket, remaining: int) -> None:
        self._most = max(self._most, remaining)
        earlier = next((o for o in reversed(self._seen) if o[0] <= ticket.seq - self.span), None)
        self._seen.append((ticket.seq, ticket.sent_at, ticket.cum, remaining))
        if earlier is None:
            return
        seq, sent_at, cum, was = earlier
        refilled = self.refill_rate() * max(0.0, ticket.sent_at - sent_at)
        estimated = ticket.cum - cum - sum(e for s, e in self._refused if seq < s <= ticket.seq)
        # a budget at 0 may be floored (the server refused), one at the top may have spilled its refill
        clean = remaining > 0 and was + refilled < self._most
        if clean and estimated > 0 and (charged := was - remaining + refilled) > 0:
            self.samples.append(charged / estimated)
            if len(self.samples) >= 3:
                self.ratio = min(10.0, max(0.1, statistics.median(self.samples)))

    @property
    def learned(self) -> bool:
        return len(self.samples) >= 3

    def refill_rate(self) -> float:
        """The server's refill per second: TPM/60 when given, else a tenth of the most it ever had left."""
        return self.refill if self.refill is not None else self._most / 10

    def in_flight(self, ticket: Ticket) -> float:
        """The estimates admitted after ``ticket``: sent, not yet counted in its answer."""
        return self._cum - ticket.cum
