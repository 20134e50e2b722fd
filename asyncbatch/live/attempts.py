"""One job's life: the cache, the router's admission, send through the route, react by the failure's class, record.

``Attempts.carry(job)`` returns ``Success`` or ``Failure`` (each with the line to write), or raises:

* ``Stopped``: the run is stopping and this job was not finished; it is not recorded, and runs again on resume;
* ``FatalAPIError``: the endpoint refuses the run as a whole, once every deployment is set aside (``router.py``);
* ``StopRun``: admission will not wait that long, or the next attempt would pass ``--max-cost`` (``cost.Budget``).

How the engine reacts to a failed attempt is its class (``errors.py``), decided here and in admission:

* ``RateLimited``, or any failure while admission holds the endpoint (the breaker): "not yet": asked again
  when admission lets it (another deployment, if one can take it now), using up no attempt;
* ``Transient``, ``Malformed``, ``InvalidOutput``: counted, and asked again by tenacity (``retry.py``);
  in a pool, at once on another deployment (``retry.Failover``);
* ``EndpointRefused``: the endpoint's, not a line's. Before the deployment's first success it sets the
  deployment aside at once (the run stops, when it was the last); after it (a key rotated, a deployment
  deleted), once ``AGREE`` answers in a row agree, the line meanwhile asked again after a backoff. A line
  still refused once a request sent after its first refusal was answered is refused for itself (a gateway's
  rule): its attempts used up, it is recorded failed. A 401 with Entra ID first fetches a fresh token.
  ``Redirected`` sets the deployment aside at once;
* ``Refused`` (``Rejected``, ``LineRefused``): recorded. The first failures' verdict is ``verdict.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from tenacity import RetryCallState

from ..admission.calibration import Ticket
from ..clock import Sleep
from ..config import RequestDefaults, RetryPolicy
from ..cost import Budget, Prices
from ..errors import (
    ASKED_AGAIN,
    AttemptError,
    EndpointRefused,
    FatalAPIError,
    InvalidOutput,
    NoAnswer,
    Outage,
    RateLimited,
    Redirected,
    StopRun,
    Unauthorized,
    Unkept,
)
from ..input.requests import Job, with_feedback
from ..protocol import Api, Reply
from ..records import failure_record, result_record
from ..stats import RunStats
from ..structured.validate import OutputCheck
from .cached import Cached
from .retry import Failover, retrying
from .router import Route, Router
from .verdict import Failure, Outcome, Stopped, Success, Verdict

AGREE = 3  # after a deployment's first success, this many refusals of its key or name in a row are its verdict

__all__ = ["AGREE", "Attempts", "Failure", "Outcome", "Stopped", "Success"]


@dataclass
class _Tally:
    """One job on its way: what it sends next, and where its attempts went."""

    job: Job
    payload: bytes
    attempts: int = 0  # requests sent, "not yet" ones included
    route: Route | None = None  # where the last attempt went
    avoid: Route | None = None  # where the next attempt should not go, if another can take it (it just failed there)
    failed: AttemptError | None = None  # the last counted failure
    reasked: bool = False  # asked the model again after invalid output
    refused_at: float | None = None  # when the key or the deployment first refused this line (admission's clock)


@dataclass(frozen=True, slots=True)
class _Sent:
    """An answer, with the route and admission ticket it was sent under and how long it took."""

    reply: Reply
    route: Route
    ticket: Ticket
    latency_ms: float


def unreachable_error(exc: AttemptError, route: Route, api: Api = "chat") -> FatalAPIError | None:
    """The endpoint never answered at all, for a while (``Admission.never_reached``), or None: a 5xx is an answer."""
    if not isinstance(exc, NoAnswer) or not route.admission.never_reached():
        return None
    url = route.transport.where(api)  # the route this request tried
    if exc.code == "header_too_large":  # it answers, but not in a way that can be read
        return FatalAPIError("header_too_large", f"{url} answers, but {exc.message}; no request has succeeded")
    return FatalAPIError("unreachable", f"cannot reach {url}: {exc.message}; no request has succeeded", cause=exc.code)


def endpoint_error(
    exc: EndpointRefused, route: Route, api: Api = "chat", *, fresh_token: bool = False
) -> FatalAPIError:
    """The endpoint refused the route's credentials, or has no such deployment: said as what changed, if it worked."""
    url, kind = route.transport.where(api), exc.KIND
    if not route.any_success:
        if kind == "not_found":
            return FatalAPIError(kind, f"deployment or endpoint not found: {exc.message} (URL tried: {url})")
        if kind == "proxy_authentication":
            return FatalAPIError(kind, f"the proxy refused its credentials: {exc.message}")
        if kind == "proxy_forbidden":
            return FatalAPIError(kind, f"the proxy does not let requests to {url} through: {exc.message}")
        return FatalAPIError(kind, f"authentication failed: {exc.message}")
    after = f"after {route.succeeded:,} answers"
    if kind == "proxy_authentication":
        changed = f"the proxy refused its credentials {after}: did its password change? ({exc.message})"
    elif kind == "proxy_forbidden":
        changed = f"the proxy stopped letting requests to {url} through {after} ({exc.message})"
    elif kind == "not_found":
        changed = f"the deployment was not found {after}: was it deleted or renamed? ({exc.message}; URL tried: {url})"
    elif route.transport.tokens is not None:
        again = ", with a fresh token too" if fresh_token else ""
        changed = f"the Entra ID identity was refused {after}{again}: was its access removed? ({exc.message})"
    else:
        changed = f"the key was refused {after}: was it rotated? ({exc.message})"
    resume = "The refused lines are not recorded: they run when the same command runs again."
    return FatalAPIError(kind, f"{changed}. {resume}")


TURNED_AWAY = (RateLimited, EndpointRefused, Redirected)  # answered before any work, so nothing was billed


class Attempts:
    """Carries jobs to an answer. One instance per run, shared by every worker.

    :param stopping: asked before every attempt; True abandons the job (``Stopped``).
    :param sleep: every retry wait; tests inject their clock's. ``clock`` times latency.
    :param cached: the response cache's front (``cached.py``), if the run has one.
    :param check: what answers are checked against (default: the request's schemas); one per run.
    """

    def __init__(
        self,
        *,
        router: Router,
        request: RequestDefaults,
        retry: RetryPolicy,
        stats: RunStats,
        stopping: Callable[[], bool],
        prices: Prices | None = None,
        check: OutputCheck | None = None,
        budget: Budget | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        cached: Cached | None = None,
    ) -> None:
        self.router, self.check = router, check or OutputCheck(request.tools, request.response_format, request.models)
        self.cached, self.verdict = cached, Verdict(stopping)
        self.prices, self.budget = prices, budget or Budget(None)
        self.max_attempts, self.feedback, self.stats = retry.max_attempts, request.feedback, stats
        self.stopping, self.sleep, self.clock = stopping, sleep, clock
        self.policy = retrying(retry, sleep=sleep, before_sleep=self._before_retry)
        self.sending: set[asyncio.Task[Any]] = set()  # tasks with a request on the wire
        self.on_send: Callable[[int], None] = lambda line_no: None  # told each line as its request goes out
        # told each line whose request was turned away unbilled (a 429, the key or deployment refused, a
        # redirect): answered, so no longer in flight, though nothing is recorded for it yet
        self.on_turned_away: Callable[[int], None] = lambda line_no: None

    async def carry(self, job: Job) -> Outcome:
        await self.verdict.new_line()  # the first lines are all being asked again: no new line until a verdict
        if self.cached is None:
            return await self._carry(job)
        return await self.cached.carry(job, self._carry)

    async def _carry(self, job: Job) -> Outcome:
        tally = _Tally(job, job.payload)
        try:
            sent, output = await self._until_done(tally)
        except (AttemptError, Failover) as failed:
            exc = failed.error if isinstance(failed, Failover) else failed
            if isinstance(exc, EndpointRefused) and self.stopping():
                raise Stopped from None  # refused with the key or deployment the run stops for: not this line's
            record = failure_record(
                custom_id=job.custom_id,
                line_no=job.line_no,
                exc=exc,
                attempts=tally.attempts,
                deployment=tally.route.name if tally.route else None,
                line_hash=job.line_hash,
            )
            return Failure(job.line_no, record, exc)
        self.verdict.succeeded()
        self.stats.add_latency(sent.latency_ms)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=sent.reply.request_id,
            raw_body=sent.reply.raw,
            output=output,
            attempts=tally.attempts,
            latency_ms=sent.latency_ms,
            deployment=sent.route.name,
            line_hash=job.line_hash,
        )
        return Success(job.line_no, record, sent.reply)

    async def _until_done(self, tally: _Tally) -> tuple[_Sent, Any]:
        """The job's counted attempts: the first, then as tenacity's strategies say (``retry.py``), each a pure
        function of the call's ``RetryCallState``, made at the first failure. The loop is this one rather than
        ``AsyncRetrying``'s: most jobs succeed at once, and its bookkeeping for each call (a list of actions,
        each inspected) cost more CPU than the request itself (20 to 30 µs, against 280 µs a request)."""
        try:
            return await self._counted(tally)
        except (AttemptError, Failover) as failed:
            state = RetryCallState(self.policy, fn=None, args=(), kwargs={})
            state.set_exception((type(failed), failed, failed.__traceback__))
        policy = self.policy
        while policy.retry(state) and not policy.stop(state):
            wait = policy.wait(state)
            self._before_retry(state)
            state.prepare_for_next_attempt()
            await self.sleep(wait)
            try:
                return await self._counted(tally)
            except (AttemptError, Failover) as failed:
                state.set_exception((type(failed), failed, failed.__traceback__))
        last = state.outcome.exception() if state.outcome is not None else None
        assert last is not None
        raise last  # the last failure, as tenacity's reraise does

    async def _counted(self, tally: _Tally) -> tuple[_Sent, Any]:
        """One attempt that counts: sent again at once while the failures are "not yet" (they count for nothing)."""
        if isinstance(tally.failed, InvalidOutput) and not tally.reasked:
            tally.reasked = True
            await self.verdict.reask()  # before the first success, only SYSTEMATIC lines ask the model again
        try:
            while (done := await self._attempt(tally)) is None:
                self.stats.count_retry()
        except (AttemptError, Failover) as failed:
            exc = failed.error if isinstance(failed, Failover) else failed
            tally.failed = exc
            if exc.feedback and self.feedback:  # the next attempt tells the model what was wrong
                tally.payload = with_feedback(tally.job.body, exc.feedback)
            raise
        return done

    async def _attempt(self, tally: _Tally) -> tuple[_Sent, Any] | None:
        """One request, within the budget: its answer and output, or None to ask again now ("not yet")."""
        job, estimate = tally.job, self._estimated_cost(tally.job)
        reserved = self.budget.reserve(estimate)
        if reserved is None:
            raise StopRun(self.budget.reached())
        spent = None
        try:
            if (sent := await self._send(tally)) is None:
                return None
            spent = self.stats.count_usage(sent.reply.body, self.prices)
        except Unkept as unkept:  # paid for, though too deep to keep: its usage counts as any answer's
            spent = self.stats.count_usage(unkept.body or {}, self.prices)
            raise
        finally:
            self.budget.settle(reserved, estimate, spent)
        route = sent.route
        route.succeeded, route.refusals = route.succeeded + 1, 0  # an answer: the key and the deployment work
        route.answered_sent_at = max(route.answered_sent_at, sent.ticket.sent_at)
        route.admission.on_reply(sent.reply.headers, sent.ticket)
        try:
            return sent, self.check.extract_for(job.api, sent.reply.body, job.body)
        except AttemptError as exc:  # the answer's own id, to quote to support
            raise exc.but(request_id=exc.request_id or sent.reply.request_id) from None

    async def _send(self, tally: _Tally) -> _Sent | None:
        job = tally.job
        route, ticket = await self.router.acquire(job.estimate, tally.avoid, retry=tally.attempts > 0)
        if self.stopping():
            raise Stopped  # no new attempt once a stop was asked for (retries included)
        task = asyncio.current_task()
        assert task is not None
        tally.attempts += 1
        tally.route, tally.avoid = route, None
        self.stats.count_sent(route.admission.calibration.charge(job.estimate))
        route.in_flight += 1
        self.on_send(job.line_no)
        self.sending.add(task)
        started = self.clock()
        try:
            reply = await route.transport.send(self._payload_for(route, tally), job.api, job.body)
        except AttemptError as exc:
            failure: AttemptError | None = exc
            throttled = isinstance(exc, RateLimited)
            self.stats.count_failed_attempt(throttled=throttled, status=exc.status, code=exc.code)
            route.failed, route.throttled = route.failed + 1, route.throttled + throttled
        else:
            failure = None
            self.stats.count_answered()
        finally:
            self.stats.count_returned()
            route.in_flight -= 1
            self.sending.discard(task)
        if failure is not None:
            if isinstance(failure, TURNED_AWAY):
                self.on_turned_away(job.line_no)
            await self._react(route, failure, ticket, tally)
            return None
        return _Sent(reply, route, ticket, (self.clock() - started) * 1000)

    def _payload_for(self, route: Route, tally: _Tally) -> bytes:
        """A pool's deployments may have different names: where the body names the model, it names this one."""
        name = route.deployment.endpoint.deployment
        if not route.names_model or tally.job.body.get("model") == name:
            return tally.payload
        return orjson.dumps({**orjson.loads(tally.payload), "model": name})

    def _estimated_cost(self, job: Job) -> float:
        """What admission would let this attempt cost at most: the estimate's prompt and completion parts."""
        if self.prices is None:
            return 0.0
        return self.prices.cost(job.prompt_estimate, job.estimate - job.prompt_estimate)

    async def _react(self, route: Route, exc: AttemptError, ticket: Ticket, tally: _Tally) -> None:
        """How the engine reacts to a failed send, by its class: returning asks again now (it counts for nothing);
        else the failure is raised, to count (tenacity asks again if its class may be fixed by another attempt).

        :raises FatalAPIError: or ``StopRun``, when the last deployment is set aside.
        """
        if isinstance(exc, Redirected):  # the endpoint is wrong, whatever came before: never followed
            self.router.set_aside(route, FatalAPIError("redirect", exc.message))
            return
        tokens = route.transport.tokens
        if isinstance(exc, Unauthorized) and route.any_success and tokens is not None:
            if not await tokens.refresh_after_401(exc.token):  # else the token expired early: the same request again
                self.router.set_aside(route, endpoint_error(exc, route, tally.job.api, fresh_token=True))
            return
        try:
            holds = route.admission.on_failure(exc, ticket)
        except StopRun as stop:  # this deployment's quota is exhausted
            self.router.set_aside(route, stop)
            return
        if isinstance(exc, EndpointRefused):
            self._endpoint_refused(route, exc, tally)
            return
        if not isinstance(exc, Outage):
            route.refusals = 0  # an answer past the key and the deployment (a 4xx of the request's own, a 429)
        if fatal := unreachable_error(exc, route, tally.job.api):  # down from the start: a wrong URL, most likely
            self.router.set_aside(route, fatal)
            return
        if not isinstance(exc, (RateLimited, *ASKED_AGAIN)):
            raise exc
        tally.avoid = route  # the next attempt goes elsewhere if another deployment can take it now
        if holds:
            return
        if any(other is not route for other in self.router.live):
            raise Failover(exc)
        raise exc

    def _endpoint_refused(self, route: Route, exc: EndpointRefused, tally: _Tally) -> None:
        """The key or the deployment refused: the verdict, or (while few answers agree) the same line again later.

        Before the deployment's first success, one refusal is the verdict. After it, one or two may be a
        moment's, or this line's: the line is asked again after a backoff (using up an attempt), and the
        verdict comes once ``AGREE`` answers in a row (this line's or others') agree. Once a request sent after
        this line was first refused has been answered, the key and the deployment work: its refusals are its
        own (a gateway's rule about its content), counted for none, and its last attempt records it failed.
        """
        if tally.refused_at is None:
            tally.refused_at = route.admission.clock()
        own = route.answered_sent_at > tally.refused_at  # a request sent since was answered: this line's refusal
        if not own:
            route.refusals += 1
        if route.any_success and (own or route.refusals < min(AGREE, self.max_attempts)) and not self.stopping():
            tally.avoid = route
            raise exc
        self.router.set_aside(route, endpoint_error(exc, route, tally.job.api))

    def _before_retry(self, state: RetryCallState) -> None:
        self.stats.count_retry()
        if self.stopping():
            raise Stopped
