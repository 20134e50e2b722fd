"""Hostile server behaviour on demand: a catalogue of broken answers and absurd header values.

The simulator draws these per request (``SimConfig.fault_rates``, seeded) or per
prompt (``SimConfig.script``), like its other faults:

* ``shape``: a 200 whose body is not a valid answer of its API, drawn from
  ``SHAPES`` (``choices: [null]``, a stream chunk, usage that is not a count,
  embeddings that do not match the inputs, a Responses ``status: failed``...);
  ``shape:NAME`` forces one;
* ``headers``: a good answer whose ``x-ratelimit-remaining-*`` values are absurd;
* ``429-absurd`` / ``503-absurd``: a refusal whose ``retry-after`` is absurd;
* ``429-nohint``: a 429 with no ``retry-after`` and no rate-limit headers;
* ``huge``: a valid answer of ``SimConfig.huge_bytes`` bytes, sent in chunks;
* ``slow``: a valid answer trickled out over ``SimConfig.slow_seconds``.

Values come from the documentation's edges and from practice, never from the
client: a catalogue entry says what a server may send, not what the client expects.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

HOSTILE = ("shape", "headers", "429-absurd", "503-absurd", "429-nohint", "huge", "slow", "echo-key")  # fault names
ABSURD_VALUES = (
    "inf",
    "-inf",
    "nan",
    "-5",
    "1e400",
    "9" * 400,
    "",
    "soon",
    "0x10",
    "Wed, 21 Oct 2015 07:28:00 GMT",  # a date in the past
    "Fri, 31 Dec 9999 23:59:59 GMT",  # a date past any wait
    "Mon, 99 Foo 2025 99:99:99 GMT",
    "-1",
)
EXTREME_WAITS = ("1e9", "3600", "0", "0.001", "86400")  # plausible, and long: a wait past --max-wait stops the run
RATE_HEADERS = ("x-ratelimit-remaining-tokens", "x-ratelimit-remaining-requests")
WAIT_HEADERS = ("retry-after", "retry-after-ms", "x-ms-retry-after-ms")

Shape = Callable[[dict[str, Any]], Any]


def _first_choice(answer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    choice = {**answer["choices"][0], **changes}
    return {**answer, "choices": [choice]}


def _message(answer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return _first_choice(answer, message={**answer["choices"][0]["message"], **changes})


def _usage(answer: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**answer, "usage": {**(answer.get("usage") or {}), key: value}}


CHAT_SHAPES: dict[str, Shape] = {
    "choices-null": lambda a: {**a, "choices": [None]},
    "choices-empty": lambda a: {**a, "choices": []},
    "choices-string": lambda a: {**a, "choices": "none"},
    "message-string": lambda a: _first_choice(a, message="hello"),
    "message-null": lambda a: _first_choice(a, message=None),
    "content-object": lambda a: _message(a, content={"text": "hello"}),
    "tool-calls-strings": lambda a: _message(a, tool_calls=["x"]),
    "tool-calls-object": lambda a: _message(a, tool_calls={"id": "call_1"}),
    "function-string": lambda a: _message(a, tool_calls=[{"id": "call_1", "type": "function", "function": "f"}]),
    "arguments-object": lambda a: _message(
        a, tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]
    ),
    "finish-number": lambda a: _first_choice(a, finish_reason=5),
    "usage-string": lambda a: _usage(a, "prompt_tokens", "abc"),
    "usage-list": lambda a: _usage(a, "prompt_tokens", [1]),
    "usage-negative": lambda a: _usage(a, "completion_tokens", -5),
    "usage-huge": lambda a: _usage(a, "prompt_tokens", 10**30),
    "usage-float": lambda a: _usage(a, "prompt_tokens", 1e400),
    "usage-string-object": lambda a: {**a, "usage": "lots"},
    "chunk": lambda a: {
        "id": a["id"],
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
    },
    "delta-only": lambda a: {**a, "choices": [{"index": 0, "delta": {"content": "x"}}]},
    "body-list": lambda a: [a],
    "body-null": lambda a: None,
    "body-string": lambda a: "a completion",
}

EMBEDDING_SHAPES: dict[str, Shape] = {
    "embeddings-fewer": lambda a: {**a, "data": a["data"][:-1] or []},
    "embeddings-more": lambda a: {**a, "data": [*a["data"], {**a["data"][-1], "index": len(a["data"])}]},
    "embeddings-no-index": lambda a: {**a, "data": [{"embedding": d["embedding"]} for d in a["data"]] * 2},
    "embeddings-index-string": lambda a: {**a, "data": [{**d, "index": str(d["index"])} for d in a["data"]]},
    "embeddings-vector-strings": lambda a: {**a, "data": [{**d, "embedding": ["a", "b"]} for d in a["data"]]},
    "embeddings-null-item": lambda a: {**a, "data": [None]},
    "embeddings-usage-string": lambda a: _usage(a, "prompt_tokens", "abc"),
}

RESPONSES_SHAPES: dict[str, Shape] = {
    "response-failed": lambda a: {
        **a,
        "status": "failed",
        "output": [],
        "error": {"code": "server_error", "message": "The model failed."},
    },
    "response-error-set": lambda a: {**a, "error": {"code": "server_error", "message": "Something broke."}},
    "response-incomplete-tokens": lambda a: {
        **a,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    },
    "response-incomplete-filter": lambda a: {
        **a,
        "status": "incomplete",
        "incomplete_details": {"reason": "content_filter"},
    },
    "response-cancelled": lambda a: {**a, "status": "cancelled"},
    "response-queued": lambda a: {**a, "status": "queued", "output": []},
    "response-in-progress": lambda a: {**a, "status": "in_progress", "output": []},
    "response-output-null": lambda a: {**a, "output": [None]},
    "response-content-string": lambda a: {**a, "output": [{"type": "message", "content": "hi"}]},
    "response-status-number": lambda a: {**a, "status": 200},
}

SHAPES: dict[str, dict[str, Shape]] = {
    "chat": CHAT_SHAPES,
    "embeddings": EMBEDDING_SHAPES,
    "responses": RESPONSES_SHAPES,
}
RAW_SHAPES = {  # bodies that are not JSON at all
    "body-empty": b"",
    "body-not-utf8": b'{"choices": "\xff\xfe"}',
    "body-html": b"<html><body>502 Bad Gateway</body></html>",
    "nested-deep": b'{"choices": ' + b"[" * 3000 + b"]" * 3000 + b"}",
}


def broken_answer(api: str, answer: dict[str, Any], rng: random.Random, name: str | None = None) -> bytes | Any:
    """A broken version of ``answer`` (the named shape, or one drawn for the API): raw bytes, or a JSON value."""
    shapes = SHAPES[api]
    if name is None:
        name = rng.choice([*shapes, *RAW_SHAPES])
    if name in RAW_SHAPES:
        return RAW_SHAPES[name]
    return shapes.get(name, CHAT_SHAPES.get(name, CHAT_SHAPES["choices-null"]))(answer)


def absurd_headers(rng: random.Random, names: tuple[str, ...], extreme: bool = False) -> dict[str, str]:
    """Each header in ``names`` with an absurd value (or, with ``extreme``, a plausible but extreme one)."""
    values = ABSURD_VALUES + EXTREME_WAITS if extreme else ABSURD_VALUES
    return {name: rng.choice(values) for name in names}
