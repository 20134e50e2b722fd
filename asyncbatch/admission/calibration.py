"""The server's charge per unit of the client's estimate, learned from its rate-limit headers."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from ..clock import Clock


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request, as calibration needs it."""

    seq: int
    sent_at: float
    cum: float  # the estimates of every request admitted up to and including this one
    estimate: float
    retry: bool = False  # a request refused before, asking again


class Seen(NamedTuple):
    """One answer's budget, as the server reported it on admitting the request of ``seq``."""

    seq: int
    sent_at: float
    cum: float
    left: int  # x-ratelimit-remaining-tokens
    requests_left: int | None  # x-ratelimit-remaining-requests, if sent


SLICE = 1.0  # seconds: the shortest slice a server counts requests in (Azure: 1 s, or 10 s)


class Draw(NamedTuple):
    """Requests the server admitted between two of our answers (by anyone), and ours among them."""

    admitted: int
    ours: int


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

    The budget is the deployment's, and other clients (the workers of one job, other runs) may draw
    on it too: their charges fall in the same drop, and counted as ours they would make our requests
    look up to ten times dearer. ``x-ratelimit-remaining-requests`` tells: it falls by one for every
    request the server admits, whoever sent it, so a drop of more than our own requests between two
    answers shows another client's (``shared``). From then on a sample spans only answers with none
    but ours admitted in between (``_earlier``); with no such header, the drop is taken as ours.

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
        self._seen: deque[Seen] = deque(maxlen=4 * self.span)
        self._most = 0
        self.shared = False  # another client was seen drawing on the same budget

    def admit(self, estimate: float) -> Ticket:
        self._seq += 1
        self._cum += estimate
        return Ticket(self._seq, self.clock(), self._cum, estimate)

    def charge(self, estimate: float) -> float:
        """What the server will charge a request of this estimate, in its units."""
        return max(self.slope * estimate + self.base, 0.1 * self.slope * estimate)

    def on_refused(self, ticket: Ticket) -> None:
        self._refused.append((ticket.seq, ticket.estimate))

    def on_remaining(self, ticket: Ticket, remaining: int, requests_left: int | None = None) -> Draw | None:
        """An answer's ``x-ratelimit-remaining-tokens`` (and ``-requests``, which tells whose draws it holds).

        Returns what the server admitted since our previous answer, ours among them, when it can tell.
        """
        self._most = max(self._most, remaining)
        earlier = self._earlier(ticket, requests_left)
        draw = self._draw(ticket, requests_left)
        self._seen.append(Seen(ticket.seq, ticket.sent_at, ticket.cum, remaining, requests_left))
        if earlier is not None:
            self._sample(earlier, ticket, remaining)
        return draw

    def _draw(self, ticket: Ticket, requests_left: int | None) -> Draw | None:
        """The requests the server admitted between our previous answer and this one, and ours among them."""
        previous = max((o for o in self._seen if o.seq < ticket.seq), default=None)
        if previous is None or (fell := self._fell(previous, ticket, requests_left)) is None:
            return None
        # a fall short of ours is kept too: a request reaching the server out of order is counted in one draw
        # and missed in another, and so cancels out in the sums
        return Draw(fell, self._between(previous, ticket)[1])

    def _fell(self, earlier: Seen, ticket: Ticket, requests_left: int | None) -> int | None:
        """How many requests the server admitted between two answers, by anyone; None when it cannot tell: no
        header, a rise (a new slice of requests began in between), or more than half a slice apart."""
        if earlier.requests_left is None or requests_left is None or requests_left > earlier.requests_left:
            return None
        if ticket.sent_at - earlier.sent_at > SLICE / 2:  # a new slice may have begun and, by chance, be as far on
            return None
        return earlier.requests_left - requests_left

    def _sample(self, earlier: Seen, ticket: Ticket, remaining: int) -> None:
        refilled = self.refill_rate() * max(0.0, ticket.sent_at - earlier.sent_at)
        estimated, requests = self._between(earlier, ticket)
        # a budget at 0 may be floored (the server refused), one at the top may have spilled its refill
        clean = remaining > 0 and earlier.left + refilled < self._most
        charged = earlier.left - remaining + refilled
        # Alone, a sample spans ``span`` requests, and a charge of 0 or less is a misreading. Shared, it spans one
        # or two, and the refill over the gap between two sends (a few ms of a busy loop's jitter) can be as large
        # as their charge, either way: every such sample is kept, and the errors cancel in the sums (``_fit``).
        if clean and estimated > 0 and requests > 0 and (charged > 0 or self.shared):
            self.samples.append((charged, estimated, requests))
            self._unfitted += 1
            # consecutive samples share most of their requests: refitting once per span loses nothing
            if len(self.samples) == 3 or (self.learned and self._unfitted >= self.span):
                self._fit()

    def _earlier(self, ticket: Ticket, requests_left: int | None) -> Seen | None:
        """The answer to measure the budget's drop from, if any.

        Alone on the budget: the latest answered ``span`` or more requests before. Once others are seen
        drawing on it (``shared``), the drop holds their charges too, which no estimate of ours can
        account for: the furthest answer back (up to ``span`` requests) with only ours admitted in between.
        """
        recent = sorted((o for o in self._seen if ticket.seq - self.span <= o.seq < ticket.seq), reverse=True)
        if not self.shared and any(self._alone(o, ticket, requests_left) is False for o in recent):
            self._shared()
        if not self.shared:
            return next((o for o in reversed(self._seen) if o.seq <= ticket.seq - self.span), None)
        furthest = None
        for seen in recent:  # nearest first: an interval holding another's request holds it in every longer one
            if self._alone(seen, ticket, requests_left) is not True:
                break
            furthest = seen
        return furthest

    def _shared(self) -> None:
        """Another client draws on the budget: what was learned so far may hold its charges, and is dropped."""
        self.shared = True
        self.samples.clear()
        self.slope, self.base, self.ratio, self._unfitted = 1.0, 0.0, 1.0, 0

    def _alone(self, earlier: Seen, ticket: Ticket, requests_left: int | None) -> bool | None:
        """Whether the server admitted exactly our requests between two answers: True when its remaining
        requests fell by just their number; False when by more (another client draws on the budget); None
        when it cannot tell: no header, a rise (a new slice of requests began in between), or a smaller
        fall (one of ours reached it after the later answer's: the drop in tokens misses its charge)."""
        if (fell := self._fell(earlier, ticket, requests_left)) is None:
            return None
        ours = self._between(earlier, ticket)[1]
        return None if fell < ours else fell == ours

    def _between(self, earlier: Seen, ticket: Ticket) -> tuple[float, int]:
        """The estimates and the number of our requests admitted after ``earlier`` up to ``ticket``, less refusals."""
        refused = [e for s, e in self._refused if earlier.seq < s <= ticket.seq]
        return ticket.cum - earlier.cum - sum(refused), ticket.seq - earlier.seq - len(refused)

    def _fit(self) -> None:
        middle = statistics.median(c / e for c, e, _ in self.samples)
        if self.shared:  # a sample is one or two requests, its error the refill's: trimmed as much above as below
            off = statistics.median(abs(c - middle * e) for c, e, _ in self.samples)
            kept = [s for s in self.samples if abs(s[0] - middle * s[1]) <= TRIM * off + 2]  # +2: headers' rounding
        else:
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
