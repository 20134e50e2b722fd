from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

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
