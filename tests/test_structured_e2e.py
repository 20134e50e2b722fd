"""Structured output end to end: validation, re-asking, strict mode, response_format, finish reasons."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl
from tests.scripted import Answer, Received, completion, serve

KEY = "structured-key-1"
TOOL_FILE = Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json"
SCHEMA = json.loads(TOOL_FILE.read_text())["parameters"]
TEMPLATE = "Tell me about {company}. Notes: {notes}"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, seed=6), monkeypatch) as (_, simulator):
        yield simulator


def _records(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}", "notes": "n"} for i in range(n)])


def _run(tmp_path: Path, *args: str) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    code = main([str(tmp_path / "in.jsonl"), "-q", "--template", TEMPLATE, *args])
    return code, read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")


def _has_feedback(body: dict[str, Any]) -> bool:
    return any(m.get("role") in ("tool", "assistant") for m in body["messages"])


def test_malformed_arguments_are_asked_again_until_every_row_is_schema_valid(tmp_path: Path, sim: Simulator) -> None:
    sim.config.fault_rates["malformed"] = 0.15
    _records(tmp_path, 800)
    # 10 attempts: a fixed seed can line one input up with six malformed answers in a row
    code, results, errors = _run(tmp_path, "--tools", str(TOOL_FILE), "-c", "50", "--max-attempts", "10")
    assert code == 0 and errors == []
    assert sorted(int(r["custom_id"]) for r in results) == list(range(800))
    for r in results:
        jsonschema.validate(r["output"], SCHEMA)
        assert r["output"]["name"] == f"name: Tell me about Co{r['custom_id']}. Notes: n"
    assert sum(r["attempts"] > 1 for r in results) > 50  # about 15% needed asking again
    assert any(_has_feedback(b) for b in sim.bodies)


def test_feedback_tells_the_model_what_was_wrong(tmp_path: Path, sim: Simulator) -> None:
    sim.config.script["Tell me about Co0. Notes: n"] = ["schema"]
    _records(tmp_path, 1)
    code, results, _ = _run(tmp_path, "--tools", str(TOOL_FILE))
    assert code == 0 and results[0]["attempts"] == 2
    retry = sim.bodies[-1]
    assistant, tool = retry["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == tool["tool_call_id"]
    assert "schema violation at $: 'name' is a required property" in tool["content"]


def test_no_feedback_asks_again_with_the_same_request(tmp_path: Path, sim: Simulator) -> None:
    sim.config.script["Tell me about Co0. Notes: n"] = ["malformed"]
    _records(tmp_path, 1)
    code, results, _ = _run(tmp_path, "--tools", str(TOOL_FILE), "--no-feedback")
    assert code == 0 and results[0]["attempts"] == 2
    assert [_has_feedback(b) for b in sim.bodies] == [False, False]


def test_arguments_invalid_on_every_attempt_end_as_an_error_line(tmp_path: Path, sim: Simulator) -> None:
    sim.config.script["Tell me about Co0. Notes: n"] = ["malformed", "schema", "malformed"]
    _records(tmp_path, 2)
    code, results, errors = _run(tmp_path, "--tools", str(TOOL_FILE), "--max-attempts", "3")
    assert code == 1 and [r["custom_id"] for r in results] == ["1"]
    (error,) = errors
    assert error["error"]["code"] == "invalid_tool_arguments" and error["attempts"] == 3
    raw = error["response"]["body"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert "not valid JSON" in error["error"]["message"] and repr(raw) in error["error"]["message"]


def test_strict_refuses_a_schema_that_does_not_qualify_before_sending(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path, 3)
    code, _, _ = _run(tmp_path, "--tools", str(TOOL_FILE), "--strict")
    err = capsys.readouterr().err
    assert code == 2 and sim.requests == 0
    assert 'needs "additionalProperties": false' in err and "$.headquarters" in err


def test_strict_sends_strict_true_for_a_qualifying_schema(tmp_path: Path, sim: Simulator) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    tool = tmp_path / "classify.json"
    tool.write_text(json.dumps({"name": "classify", "parameters": schema}))
    _records(tmp_path, 3)
    code, results, _ = _run(tmp_path, "--tools", str(tool), "--strict")
    assert code == 0 and all(r["output"] == {"label": "pos", "score": 4.2} for r in results)
    assert all(b["tools"][0]["function"]["strict"] is True for b in sim.bodies)


def test_response_format_content_is_parsed_validated_and_asked_again(tmp_path: Path, sim: Simulator) -> None:
    fmt = tmp_path / "format.json"
    fmt.write_text(json.dumps(SCHEMA))
    sim.config.script["Tell me about Co1. Notes: n"] = ["malformed"]
    _records(tmp_path, 3)
    code, results, errors = _run(tmp_path, "--response-format", str(fmt))
    assert code == 0 and errors == [] and len(results) == 3
    for r in results:
        jsonschema.validate(r["output"], SCHEMA)
    assert sim.bodies[0]["response_format"]["json_schema"]["name"] == "format"
    assert {r["custom_id"]: r["attempts"] for r in results}["1"] == 2


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        ("length", "output_truncated", "raise --max-tokens"),
        ("filtered", "content_filter", "content filter"),
        ("content-filter-400", "content_filter", "content filter"),
        ("context", "context_length_exceeded", "context window"),
    ],
)
def test_answers_that_asking_again_cannot_fix_are_not_retried(
    tmp_path: Path, sim: Simulator, fault: str, code: str, words: str
) -> None:
    sim.config.script["Tell me about Co0. Notes: n"] = [fault]
    _records(tmp_path, 1)
    exit_code, _, errors = _run(tmp_path, "--tools", str(TOOL_FILE))
    assert exit_code == 1 and sim.requests == 1
    assert errors[0]["error"]["code"] == code and errors[0]["attempts"] == 1
    assert words in errors[0]["error"]["message"]


def test_template_and_system_from_files_and_a_missing_field(tmp_path: Path, sim: Simulator) -> None:
    (tmp_path / "t.txt").write_text("Describe {company} ({sector})")
    (tmp_path / "s.txt").write_text("You are terse.")
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "company": "A", "sector": "x"}, {"id": "b", "company": "B"}])
    code = main([str(tmp_path / "in.jsonl"), "-q", "--template-file", "t.txt", "--system-file", "s.txt"])
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert (
        code == 1 and errors[0]["line"] == 2 and "template field 'sector' is missing" in errors[0]["error"]["message"]
    )
    assert sim.bodies[0]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Describe A (x)"},
    ]


LOOKUP = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
CHAT_LOOKUP = [{"type": "function", "function": {"name": "lookup", "parameters": LOOKUP}}]
OWN_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "y", "schema": {"required": ["b"], "properties": {"b": {"type": "integer"}}}},
}


def _own_requests() -> list[dict[str, Any]]:
    """Lines carrying their own tools and response formats, in both APIs."""
    chat = [
        batch_line("forced", "hi", tools=CHAT_LOOKUP, tool_choice={"type": "function", "function": {"name": "lookup"}}),
        batch_line("format", "hi", response_format=OWN_FORMAT),
        batch_line("free", "hi", tools=CHAT_LOOKUP, tool_choice="auto"),
    ]
    flat = [{"type": "function", "name": "lookup", "parameters": LOOKUP, "strict": False}]
    body = {"model": "m", "input": "hi", "tools": flat, "tool_choice": "auto"}
    return [*chat, {"custom_id": "responses-free", "method": "POST", "url": "/v1/responses", "body": body}]


@pytest.mark.parametrize("batch_api", [False, True])
def test_a_lines_own_tools_and_format_are_what_its_answer_is_judged_by_live_and_in_batch_jobs(
    tmp_path: Path, sim: Simulator, batch_api: bool
) -> None:
    """A chat line's own forced tool recorded a null output (its arguments unchecked) and its own response format
    the raw text; a Responses line whose tools the model may leave was asked 6 times for a call, then failed.
    Live and in Batch API jobs, each answer is now judged by what its own request asked, once."""
    write_jsonl(tmp_path / "in.jsonl", _own_requests())
    batch = ["--batch-api", "--poll-interval", "0.05"] if batch_api else []
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api-version", "v1", *batch]) == 0
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "in.results.jsonl")}
    assert {name: r["output"] for name, r in results.items()} == {
        "forced": {"q": "q: hi"},
        "format": {"b": 42},
        "free": "Simulated answer to: hi",
        "responses-free": "Simulated answer to: hi",
    }
    assert all(r["attempts"] == 1 for r in results.values())
    answered = {"batch-200": sim.statuses["batch-200"], "200": sim.statuses["200"]}
    assert answered == ({"batch-200": 4, "200": 0} if batch_api else {"batch-200": 0, "200": 4})  # each asked once
    assert all(("batch_id" in r) is batch_api for r in results.values())


def test_a_lines_own_schema_that_cannot_be_checked_is_a_bad_line_never_sent(tmp_path: Path, sim: Simulator) -> None:
    """Its answers are checked against it: one that is no JSON Schema is refused before it is paid for."""
    bad = {"type": "json_schema", "json_schema": {"name": "y", "schema": {"type": "objekt"}}}
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object", "required": "q"}}}]
    write_jsonl(tmp_path / "in.jsonl", [batch_line("f", "hi", response_format=bad), batch_line("t", "hi", tools=tools)])
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 1
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert "the schema of response_format is not a valid JSON Schema" in errors["f"]["message"]
    assert "the schema of tool 't' is not a valid JSON Schema" in errors["t"]["message"]
    assert {e["code"] for e in errors.values()} == {"invalid_input"} and sim.requests == 0


def test_answers_whose_output_would_not_be_what_the_model_wrote_are_asked_again_with_what_was_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a server that answers whatever it is scripted to: two different calls (the second was dropped,
    unchecked) and an integer past 64 bits (recorded rounded, 1.2345678901234569e+23) are asked again, the
    feedback answering each call made; the output recorded is the model's, exactly."""
    tool = {"name": "label", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    (tmp_path / "tool.json").write_text(json.dumps(tool))
    first = {
        "two": completion(None, calls=(("label", '{"n": 1}'), ("label", '{"n": 2}'))),
        "big": completion(tool_arguments='{"n": 123456789012345678901234}'),
        "exact": completion(tool_arguments='{"n": 18446744073709551615}'),  # orjson's last exact integer
    }

    def script(request: Received) -> Answer:
        turns = len(orjson.loads(request.body)["messages"])
        answer = first[request.prompt] if turns == 1 else completion(tool_arguments='{"n": 7}')
        return Answer(body=answer, request_id=f"{request.prompt}-{turns}")

    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": k, "messages": [{"role": "user", "content": k}]} for k in first])
    args = [str(tmp_path / "in.jsonl"), "-q", "--tools", str(tmp_path / "tool.json"), "--backoff", "0"]
    with serve(script) as server:
        for name, value in {"AZURE_OPENAI_ENDPOINT": server.url, "AZURE_OPENAI_API_KEY": KEY}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        assert main(args) == 0
        assert main(args) == 0 and len(server.received) == 5  # nothing is asked twice
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "in.results.jsonl")}
    assert {k: (r["output"], r["attempts"]) for k, r in results.items()} == {
        "two": ({"n": 7}, 2),
        "big": ({"n": 7}, 2),
        "exact": ({"n": 18446744073709551615}, 1),
    }
    assert {s.request_id for s in server.sent} == {"two-1", "two-4", "big-1", "big-3", "exact-1"}
    again = {r.prompt: orjson.loads(r.body)["messages"] for r in server.received if r.prompt != "exact"}
    replies = {k: [m for m in messages if m["role"] == "tool"] for k, messages in again.items() if len(messages) > 1}
    assert [m["tool_call_id"] for m in replies["two"]] == ["call_1", "call_2"]  # the API wants one for each call
    assert "2 different calls" in replies["two"][0]["content"]
    assert "the integer 123456789012345678901234 is past what can be kept exactly" in replies["big"][0]["content"]
