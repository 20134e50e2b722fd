"""The simulator's own policy: Azure-style quota windows and schema-shaped answers."""

from __future__ import annotations

import json

import jsonschema
import pytest

from asyncbatch.simulator.answers import completion, forced_function, sample
from asyncbatch.simulator.quota import Quota
from tests.helpers import FakeClock


def test_rpm_is_enforced_per_second() -> None:
    clock = FakeClock(1000.2)
    quota = Quota(tpm=None, rpm=600, clock=clock)  # 10 per second
    verdicts = [quota.admit(1) for _ in range(11)]
    assert [v.allowed for v in verdicts] == [True] * 10 + [False]
    assert verdicts[-1].retry_after == pytest.approx(0.8)
    clock.now = 1001.0
    assert quota.admit(1).allowed


def test_tpm_bucket_holds_a_sixth_of_a_minute_and_refills() -> None:
    clock = FakeClock()
    quota = Quota(tpm=6000, rpm=None, clock=clock)  # 1000 per 10 s window, refill 100/s
    assert quota.admit(600).allowed
    denied = quota.admit(600)
    assert not denied.allowed and denied.retry_after == pytest.approx(2.0) and denied.remaining_tokens == 400
    clock.now += 2.0
    assert quota.admit(600).allowed


def test_request_bigger_than_the_window_is_admitted_when_the_bucket_is_full() -> None:
    quota = Quota(tpm=600, rpm=None, clock=FakeClock())
    assert quota.admit(10_000).allowed


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "count": {"type": "integer"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "maybe": {"type": ["null", "boolean"]},
    },
    "required": ["name", "kind", "count", "tags", "where"],
    "additionalProperties": False,
}


def test_sample_fits_the_schema_and_carries_the_prompt() -> None:
    value = sample(SCHEMA, "Acme prompt")
    jsonschema.validate(value, SCHEMA)
    assert "Acme prompt" in value["name"]


def _body(**extra: object) -> dict:
    tool = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}
    return {"messages": [{"role": "user", "content": "hi"}], "tools": [tool], **extra}


def test_forced_function_by_choice_or_required() -> None:
    assert forced_function(_body(tool_choice={"type": "function", "function": {"name": "f"}}))["name"] == "f"
    assert forced_function(_body(tool_choice="required"))["name"] == "f"
    assert forced_function(_body()) is None


def test_completion_with_tool_and_malformed_fault() -> None:
    body = _body(tool_choice="required")
    good = completion(body, number=1)
    args = good["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    jsonschema.validate(json.loads(args), SCHEMA)
    assert good["usage"]["total_tokens"] == good["usage"]["prompt_tokens"] + good["usage"]["completion_tokens"]
    bad = completion(body, number=2, fault="malformed")
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


def test_text_completion_echoes_the_prompt() -> None:
    reply = completion({"messages": [{"role": "user", "content": "ping 7"}]}, number=3)
    assert reply["choices"][0]["message"]["content"] == "Simulated answer to: ping 7"


def test_sample_follows_refs_and_takes_the_first_branch_that_is_not_null() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ceo": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "office": {"$ref": "#/$defs/Office"},
            "loop": {"$ref": "#/$defs/Loop"},
        },
        "$defs": {
            "Office": {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}},
            "City": {"type": "object", "properties": {"name": {"type": "string"}}},
            "Loop": {"type": "object", "properties": {"again": {"$ref": "#/$defs/Loop"}}},
        },
    }
    value = sample(schema, "Acme")
    assert value == {"ceo": "ceo: Acme", "office": {"city": {"name": "name: Acme"}}, "loop": {"again": None}}


def test_the_simulator_can_say_a_budget_its_admissions_contradict_and_refuse_each_first_try() -> None:
    """Its own models of servers seen in practice: budget headers stuck at a value, a first try refused,
    a 429's wait said only in x-ms-retry-after-ms."""
    import asyncio

    import aiohttp

    from asyncbatch.simulator import SimConfig, serve

    config = SimConfig(
        api_key="k",
        remaining_tokens_says="0",
        remaining_requests_says="-1",
        first_try="429",
        retry_after_429=3.0,
        retry_after_headers=("x-ms-retry-after-ms",),
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    async def main() -> list[tuple[int, dict[str, str]]]:
        async with serve(config) as (url, _), aiohttp.ClientSession() as session:
            seen = []
            for _ in range(2):
                async with session.post(
                    f"{url}/openai/deployments/d/chat/completions?api-version=2024-10-21",
                    json=body,
                    headers={"api-key": "k"},
                ) as response:
                    seen.append((response.status, dict(response.headers)))
            return seen

    (first, refused), (second, answered) = asyncio.run(main())
    assert first == 429 and refused.get("x-ms-retry-after-ms") == "3000" and "retry-after" not in refused
    assert second == 200  # the same request again: admitted
    assert answered["x-ratelimit-remaining-tokens"] == "0" and answered["x-ratelimit-remaining-requests"] == "-1"
