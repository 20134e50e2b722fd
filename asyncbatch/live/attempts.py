"""One job's life: budget, route and admission, send, extract and validate, re-ask, retry; a typed outcome.

``Attempts.carry(job)`` returns ``Success`` or ``Failure`` (each with the line to
write), or raises:

* ``Stopped``: the run is stopping and this job was not finished; it is not
  recorded, and runs again on resume;
* ``FatalAPIError``: the endpoint refuses the run as a whole (see ``endpoint_error`` and
  ``unreachable_error``); in a pool, only when every deployment was set aside (``router.py``);
* ``StopRun``: admission will not wait that long (see ``admission/admission.py``), or the next
  attempt would pass ``--max-cost`` (``cost.Budget``).

Before the run's first success, failures with a 4xx and answers that break the
schema are held back (``settle``): if the first ``SYSTEMATIC`` all fail the same
way, the run stops with the server's message (or what the model answered
instead) and records none of them, as for a wrong key. Until then only
``SYSTEMATIC`` lines ask the model again: a schema or tool the model never
follows costs at most that many lines' attempts. A refusal of one line's content
(``LineRefused``: the content filter, the context window) is never held: it says
nothing of the other lines.

A refusal of the key or the deployment (``EndpointRefused``: 401, 403, 404) is never
a line's failure. Before a deployment's first success it stops the run at once; after
it (a key rotated, a deployment deleted), once ``AGREE`` answers in a row agree, with
the answers so far recorded and the refused lines left for the resume. A pool sets
that deployment aside instead, and stops only when none is left.

What is retried and how long to wait is ``retry.py``; every reaction to 429s
and rate-limit headers is ``admission`` (``admission/admission.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from tenacity import RetryCallState

from ..admission.breaker import is_outage, no_answer
from ..admission.calibration import Ticket
from ..clock import Sleep
from ..config import RequestDefaults, RetryPolicy
from ..cost import Budget, Prices
from ..errors import AttemptError, EndpointRefused, FatalAPIError, InvalidOutput, LineRefused, Redirected, StopRun
from ..input.requests import Job, with_feedback
from ..protocol import FATAL_STATUSES, THROTTLED, Api, TooDeep, read_json
from ..records import failure_record, result_record
from ..stats import RunStats
from ..store.cache import Entry, ResponseCache, cache_key
from ..structured.validate import OutputCheck, answered
from .client import Reply
from .retry import retrying
from .router import Route, Router

SYSTEMATIC = 20  # the first this many lines failing the same way (a 4xx, or invalid output) stop the run
AGREE = 3  # after a deployment's first success, this many refusals of its key or name in a row are its verdict


@dataclass(frozen=True, slots=True)
class Success:
    line_no: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Failure:
    line_no: int
    record: dict[str, Any]
    error: AttemptError


Outcome = Success | Failure


class Stopped(Exception):
    """The run is stopping: this job is abandoned before its next attempt, and runs again on resume."""


@dataclass
class _Tally:
    attempts: int = 0
    route: Route | None = None  # where the last attempt went
    avoid: Route | None = None  # a pool: where the next attempt should not go (it just failed there)
    api: Api = "chat"  # the job's: which route a failure names


def _holdable(exc: AttemptError) -> bool:
    """A failure that may be every line's: a 4xx, or output that breaks the schema after every attempt.

    Never a refusal of one line's content (``LineRefused``): 40 prompts the filter refuses say nothing of the 41st.
    """
    if isinstance(exc, LineRefused):
        return False
    return isinstance(exc, InvalidOutput) or (exc.status is not None and 400 <= exc.status < 500)


def _how(exc: AttemptError) -> tuple[object, ...]:
    """What makes two failures the same: the status and code, and for invalid output what was wrong."""
    return (exc.status, exc.code, exc.message if isinstance(exc, InvalidOutput) else None)


def _systematic(exc: AttemptError, lines: int) -> FatalAPIError:
    if isinstance(exc, InvalidOutput):
        return FatalAPIError(
            "invalid_output",
            f"the first {lines} lines all broke the schema the same way on every attempt, so every line "
            f"would: {exc.code}: {exc.message}. The model answered instead: {answered(exc.body)}. "
            "Nothing was recorded",
        )
    return FatalAPIError(
        "rejected",
        f"the first {lines} requests were all refused the same way, so every one would be: {exc.message}",
    )


def unreachable_error(exc: AttemptError, route: Route, api: Api = "chat") -> FatalAPIError | None:
    """The endpoint never answered at all, or None.

    "Unreachable" means no HTTP answer at all, ever, for a while (``Admission.never_reached``):
    a 5xx (or any status) is an answer.
    """
    if not no_answer(exc) or not route.admission.never_reached():
        return None
    url = route.connection.where(api)  # the route this request tried
    return FatalAPIError("unreachable", f"cannot reach {url}: {exc.message}; no request has succeeded", cause=exc.code)


def endpoint_error(exc: AttemptError, route: Route, api: Api = "chat", *, fresh_token: bool = False) -> FatalAPIError:
    """The endpoint refused the route's credentials, or has no such deployment: said as what changed, if it worked."""
    url = route.connection.where(api)  # the route this request tried
    kind = FATAL_STATUSES.get(exc.status or 0, "authentication")
    if not route.any_success:
        if kind == "not_found":
            return FatalAPIError(kind, f"deployment or endpoint not found: {exc.message} (URL tried: {url})")
        return FatalAPIError(kind, f"authentication failed: {exc.message}")
    after = f"after {route.succeeded:,} answers"
    if kind == "not_found":
        changed = f"the deployment was not found {after}: was it deleted or renamed? ({exc.message}; URL tried: {url})"
    elif route.connection.tokens is not None:
        again = ", with a fresh token too" if fresh_token else ""
        changed = f"the Entra ID identity was refused {after}{again}: was its access removed? ({exc.message})"
    else:
        changed = f"the key was refused {after}: was it rotated? ({exc.message})"
    resume = "The refused lines are not recorded: they run when the same command runs again."
    return FatalAPIError(kind, f"{changed}. {resume}")


class Attempts:
    """Carries jobs to an answer. One instance per run, shared by every worker.

    :param stopping: asked before every attempt; True abandons the job (``Stopped``).
    :param sleep: every retry wait; tests inject a recorder. ``clock`` times latency.
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
        budget: Budget | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        cache: ResponseCache | None = None,
    ) -> None:
        self.router, self.check = router, OutputCheck(request.tools, request.response_format, request.models)
        self.cache = cache
        self.identity = [route.deployment.endpoint.identity for route in router.routes]
        self.asked: dict[bytes, asyncio.Future[Entry | None]] = {}  # cache keys on the wire: identical lines wait
        self.prices, self.budget = prices, budget or Budget(None)
        self.retry, self.feedback, self.stats = retry, request.feedback, stats
        self.stopping, self.sleep, self.clock = stopping, sleep, clock
        self.sending: set[asyncio.Task[Any]] = set()  # tasks with a request on the wire
        self.any_success = False
        self.held: list[Failure] = []  # 4xx failures and invalid output before the first success (``settle``)
        self.proven = asyncio.Event()  # set once the failures so far are known not to be every line's
        self.reasking = 0  # lines that asked the model again before ``proven``: at most SYSTEMATIC
        self.on_send: Callable[[int], None] = lambda line_no: None  # told each line as its request goes out

    def settle(self, outcome: Outcome) -> list[Outcome]:
        """The outcomes to record now. Holds 4xx failures until the first success shows the endpoint works.

        :raises FatalAPIError: the first ``SYSTEMATIC`` requests all failed with the same 4xx.
        """
        if self.any_success or not isinstance(outcome, Failure) or not _holdable(outcome.error):
            return [*self.release_held(), outcome]
        self.held.append(outcome)
        if len(self.held) < SYSTEMATIC:
            return []
        if len({_how(f.error) for f in self.held}) == 1:
            self.proven.set()  # the lines waiting to ask again wake, see the run stopping, and stop
            raise _systematic(outcome.error, len(self.held))
        return list(self.release_held())

    def release_held(self) -> list[Failure]:
        released, self.held = self.held, []
        self.proven.set()
        return released

    async def carry(self, job: Job) -> Outcome:
        if self.reasking >= SYSTEMATIC:  # the first lines are all being asked again: no new line until a verdict
            await self._verdict()
        if self.cache is None:
            return await self._carry(job)
        key = self._key(job)
        stored = self.cache.get(key)
        if (hit := self._answered(job, key, stored)) is not None:
            return hit
        if (first := self.asked.get(key)) is not None:  # the same request is on the wire: its answer serves this line
            if (hit := self._answered(job, key, await asyncio.shield(first), shared=True)) is not None:
                return hit
            return await self._carry(job)
        self.asked[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._carry(job, key, refresh=stored is not None)
        finally:
            if not (future := self.asked.pop(key)).done():
                future.set_result(None)  # no answer to share: the lines waiting send their own

    def from_cache(self, job: Job) -> dict[str, Any] | None:
        """The line's result record from the response cache, if it holds an answer that fits (the Batch API's)."""
        if self.cache is None:
            return None
        key = self._key(job)
        hit = self._answered(job, key, self.cache.get(key))
        return hit.record if hit is not None else None

    def keep(self, job: Job, body: bytes, request_id: str | None) -> None:
        """Store an answer got another way (a Batch API job's) in the response cache, if there is one."""
        if self.cache is not None:
            self.cache.put(self._key(job), body, request_id)

    def _key(self, job: Job) -> bytes:
        return cache_key(job.api, self.identity, job.body)

    def _answered(self, job: Job, key: bytes, entry: Entry | None, *, shared: bool = False) -> Success | None:
        """The line's result from a stored (or shared) answer, if it is one and fits the current schema."""
        if entry is None:
            return None
        try:
            body = read_json(entry.body)
            output = self.check.extract_for(job.api, body, job.body)
        except (orjson.JSONDecodeError, TooDeep, AttemptError, KeyError, TypeError, IndexError):
            return None  # not an answer, or not one the schema takes now: asked again
        if not shared and self.cache is not None:
            self.cache.hit(key)
        sampled = bool(job.body.get("temperature") or 0) or int(job.body.get("n") or 1) > 1
        self.stats.count_cached(body, self.prices, shared=shared, sampled=sampled)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=entry.request_id,
            raw_body=entry.body,
            output=output,
            attempts=0,
            latency_ms=0.0,
            line_hash=job.line_hash,
        )
        record["cached"] = True
        return Success(job.line_no, record)

    async def _carry(self, job: Job, key: bytes | None = None, refresh: bool = False) -> Outcome:
        tally = _Tally(api=job.api)
        try:
            reply, latency_ms, output = await self._until_done(job, tally)
        except AttemptError as exc:
            first = self.router.routes[0]
            if not self.any_success and not self.router.pooled and (fatal := unreachable_error(exc, first, job.api)):
                raise fatal from None
            if isinstance(exc, EndpointRefused) and self.stopping():
                raise Stopped from None  # refused with the key or deployment the run stops for: not this line's
            name = tally.route.name if tally.route else None
            record = failure_record(
                custom_id=job.custom_id,
                line_no=job.line_no,
                exc=exc,
                attempts=tally.attempts,
                deployment=name,
                line_hash=job.line_hash,
            )
            return Failure(job.line_no, record, exc)
        self.any_success = True
        self.proven.set()
        self.stats.add_latency(latency_ms)
        if key is not None and self.cache is not None:
            entry = Entry(reply.raw, reply.request_id)
            if not self.cache.put(key, entry.body, entry.request_id, replace=refresh):
                self.stats.cache_raced += 1  # another run stored it meanwhile: sent by both at once
            self.asked[key].set_result(entry)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=reply.request_id,
            raw_body=reply.raw,
            output=output,
            attempts=tally.attempts,
            latency_ms=latency_ms,
            deployment=tally.route.name if tally.route else None,
            line_hash=job.line_hash,
        )
        return Success(job.line_no, record)

    async def _until_done(self, job: Job, tally: _Tally) -> tuple[Reply, float, Any]:
        # Most requests succeed first time: try once before building a tenacity loop,
        # whose per-attempt bookkeeping costs more CPU than the HTTP exchange itself.
        try:
            return await self._attempt(job, job.payload, tally)
        except AttemptError as exc:
            if not exc.retryable:
                raise
            first = exc
        if isinstance(first, InvalidOutput):
            await self._reask_turn()
        payload = self._next_payload(job, first, job.payload)
        replay = [first]  # tenacity's attempt 1 is the one just made: replayed, so tenacity decides its wait
        async for attempt in retrying(self.retry, sleep=self.sleep, before_sleep=self._before_retry):
            with attempt:
                if replay:
                    raise replay.pop()
                try:
                    return await self._attempt(job, payload, tally)
                except AttemptError as exc:
                    payload = self._next_payload(job, exc, payload)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _reask_turn(self) -> None:
        """Before the first success, only SYSTEMATIC lines ask the model again; the others wait for a verdict."""
        if self.proven.is_set():
            return
        if self.reasking < SYSTEMATIC:
            self.reasking += 1
            return
        await self._verdict()

    async def _verdict(self) -> None:
        await self.proven.wait()
        if self.stopping():
            raise Stopped  # the verdict: every line would fail the same way

    def _next_payload(self, job: Job, exc: AttemptError, current: bytes) -> bytes:
        """After invalid output, the next attempt tells the model what was wrong (unless feedback is off)."""
        if exc.feedback and self.feedback:
            return with_feedback(job.body, exc.feedback)
        return current

    async def _attempt(self, job: Job, payload: bytes, tally: _Tally) -> tuple[Reply, float, Any]:
        estimate = self._estimated_cost(job)
        reserved = self.budget.reserve(estimate)
        if reserved is None:
            raise StopRun(
                f"--max-cost {self.budget.limit:g} USD reached ({self.budget.spent:.4f} USD spent, "
                f"{self.budget.reserved:.4f} USD more may be billed for requests in flight)"
            )
        spent = None
        try:
            sent = await self._send(job, payload, tally)
            spent = self.stats.count_usage(sent.reply.body, self.prices)
        finally:
            self.budget.settle(reserved, estimate, spent)
        route = sent.route
        route.on_answer()
        route.admission.on_reply(sent.reply.headers, sent.ticket)
        self._observe(route)
        try:
            output = self.check.extract_for(job.api, sent.reply.body, job.body)
        except AttemptError as exc:  # the answer's own id, to quote to support
            raise exc.but(request_id=exc.request_id or sent.reply.request_id) from None
        return sent.reply, sent.latency_ms, output

    async def _send(self, job: Job, payload: bytes, tally: _Tally) -> _Sent:
        route, ticket = await self.router.acquire(job.estimate, tally.avoid, retry=tally.attempts > 0)
        if self.stopping():
            raise Stopped  # no new attempt once a stop was asked for (retries included)
        task = asyncio.current_task()
        assert task is not None
        tally.attempts += 1
        tally.route, tally.avoid = route, None
        self.stats.count_sent(route.admission.calibration.charge(job.estimate))
        route.on_sent()
        self.on_send(job.line_no)
        self.sending.add(task)
        started = self.clock()
        try:
            reply = await route.connection.send(self._payload_for(route, job, payload), job.api, job.body)
        except AttemptError as exc:
            throttled = exc.status == THROTTLED
            self.stats.count_failed_attempt(throttled=throttled, status=exc.status, code=exc.code)
            route.on_failure(throttled=throttled)
            raise await self._on_failure(route, exc, ticket, tally) from None
        finally:
            self.stats.count_returned()
            route.on_returned()
            self.sending.discard(task)
            route.admission.answered = route.connection.answered
        self.stats.count_answered()
        return _Sent(reply, ticket, (self.clock() - started) * 1000, route)

    def _payload_for(self, route: Route, job: Job, payload: bytes) -> bytes:
        """A pool's deployments may have different names: where the body names the model, it names this one."""
        name = route.deployment.endpoint.deployment
        if not self.router.pooled or not route.names_model or job.body.get("model") == name:
            return payload
        return orjson.dumps({**orjson.loads(payload), "model": name})

    def _estimated_cost(self, job: Job) -> float:
        """What admission would let this attempt cost at most: the estimate's prompt and completion parts."""
        if self.prices is None:
            return 0.0
        return self.prices.cost(job.prompt_estimate, job.estimate - job.prompt_estimate)

    async def _on_failure(self, route: Route, exc: AttemptError, ticket: Ticket, tally: _Tally) -> AttemptError:
        """How the engine reacts to a failed attempt: the same failure, held, retried elsewhere or at once."""
        if isinstance(exc, Redirected):  # the endpoint is wrong, whatever came before: never followed
            self._refused(route, FatalAPIError("redirect", exc.message))
            return _again(exc)
        tokens = route.connection.tokens
        if isinstance(exc, EndpointRefused) and exc.status == 401 and route.any_success and tokens:
            if await tokens.refresh_after_401(exc.token):
                return _again(exc)  # the token expired early: a new one, and the same request again
            self._refused(route, endpoint_error(exc, route, tally.api, fresh_token=True))
            return _again(exc)
        try:
            held = route.admission.on_failure(exc, ticket)
        except StopRun as stop:  # this deployment's quota is exhausted
            if not self.router.pooled:
                raise
            self.router.set_aside(route, str(stop), resumable=True)
            return _again(exc)
        self._observe(route)
        if isinstance(exc, EndpointRefused):
            return self._endpoint_refused(route, exc, tally)
        if not is_outage(exc):
            route.on_accepted()
        if not route.any_success and (fatal := self._unreachable_before_success(route, exc, tally.api)):
            self._refused(route, fatal)
            return _again(exc)
        if self.router.pooled and (exc.status == THROTTLED or exc.retryable) and len(self.router.live) > 1:
            tally.avoid = route  # the retry goes to another deployment, at once
            return exc.but(held=held) if held else exc.but(retry_after=0.0)
        return exc.but(held=True) if held else exc

    def _unreachable_before_success(self, route: Route, exc: AttemptError, api: Api) -> FatalAPIError | None:
        """A deployment down from the start: most likely a wrong URL, not an outage."""
        if route.admission.breaker.is_open and no_answer(exc):
            return unreachable_error(exc, route, api)
        return None

    def _endpoint_refused(self, route: Route, exc: EndpointRefused, tally: _Tally) -> AttemptError:
        """The key or the deployment refused: the verdict, or (while few answers agree) the same line again later.

        Before the deployment's first success, one refusal is the verdict. After it, one or two may be a
        moment's, or this line's: the line is asked again after a backoff (using up an attempt), and the
        verdict comes once ``AGREE`` answers in a row (this line's or others') agree.
        """
        agreeing = route.on_refused()
        if route.any_success and agreeing < min(AGREE, self.retry.max_attempts) and not self.stopping():
            tally.avoid = route if self.router.pooled else None
            return exc.but(retryable=True)
        self._refused(route, endpoint_error(exc, route, tally.api))
        return _again(exc)

    def _refused(self, route: Route, fatal: FatalAPIError) -> None:
        """One endpoint stops the run; a pool sets the deployment aside and the job tries another."""
        if not self.router.pooled:
            raise fatal
        self.router.set_aside(route, str(fatal), resumable=fatal.kind == "unreachable")

    def _observe(self, route: Route) -> None:
        """What admission has learned, for the display: a few attribute copies per answer."""
        if self.router.pooled:
            return  # each deployment's state is shown on its own line (``RunStats.routes``)
        admission = route.admission
        self.stats.learned_tpm = admission.learned_tpm
        self.stats.charge_ratio = admission.ratio

    def _before_retry(self, state: RetryCallState) -> None:
        self.stats.count_retry()
        if self.stopping():
            raise Stopped


def _again(exc: AttemptError) -> AttemptError:
    """The same request again, at once, using up no attempt (another deployment, or a new token)."""
    return exc.but(retryable=True, held=True)


@dataclass(frozen=True, slots=True)
class _Sent:
    """An answer, with the admission ticket it was sent under and how long it took."""

    reply: Reply
    ticket: Ticket
    latency_ms: float
    route: Route
