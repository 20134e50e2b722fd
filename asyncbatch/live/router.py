"""Where each attempt goes: the one deployment, or the best of a pool (``--deployments``).

Each deployment is a ``Route`` with its own connection and its own admission:
meters, cool-down, calibrated or adaptive rate, and outage breaker
(``admission/admission.py``). With one route, an attempt simply waits in its admission. With
a pool, the router looks at every route at once, first come first served:

* it sends the attempt to a route that can admit it now, preferring the best
  (lowest) priority, and among equals the one with the most room left (the
  fullest meters, then the fewest requests in flight);
* when none can, it waits for the soonest;
* a retry after a 429, a 5xx or an outage avoids the route that failed while
  another can take it now, and never waits for another because of it;
* a route that fails authentication or has no such deployment (at once before
  its first success, after a few refusals in a row once it has worked), that is
  unreachable from the start, or whose quota is exhausted, is set aside with a
  message; the run stops only when every route is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..admission.admission import Admission
from ..admission.calibration import Ticket
from ..clock import NAP, Clock, Sleep
from ..config import Deployment, Patience, RetryPolicy
from ..errors import FatalAPIError, StopRun
from ..protocol import under_v1
from ..redact import Redactor
from .client import Connection


@dataclass(eq=False)
class Route:
    """One deployment of a run, with what the display shows of it."""

    deployment: Deployment
    connection: Connection
    admission: Admission
    aside: str | None = None  # why it was set aside, if it was
    resumable: bool = True  # whether what set it aside may pass (an exhausted quota, an outage)
    succeeded: int = 0
    in_flight: int = 0
    throttled: int = 0
    failed: int = 0  # failed attempts
    any_success: bool = False
    refusals: int = 0  # refusals of the key or the deployment in a row, with no other answer between them

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def names_model(self) -> bool:
        """Whether the request body must name this deployment (the v1 API and OpenAI-compatible servers)."""
        endpoint = self.deployment.endpoint
        return under_v1(endpoint.kind, endpoint.api_version)

    # -- events (from ``attempts``) ----------------------------------------------------------------

    def on_sent(self) -> None:
        self.in_flight += 1

    def on_returned(self) -> None:
        """An attempt is back, answered, failed or cancelled."""
        self.in_flight -= 1

    def on_answer(self) -> None:
        """An answer from this deployment was accepted: it works."""
        self.any_success = True
        self.succeeded += 1
        self.refusals = 0

    def on_accepted(self) -> None:
        """An answer past the key and the deployment (a 4xx of the request's own, a 429): both still work."""
        self.refusals = 0

    def on_refused(self) -> int:
        """The key or the deployment was refused here; how many answers in a row have said so."""
        self.refusals += 1
        return self.refusals

    def on_failure(self, *, throttled: bool) -> None:
        """An attempt failed here (``throttled``: with a 429)."""
        self.failed += 1
        self.throttled += throttled

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


class Router:
    """Chooses a route for each attempt. ``on_aside(message)`` is told when a route is set aside."""

    def __init__(
        self,
        routes: list[Route],
        *,
        sleep: Sleep,
        on_aside: Callable[[str], None],
        clock: Clock = time.monotonic,
        max_wait: float = Patience().max_wait,
    ) -> None:
        if not routes:
            raise ValueError("a router needs at least one route")
        self.routes, self.sleep, self.on_aside, self.clock, self.max_wait = routes, sleep, on_aside, clock, max_wait
        self._turn = asyncio.Lock()  # a pool's admissions, one at a time, first come first served

    @classmethod
    async def open(
        cls,
        deployments: Sequence[Deployment],
        retry: RetryPolicy,
        patience: Patience,
        *,
        redactor: Redactor,
        on_aside: Callable[[str], None],
        sleep: Sleep,
        clock: Clock,
    ) -> Router:
        """A route per deployment, each with its own admission and connection (close with ``close``)."""
        routes: list[Route] = []
        try:
            for deployment in deployments:
                admission = Admission(deployment.tpm, deployment.rpm, patience, clock=clock, sleep=sleep)
                connection = await Connection.open(
                    deployment.endpoint, retry, concurrency=patience.concurrency, redactor=redactor
                )
                routes.append(Route(deployment, connection, admission))
        except BaseException:
            await cls.close_all(routes)
            raise
        return cls(routes, sleep=sleep, on_aside=on_aside, clock=clock, max_wait=patience.max_wait)

    @staticmethod
    async def close_all(routes: Sequence[Route]) -> None:
        for route in routes:
            await route.connection.close()

    async def close(self) -> None:
        await self.close_all(self.routes)

    @property
    def pooled(self) -> bool:
        return len(self.routes) > 1

    @property
    def live(self) -> list[Route]:
        return [r for r in self.routes if r.aside is None]

    async def acquire(
        self, estimate: float, avoid: Route | None = None, *, retry: bool = False
    ) -> tuple[Route, Ticket]:
        """A route and its admission ticket for one attempt (``retry``: not the job's first; it goes first).

        :raises StopRun: every live route has been down for longer than --max-outage (or admission's own).
        """
        if not self.pooled:
            route = self.routes[0]
            return route, await route.admission.acquire(estimate, retry=retry)
        async with self._turn:
            held = 0.0  # seconds every deployment's server has held this attempt: --max-wait bounds it, as for one
            while True:
                route, wait = self._choose(estimate, avoid, retry)
                if wait <= 0:
                    return route, route.admission.take(estimate)
                by_servers = all(r.admission.holds(estimate) for r in self.live)
                if by_servers and held > self.max_wait:
                    raise StopRun(
                        f"every deployment has held the next request for {held:,.0f} s, longer than --max-wait "
                        f"({self.max_wait:g} s): {'; '.join(f'{r.name}: {r.state()}' for r in self.live)}"
                    )
                before = self.clock()
                await self.sleep(min(wait, NAP))
                held = held + self.clock() - before if by_servers else 0.0

    def _choose(self, estimate: float, avoid: Route | None, retry: bool = False) -> tuple[Route, float]:
        """The best route that can admit now, else the soonest; ``avoid`` only if no other can admit now.

        Avoiding is a preference, never a wait: a retry that waited for the other routes while the
        one it avoids could admit would hold up every attempt behind it (admission is first come,
        first served), and a pool with one dead member would sit idle.
        """
        live = self.live
        self._check_outages(live)
        waits = [(r, r.admission.ready_in(estimate, retry=retry)) for r in live]
        ready = [r for r, wait in waits if wait <= 0]
        ready = [r for r in ready if r is not avoid] or ready
        if ready:
            best = min(r.deployment.priority for r in ready)
            pick = max(
                (r for r in ready if r.deployment.priority == best),
                key=lambda r: (r.admission.headroom(), -r.in_flight),  # the most room, then the least busy
            )
            return pick, 0.0
        return min(waits, key=lambda rw: (rw[1], rw[0].deployment.priority))

    def _check_outages(self, live: list[Route]) -> None:
        messages = [r.admission.outage_over_limit() for r in live]
        if live and all(messages):
            raise StopRun("; ".join(f"{r.name}: {m}" for r, m in zip(live, messages, strict=True)))

    def set_aside(self, route: Route, reason: str, *, resumable: bool) -> None:
        """Stop sending to ``route`` for the rest of the run.

        :raises FatalAPIError: it was the last route, and some route was refused for good (authentication).
        :raises StopRun: it was the last route, and every one may come back (quota, outage).
        """
        if route.aside is not None:
            return
        route.aside, route.resumable = reason, resumable
        others = len(self.live)
        self.on_aside(f"deployment {route.name} set aside: {reason}" + (f"; {others} still working" if others else ""))
        if others:
            return
        summary = "; ".join(f"{r.name}: {r.aside}" for r in self.routes)
        if all(r.resumable for r in self.routes):
            raise StopRun(f"every deployment was set aside ({summary})")
        raise FatalAPIError("rejected", f"every deployment was set aside ({summary})")
