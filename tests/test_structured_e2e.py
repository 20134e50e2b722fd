"""Structured output end to end: validation, re-asking, strict mode, response_format, finish reasons."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import read_jsonl, simulator_env, write_jsonl

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
