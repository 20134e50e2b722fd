"""Where each attempt goes, and when: the deployments of a run (one endpoint is a pool of one).

Each deployment is a ``Route`` with its own transport and its own admission (``admission/admission.py``).
The router admits one attempt at a time, retries first, then first come first served (``admission/turn.py``),
and looks at every route at once:

* it sends the attempt to a route that can admit it now, preferring the best (lowest) priority, and among
  equals the one with the most room left (the fullest meters, then the fewest requests in flight);
* when none can, it waits for the soonest; the servers' holds on it (a 429's pause, a learned rate, a
  window's turn) are bounded by ``--max-wait`` in all, however late a loaded loop wakes;
* a retry after a 429, a 5xx or an outage avoids the route that failed while another can take it now, and
  never waits for another because of it;
* a route that fails authentication or has no such deployment (at once before its first success, after a
  few refusals in a row once it has worked), that is unreachable from the start, or whose quota is
  exhausted, is set aside with a message; the run stops when every route is, for the last one's reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..admission.admission import PATIENT, READY, Admission, Hold
from ..admission.calibration import Ticket
from ..admission.turn import NEW, RETRY, Turn
from ..clock import NAP, Clock, Sleep
from ..config import Deployment, Patience, TransportOptions
from ..errors import PAST_MAX_WAIT, FatalAPIError, StopRun
from ..protocol import under_v1
from ..redact import Redactor
from .transport import AiohttpTransport, Transport


@dataclass(eq=False)
class Route:
    """One deployment of a run, with its own counters (what the display shows of it)."""

    deployment: Deployment
    transport: Transport
    admission: Admission
    aside: FatalAPIError | StopRun | None = None  # why it was set aside, if it was
    succeeded: int = 0
    in_flight: int = 0
    throttled: int = 0
    failed: int = 0  # failed attempts
    refusals: int = 0  # refusals of the key or the deployment in a row, with no other answer between them
    answered_sent_at: float = float("-inf")  # when the latest request answered was sent (admission's clock)

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def any_success(self) -> bool:
        return self.succeeded > 0

    @property
    def names_model(self) -> bool:
        """Whether the request body must name this deployment (the v1 API and OpenAI-compatible servers)."""
        endpoint = self.deployment.endpoint
        return under_v1(endpoint.kind, endpoint.api_version)

    @property
    def learned_tpm(self) -> float | None:
        return self.admission.learned_tpm

    @property
    def charge_ratio(self) -> float | None:
        return self.admission.ratio

    def state(self) -> str:
        if self.aside is not None:
            return f"set aside: {self.aside}"
        return self.admission.status() or "ok"

    def notice(self) -> str | None:
        """What the user should know of its admission now (an outage, a wait and its source), if anything."""
        return self.admission.status()

    def waiting(self) -> float | None:
        """Seconds left of the wait its admission knows of (0: none); None once it is set aside."""
        return None if self.aside is not None else self.admission.waiting()


class Router:
    """Chooses a route for each attempt and waits until it may go. ``on_aside(message)`` hears of a route set
    aside while others still work."""

    def __init__(
        self,
        routes: list[Route],
        *,
        sleep: Sleep,
        on_aside: Callable[[str], None],
        clock: Clock = time.monotonic,
        patience: Patience = PATIENT,
    ) -> None:
        if not routes:
            raise ValueError("a router needs at least one route")
        self.routes, self.sleep, self.on_aside, self.clock = routes, sleep, on_aside, clock
        self.max_wait = patience.max_wait
        self._turn = Turn()  # one admission at a time: retries first, then first come first served
        self._last = routes[0]  # the route set aside last

    @classmethod
    async def open(
        cls,
        deployments: Sequence[Deployment],
        transport: TransportOptions,
        patience: Patience,
        *,
        concurrency: int,
        shared_by: int = 1,
        redactor: Redactor,
        on_aside: Callable[[str], None],
        sleep: Sleep,
        clock: Clock,
    ) -> Router:
        """A route per deployment, each with its own admission and transport (close with ``close``)."""
        routes: list[Route] = []
        try:
            for deployment in deployments:
                admission = Admission(
                    deployment.tpm, deployment.rpm, patience, concurrency=concurrency, shared_by=shared_by, clock=clock
                )
                opened = await AiohttpTransport.open(deployment.endpoint, transport, redactor=redactor)
                routes.append(Route(deployment, opened, admission))
        except BaseException:
            await cls.close_all(routes)
            raise
        return cls(routes, sleep=sleep, on_aside=on_aside, clock=clock, patience=patience)

    @staticmethod
    async def close_all(routes: Sequence[Route]) -> None:
        for route in routes:
            await route.transport.close()

    async def close(self) -> None:
        await self.close_all(self.routes)

    @property
    def live(self) -> list[Route]:
        return [r for r in self.routes if r.aside is None]

    async def acquire(
        self, estimate: float, avoid: Route | None = None, *, retry: bool = False
    ) -> tuple[Route, Ticket]:
        """A route and its admission ticket for one attempt (``retry``: not the job's first; it goes first).

        :raises StopRun: every live route has been down for longer than --max-outage, or the servers' holds on
            this attempt passed --max-wait.
        """
        priority, seq = RETRY if retry else NEW, self._turn.ticket()
        await self._turn.wait(priority, seq)
        try:
            return await self._admit(estimate, avoid, priority, seq)
        finally:
            self._turn.release(seq)

    async def _admit(self, estimate: float, avoid: Route | None, priority: int, seq: int) -> tuple[Route, Ticket]:
        """``acquire``'s wait, holding the turn (which a new request hands to a waiting retry during a round)."""
        held = 0.0  # seconds the servers' holds kept this request
        while True:
            if priority == NEW and any(r.admission.refusing for r in self.routes) and self._turn.retry_waiting():
                self._turn.release(seq)  # the probe a round of refusals sends is a request refused before
                await self._turn.wait(priority, seq)  # after the retries, in its own place among the new
                continue
            route, hold = self._choose(estimate, avoid, priority == RETRY)
            if hold.wait <= 0:
                return route, route.admission.take(estimate, retry=priority == RETRY)
            wait = hold.wait if hold.final else min(hold.wait, NAP)  # a rate may change meanwhile: look again
            if hold.by_server:  # look again ten times within --max-wait, and just after it would be passed
                self._check_held(held)
                wait = min(wait, self.max_wait / 10, max(NAP / 10, self.max_wait - held + NAP / 10))
            before = self.clock()
            await self.sleep(wait)
            if hold.by_server:
                held += self.clock() - before  # the clock, not the wait asked for: a loaded loop oversleeps

    def _choose(self, estimate: float, avoid: Route | None, retry: bool) -> tuple[Route, Hold]:
        """The best route that can admit now, else the soonest, with what holds every route (the servers, if they
        hold each; waited out whole, if each is); ``avoid`` only if no other can admit now.

        Avoiding is a preference, never a wait: a retry that waited for the other routes while the
        one it avoids could admit would hold up every attempt behind it (admission is first come,
        first served), and a pool with one dead member would sit idle.
        """
        if not (live := self.live):
            raise self._verdict()  # every route was set aside while this attempt waited
        down = all(r.admission.breaker.is_open for r in live)  # then how long: over --max-outage stops the run
        if down and all(over := [r.admission.outage_over_limit() for r in live]):
            raise StopRun(self._joined(live, [str(o) for o in over]))
        holds = [(r, r.admission.readiness(estimate, retry)) for r in live]
        ready = [r for r, hold in holds if hold.wait <= 0]
        ready = [r for r in ready if r is not avoid] or ready
        if len(ready) == 1:
            return ready[0], READY
        if ready:
            best = min(r.deployment.priority for r in ready)
            pick = max(
                (r for r in ready if r.deployment.priority == best),
                key=lambda r: (r.admission.headroom(), -r.in_flight),  # the most room, then the least busy
            )
            return pick, READY
        route, soonest = min(holds, key=lambda rh: (rh[1].wait, rh[0].deployment.priority))
        every = [hold for _, hold in holds]
        return route, Hold(soonest.wait, all(h.by_server for h in every), all(h.final for h in every))

    def _check_held(self, held: float) -> None:
        """However the holds add up and however late the loop runs, none keeps a request past ``max_wait``."""
        if held > self.max_wait:
            live = self.live
            holders = self._joined(live, [r.admission.holder() for r in live])
            raise StopRun(
                f"{holders}: the next request has been held for {held:,.0f} s, {PAST_MAX_WAIT} ({self.max_wait:g} s)"
            )

    @staticmethod
    def _joined(routes: list[Route], texts: list[str]) -> str:
        return "; ".join(f"{r.name}: {t}" for r, t in zip(routes, texts, strict=True))

    def set_aside(self, route: Route, reason: FatalAPIError | StopRun) -> None:
        """Stop sending to ``route`` for the rest of the run.

        :raises FatalAPIError: it was the last route, and some route was refused for good (authentication), or
            every route was unreachable.
        :raises StopRun: it was the last route, and one may come back (a quota exhausted; the others at most
            unreachable).
        """
        if route.aside is not None:
            return
        route.aside, self._last = reason, route
        if others := len(self.live):
            self.on_aside(f"deployment {route.name} set aside: {reason}; {others} still working")
            return
        raise self._verdict()

    def _verdict(self) -> FatalAPIError | StopRun:
        """Every route is set aside: the run stops for the last one's reason, the others' said with it."""
        last = self._last
        before = [f"{r.name}: {r.aside}" for r in self.routes if r is not last]
        message = f"{last.aside}" + (f"; every deployment was set aside ({'; '.join(before)})" if before else "")
        fatal = [r.aside for r in self.routes if isinstance(r.aside, FatalAPIError)]
        waits = any(isinstance(r.aside, StopRun) for r in self.routes)
        if not fatal or (waits and all(f.kind == "unreachable" for f in fatal)):
            # a deployment that will take requests again later (its quota exhausted) makes the run resumable,
            # whatever became of the others short of being refused for good: the same command goes on with it
            return StopRun(message)
        return FatalAPIError(fatal[-1].kind, message, cause=fatal[-1].cause)
