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
    retry: bool = False  # a request refused before, asking again


TRIM = 5.0  # a sample more than this many times above or below the median is an outlier
SPREAD = 0.15  # sizes varying by this much (coefficient of variation) make the slope half trusted


class Calibration:
    """What the server charges a request, learned from ``x-ratelimit-remaining-tokens``.

    Between two answers ``i`` and ``j`` (``j`` admitted ``span`` or more requests
    later), the server's remaining budget fell by what it charged the requests
    admitted in between, less what it refilled meanwhile::

        charged = remaining_i - remaining_j + refill x (t_j - t_i)

    One sample is that charge with the estimates and the number of the requests
    admitted in (i, j]. A request refused with a 429 was not charged: it is left
    out once its answer is known. Samples are taken only while the budget is below
    its top (a full bucket wastes its refill) and above zero (a server may floor it).

    A server's count differs from the estimate in structure, not only by a factor:
    it may scale the prompt and not the reserve, add tokens per message, skip tool
    definitions. So the charge is modelled per request as ``slope x estimate + base``,
    fitted to the recent samples by weighted least squares on their mean estimate
    and mean charge per request. The fit keeps the quota's view exactly: over the
    samples, the modelled charge sums to what the server charged (a ratio of sums).
    When the requests are all alike, the slope cannot be told from the base, and
    the model falls back to the ratio of sums (``base`` 0); in between, the fitted
    slope is trusted as far as the sizes vary (``SPREAD``). Samples further than
    ``TRIM`` times from the median are left out, so one reordered answer cannot move it.

    :param refill: the server's refill in its tokens per second (TPM/60) when the quota
        is given; None: assume Azure's 10-second bucket, whose top is the most ever seen remaining.
    """

    def __init__(self, clock: Clock, refill: float | None, *, span: int = 8, keep: int = 96) -> None:
        self.clock, self.refill, self.span = clock, refill, span
        self.samples: deque[tuple[float, float, int]] = deque(maxlen=keep)  # (charged, estimated, requests)
        self._seq = 0
        self._cum = 0.0
        self._refused: deque[tuple[int, float]] = deque(maxlen=256)  # (seq, estimate) answered 429
        self.forget()

    def forget(self) -> None:
        """Drop what was learned from the header (it turned out not to be a budget): the charge is the estimate."""
        self.slope, self.base = 1.0, 0.0
        self.ratio = 1.0  # the modelled charge per unit of estimate over the recent requests (a ratio of sums)
        self._unfitted = 0  # samples taken since the last fit
        self.samples.clear()
        self._seen: deque[tuple[int, float, float, int]] = deque(maxlen=4 * self.span)  # seq, sent_at, cum, left
        self._most = 0

    def admit(self, estimate: float) -> Ticket:
        self._seq += 1
        self._cum += estimate
        return Ticket(self._seq, self.clock(), self._cum, estimate)

    def charge(self, estimate: float) -> float:
        """What the server will charge a request of this estimate, in its units."""
        return max(self.slope * estimate + self.base, 0.1 * self.slope * estimate)

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
        refused = [e for s, e in self._refused if seq < s <= ticket.seq]
        estimated, requests = ticket.cum - cum - sum(refused), ticket.seq - seq - len(refused)
        # a budget at 0 may be floored (the server refused), one at the top may have spilled its refill
        clean = remaining > 0 and was + refilled < self._most
        if clean and estimated > 0 and requests > 0 and (charged := was - remaining + refilled) > 0:
            self.samples.append((charged, estimated, requests))
            self._unfitted += 1
            # consecutive samples share most of their requests: refitting once per span loses nothing
            if len(self.samples) == 3 or (self.learned and self._unfitted >= self.span):
                self._fit()

    def _fit(self) -> None:
        middle = statistics.median(c / e for c, e, _ in self.samples)
        kept = [s for s in self.samples if middle / TRIM <= s[0] / s[1] <= middle * TRIM]
        requests = sum(n for _, _, n in kept)
        mean_e = sum(e for _, e, _ in kept) / requests  # per request, weighted by each sample's requests
        mean_c = sum(c for c, _, _ in kept) / requests
        var = sum(n * (e / n - mean_e) ** 2 for _, e, n in kept) / requests
        cov = sum(n * (e / n - mean_e) * (c / n - mean_c) for c, e, n in kept) / requests
        ratio = min(10.0, max(0.1, mean_c / mean_e))  # the ratio of sums
        spread = var / mean_e**2  # the squared coefficient of variation of the sizes
        trust = spread / (spread + SPREAD**2)
        fitted = cov / var if var > 0 else ratio
        self.slope = min(10.0, max(0.05, trust * fitted + (1 - trust) * ratio))
        self.base = mean_c - self.slope * mean_e  # the modelled charges sum to what was charged
        self.ratio, self._unfitted = ratio, 0

    @property
    def learned(self) -> bool:
        return len(self.samples) >= 3

    @property
    def admitted(self) -> int:
        """Requests admitted so far."""
        return self._seq

    @property
    def most_remaining(self) -> int:
        """The most the server ever reported left: its bucket's size, as far as is known."""
        return self._most

    def refill_rate(self) -> float:
        """The server's refill per second: TPM/60 when given, else a tenth of the most it ever had left."""
        return self.refill if self.refill is not None else self._most / 10

    def in_flight(self, ticket: Ticket) -> float:
        """What the server charged the requests admitted after ``ticket``: sent, not yet counted in its answer."""
        return self.slope * (self._cum - ticket.cum) + self.base * (self._seq - ticket.seq)
