"""Admission: when the next request may be sent to one deployment, and what every answer teaches about it.

Every reaction to the server's rate limiting lives here (the why of each, at length: docs/design.md).
What may hold a request is a list of gates (``gates.py``), asked in one place, ``readiness``: the
outage ``Breaker``; the ``CooldownGate`` a 429 closes for everyone, even a request already waiting; a
fixed window's turn (``adaptive.FixedWindows``); the first wave's answer (adaptive mode), or a round of
hint-less 429s' probe (``refusals.Rounds``); and the meters, token buckets shaped like Azure's windows
(requests over 1 s, tokens over about 10 s) instead of a whole minute's quota released at start-up:
the quota given, or what the server's headers and refusals taught (``AdaptiveRate``, a mirror of its own
budget). Every meter is charged in the server's units, as ``calibration.Calibration`` learned them;
budget headers are evidence, not orders (``evidence.Testimony``).

The router (``live/router.py``) waits on ``readiness`` and admits with ``take``. A pause longer than the
run is willing to wait (an outage past ``max_outage``, a 429 asking for more than ``max_wait``, 429s and
nothing else for that long) raises ``StopRun``: the run stops like an interrupt, resumable. Everything here
is pure apart from the injected clocks, so the policy is tested without sleeping.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Mapping
from typing import NamedTuple

from ..clock import NAP, Clock
from ..config import Patience
from ..errors import PAST_MAX_OUTAGE, PAST_MAX_WAIT, AttemptError, NoAnswer, Outage, RateLimited, StopRun
from ..protocol import REMAINING_REQUESTS, REMAINING_TOKENS, int_header
from .adaptive import MINUTE, WINDOW_USED, AdaptiveRate, FixedWindows
from .calibration import SLICE, Calibration, Ticket
from .evidence import LEAST, Testimony
from .gates import MARGIN, Breaker, Bucket, CooldownGate, Gate, RequestShare, request_bucket, token_bucket
from .refusals import Rounds

PROBE = 32  # adaptive mode: requests sent before the server's first answer says how much it admits
PACE = 2.0  # adaptive mode: requests go at most this many times as fast as the concurrency sustains, spread
PATIENT = Patience()  # the defaults: five minutes for a 429, half an hour for an outage

NO_HINT = "429 with no hint from the server: our own backoff"
LEARNED = "the rate learned from the server"
UNREACHABLE_AFTER = 15.0  # seconds of no answer at all, from a start with no answer yet, before giving up


def header_pause(headers: Mapping[str, str], estimate: float, token_rate: float | None) -> float:
    """Seconds to hold admission when the server says its budget is about to run out.

    Only an imminent 429 pauses: fewer tokens left than the next request needs,
    or no requests left in the current second.
    """
    tokens = int_header(headers, REMAINING_TOKENS)
    requests = int_header(headers, REMAINING_REQUESTS)
    pause = 0.0
    if tokens is not None and tokens < estimate:
        pause = (estimate - tokens) / token_rate if token_rate else 0.25
    if requests is not None and requests <= 0:
        pause = max(pause, 0.1)
    return min(pause, 5.0)


class Hold(NamedTuple):
    """What holds a request: for how long, whether the server does, and whether it is waited out whole."""

    wait: float
    by_server: bool
    final: bool


READY = Hold(0.0, False, False)


def wall_time(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


class FirstWave:
    """Adaptive mode knows nothing of the server until it answers: a first wave of ``PROBE`` requests goes, and
    the rest wait for the first answer, whose headers tell the budget (a burst of the whole concurrency would
    be refused past the server's first second). Runs sharing the quota send a wave of their part each. A gate
    (``gates.Gate``): an answer awaited."""

    by_server, source, final = False, None, False

    def __init__(self, waiting: bool, shared_by: int = 1) -> None:
        self.waiting, self.sent, self.probe = waiting, 0, max(1, PROBE // shared_by)

    def wait(self, charge: float, retry: bool = False) -> float:
        return NAP / 10 if self.waiting and self.sent >= self.probe else 0.0  # look again soon


class Admission:
    """What every attempt to one deployment passes before it is sent, and what every answer tells it.

    :param tpm: tokens per minute in the server's units, or None.
    :param rpm: requests per minute, or None. With neither, the rate is learned (``AdaptiveRate``).
    :param patience: ``max_wait``, the longest 429 pause (or run of 429s with no success) to wait out, and
        ``max_outage``, the longest outage to ride out (longer stops the run).
    :param concurrency: requests in flight at most: the outage threshold scales down with it, and adaptive
        pacing spreads it over a latency.
    :param shared_by: runs drawing on the same quota at once: each paces requests at its part of the RPM
        until the server's answers show what the others send (``gates.RequestShare``).
    :param clock: monotonic seconds; injected with ``wall`` and ``rng`` so tests drive time.
    """

    def __init__(
        self,
        tpm: int | None,
        rpm: int | None,
        patience: Patience = PATIENT,
        *,
        concurrency: int = 20,
        shared_by: int = 1,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.clock, self.wall = clock, wall
        self.rng = rng or random.Random()
        self.max_wait, self.max_outage, self.concurrency = patience.max_wait, patience.max_outage, concurrency
        self.gate = CooldownGate(clock)
        self.rounds = Rounds(clock, self.rng)
        self.breaker = Breaker(clock, threshold=min(8, concurrency + 1))
        self.calibration = Calibration(clock, tpm / 60 if tpm else None)
        self.windows = FixedWindows(wall)
        self.tokens = token_bucket(tpm, clock) if tpm else None
        self.rpm, self.shared_by = rpm, shared_by
        self.requests = request_bucket(rpm / shared_by, clock) if rpm else None
        self.request_share = RequestShare(clock)  # what part of the RPM is ours, when others draw on it too
        self._first_answer = math.inf  # when the first answer came (monotonic)
        self.adaptive = AdaptiveRate(clock) if tpm is None and rpm is None else None
        self.learned: Bucket | None = None  # adaptive mode, once a rate is learned
        self.mirror: Bucket | None = None  # adaptive mode: the server's own token budget, from its headers
        self.pace: Bucket | None = None  # adaptive, with no request rate known: the concurrency spread over a latency
        self.first_wave = FirstWave(waiting=self.adaptive is not None, shared_by=shared_by)
        self.token_rate = MARGIN * tpm / 60 if tpm else None
        self.said_tokens = Testimony(per_estimate=LEAST, per_request=0.0)  # x-ratelimit-remaining-tokens, judged
        self.said_requests = Testimony(per_estimate=0.0, per_request=1.0)  # x-ratelimit-remaining-requests, judged
        self.learned_rpm: int | None = None  # adaptive mode, from x-ratelimit-remaining-requests
        self._most_requests = 0  # the most requests the server ever said it had left in a second, plus one
        self._round_rate = 0.0  # tokens a second the server was admitting when the current round of refusals began
        self._told = False  # the learned rate was set by a 429 that said when to come back, not only guessed
        self._followed = 0.0  # what following the server's budget took from the token meter, net
        self._latency: float | None = None  # seconds from admission to a success, smoothed
        self._last_ok = clock()
        self._wait_notice: tuple[float, str] | None = None  # (until, who asked): the longest wait now running
        self.answered = False  # any HTTP answer yet, of any status (see ``never_reached``)

    def readiness(self, estimate: float, retry: bool = False) -> Hold:
        """Seconds until a request of ``estimate`` could be admitted (0: now), and whether the server is what holds
        it (a 429's pause, a learned rate or budget, a window's turn: what ``max_wait`` bounds) rather than the
        quota given, an outage or an answer awaited; and whether it is waited out whole (``Gate.final``). The first
        gate not ready says; never waits, never raises.

        :param retry: a request refused before, asking again: a round of refusals' probe.
        """
        charge = self.calibration.charge(estimate)
        for gate in self._gates():
            if (wait := gate.wait(charge, retry)) > 0:
                if gate.source is not None:
                    self._waiting(wait, gate.source)
                return Hold(wait, gate.by_server, gate.final)
        return READY

    def _gates(self) -> list[Gate]:
        return [self.breaker, self.gate, self.windows, self.first_wave, self.rounds, *self._meters()]

    def _meters(self) -> list[Bucket]:
        """The meters now: the quota given, or what the server taught (the adaptive rate follows it as it changes)."""
        meters = [m for m in (self.requests or self.pace, self.tokens, self.mirror) if m is not None]
        if self.adaptive is not None and not self.windows.detected and (rate := self.adaptive.tick()) is not None:
            if self.learned is None:
                self.learned = Bucket(rate, rate, self.clock, by_server=True)
            elif abs(self.learned.rate - rate) > 0.01 * rate:
                self.learned.set_rate(rate, rate)
            meters.append(self.learned)
        return meters

    def take(self, estimate: float, *, retry: bool = False) -> Ticket:
        """Admit now, once ``readiness`` said 0: every meter charged in the server's units (``Calibration.charge``)."""
        charge = self.calibration.charge(estimate)
        for meter in self._meters():
            meter.admit(charge)
        self.breaker.on_admit()
        self.rounds.on_admit()
        self.windows.on_sent(charge)
        self.first_wave.sent += 1
        if self.adaptive is not None:
            self.adaptive.on_admit(charge)
        ticket = self.calibration.admit(estimate)
        return dataclasses.replace(ticket, retry=True) if retry else ticket

    def headroom(self) -> float:
        """How full the fullest-drawn meter is, 0 to 1 (1: no meter, or all full): the pool's tie-break."""
        meters = [m for m in (self.tokens, self.mirror, self.requests, self.learned) if m is not None]
        return min((m.level / m.capacity for m in meters if m.capacity > 0), default=1.0)

    @property
    def refusing(self) -> bool:
        """A round of hint-less 429s is running: its probes are retries (``refusals.Rounds``)."""
        return self.rounds.began is not None

    def holder(self) -> str:
        """Who holds the next request now, for the message when the holds pass ``max_wait``."""
        return self._wait_notice[1] if self._wait_notice is not None else LEARNED

    def never_reached(self) -> bool:
        """Whether to give up on an endpoint that has never answered: the breaker has been open, on failures
        with no HTTP answer at all, for ``UNREACHABLE_AFTER`` seconds (or ``max_outage``, if shorter)."""
        since = self.breaker.open_since
        if self.answered or since is None:
            return False
        return self.clock() - since >= min(self.max_outage, UNREACHABLE_AFTER)

    def outage_over_limit(self) -> str | None:
        """The --max-outage message, once the endpoint has been down longer than that; else None.

        An endpoint that never answered is not "down": ``never_reached`` gives up on it first.
        """
        since = self.breaker.open_since
        if since is None or not self.answered or self.clock() - since <= self.max_outage:
            return None
        status = self.breaker.status  # an endpoint that answers HTTP 500 to everything is not "unreachable"
        down = "been unreachable" if status is None else f"answered HTTP {status} to every request"
        return f"the endpoint has {down} since {self._wall_at(since)}, {PAST_MAX_OUTAGE} ({self.max_outage:g} s)"

    def _wall_of(self, monotonic: float) -> float:
        return self.wall() - (self.clock() - monotonic)

    def _wall_at(self, monotonic: float) -> str:
        return wall_time(self._wall_of(monotonic))

    def on_reply(self, headers: Mapping[str, str], ticket: Ticket) -> None:
        """A success: learn the server's charge, follow its budget, pause before it has to refuse."""
        self._last_ok = self.clock()
        self._first_answer = min(self._first_answer, self._last_ok)
        self.answered, self.first_wave.waiting = True, False
        self.breaker.on_success()
        self._keep_pace(self._last_ok - ticket.sent_at)
        began, streak, pause = self.rounds.began, self.rounds.streak, self.rounds.pause
        if began is not None and self.rounds.on_admitted(ticket.sent_at):
            self._round_ended(began, streak, pause, ticket)
        headers = self._believed(headers, ticket)
        remaining = int_header(headers, REMAINING_TOKENS)
        if remaining is not None:
            draw = self.calibration.on_remaining(ticket, remaining, int_header(headers, REMAINING_REQUESTS))
            self._follow_server(ticket, remaining)
            if draw is not None:
                self.request_share.on_draw(*draw)
            self._share_requests()
        charge = self.calibration.charge(ticket.estimate)
        self.windows.on_admitted(self._wall_of(ticket.sent_at), charge)
        if self.adaptive is not None:
            self._learn_rpm(headers)  # a cap that follows the most the server ever said it had: never small for long
            headers = self._corroborated(headers)  # learning the quota, a budget orders no wait until corroborated
        rate = self.token_rate if self.adaptive is None else self.adaptive.rate
        if pause := header_pause(headers, charge, rate):
            self.gate.close_for(pause)
        if self.adaptive is not None and self.mirror is None:  # a mirrored budget already waits for itself
            self.adaptive.on_headers(headers, charge)

    def _plausible(self, ticket: Ticket) -> bool:
        """Whether a token budget is worth mirroring: the server has refused a request (it keeps one), or the
        most it ever said it had holds a whole concurrency of requests. Mirrored, a budget said to be 5 tokens
        on every answer (refilled, as learned from it, at half a token a second) held a run of 8-token
        requests for minutes, long before enough answers came back to judge it."""
        most = self.calibration.most_remaining
        return self.said_tokens.corroborated or most >= self.concurrency * self.calibration.charge(ticket.estimate)

    def _corroborated(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The budget headers the server has shown it keeps (``evidence.Testimony.corroborated``)."""
        said = ((REMAINING_TOKENS, self.said_tokens), (REMAINING_REQUESTS, self.said_requests))
        doubted = {name for name, testimony in said if not testimony.corroborated and name in headers}
        return {k: v for k, v in headers.items() if k.lower() not in doubted} if doubted else headers

    def _keep_pace(self, latency: float) -> None:
        """Adaptive, with no request rate known: requests go at most PACE times the rate the concurrency sustains.

        Otherwise they leave in waves (a whole concurrency at once, as the first answers return together), and
        a server that runs out of budget in the middle of a wave refuses all of it before the first refusal
        can stop the rest. Spread, only what is sent while that refusal travels is refused.
        """
        if self.adaptive is None:
            return
        self._latency = latency if self._latency is None else 0.9 * self._latency + 0.1 * latency
        rate = PACE * self.concurrency / max(self._latency, 0.001)
        if self.pace is None:
            self.pace = Bucket(PACE, rate, self.clock, per_request=True)
        elif abs(self.pace.rate - rate) > 0.1 * rate:
            self.pace.set_rate(rate, PACE)

    def _believed(self, headers: Mapping[str, str], ticket: Ticket) -> Mapping[str, str]:
        """The budget headers the server's admissions have not contradicted (``evidence.Testimony``)."""
        tokens, requests = int_header(headers, REMAINING_TOKENS), int_header(headers, REMAINING_REQUESTS)
        if tokens is None and requests is None:
            return headers
        self._most_requests = max(self._most_requests, (requests or 0) + 1)
        believed = self.said_tokens.believed, self.said_requests.believed
        tokens = self.said_tokens.hear(ticket, tokens, refill=self.calibration.refill_rate())
        allowance = self._most_requests  # requests a second, as the header itself claims
        requests = self.said_requests.hear(ticket, requests, refill=allowance, slack=allowance)
        if believed[0] and not self.said_tokens.believed:  # what was learned from it is suspect too
            self.calibration.forget()
            self.mirror = None
            if self.tokens is not None and self._followed > 0:
                self.tokens.give(self._followed)  # what following it took from the quota given
            self._followed = 0.0
        if believed[1] and not self.said_requests.believed and self.learned_rpm is not None:
            self.requests, self.learned_rpm = None, None
        kept = {k: v for k, v in headers.items() if k not in (REMAINING_TOKENS, REMAINING_REQUESTS)}
        said = ((REMAINING_TOKENS, tokens), (REMAINING_REQUESTS, requests))
        return kept | {name: str(value) for name, value in said if value is not None}

    def _round_ended(self, began: float, streak: int, pause: float, ticket: Ticket) -> None:
        """The server admitted a request sent since its refusals began: what the round said, judged."""
        self.windows.on_round_end(self._wall_of(began), self._wall_of(ticket.sent_at), pause)
        if streak and self.adaptive is not None and not self.windows.detected:  # its probes were refused too
            self.adaptive.on_throttle(at_least=self._round_rate)

    def _share_requests(self) -> None:
        """Pace requests at our share of the RPM (given or learned), as the server's admissions show it
        (``gates.RequestShare``): every client on the deployment then sends its part, and all of them the RPM."""
        rpm = self.rpm or self.learned_rpm
        if self.requests is None or rpm is None:
            return
        if (part := self.request_share.part()) is None:
            # not read yet: a part of as many as share the quota, for a second of answers; then (too few requests
            # to read it from: a slow deployment) the whole RPM, as the server's 429s and headers keep it
            part = 1 / self.shared_by if self.clock() - self._first_answer < SLICE else 1.0
        target = request_bucket(max(1.0, part * rpm), self.clock)
        if abs(target.rate - self.requests.rate) > 0.05 * max(self.requests.rate, 1.0):
            self.requests.set_rate(target.rate, target.capacity)

    def _learn_rpm(self, headers: Mapping[str, str]) -> None:
        """Adaptive: the most requests the server ever had left in its 1-second slice, plus the one just
        admitted, is its per-second allowance; pace requests like a given RPM of 60 times that."""
        left = int_header(headers, REMAINING_REQUESTS)
        if left is None or (self.learned_rpm is not None and 60 * (left + 1) <= self.learned_rpm):
            return
        self.learned_rpm = 60 * (left + 1)
        self.requests = request_bucket(self.learned_rpm, self.clock, by_server=True)
        self._share_requests()

    def _follow_server(self, ticket: Ticket, remaining: int) -> None:
        """Track the server's own budget: what it reported, plus its refill since, less what was sent since.

        With the quota given, the token meter is set to that (once the charge is learned;
        before, it is only ever lowered). Adaptive, a meter of its own mirrors it, as big as
        the most the server ever had left and refilled like Azure's 10-second bucket. Either
        way a margin is left in the server's bucket: a request's charge is only modelled. The
        budget is the deployment's, whoever else draws on it, so runs that share a deployment
        share its budget by following it.
        """
        refill = self.calibration.refill_rate()
        server_left = remaining + refill * max(0.0, self.clock() - ticket.sent_at)
        budget = server_left - self.calibration.in_flight(ticket)
        if self.tokens is not None:
            before = self.tokens.current()
            self.tokens.set_level(budget - (1 - MARGIN) * self.tokens.capacity, lower_only=not self.calibration.learned)
            self._followed += before - self.tokens.level
        elif self.adaptive is not None and refill > 0 and self._plausible(ticket):
            top = self.calibration.most_remaining
            if self.mirror is None:
                self.mirror = Bucket(top, refill, self.clock, by_server=True)
            elif top > self.mirror.capacity:
                self.mirror.set_rate(refill, top)
            self.mirror.set_level(budget - (1 - MARGIN) * top)

    def on_failure(self, exc: AttemptError, ticket: Ticket) -> bool:
        """A failed attempt: a 429 closes the gate, an outage feeds the breaker.

        Returns whether admission will hold the next attempt (a 429, or the endpoint is
        down): then the failure uses up none of the input's attempts.

        :raises StopRun: a wait longer than the run is willing to sit through.
        """
        self.first_wave.waiting = False
        self.answered |= not isinstance(exc, NoAnswer)
        if isinstance(exc, RateLimited):
            self._refused(ticket)
            self.on_throttle(exc.retry_after, ticket)
            return True
        self.rounds.on_other_failure()
        if isinstance(exc, Outage):
            self.breaker.on_outage(exc.status)
            if exc.retry_after is not None:  # a 5xx that says when to come back: that job waits, if we may
                source = f"the server answered HTTP {exc.status} asking to wait"
                self._check_wait(exc.retry_after, source)
                self._waiting(exc.retry_after, source)
            return self.breaker.is_open
        self.breaker.on_other_failure()
        return False

    def _refused(self, ticket: Ticket) -> None:
        """A 429: the server did not charge that request. What was learned of its rate takes it back."""
        self.calibration.on_refused(ticket)
        self.said_tokens.on_refused(ticket)
        self.said_requests.on_refused(ticket)
        charge = self.calibration.charge(ticket.estimate)
        self.windows.on_refused(self._wall_of(ticket.sent_at), charge)
        if self.adaptive is not None:
            self.adaptive.on_refused(charge)
        if self.learned is not None:
            self.learned.give(charge)

    def on_throttle(self, retry_after: float | None, ticket: Ticket | None = None) -> float:
        """A 429: close the gate for everyone until the server's reset; return the pause.

        With no hint, a round of refusals (``refusals.Rounds``) sets the pause, or, once fixed windows
        are known and this one has used half its budget, the next minute does.
        """
        if retry_after is not None:
            return self._told_to_wait(retry_after)
        if self.windows.used_up():
            pause, source = self.windows.until_boundary(), WINDOW_USED
        elif self.gate.remaining() > 0:  # sent before this round's pause began: the same news, told again
            return self.gate.remaining()
        else:
            fresh = self.rounds.began is None
            sent_at, retry = (self.clock(), False) if ticket is None else (ticket.sent_at, ticket.retry)
            # never past the next minute: a fixed window's turn is always worth a try
            if (pause_or_none := self.rounds.on_refused(sent_at, self.windows.until_boundary(), retry=retry)) is None:
                return 0.0
            if fresh and self.adaptive is not None:
                self._round_rate = self.adaptive.observed_rate()
            pause, source = pause_or_none, NO_HINT
        self._check_wait(pause, source)
        self._check_refused_for()
        self.gate.close_for(pause)
        self._waiting(pause, source)
        return pause

    def _told_to_wait(self, pause: float) -> float:
        """A 429 that says when to come back: the whole run waits that long, if it may."""
        source = "the server answered 429 asking to wait"
        self._check_wait(pause, f"the quota is exhausted: {source}", reset=True)
        self._check_refused_for()
        self.gate.close_for(pause)
        self._waiting(pause, source)
        # From a server whose budget is mirrored, such a 429 is news about that budget (the gate waits
        # for it), not about a rate: the rate is cut only without one. A window's limit is not a rate.
        if self.adaptive is not None and self.mirror is None and not self.windows.detected:
            self.adaptive.on_throttle()
            self._told = True
        return pause

    def _check_refused_for(self) -> None:
        if (throttled := self.clock() - self._last_ok) > self.max_wait:
            raise StopRun(
                f"every request for {throttled:,.0f} s was refused with 429, {PAST_MAX_WAIT} "
                f"({self.max_wait:g} s): the quota looks exhausted"
            )

    def _check_wait(self, pause: float, source: str, *, reset: bool = False) -> None:
        """A wait past ``max_wait``, whatever asked for it, stops the run (resumably), naming who asked."""
        if pause > self.max_wait:
            at = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.wall() + pause)) if pause < 1e8 else None
            when = f"; it {'resets' if reset else 'may answer again'} at about {at}" if at else ""
            raise StopRun(f"{source}: a wait of {pause:,.0f} s, {PAST_MAX_WAIT} ({self.max_wait:g} s){when}")

    def _waiting(self, pause: float, source: str) -> None:
        until = self.clock() + pause
        if self._wait_notice is None or until > self._wait_notice[0]:
            self._wait_notice = (until, source)

    def waiting(self) -> float:
        """Seconds left of the longest wait now running (the one ``status`` names); 0 if none."""
        return max(0.0, self._wait_notice[0] - self.clock()) if self._wait_notice is not None else 0.0

    def status(self) -> str | None:
        """What the user should know about admission right now, if anything: an outage, or a wait and its source."""
        if (since := self.breaker.open_since) is not None:
            return f"endpoint {self.breaker.cause} since {self._wall_at(since)}, retrying"
        if (began := self.rounds.began) is not None and self.rounds.streak:
            left = self.gate.remaining()
            return f"{NO_HINT} since {self._wall_at(began)}, one request asking again at a time" + (
                f": the next in {left:,.0f} s" if left >= 1 else ""
            )
        if self._wait_notice is not None and (left := self._wait_notice[0] - self.clock()) >= 1:
            return f"{self._wait_notice[1]}: waiting {left:,.0f} s"
        return None

    @property
    def ratio(self) -> float | None:
        """The server's charge per unit of the client's estimate, once learned."""
        return self.calibration.ratio if self.calibration.learned else None

    @property
    def learned_tpm(self) -> float | None:
        """The learned limit in the server's tokens per minute, for the display: never more than it admitted.

        With fixed windows, it is the most the server let through in one; otherwise the adaptive
        rate, capped by the most it let through in any wall-clock minute that has ended.
        """
        per_minute = MINUTE / self.windows.period
        if self.windows.detected:
            return self.windows.budget * per_minute
        rate = self.adaptive.rate if self.adaptive is not None else None
        if self.mirror is not None:  # the server's own refill, or the learned rate if that is lower
            rate = self.mirror.rate if rate is None else min(rate, self.mirror.rate)
        if rate is None:
            return None
        if (most := self.windows.most_completed) is not None:
            return min(rate * 60, most * per_minute)
        if self.mirror is None and not self._told:
            return None  # guessed from refusals with no hint alone: not a limit until a whole minute bounds it
        return rate * 60
