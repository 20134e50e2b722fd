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
from asyncbatch.errors import FatalAPIError, Outage, RateLimited, Refused, StopRun
from asyncbatch.input.reader import ParsedLine
from asyncbatch.input.requests import Job, prepare
from asyncbatch.live.attempts import SYSTEMATIC, Attempts, Failure, Stopped, Success
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
        only = route(time, "a", [error(400, "invalid_prompt")])
        carrier = attempts(time, [only])
        failed = await carrier.carry(job())
        assert isinstance(failed, Failure) and failed.record["attempts"] == 1
        assert failed.record["error"]["code"] == "invalid_prompt"
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
    refused = status_error(400, {}, b'{"error": {"code": "content_filter", "message": "no"}}')
    assert (type(throttled), type(busy), type(refused)) == (RateLimited, Outage, Refused)
    assert (throttled.retryable, busy.retryable, refused.retryable) == (True, True, False)
    assert throttled.retry_after == 3.0 and refused.retry_after is None
    with pytest.raises(AttributeError, match="immutable"):
        throttled.held = True  # type: ignore[misc]
    held = throttled.but(held=True)
    assert type(held) is RateLimited and held.held and not throttled.held and held.message == throttled.message
