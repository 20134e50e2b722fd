"""Embeddings and the Responses API beside chat: routes, outputs, validation and re-asking, estimates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from asyncbatch.cli.main import main
from asyncbatch.input.requests import split_estimate
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "apis-key-0123456789"
TOOL = json.loads((Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json").read_text())


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, deployment="dep"), monkeypatch) as (_, simulator):
        yield simulator


def _embedding(i: int) -> dict:
    url = "/v1/embeddings" if i % 2 else "/embeddings"
    return {"custom_id": f"e{i}", "method": "POST", "url": url, "body": {"model": "x", "input": f"text {i}"}}


def _response(i: int) -> dict:
    tool = {"type": "function", "name": TOOL["name"], "parameters": TOOL["parameters"], "strict": False}
    body = {
        "model": "x",
        "input": f"company {i}",
        "tools": [tool],
        "tool_choice": {"type": "function", "name": TOOL["name"]},
    }
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body}


def test_one_file_mixing_embeddings_responses_and_chat_succeeds_exactly_once(tmp_path: Path, sim: Simulator) -> None:
    sim.config.fault_rates["malformed"] = 0.1  # some function-call arguments come back broken: asked again
    rows = [_embedding(i) for i in range(1000)] + [_response(i) for i in range(500)]
    rows += [batch_line(f"c{i}", f"chat {i}") for i in range(200)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "50", "--max-attempts", "10", "--api-version", "v1"]) == 0
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "in.results.jsonl")}
    assert len(results) == 1700 and sorted(r["line"] for r in results.values()) == list(range(1, 1701))
    assert all(len(results[f"e{i}"]["output"]) == 8 for i in range(1000))  # a vector each
    for i in range(500):
        output = results[f"r{i}"]["output"]
        jsonschema.validate(output, TOOL["parameters"])  # validated arguments
        assert output["name"] == f"name: company {i}"
    assert sum(results[f"r{i}"]["attempts"] > 1 for i in range(500)) > 10  # broken ones were asked again
    assert results["c3"]["output"] == "Simulated answer to: chat 3"


def test_records_become_embeddings_or_responses_with_api(tmp_path: Path, sim: Simulator) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(5)])
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api", "embeddings", "--template", "{company}"]) == 0
    assert all(len(r["output"]) == 8 for r in read_jsonl(tmp_path / "in.results.jsonl"))
    tools = tmp_path / "tool.json"
    tools.write_text(json.dumps(TOOL))
    out = tmp_path / "resp.jsonl"
    args = ["--api", "responses", "--template", "About {company}", "--tools", str(tools), "-o", str(out)]
    args += ["--api-version", "2025-04-01-preview"]  # the first classic api-version with /responses
    assert main([str(tmp_path / "in.jsonl"), "-q", *args]) == 0
    rows = read_jsonl(out)
    assert sorted(r["output"]["name"] for r in rows) == [f"name: About C{i}" for i in range(5)]
    sent = sim.bodies[-1]
    assert sent["tools"][0]["name"] == TOOL["name"] and "function" not in sent["tools"][0]  # the Responses format


def test_each_api_has_its_own_estimate() -> None:
    assert split_estimate({"input": "x" * 400}, "embeddings") == (100, 0)
    assert split_estimate({"input": ["x" * 40, "y" * 40]}, "embeddings") == (20, 0)
    assert split_estimate({"input": "x" * 400, "max_output_tokens": 50}, "responses") == (100, 50)


@pytest.mark.parametrize(("version", "code"), [("v1", 0), ("2025-04-01-preview", 0), ("2024-10-21", 2)])
def test_simulate_serves_the_routes_of_the_api_version_given(
    tmp_path: Path, version: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(3)])
    tools = str(Path(__file__).parents[1] / "examples" / "get_company_info.json")
    argv = ["in.jsonl", "--simulate", "--sim-latency-ms", "5", "-q", "--api", "responses", "--api-version", version]
    assert main([*argv, "--template", "Tell me about {company}", "--tools", tools]) == code
    if code == 0:
        assert sorted(r["output"]["name"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == [
            "name: Tell me about Co0",
            "name: Tell me about Co1",
            "name: Tell me about Co2",
        ]
    else:
        assert "no route in api-version 2024-10-21" in capsys.readouterr().err


def test_a_responses_line_whose_own_schema_cannot_be_checked_is_a_bad_line_never_sent(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line's text.format or function tool schema is checked before it is sent: an invalid one, one nested past
    what jsonschema can walk, one whose $ref points nowhere. They crashed the run (an internal error, exit 2)
    once their answer had come back: paid, then paid again on every run."""
    deep: dict = {"type": "string"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}}
    schemas = {"invalid": {"type": 5}, "deep": deep, "nowhere": {"type": "object", "$ref": "#/$defs/gone"}}
    rows = [_response(0)]
    for name, schema in schemas.items():
        body = {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}}
        rows.append({"custom_id": name, "method": "POST", "url": "/v1/responses", "body": body})
    tool = {"type": "function", "name": "f", "parameters": deep, "strict": False}
    rows.append(
        {"custom_id": "tool", "method": "POST", "url": "/v1/responses", "body": {"input": "x", "tools": [tool]}}
    )
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api-version", "v1"]) == 1
    errors = {e["custom_id"]: e for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert {name: e["error"]["code"] for name, e in errors.items()} == dict.fromkeys(
        [*schemas, "tool"], "invalid_input"
    )
    assert "is not a valid JSON Schema" in errors["invalid"]["error"]["message"]
    assert "nests deeper than 64 levels" in errors["deep"]["error"]["message"]
    assert "refers to '#/$defs/gone', which is not in it" in errors["nowhere"]["error"]["message"]
    assert [r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")] == ["r0"] and sim.requests == 1
    assert "internal error" not in capsys.readouterr().err
