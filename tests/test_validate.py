from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from asyncbatch.errors import AttemptError, ConfigError, InvalidOutput, LineRefused, Refused
from asyncbatch.structured.schemas import strict_problems
from asyncbatch.structured.validate import OutputCheck, compile_schema

SCHEMA_WORDS = ["type", "properties", "items", "$ref", "anyOf", "allOf", "$defs", "required", "enum", "a"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "count", "tags", "where"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
GOOD = {"name": "n", "kind": "a", "count": 3, "tags": ["x"], "where": {"city": "c"}}


def _tool_reply(arguments: str, finish: str = "tool_calls", name: str = "f") -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {
        "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": finish}]
    }


def test_valid_arguments_become_the_output() -> None:
    assert OutputCheck(TOOLS, None).extract(_tool_reply(json.dumps(GOOD))) == GOOD


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"name": "n", "ki', "not valid JSON"),
        (json.dumps({**GOOD, "count": "three"}), "at $.count: 'three' is not of type 'integer'"),
        (json.dumps({**GOOD, "kind": "z"}), "at $.kind: 'z' is not one of ['a', 'b']"),
        (json.dumps({**GOOD, "where": {}}), "at $.where: 'city' is a required property"),
        (json.dumps({**GOOD, "tags": [1]}), "at $.tags[0]: 1 is not of type 'string'"),
        (json.dumps({**GOOD, "extra": 1}), "Additional properties are not allowed"),
    ],
)
def test_invalid_arguments_are_retryable_with_feedback(arguments: str, expected: str) -> None:
    with pytest.raises(AttemptError) as caught:
        OutputCheck(TOOLS, None).extract(_tool_reply(arguments))
    err = caught.value
    assert err.code == "invalid_tool_arguments" and isinstance(err, InvalidOutput) and err.status == 200
    assert expected in err.message and repr(arguments) in err.message  # the raw arguments are kept
    assistant, tool = err.feedback or []
    assert assistant["tool_calls"][0]["function"]["arguments"] == arguments
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_1" and expected in tool["content"]


def test_unknown_tool_and_missing_call_are_invalid() -> None:
    check = OutputCheck(TOOLS, None)
    with pytest.raises(AttemptError, match="unknown tool 'g'"):
        check.extract(_tool_reply("{}", name="g"))
    with pytest.raises(AttemptError, match="without calling a tool") as caught:
        check.extract({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
    assert caught.value.feedback is not None and caught.value.feedback[-1]["role"] == "user"


def test_response_format_content_is_validated() -> None:
    check = OutputCheck(None, {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    reply = {"choices": [{"message": {"content": json.dumps(GOOD)}, "finish_reason": "stop"}]}
    assert check.extract(reply) == GOOD
    reply["choices"][0]["message"]["content"] = json.dumps({**GOOD, "name": 1})
    with pytest.raises(AttemptError, match=r"the JSON content: schema violation at \$.name") as caught:
        check.extract(reply)
    assert caught.value.feedback is not None and caught.value.feedback[-1]["role"] == "user"


@pytest.mark.parametrize(
    ("finish", "code", "hint"),
    [("length", "output_truncated", "--max-tokens"), ("content_filter", "content_filter", "content filter")],
)
def test_finish_reasons_that_asking_again_will_not_fix(finish: str, code: str, hint: str) -> None:
    with pytest.raises(AttemptError) as caught:
        OutputCheck(TOOLS, None).extract(_tool_reply('{"name": "n"', finish=finish))
    assert caught.value.code == code and isinstance(caught.value, Refused) and hint in caught.value.message


def test_plain_text_when_no_structure_is_asked() -> None:
    reply = {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}
    assert OutputCheck(None, None).extract(reply) == "hello"


def test_an_invalid_schema_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        compile_schema({"type": "objekt"}, "tool 'f'")


def test_strict_accepts_a_qualifying_schema() -> None:
    assert strict_problems(SCHEMA) == []


def test_strict_lists_every_reason_with_its_path() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "object", "properties": {"c": {"type": "integer"}}},
            "d": {"allOf": [{"type": "string"}]},
        },
        "required": ["a"],
    }
    problems = strict_problems(schema)
    assert '$: needs "additionalProperties": false' in problems
    assert "$: every property must be required; not required: b, d" in problems
    assert '$.b: needs "additionalProperties": false' in problems
    assert "$.b: every property must be required; not required: c" in problems
    assert "$.d: 'allOf' is not supported in strict mode" in problems


def test_strict_limits_depth_and_root() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(11):
        deep = {"type": "object", "properties": {"x": deep}, "required": ["x"], "additionalProperties": False}
    assert any("nested 11 levels deep" in p for p in strict_problems(deep))
    assert strict_problems({"type": "array", "items": {"type": "string"}}) == ["$: the root must be an object schema"]


@pytest.mark.parametrize("structured", [False, True])
def test_a_refusal_is_the_line_s_failure_with_the_model_s_words(structured: bool) -> None:
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    body = {"choices": [{"message": message, "finish_reason": "stop"}]}
    check = OutputCheck(TOOLS, None) if structured else OutputCheck(None, None)
    with pytest.raises(LineRefused) as caught:
        check.extract(body)
    assert caught.value.code == "refusal" and "I can't help with that." in caught.value.message
    assert caught.value.body == body  # a LineRefused: asking again will not help


def test_an_empty_refusal_field_is_no_refusal() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "hi", "refusal": None}, "finish_reason": "stop"}]}
    assert OutputCheck(None, None).extract(body) == "hi"


def test_a_responses_refusal_part_is_the_line_s_failure() -> None:
    part = {"type": "refusal", "refusal": "No."}
    body = {"status": "completed", "output": [{"type": "message", "content": [part]}]}
    with pytest.raises(LineRefused, match=r"the model refused to answer: 'No\.'"):
        OutputCheck(None, None).extract_for("responses", body, {"input": "x"})


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SCHEMA_WORDS), inner, max_size=3),
    max_leaves=12,
)


@given(schema=JSON_VALUES | st.integers(30, 300).map(_nested))
@example(schema=_nested(100))  # jsonschema ran out of stack checking it: "internal error", exit 2, every run
@example(schema={"$ref": "#/nope"})  # checked, then raised at the first answer checked: after it was paid
@example(schema={"enum": [{"$ref": "x"}]})  # data, not a reference
@example(schema={"$ref": "#"})  # a reference to itself: checking an answer never ends (a RecursionError)
def test_any_schema_is_judged_never_a_traceback(schema: Any) -> None:
    """A schema comes from outside (--tools, --response-format, a line's own): judged, whatever it holds."""
    try:
        compile_schema(schema, "the schema")
    except ConfigError as refused:
        assert str(refused).startswith("the schema ")
        return
    check = OutputCheck(None, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    for answer in ({"a": [1, "x", None]}, [], "x", {"$ref": 1}):  # what a run does with each answer: no traceback
        reply = {"choices": [{"message": {"content": json.dumps(answer)}, "finish_reason": "stop"}]}
        with contextlib.suppress(InvalidOutput, Refused):  # a violation (asked again), or a schema it cannot check with
            check.extract(reply)


def test_an_answer_too_deep_to_check_against_a_recursive_schema_is_refused_and_kept() -> None:
    """A recursive schema walks a few frames a level: an answer 126 levels deep (a record holds 128) ran out of
    stack in the middle of a run, where the answer was paid for: an internal error, and paid again every run."""
    node = {"anyOf": [{"type": "object", "properties": {"c": {"allOf": [{"$ref": "#/$defs/n"}]}}}, {"type": "null"}]}
    schema = {"$defs": {"n": node}, "type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}
    check = OutputCheck(None, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    answer: Any = None
    for _ in range(126):
        answer = {"c": answer}
    reply = {"choices": [{"message": {"content": json.dumps(answer)}, "finish_reason": "stop"}]}
    with pytest.raises(Refused) as refused:
        check.extract(reply)
    assert refused.value.code == "response_too_deep" and "the answer is kept" in str(refused.value)
    shallow = {"choices": [{"message": {"content": json.dumps({"c": {"c": None}})}, "finish_reason": "stop"}]}
    assert check.extract(shallow) == {"c": {"c": None}}


# -- judged against the request as it was sent -------------------------------------------------

LOOKUP = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
CHAT_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP}}
FLAT_TOOL = {"type": "function", "name": "lookup", "parameters": LOOKUP, "strict": False}
OWN = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
RUN_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"required": ["a"]}}}


def _chat(content: str | None = None, *calls: tuple[str, str]) -> dict[str, Any]:
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls, 1)
    ]
    message = {"role": "assistant", "content": content, **({"tool_calls": tool_calls} if tool_calls else {})}
    return {"choices": [{"message": message, "finish_reason": "tool_calls" if calls else "stop"}]}


def _responses(text: str | None = None, *calls: tuple[str, str]) -> dict[str, Any]:
    output: list[dict[str, Any]] = [
        {"type": "function_call", "call_id": f"call_{i}", "name": name, "arguments": arguments}
        for i, (name, arguments) in enumerate(calls, 1)
    ]
    if text is not None:
        output.append({"type": "message", "content": [{"type": "output_text", "text": text}]})
    return {"status": "completed", "output": output}


@pytest.mark.parametrize(
    ("api", "request_", "answer", "output"),
    [
        # a line's own forced tool: its arguments, parsed (chat recorded the content, null)
        ("chat", {"tools": [CHAT_TOOL], "tool_choice": "required"}, _chat(None, ("lookup", '{"q": "x"}')), {"q": "x"}),
        # a line's own response format: the parsed content, checked against it (chat recorded the text)
        (
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"schema": OWN}}},
            _chat('{"b": 1}'),
            {"b": 1},
        ),
        # tools the model may leave: a text answer is one (Responses asked 6 times, then failed the line)
        ("chat", {"tools": [CHAT_TOOL], "tool_choice": "auto"}, _chat("no need"), "no need"),
        ("responses", {"tools": [FLAT_TOOL], "tool_choice": "auto"}, _responses("no need"), "no need"),
        ("responses", {"tools": [FLAT_TOOL]}, _responses(None, ("lookup", '{"q": "x"}')), {"q": "x"}),
        # a tool the model may leave, and a JSON text asked for: the text is checked
        (
            "responses",
            {"tools": [FLAT_TOOL], "text": {"format": {"type": "json_schema", "schema": OWN}}},
            _responses('{"b": 2}'),
            {"b": 2},
        ),
    ],
)
def test_an_answer_is_judged_against_its_own_request(
    api: str, request_: dict[str, Any], answer: dict[str, Any], output: Any
) -> None:
    assert OutputCheck(None, None).extract_for(api, answer, request_) == output


@pytest.mark.parametrize(
    ("api", "request_", "answer", "expected"),
    [
        ("chat", {"tools": [CHAT_TOOL], "tool_choice": "required"}, _chat("no"), "without calling a tool"),
        ("chat", {"tools": [CHAT_TOOL], "tool_choice": "auto"}, _chat(None, ("lookup", "{}")), "'q' is a required"),
        ("chat", {"tools": [CHAT_TOOL]}, _chat(None, ("other", "{}")), "unknown tool 'other'"),
        (
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"schema": OWN}}},
            _chat('{"a": 1}'),
            "'b'",
        ),
        (
            "responses",
            {"tools": [FLAT_TOOL], "tool_choice": {"type": "function", "name": "lookup"}},
            _responses("no"),
            "without calling",
        ),
        ("responses", {"tools": [FLAT_TOOL], "tool_choice": "required"}, _responses("no"), "without calling"),
    ],
)
def test_an_answer_its_own_request_refuses_is_asked_again(
    api: str, request_: dict[str, Any], answer: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidOutput, match=expected):
        OutputCheck(None, None).extract_for(api, answer, request_)


def test_a_lines_own_response_format_is_its_schema_not_the_runs() -> None:
    """--response-format is set where a line has none: a line's own is what it asked for (every answer to it was
    judged by the run's, asked again until its attempts ran out, and failed), and the run's model is not its."""
    check = OutputCheck(None, RUN_FORMAT, {None: Never})
    own = {"response_format": {"type": "json_schema", "json_schema": {"schema": OWN}}}
    assert check.extract_for("chat", _chat('{"b": 3}'), own) == {"b": 3}
    with pytest.raises(InvalidOutput, match="'a' is a required property"):
        check.extract_for("chat", _chat('{"b": 3}'), {"response_format": RUN_FORMAT})
    with pytest.raises(InvalidOutput, match="the model Never refuses it"):
        check.extract_for("chat", _chat('{"a": "x"}'), {"response_format": RUN_FORMAT})


class Never(BaseModel):
    """A model no answer here passes: whether it was asked is what is seen."""

    never: int


def test_several_calls_are_all_checked_and_never_one_silently_kept() -> None:
    check = OutputCheck(TOOLS, None)
    good, other = json.dumps(GOOD), json.dumps({**GOOD, "name": "other"})
    assert check.extract(_chat(None, ("f", good), ("f", good))) == GOOD  # the same call twice: one answer
    backwards = json.dumps(dict(reversed(GOOD.items())))
    twice = check.extract(_chat(None, ("f", backwards), ("f", good)))  # the same arguments, keys in another order
    assert list(twice) == list(reversed(GOOD)) and twice == GOOD  # the first, as the model wrote it
    with pytest.raises(InvalidOutput, match=r"the model made 2 different calls \('f'\) where one answer holds one"):
        check.extract(_chat(None, ("f", good), ("f", other)))
    with pytest.raises(InvalidOutput, match=r"at \$.count") as caught:
        check.extract(_chat(None, ("f", good), ("f", json.dumps({**GOOD, "count": "x"}))))
    assistant, *replies = caught.value.feedback or []
    assert len(assistant["tool_calls"]) == 2 and [r["tool_call_id"] for r in replies] == ["call_1", "call_2"]
    with pytest.raises(InvalidOutput, match="unknown tool 'g'"):
        check.extract(_chat(None, ("f", good), ("g", "{}")))
    # a line's own tools the model may call as it likes: each call checked, the first is the output
    free = {"tools": [CHAT_TOOL], "tool_choice": "auto"}
    two = _chat(None, ("lookup", '{"q": "a"}'), ("lookup", '{"q": "b"}'))
    assert OutputCheck(None, None).extract_for("chat", two, free) == {"q": "a"}
    forced = {"tools": [FLAT_TOOL], "tool_choice": {"type": "function", "name": "lookup"}}
    with pytest.raises(InvalidOutput, match="2 different calls") as caught:
        OutputCheck(None, None).extract_for(
            "responses", _responses(None, ("lookup", '{"q": "a"}'), ("lookup", '{"q": "b"}')), forced
        )
    outputs = [item for item in caught.value.feedback or [] if item["type"] == "function_call_output"]
    assert [o["call_id"] for o in outputs] == ["call_1", "call_2"]


BIG_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63 - 2, 2**64 + 2)
    | st.integers(-(2**63) - 2, -(2**63) + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet="0123456789-e.", max_size=25),  # digits in strings are no numbers
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


def _integers(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [i for child in children for i in _integers(child)]


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON kind all the way down (1 is not 1.0, True is not 1), keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # keys in the same order too
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@given(value=BIG_JSON)
@example(value={"id": 123456789012345678901234})  # recorded as 1.2345678901234569e+23, a number nobody wrote
@example(value=[2**64 - 1, -(2**63)])  # the ends orjson reads exactly
@example(value=[2**64])
@example(value=-(2**63) - 1)
@example(value="12345678901234567890123")
def test_an_output_is_exactly_what_the_model_wrote_or_asked_again(value: Any) -> None:
    """JSON has no bound on integers; orjson reads one past 64 bits as a float, which passed ``integer`` and was
    recorded rounded. Either the output is the model's value, kind for kind, or the answer is asked again."""
    check = OutputCheck(None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    past = [i for i in _integers(value) if not -(2**63) <= i < 2**64]
    try:
        output = check.extract(_chat(json.dumps(value)))
    except InvalidOutput as invalid:
        assert past and f"the integer {past[0]} is past what can be kept exactly" in invalid.message
    else:
        assert not past and _same(output, value)


CALLS = st.lists(
    st.tuples(
        st.sampled_from(["lookup", "other"]), st.sampled_from(['{"q": "a"}', '{"q": "b"}', "{}", '{"q": 1}', "{"])
    ),
    max_size=4,
)


@given(
    calls=CALLS,
    choice=st.sampled_from([None, "auto", "required", {"type": "function", "function": {"name": "lookup"}}]),
    run=st.booleans(),
)
@example(calls=[("lookup", '{"q": "a"}'), ("lookup", '{"q": "b"}')], choice=None, run=True)  # the second was dropped
@example(calls=[("lookup", '{"q": "a"}'), ("lookup", "{")], choice=None, run=True)  # unchecked, too
def test_an_output_is_a_call_every_call_of_which_is_valid_and_which_none_contradicts(
    calls: list[tuple[str, str]], choice: Any, run: bool
) -> None:
    """Whatever calls an answer makes: the output is the first call's arguments only if every call names an
    offered tool with valid arguments and, where one call's arguments are the output, all agree; else it is
    asked again. No call is an answer only where the request lets the model leave its tools."""
    request: dict[str, Any] = {"tools": [CHAT_TOOL], **({"tool_choice": choice} if choice is not None else {})}
    check = OutputCheck([CHAT_TOOL] if run else None, None)
    valid = {'{"q": "a"}': {"q": "a"}, '{"q": "b"}': {"q": "b"}}
    named = isinstance(choice, dict)
    try:
        output = check.extract_for("chat", _chat("text", *calls), request)
    except InvalidOutput:
        ok = all(name == "lookup" and raw in valid for name, raw in calls)
        agree = len({raw for _, raw in calls}) <= 1 or not (named or run)
        must = choice == "required" or named or (run and choice is None)
        assert not (calls and ok and agree) and (calls or must)
    else:
        if calls:
            assert output == valid[calls[0][1]] and all(name == "lookup" and raw in valid for name, raw in calls)
            assert len({raw for _, raw in calls}) == 1 or not (named or run)
        else:
            assert output == "text" and choice in ("auto", None) and not (run and choice is None)
