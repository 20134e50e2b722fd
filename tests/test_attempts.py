"""One job's life on its own: retries, re-asking, held 4xx, failover, stopping and the budget.

The transport is in-process: each answer is the bytes and headers a server would send, decoded by
the client's own decoder (``decode_reply``, ``status_error``); only the socket is left out. The
clock and every wait are injected, so nothing here takes wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from asyncbatch.admission.admission import Admission
from asyncbatch.config import Deployment, Endpoint, RequestDefaults, RetryPolicy
from asyncbatch.cost import Budget, Prices
from asyncbatch.errors import EndpointRefused, FatalAPIError, LineRefused, Outage, RateLimited, Refused, StopRun
from asyncbatch.input.reader import ParsedLine
from asyncbatch.input.requests import Job, prepare
from asyncbatch.live.attempts import AGREE, SYSTEMATIC, Attempts, Failure, Stopped, Success
from asyncbatch.live.client import Reply, decode_reply, status_error
from asyncbatch.live.router import Route, Router
from asyncbatch.stats import RunStats
from tests.helpers import Time

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


def answer(arguments: str | None = None, content: str = "fine") -> tuple[int, dict[str, str], bytes]:
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


def error(status: int, code: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, headers or {}, orjson.dumps({"error": {"code": code, "message": f"{code} from the server"}})


class Transport:
    """In-process stand-in for ``Connection``: answers from a script, records every payload sent."""

    def __init__(self, name: str, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script, self.sent = script, []
        self.url, self.tokens, self.answered = f"http://{name}.test/chat", None, False

    def where(self, api: str = "chat") -> str:
        return self.url

    async def send(self, payload: bytes, api: str = "chat", request: dict[str, Any] | None = None) -> Reply:
        self.sent.append(orjson.loads(payload))
        status, headers, raw = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.answered = True
        if status >= 400:
            raise status_error(status, headers, raw)
        return decode_reply(status, headers, raw, api, request)  # type: ignore[arg-type]


def route(time: Time, name: str, script: list[tuple[int, dict[str, str], bytes]]) -> Route:
    endpoint = Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment=name)
    admission = Admission(None, None, clock=time, sleep=time.sleep, wall=time)
    return Route(Deployment(name=name, endpoint=endpoint), Transport(name, script), admission)  # type: ignore[arg-type]


def job(text: str = "I loved it", line_no: int = 1, tools: bool = False) -> Job:
    defaults = RequestDefaults(tools=[TOOL] if tools else None)
    made = prepare(
        ParsedLine(line_no, f"id-{line_no}", "chat", {"messages": [{"role": "user", "content": text}]}), defaults, "d"
    )
    assert isinstance(made, Job)
    return made


def attempts(
    time: Time, routes: list[Route], *, tools: bool = False, stopping: Callable[[], bool] = lambda: False, **kw: Any
) -> Attempts:
    return Attempts(
        router=Router(routes, sleep=time.sleep, on_aside=lambda message: None),
        request=RequestDefaults(tools=[TOOL] if tools else None),
        retry=RetryPolicy(max_attempts=3, backoff_initial=1.0),
        stats=RunStats(),
        stopping=stopping,
        sleep=time.sleep,
        clock=time,
        **kw,
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_a_5xx_is_retried_after_a_backoff_and_the_success_counts_both_attempts() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [error(500, "server_error"), answer()])
        carrier = attempts(time, [only])
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["attempts"] == 2
        assert outcome.record["response"]["request_id"] == "req-1"
        assert carrier.stats.retries == 1 and only.succeeded == 1 and only.failed == 1
        assert [w for w in time.slept if w] and max(time.slept) <= 2.0  # a backoff, on the injected clock

    run(test)


def test_a_server_retry_after_is_waited_exactly() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [error(503, "busy", {"retry-after-ms": "2500"}), answer()])
        outcome = await attempts(time, [only]).carry(job())
        assert isinstance(outcome, Success)
        assert 2.5 in time.slept

    run(test)


def test_invalid_arguments_are_asked_again_with_what_was_wrong() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [answer('{"sentiment": "meh"}'), answer('{"sentiment": "positive"}')])
        outcome = await attempts(time, [only], tools=True).carry(job(tools=True))
        assert isinstance(outcome, Success) and outcome.record["output"] == {"sentiment": "positive"}
        first, second = only.connection.sent  # type: ignore[attr-defined]
        assert len(second["messages"]) > len(first["messages"])
        assert "meh" in orjson.dumps(second["messages"][1:]).decode()  # the model is told what it sent

    run(test)


def test_a_400_is_not_retried_and_is_held_until_the_first_success_shows_the_endpoint_works() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [error(400, "unsupported_parameter")])
        carrier = attempts(time, [only])
        failed = await carrier.carry(job())
        assert isinstance(failed, Failure) and failed.record["attempts"] == 1
        assert failed.record["error"]["code"] == "unsupported_parameter"
        assert carrier.settle(failed) == []  # held: it may be a wrong deployment, shared by every line
        success = Success(2, {"line": 2})
        carrier.any_success = True
        assert carrier.settle(success) == [failed, success]

    run(test)


def test_the_same_4xx_on_the_first_requests_stops_the_run_and_records_none() -> None:
    async def test() -> None:
        time = Time()
        carrier = attempts(time, [route(time, "a", [error(400, "OperationNotSupported")])])
        for n in range(1, SYSTEMATIC):
            assert carrier.settle(await carrier.carry(job(line_no=n))) == []
        with pytest.raises(FatalAPIError, match="all refused the same way"):
            carrier.settle(await carrier.carry(job(line_no=SYSTEMATIC)))

    run(test)


def test_a_wrong_key_is_fatal_at_once_with_one_endpoint() -> None:
    async def test() -> None:
        time = Time()
        with pytest.raises(FatalAPIError, match="authentication failed"):
            await attempts(time, [route(time, "a", [error(401, "401")])]).carry(job())

    run(test)


def test_in_a_pool_a_429_sends_the_retry_to_the_other_deployment_at_once() -> None:
    async def test() -> None:
        time = Time()
        a = route(time, "a", [error(429, "429", {"retry-after-ms": "30000"}), answer()])
        b = route(time, "b", [answer()])
        a.deployment = Deployment(name="a", endpoint=a.deployment.endpoint, priority=0)
        b.deployment = Deployment(name="b", endpoint=b.deployment.endpoint, priority=1)  # used only when a cannot
        carrier = attempts(time, [a, b])
        outcome = await carrier.carry(job())
        assert isinstance(outcome, Success) and outcome.record["deployment"] == "b"
        assert a.throttled == 1 and b.succeeded == 1 and (a.failed, b.failed) == (1, 0)
        assert (carrier.stats.attempts, carrier.stats.throttled, carrier.stats.in_flight) == (2, 1, 0)
        assert a.in_flight == b.in_flight == 0
        assert time.now < 30  # nobody waited out a's 30 s

    run(test)


def test_a_stop_asked_for_abandons_the_job_before_it_is_sent() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [answer()])
        with pytest.raises(Stopped):
            await attempts(time, [only], stopping=lambda: True).carry(job())
        assert only.connection.sent == []  # type: ignore[attr-defined]

    run(test)


def test_the_budget_stops_the_run_before_an_attempt_that_could_pass_it() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [answer()])
        prices = Prices(input=1_000_000.0, output=1_000_000.0)  # 1 USD per token
        with pytest.raises(StopRun, match="--max-cost"):
            await attempts(time, [only], prices=prices, budget=Budget(0.5)).carry(job())
        assert only.connection.sent == []  # type: ignore[attr-defined]

    run(test)


def test_a_failure_is_typed_by_how_the_engine_reacts_and_never_changes() -> None:
    throttled = status_error(429, {"retry-after": "3"}, b'{"error": {"code": "429", "message": "slow down"}}')
    busy = status_error(503, {}, b"")
    refused = status_error(400, {}, b'{"error": {"code": "unsupported_parameter", "message": "no"}}')
    assert (type(throttled), type(busy), type(refused)) == (RateLimited, Outage, Refused)
    assert (throttled.retryable, busy.retryable, refused.retryable) == (True, True, False)
    assert throttled.retry_after == 3.0 and refused.retry_after is None
    with pytest.raises(AttributeError, match="immutable"):
        throttled.held = True  # type: ignore[misc]
    held = throttled.but(held=True)
    assert type(held) is RateLimited and held.held and not throttled.held and held.message == throttled.message


def _error_body(status: int, error: dict[str, Any]) -> Any:
    return status_error(status, {}, orjson.dumps({"error": error}))


def test_whose_refusal_a_4xx_is_decides_its_type() -> None:
    filtered = {"code": "content_filter", "message": "filtered", "param": "prompt"}
    inner = {"code": None, "message": "filtered", "innererror": {"code": "ResponsibleAIPolicyViolation"}}
    assert type(_error_body(400, filtered)) is LineRefused
    assert type(_error_body(400, inner)) is LineRefused
    assert type(_error_body(403, {"code": "content_filter", "message": "flagged"})) is LineRefused  # a gateway's
    assert type(_error_body(400, {"code": "context_length_exceeded", "message": "too long"})) is LineRefused
    assert type(_error_body(401, {"code": "401", "message": "Access denied"})) is EndpointRefused
    assert type(status_error(403, {}, b"Forbidden")) is EndpointRefused  # no JSON: the status says it all
    assert type(_error_body(404, {"code": "DeploymentNotFound", "message": "gone"})) is EndpointRefused
    # a 404 naming a field of the request is about that request, not the deployment
    named = {"code": "not_found", "message": "no such", "param": "previous_response_id"}
    assert type(_error_body(404, named)) is Refused
    assert type(_error_body(400, {"code": "unsupported_parameter", "message": "no"})) is Refused
    assert not _error_body(401, {"code": "401"}).retryable  # the engine decides, by type


def test_content_refusals_are_never_held_so_they_never_stop_the_run() -> None:
    async def test() -> None:
        time = Time()
        carrier = attempts(time, [route(time, "a", [error(400, "content_filter")])])
        for n in range(1, 2 * SYSTEMATIC + 1):
            failed = await carrier.carry(job(line_no=n))
            assert isinstance(failed, Failure) and isinstance(failed.error, LineRefused)
            assert carrier.settle(failed) == [failed]  # recorded at once, and never a verdict on every line
        assert carrier.held == []

    run(test)


def _rotated(after: int, status: int = 401, code: str = "401") -> list[tuple[int, dict[str, str], bytes]]:
    return [answer() for _ in range(after)] + [error(status, code)]


def test_a_key_refused_after_answers_stops_the_run_once_a_few_answers_agree_and_records_no_line() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", _rotated(5))
        carrier = attempts(time, [only])
        for n in range(1, 6):
            assert isinstance(await carrier.carry(job(line_no=n)), Success)
        with pytest.raises(FatalAPIError, match=r"the key was refused after 5 answers: was it rotated\?") as caught:
            await carrier.carry(job(line_no=6))
        assert caught.value.kind == "authentication" and "run when the same command runs again" in str(caught.value)
        assert only.connection.sent[5:] == [only.connection.sent[5]] * AGREE  # type: ignore[attr-defined]
        assert only.refusals == AGREE
        assert [w for w in time.slept if w]  # asked again after a backoff, not at once

    run(test)


def test_a_deployment_deleted_after_answers_names_the_url_and_what_changed() -> None:
    async def test() -> None:
        time = Time()
        carrier = attempts(time, [route(time, "a", _rotated(2, 404, "DeploymentNotFound"))])
        for n in (1, 2):
            await carrier.carry(job(line_no=n))
        with pytest.raises(FatalAPIError, match="deployment was not found after 2 answers: was it deleted") as caught:
            await carrier.carry(job(line_no=3))
        assert caught.value.kind == "not_found" and "http://a.test/chat" in str(caught.value)

    run(test)


def test_a_refusal_between_answers_is_a_moment_s_and_the_line_is_asked_again() -> None:
    async def test() -> None:
        time = Time()
        only = route(time, "a", [answer(), error(401, "401"), answer()])
        carrier = attempts(time, [only])
        assert isinstance(await carrier.carry(job(line_no=1)), Success)
        outcome = await carrier.carry(job(line_no=2))
        assert isinstance(outcome, Success) and outcome.record["attempts"] == 2
        assert only.refusals == 0  # the answer since says the key works

    run(test)


class ByPrompt(Transport):
    """Refuses the prompt ``refused`` with ``answer``, answers every other one."""

    def __init__(self, refused: str, refusal: tuple[int, dict[str, str], bytes]) -> None:
        super().__init__("a", [answer()])
        self.refused, self.refusal = refused, refusal

    async def send(self, payload: bytes, api: str = "chat", request: dict[str, Any] | None = None) -> Reply:
        if orjson.loads(payload)["messages"][0]["content"] == self.refused:
            self.sent.append(orjson.loads(payload))
            raise status_error(*self.refusal)
        return await super().send(payload, api, request)


def test_a_line_refused_while_others_are_answered_is_that_line_s_failure_after_its_attempts() -> None:
    async def test() -> None:
        time = Time()

        async def sleep(seconds: float) -> None:
            await time.sleep(seconds)
            await asyncio.sleep(0)  # the other lines go meanwhile

        only = route(time, "a", [])
        only.connection = ByPrompt("bad", error(404, "404"))  # type: ignore[assignment]
        carrier = attempts(time, [only])
        carrier.sleep = sleep
        await carrier.carry(job(line_no=1))
        bad = asyncio.create_task(carrier.carry(job("bad", line_no=2)))
        answered = 0
        while not bad.done():
            await asyncio.sleep(0)
            answered += isinstance(await carrier.carry(job(line_no=10 + answered)), Success)
        failed = bad.result()
        assert isinstance(failed, Failure) and isinstance(failed.error, EndpointRefused)
        assert failed.record["attempts"] == 3 and answered >= 2  # an answer between each of its attempts
        assert only.aside is None

    run(test)


def test_a_refusal_after_a_stop_is_never_recorded() -> None:
    async def test() -> None:
        time = Time()
        stop = [False]
        only = route(time, "a", [answer(), error(401, "401")])
        carrier = attempts(time, [only], stopping=lambda: stop[0])
        await carrier.carry(job(line_no=1))
        only.connection.send = _stopping_then(only.connection.send, stop)  # type: ignore[method-assign]
        with pytest.raises(FatalAPIError, match="after 1 answers"):  # the verdict, never a line recorded
            await carrier.carry(job(line_no=2))

    run(test)


def _stopping_then(send: Callable[..., Awaitable[Reply]], stop: list[bool]) -> Callable[..., Awaitable[Reply]]:
    async def sending(*args: Any, **kwargs: Any) -> Reply:
        stop[0] = True  # the run is told to stop while this request is on the wire
        return await send(*args, **kwargs)

    return sending


def test_in_a_pool_a_deployment_refused_after_answers_is_set_aside_and_the_others_go_on() -> None:
    async def test() -> None:
        time = Time()
        a = route(time, "a", _rotated(1))
        b = route(time, "b", [answer()])
        a.deployment = Deployment(name="a", endpoint=a.deployment.endpoint, priority=0)
        b.deployment = Deployment(name="b", endpoint=b.deployment.endpoint, priority=1)
        carrier = attempts(time, [a, b])
        assert (await carrier.carry(job(line_no=1))).record["deployment"] == "a"
        outcomes = [await carrier.carry(job(line_no=n)) for n in range(2, 2 + AGREE)]
        assert all(isinstance(o, Success) for o in outcomes)
        assert a.aside is not None and "the key was refused after 1 answers" in a.aside
        assert b.succeeded == AGREE

    run(test)


def test_in_a_pool_the_last_deployment_refused_stops_the_run() -> None:
    async def test() -> None:
        time = Time()
        a, b = route(time, "a", _rotated(1)), route(time, "b", _rotated(1))
        carrier = attempts(time, [a, b])
        await carrier.carry(job(line_no=1))
        await carrier.carry(job(line_no=2))
        with pytest.raises(FatalAPIError, match="every deployment was set aside"):
            for n in range(3, 3 + 4 * AGREE):
                await carrier.carry(job(line_no=n))

    run(test)
