"""One job's life on its own: retries, re-asking, held 4xx, failover, stopping and the budget.

The endpoint is in memory (``MemoryTransport``): each answer is the bytes and headers a server would send,
read by the same boundary as an answer off the wire; only the socket is left out. The clock and every
wait are the tests' fake clock, so nothing here takes wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.config import Deployment, Endpoint, RequestDefaults, RetryPolicy
from asyncbatch.cost import Budget, Prices
from asyncbatch.errors import (
    AttemptError,
    EndpointRefused,
    FatalAPIError,
    Forbidden,
    LineRefused,
    NotFound,
    Outage,
    RateLimited,
    Refused,
    Rejected,
    StopRun,
    Transient,
    Unauthorized,
)
from asyncbatch.input.reader import ParsedLine
from asyncbatch.input.requests import Job, prepare
from asyncbatch.live.attempts import AGREE, Attempts, Failure, Stopped, Success
from asyncbatch.live.router import Route, Router
from asyncbatch.live.transport import Answer, MemoryTransport
from asyncbatch.live.verdict import SYSTEMATIC
from asyncbatch.protocol import status_error
from asyncbatch.stats import RunStats
from tests.helpers import FakeClock

TOOL = {
    "type": "function",
    "function": {
        "name": "label",
        "parameters": {
            "type": "object",
            "properties": {"sentiment": {"enum": ["positive", "negative"]}},
            "required": ["sentiment"],
        },
    },
}


def answer(arguments: str | None = None, content: str = "fine") -> Answer:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if arguments is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [_call(arguments)]}
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return 200, {"x-request-id": "req-1"}, orjson.dumps(body)


def _call(arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": "label", "arguments": arguments}}


def error(status: int, code: str, headers: dict[str, str] | None = None) -> Answer:
    return status, headers or {}, orjson.dumps({"error": {"code": code, "message": f"{code} from the server"}})


def scripted(script: list[Answer]) -> Callable[[dict[str, Any]], Answer]:
    """Answers in order; the last one again and again."""
    return lambda body: script.pop(0) if len(script) > 1 else script[0]


def route(clock: FakeClock, name: str, script: list[Answer], priority: int = 0) -> Route:
    endpoint = Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment=name)
    admission = Admission(None, None, clock=clock, wall=clock)
    transport = MemoryTransport(scripted(script), url=f"http://{name}.test")
    return Route(Deployment(name=name, endpoint=endpoint, priority=priority), transport, admission)


def sent(route: Route) -> list[dict[str, Any]]:
    assert isinstance(route.transport, MemoryTransport)
    return route.transport.sent


def job(text: str = "I loved it", line_no: int = 1, tools: bool = False) -> Job:
    defaults = RequestDefaults(tools=[TOOL] if tools else None)
    made = prepare(
        ParsedLine(line_no, f"id-{line_no}", "chat", {"messages": [{"role": "user", "content": text}]}), defaults, "d"
    )
    assert isinstance(made, Job)
    return made


def attempts(
    clock: FakeClock,
    routes: list[Route],
    *,
    tools: bool = False,
    stopping: Callable[[], bool] = lambda: False,
    max_attempts: int = 3,
    **kw: Any,
) -> Attempts:
    return Attempts(
        router=Router(routes, sleep=clock.sleep, on_aside=lambda message: None, clock=clock),
        request=RequestDefaults(tools=[TOOL] if tools else None),
        retry=RetryPolicy(max_attempts=max_attempts, backoff_initial=1.0),
        stats=RunStats(),
        stopping=stopping,
        sleep=clock.sleep,
        clock=clock,
        **kw,
    )


def run(test: Callable[[FakeClock], Coroutine[Any, Any, None]]) -> None:
    clock = FakeClock()
    clock.run(test(clock))


def test_a_5xx_is_retried_after_a_backoff_and_the_success_counts_both_attempts() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [error(500, "server_error"), answer()])
        carrier = attempts(clock, [only])
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["attempts"] == 2
        assert outcome.record["response"]["request_id"] == "req-1"
        assert carrier.stats.retries == 1 and only.succeeded == 1 and only.failed == 1
        assert [w for w in clock.slept if w] and max(clock.slept) <= 2.0  # a backoff, on the injected clock

    run(test)


def test_a_server_retry_after_is_waited_exactly() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [error(503, "busy", {"retry-after-ms": "2500"}), answer()])
        outcome = await attempts(clock, [only]).carry(job())
        assert isinstance(outcome, Success)
        assert 2.5 in clock.slept

    run(test)


def test_invalid_arguments_are_asked_again_with_what_was_wrong() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [answer('{"sentiment": "meh"}'), answer('{"sentiment": "positive"}')])
        outcome = await attempts(clock, [only], tools=True).carry(job(tools=True))
        assert isinstance(outcome, Success) and outcome.record["output"] == {"sentiment": "positive"}
        first, second = sent(only)
        assert len(second["messages"]) > len(first["messages"])
        assert "meh" in orjson.dumps(second["messages"][1:]).decode()  # the model is told what it sent

    run(test)


def test_a_400_is_not_retried_and_is_held_until_the_first_success_shows_the_endpoint_works() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [error(400, "unsupported_parameter")])
        carrier = attempts(clock, [only])
        failed = await carrier.carry(job())
        assert isinstance(failed, Failure) and failed.record["attempts"] == 1
        assert failed.record["error"]["code"] == "unsupported_parameter"
        assert carrier.verdict.settle(failed) == []  # held: it may be a wrong deployment, shared by every line
        success = Success(2, {"line": 2})
        carrier.verdict.succeeded()
        assert carrier.verdict.settle(success) == [failed, success]

    run(test)


def test_the_same_4xx_on_the_first_requests_stops_the_run_and_records_none() -> None:
    async def test(clock: FakeClock) -> None:
        carrier = attempts(clock, [route(clock, "a", [error(400, "OperationNotSupported")])])
        for n in range(1, SYSTEMATIC):
            assert carrier.verdict.settle(await carrier.carry(job(line_no=n))) == []
        with pytest.raises(FatalAPIError, match="all refused the same way"):
            carrier.verdict.settle(await carrier.carry(job(line_no=SYSTEMATIC)))

    run(test)


def test_a_wrong_key_is_fatal_at_once_with_one_endpoint() -> None:
    async def test(clock: FakeClock) -> None:
        with pytest.raises(FatalAPIError, match="authentication failed"):
            await attempts(clock, [route(clock, "a", [error(401, "401")])]).carry(job())

    run(test)


def test_in_a_pool_a_429_sends_the_retry_to_the_other_deployment_at_once() -> None:
    async def test(clock: FakeClock) -> None:
        a = route(clock, "a", [error(429, "429", {"retry-after-ms": "30000"}), answer()])
        b = route(clock, "b", [answer()], priority=1)  # used only when a cannot
        carrier = attempts(clock, [a, b])
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["deployment"] == "b"
        assert a.throttled == 1 and b.succeeded == 1 and (a.failed, b.failed) == (1, 0)
        assert (carrier.stats.attempts, carrier.stats.throttled, carrier.stats.in_flight) == (2, 1, 0)
        assert a.in_flight == b.in_flight == 0
        assert clock.now < 1000 + 30  # nobody waited out a's 30 s

    run(test)


def test_429s_use_up_no_attempt_and_wait_in_admission_not_in_tenacity() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [*[error(429, "429", {"retry-after-ms": "100"})] * 10, error(500, "busy"), answer()])
        carrier = attempts(clock, [only], max_attempts=2)
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["attempts"] == 12
        assert only.throttled == 10 and carrier.stats.retries == 11
        assert only.admission.gate.remaining() == 0 and clock.now >= 1000 + 10 * 0.1  # each 429's pause, in admission

    run(test)


def test_in_a_pool_a_5xx_counts_and_the_retry_goes_at_once_to_another_deployment() -> None:
    async def test(clock: FakeClock) -> None:
        a = route(clock, "a", [error(503, "busy", {"retry-after": "30"})])
        b = route(clock, "b", [answer()], priority=1)
        carrier = attempts(clock, [a, b], max_attempts=2)
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["deployment"] == "b" and outcome.record["attempts"] == 2
        assert clock.now < 1000 + 30  # a's retry-after is a's: b answers at once
        lone = route(clock, "c", [error(503, "busy", {"retry-after": "30"})])
        failed = await attempts(clock, [lone], max_attempts=2).carry(job())
        assert isinstance(failed, Failure) and isinstance(failed.error, Outage)  # both attempts counted
        assert 30.0 in clock.slept  # with nowhere else to go, the server's hint is waited out

    run(test)


def test_a_stop_asked_for_abandons_the_job_before_it_is_sent() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [answer()])
        with pytest.raises(Stopped):
            await attempts(clock, [only], stopping=lambda: True).carry(job())
        assert sent(only) == []

    run(test)


def test_the_budget_stops_the_run_before_an_attempt_that_could_pass_it() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [answer()])
        prices = Prices(input=1_000_000.0, output=1_000_000.0)  # 1 USD per token
        with pytest.raises(StopRun, match="--max-cost"):
            await attempts(clock, [only], prices=prices, budget=Budget(0.5)).carry(job())
        assert sent(only) == []

    run(test)


def test_a_failure_is_typed_by_how_the_engine_reacts_and_never_changes() -> None:
    throttled = status_error(429, {"retry-after": "3"}, b'{"error": {"code": "429", "message": "slow down"}}')
    busy = status_error(503, {}, b"")
    refused = status_error(400, {"retry-after": "3"}, b'{"error": {"code": "unsupported_parameter", "message": "no"}}')
    assert (type(throttled), type(busy), type(refused)) == (RateLimited, Outage, Rejected)
    assert throttled.retry_after == 3.0 and refused.retry_after is None  # only a "not yet" says when
    with pytest.raises(AttributeError, match="immutable"):
        throttled.token = "t"
    told = throttled.but(token="t")
    assert type(told) is RateLimited and told.token == "t" and throttled.token is None
    assert told.message == throttled.message and told.retry_after == throttled.retry_after


@pytest.mark.parametrize(
    ("status", "said", "kind"),
    [(503, "false", Refused), (429, "false", Rejected), (400, "true", Transient), (500, "true", Outage)],
)
def test_x_should_retry_is_the_server_s_own_word(status: int, said: str, kind: type[AttemptError]) -> None:
    assert type(status_error(status, {"x-should-retry": said}, b"")) is kind  # as openai-python's _should_retry


def _error_body(status: int, error: dict[str, Any]) -> Any:
    return status_error(status, {}, orjson.dumps({"error": error}))


def test_whose_refusal_a_4xx_is_decides_its_type() -> None:
    filtered = {"code": "content_filter", "message": "filtered", "param": "prompt"}
    inner = {"code": None, "message": "filtered", "innererror": {"code": "ResponsibleAIPolicyViolation"}}
    assert type(_error_body(400, filtered)) is LineRefused
    assert type(_error_body(400, inner)) is LineRefused
    assert type(_error_body(403, {"code": "content_filter", "message": "flagged"})) is LineRefused  # a gateway's
    assert type(_error_body(400, {"code": "context_length_exceeded", "message": "too long"})) is LineRefused
    assert type(_error_body(401, {"code": "401", "message": "Access denied"})) is Unauthorized
    assert type(status_error(403, {}, b"Forbidden")) is Forbidden  # no JSON: the status says it all
    assert type(_error_body(404, {"code": "DeploymentNotFound", "message": "gone"})) is NotFound
    # a 404 naming a field of the request is about that request, not the deployment
    named = {"code": "not_found", "message": "no such", "param": "previous_response_id"}
    assert type(_error_body(404, named)) is Rejected
    assert type(_error_body(400, {"code": "unsupported_parameter", "message": "no"})) is Rejected
    assert all(issubclass(kind, EndpointRefused) for kind in (Unauthorized, Forbidden, NotFound))


def test_content_refusals_are_never_held_so_they_never_stop_the_run() -> None:
    async def test(clock: FakeClock) -> None:
        carrier = attempts(clock, [route(clock, "a", [error(400, "content_filter")])])
        for n in range(1, 2 * SYSTEMATIC + 1):
            failed = await carrier.carry(job(line_no=n))
            assert isinstance(failed, Failure) and isinstance(failed.error, LineRefused)
            assert carrier.verdict.settle(failed) == [failed]  # recorded at once, never a verdict on every line
        assert carrier.verdict.held == []

    run(test)


def _rotated(after: int, status: int = 401, code: str = "401") -> list[Answer]:
    return [answer() for _ in range(after)] + [error(status, code)]


def test_a_key_refused_after_answers_stops_the_run_once_a_few_answers_agree_and_records_no_line() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", _rotated(5))
        carrier = attempts(clock, [only])
        for n in range(1, 6):
            assert isinstance(await carrier.carry(job(line_no=n)), Success)
        with pytest.raises(FatalAPIError, match=r"the key was refused after 5 answers: was it rotated\?") as caught:
            await carrier.carry(job(line_no=6))
        assert caught.value.kind == "authentication" and "run when the same command runs again" in str(caught.value)
        assert sent(only)[5:] == [sent(only)[5]] * AGREE
        assert only.refusals == AGREE
        assert [w for w in clock.slept if w]  # asked again after a backoff, not at once

    run(test)


def test_a_deployment_deleted_after_answers_names_the_url_and_what_changed() -> None:
    async def test(clock: FakeClock) -> None:
        carrier = attempts(clock, [route(clock, "a", _rotated(2, 404, "DeploymentNotFound"))])
        for n in (1, 2):
            await carrier.carry(job(line_no=n))
        with pytest.raises(FatalAPIError, match="deployment was not found after 2 answers: was it deleted") as caught:
            await carrier.carry(job(line_no=3))
        assert caught.value.kind == "not_found" and "http://a.test/chat" in str(caught.value)

    run(test)


def test_a_refusal_between_answers_is_a_moment_s_and_the_line_is_asked_again() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [answer(), error(401, "401"), answer()])
        carrier = attempts(clock, [only])
        assert isinstance(await carrier.carry(job(line_no=1)), Success)
        outcome = await carrier.carry(job(line_no=2))
        assert isinstance(outcome, Success) and outcome.record["attempts"] == 2
        assert only.refusals == 0  # the answer since says the key works

    run(test)


def test_a_line_refused_while_others_are_answered_is_that_line_s_failure_after_its_attempts() -> None:
    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [])
        refused = {"bad": error(404, "404")}  # that prompt is refused; every other one answered
        only.transport = MemoryTransport(lambda body: refused.get(body["messages"][0]["content"], answer()))
        carrier = attempts(clock, [only])
        await carrier.carry(job(line_no=1))
        bad = asyncio.create_task(carrier.carry(job("bad", line_no=2)))
        answered = 0
        while not bad.done():  # the other lines go while it waits for its next attempt
            answered += isinstance(await carrier.carry(job(line_no=10 + answered)), Success)
            await asyncio.sleep(0.1)
        failed = bad.result()
        assert isinstance(failed, Failure) and isinstance(failed.error, EndpointRefused)
        assert failed.record["attempts"] == 3 and answered >= 2  # an answer between each of its attempts
        assert only.aside is None

    run(test)


def test_a_line_still_refused_after_every_other_line_was_answered_is_that_line_s_failure_not_the_endpoint_s() -> None:
    """Its retries outlast the other lines: the refusals in a row are its own alone, but a request sent after its
    first refusal was answered, so the key and the deployment work (a gateway's rule about its content)."""

    async def test(clock: FakeClock) -> None:
        only = route(clock, "a", [])
        only.transport = MemoryTransport(
            lambda body: error(403, "403") if body["messages"][0]["content"] == "bad" else answer()
        )
        carrier = attempts(clock, [only], max_attempts=AGREE + 2)
        await carrier.carry(job(line_no=1))
        bad = asyncio.create_task(carrier.carry(job("bad", line_no=2)))
        while not sent(only)[1:]:  # its first refusal
            await asyncio.sleep(0)
        await clock.sleep(0.5)
        assert isinstance(await carrier.carry(job(line_no=3)), Success)  # sent after it: answered
        failed = await bad  # then it is asked alone, again and again
        assert isinstance(failed, Failure) and isinstance(failed.error, Forbidden)
        assert failed.record["attempts"] == AGREE + 2 and only.aside is None and only.refusals == 0  # counted for none

    run(test)


def test_a_key_refused_while_answers_to_requests_sent_before_arrive_still_stops_the_run() -> None:
    """An answer to a request sent before the refusal says nothing of the key now: the refusals still agree."""

    async def test(clock: FakeClock) -> None:
        rotated = [False]

        def server(body: dict[str, Any]) -> Answer:
            return error(401, "401") if rotated[0] else answer()

        only = route(clock, "a", [])
        only.transport = MemoryTransport(server)
        carrier = attempts(clock, [only], max_attempts=AGREE + 2)
        await carrier.carry(job(line_no=1))
        rotated[0] = True
        with pytest.raises(FatalAPIError, match="the key was refused after"):
            await carrier.carry(job(line_no=2))
        assert only.refusals == AGREE

    run(test)


def test_a_refusal_after_a_stop_is_never_recorded() -> None:
    async def test(clock: FakeClock) -> None:
        stop = [False]
        script = [answer(), error(401, "401")]

        def stopping_then(body: dict[str, Any]) -> Answer:
            stop[0] = len(script) == 1  # the run is told to stop while the second request is on the wire
            return scripted(script)(body)

        only = route(clock, "a", [])
        only.transport = MemoryTransport(stopping_then)
        carrier = attempts(clock, [only], stopping=lambda: stop[0])
        await carrier.carry(job(line_no=1))
        with pytest.raises(FatalAPIError, match="after 1 answers"):  # the verdict, never a line recorded
            await carrier.carry(job(line_no=2))

    run(test)


def test_in_a_pool_a_deployment_refused_after_answers_is_set_aside_and_the_others_go_on() -> None:
    async def test(clock: FakeClock) -> None:
        a = route(clock, "a", _rotated(1))
        b = route(clock, "b", [answer()], priority=1)
        carrier = attempts(clock, [a, b])
        assert (await carrier.carry(job(line_no=1))).record["deployment"] == "a"
        outcomes = [await carrier.carry(job(line_no=n)) for n in range(2, 2 + AGREE)]
        assert all(isinstance(o, Success) for o in outcomes)
        assert a.aside is not None and "the key was refused after 1 answers" in str(a.aside)
        assert b.succeeded == AGREE

    run(test)


def test_in_a_pool_the_last_deployment_refused_stops_the_run() -> None:
    async def test(clock: FakeClock) -> None:
        a, b = route(clock, "a", _rotated(1)), route(clock, "b", _rotated(1))
        carrier = attempts(clock, [a, b])
        await carrier.carry(job(line_no=1))
        await carrier.carry(job(line_no=2))
        with pytest.raises(FatalAPIError, match="every deployment was set aside"):
            for n in range(3, 3 + 4 * AGREE):
                await carrier.carry(job(line_no=n))

    run(test)
