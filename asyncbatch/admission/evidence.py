"""Budget headers as evidence, not orders: a remaining budget that the server's own admissions contradict is unknown.

``x-ratelimit-remaining-tokens`` and ``-requests`` are a server's word about its budget, and
servers have been seen to say 0 or -1 on every answer while refusing nothing (Azure's
Responses API, for one). Followed to the letter, a 0 on every answer holds each request until
the budget "refills", and a run crawls. So each header is judged by what the server does.
"""

from __future__ import annotations

from collections import deque

from .calibration import Ticket

LEAST = 0.1  # no server charges less than this share of the client's estimate (calibration's bound too)


class Testimony:
    """Whether one budget header is believable, judged by what the server admitted.

    Between two answers ``i`` and ``j`` (``j`` admitted ``span`` or more requests later), a true
    budget falls by what the server charged the requests admitted in between, less what it
    refilled meanwhile::

        charged <= remaining_i - remaining_j + refill x (t_j - t_i) + slack

    When the header said there was no room for them (``remaining_i`` below the least the server
    could have charged them: ``per_estimate`` x their estimates + ``per_request`` each) and that
    least is more than the bound, the header is contradicted: the server admitted what its budget
    said it had no room for. Only such claims are judged: requests sent at once reach the server
    in any order, so a budget with room to spare is never exact about which came first, and it
    holds nothing back anyway.

    A refill much faster than what is sent makes that bound loose, so there is a second reading:
    ``persist`` answers in a row saying there is no room even for the request answered, and
    nothing refused meanwhile. A true budget at its floor refuses (and a client following it leaves
    a margin in it), so that too is a header that is not a budget.

    While the quota is learned, a budget's waits are followed only once it is ``corroborated``: the
    server has refused a request (``Admission`` mirrors a larger budget before: one that holds a whole
    concurrency of requests). Until then the header is heard (the server's charge is learned from it) but holds
    nothing back. Followed, a header that says 5 tokens on every answer paces the run to its own
    claim (its refill is learned from it too), so slowly that too few answers come back to judge it,
    and what does come back is consistent with that claim.

    After ``against`` contradictions in the last ``keep`` judgements, or that run of answers, the
    header is discounted (``hear`` returns None) until the server refuses a request
    (``on_refused``): a refusal shows it keeps a budget after all, and its word is heard again,
    and judged again.

    :param per_estimate: the least charge per unit of a request's estimate (tokens: ``LEAST``; requests: 0).
    :param per_request: the least charge per request (tokens: 0; requests: 1).
    """

    __test__ = False  # not a test class, whatever pytest reads into its name

    def __init__(
        self,
        *,
        per_estimate: float,
        per_request: float,
        span: int = 8,
        keep: int = 4,
        against: int = 3,
        persist: int = 16,
    ) -> None:
        self.per_estimate, self.per_request, self.span, self.against = per_estimate, per_request, span, against
        self.persist = persist
        self.believed = True
        self.corroborated = False  # the server refused a request: it does keep a budget
        self._no_room = 0  # answers in a row saying there is no room, with nothing refused
        self._seen: deque[tuple[int, float, float, int]] = deque(maxlen=4 * span)  # seq, sent_at, cum, remaining
        self._refused: deque[tuple[int, float]] = deque(maxlen=256)  # (seq, estimate) answered 429
        self._verdicts: deque[bool] = deque(maxlen=keep)  # True: contradicted

    def hear(self, ticket: Ticket, remaining: int | None, *, refill: float, slack: float = 0.0) -> int | None:
        """The header's value on this answer if it is believed, else None; every value is judged, heard or not.

        :param refill: what the budget refills per second, as far as is known (its own claim, or the quota given).
        :param slack: what the budget may regain at once besides (a new 1-second slice of requests).
        """
        if remaining is None:
            return None
        room_for_one = remaining >= self.per_estimate * ticket.estimate + self.per_request
        self._no_room = 0 if room_for_one else self._no_room + 1
        if self._no_room >= self.persist:
            self.believed = False
        earlier = next((o for o in reversed(self._seen) if o[0] <= ticket.seq - self.span), None)
        self._seen.append((ticket.seq, ticket.sent_at, ticket.cum, remaining))
        if earlier is not None:
            seq, sent_at, cum, was = earlier
            refused = [e for s, e in self._refused if seq < s <= ticket.seq]
            estimated, requests = ticket.cum - cum - sum(refused), ticket.seq - seq - len(refused)
            least = self.per_estimate * estimated + self.per_request * requests
            room = was - remaining + refill * max(0.0, ticket.sent_at - sent_at) + slack
            if was < least:  # it said there was no room for what came next (the only claim that holds a run back)
                self._verdicts.append(least > room)
                if sum(self._verdicts) >= self.against:
                    self.believed = False
        return remaining if self.believed else None

    def on_refused(self, ticket: Ticket) -> None:
        """A 429: that request was not charged; and the server does keep a budget: hear its word again."""
        self._refused.append((ticket.seq, ticket.estimate))
        self.corroborated = True
        self._no_room = 0
        if not self.believed:
            self.believed = True
            self._verdicts.clear()
