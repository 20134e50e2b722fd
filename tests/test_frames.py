"""Tables in and out (asyncbatch.map) and Pydantic models as schemas, through the real engine and simulator."""

from __future__ import annotations

import csv
import importlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from pydantic import BaseModel, field_validator

import asyncbatch
from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.structured.schemas import model_schema, strict_problems
from tests.helpers import read_jsonl, simulator_env, write_jsonl
from tests.scripted import Answer, Received, completion, serve

KEY = "frames-key-0123456789"


class Sentiment(BaseModel):
    """The review's sentiment."""

    label: str
    score: float


class Picky(BaseModel):
    label: str

    @field_validator("label")
    @classmethod
    def short(cls, value: str) -> str:  # the schema takes any string; the model does not
        if len(value) > 5:
            raise ValueError("at most 5 characters")
        return value


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY), monkeypatch) as (_, simulator):
        yield simulator


def _endpoint() -> asyncbatch.Endpoint:
    return asyncbatch.Endpoint(kind="azure", base_url=os.environ["AZURE_OPENAI_ENDPOINT"], api_key=KEY, deployment="d")


def test_a_dataframe_maps_to_a_dataframe_in_input_order_with_the_export_columns_and_parsed_models(
    tmp_path: Path, sim: Simulator
) -> None:
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(30)], "text": [f"t{i}" for i in range(30)]})
    frame.index = [f"row{i}" for i in range(30)]
    out = asyncbatch.map_sync(frame, template="Classify: {text}", tools=Sentiment, endpoint=_endpoint())
    assert list(out.index) == list(frame.index) and list(out["custom_id"]) == list(frame["id"])
    assert set(out["status"]) == {"succeeded"} and sim.requests == 30
    assert all(
        isinstance(p, Sentiment) and p.label == row["output.label"]
        for p, (_, row) in zip(out["parsed"], out.iterrows(), strict=True)
    )
    write_jsonl(tmp_path / "in.jsonl", frame.to_dict("records"))  # the same rows through the CLI and export
    (tmp_path / "tool.json").write_text(
        '{"name": "Sentiment", "parameters": ' + __import__("json").dumps(model_schema(Sentiment)) + "}"
    )
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", "Classify: {text}", "--tools", "tool.json"]) == 0
    csv_out = tmp_path / "out.csv"
    export = ["export", str(tmp_path / "in.results.jsonl"), "--input", str(tmp_path / "in.jsonl"), "-o", str(csv_out)]
    assert main(export) == 0
    with csv_out.open() as f:
        columns = next(csv.reader(f))
    assert [c for c in out.columns if c != "parsed"] == columns


def test_a_missing_value_in_a_dataframe_the_template_names_is_a_bad_row_never_sent(sim: Simulator) -> None:
    frame = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "text": ["x", None, float("nan"), "y"], "n": pd.array([1, pd.NA, 3, pd.NA])}
    )
    out = asyncbatch.map_sync(frame, template="{text} {n}", endpoint=_endpoint())
    assert list(out["status"]) == ["succeeded", "failed", "failed", "failed"] and sim.requests == 1
    assert set(out["error_code"][1:]) == {"invalid_input"}
    reasons = [message.split(": ", 1)[1] for message in out["error_message"][1:]]
    assert reasons == [f"template field {name!r} is null (empty in the table)" for name in ("text", "text", "n")]


def test_library_messages_name_rows_and_keywords_never_a_temporary_file_or_a_flag(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where map keeps its rows: never in a message
    rows = [{"id": f"r{i}", "text": f"t{i}"} for i in range(25)]
    with pytest.raises(asyncbatch.ConfigError) as typo:
        asyncbatch.map_sync(rows, template="Say {txt}", endpoint=_endpoint())
    assert str(typo.value) == (
        "the first 20 rows all fail the same way, so every row would: template field 'txt' is missing from this "
        "record. HINT: the rows' fields are id, text: name those in template="
    )
    out = asyncbatch.map_sync([*rows[:3], {"id": "r1", "text": "again"}], template="Say {text}", endpoint=_endpoint())
    assert [r["status"] for r in out] == ["succeeded"] * 3 + ["failed"] and sim.requests == 3
    assert out[3]["error_message"] == "row 4: duplicate custom_id 'r1'"
    with pytest.raises(asyncbatch.ConfigError) as misspelt:
        asyncbatch.map_sync(rows, template="Say {text}", endpoint=_endpoint(), concurency=5)
    assert str(misspelt.value) == (
        "asyncbatch.map() got an unknown keyword 'concurency'. HINT: concurrency is an option of Limits, not of "
        "RunConfig: give limits=asyncbatch.Limits(concurrency=...)"
    )
    with pytest.raises(asyncbatch.ConfigError, match=r"'max_wiat'\. HINT: did you mean max_wait=\?$"):
        asyncbatch.map_sync(rows, template="Say {text}", endpoint=_endpoint(), max_wiat=5)
    with pytest.raises(asyncbatch.ConfigError, match=r"input_path is not an option of asyncbatch\.map"):
        asyncbatch.map_sync(rows, template="Say {text}", endpoint=_endpoint(), input_path="x.jsonl")
    assert sim.requests == 3 and not list(tmp_path.iterdir())


def test_rows_map_to_a_list_and_with_an_output_path_a_second_call_resumes(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a map without output_path keeps its state
    rows = [{"text": f"t{i}"} for i in range(40)]
    kept = tmp_path / "kept.jsonl"
    first = asyncbatch.map_sync(rows, template="Say {text}", endpoint=_endpoint(), output_path=kept)
    assert [r["custom_id"] for r in first] == [f"line-{i}" for i in range(1, 41)] and sim.requests == 40
    assert first[3]["output"] == "Simulated answer to: Say t3"
    again = asyncbatch.map_sync([*rows, {"text": "new"}], template="Say {text}", endpoint=_endpoint(), output_path=kept)
    assert len(again) == 41 and sim.requests == 41  # only the appended row was sent
    table = asyncbatch.map_sync(pa.Table.from_pylist(rows[:3]), template="Say {text}", endpoint=_endpoint())
    assert [r["output"] for r in table] == [f"Simulated answer to: Say t{i}" for i in range(3)]
    assert not list(scratch.iterdir())  # its state was removed


def test_an_answer_the_model_refuses_is_asked_again_then_recorded_naming_the_model(sim: Simulator) -> None:
    out = asyncbatch.map_sync([{"text": "x"}], template="Label {text}", tools=Picky, endpoint=_endpoint())
    (row,) = out
    assert row["status"] == "failed" and row["error_code"] == "invalid_tool_arguments"
    assert "the model Picky refuses it at label: Value error, at most 5 characters" in row["error_message"]
    assert row["attempts"] == asyncbatch.RetryPolicy.max_attempts


def test_a_model_schema_is_strict_ready_and_the_cli_takes_module_colon_model(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = model_schema(Sentiment)
    assert schema["additionalProperties"] is False and strict_problems(schema) == []
    (tmp_path / "mymodels.py").write_text(
        "from pydantic import BaseModel\n\nclass Company(BaseModel):\n    name: str\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(5)])
    args = [
        str(tmp_path / "in.jsonl"),
        "-q",
        "--template",
        "About {company}",
        "--tools",
        "mymodels:Company",
        "--strict",
    ]
    assert main(args) == 0
    assert sim.bodies[-1]["tools"][0]["function"]["strict"] is True
    assert all(set(r["output"]) == {"name"} for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert main([*args[:-3], "--tools", "mymodels:Nope"]) == 2


def test_a_model_with_optional_fields_runs_strict_and_is_sent_as_the_sdks_tool(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "optmodels.py").write_text(
        "from typing import Optional\n"
        "from pydantic import BaseModel\n\n"
        "class Address(BaseModel):\n    city: str\n    street: Optional[str] = None\n\n"
        "class Company(BaseModel):\n"
        '    """A company, as the model found it."""\n\n'
        "    name: str\n    ceo: Optional[str] = None\n    address: Address\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(5)])
    args = [str(tmp_path / "in.jsonl"), "-q", "--template", "About {company}", "--tools", "optmodels:Company"]
    assert main([*args, "--strict"]) == 0
    from openai import pydantic_function_tool

    company = importlib.import_module("optmodels").Company
    assert sim.bodies[-1]["tools"] == [pydantic_function_tool(company)]
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert len(results) == 5 and all(set(r["output"]) == {"name", "ceo", "address"} for r in results)


def _label_model(picky: bool) -> type[BaseModel]:
    """A model named ``Label`` (its tool's name), the same schema either way; ``picky`` adds a validator."""

    class Label(BaseModel):
        label: str

        if picky:

            @field_validator("label")
            @classmethod
            def short(cls, value: str) -> str:
                if len(value) > 5:
                    raise ValueError("at most 5 characters")
                return value

    return Label


def test_rows_answered_before_a_validator_was_added_come_back_unparsed_with_a_warning_never_a_traceback(
    tmp_path: Path, sim: Simulator
) -> None:
    """A validator changes no schema, so a second call resumes; the rows answered before it are the model's no
    longer: their ``parsed`` is None and a warning counts them, where ``map`` raised pydantic's ValidationError
    once everything was paid for."""
    rows, kept = [{"text": f"t{i}"} for i in range(3)], tmp_path / "kept.jsonl"
    first = asyncbatch.map_sync(
        rows, template="Say {text}", tools=_label_model(False), endpoint=_endpoint(), output_path=kept
    )
    assert [r["parsed"].label for r in first] == [f"label: Say t{i}" for i in range(3)]
    said = io.StringIO()
    again = asyncbatch.map_sync(
        [*rows, {"text": "new"}],
        template="Say {text}",
        tools=_label_model(True),
        endpoint=_endpoint(),
        output_path=kept,
        reporter=asyncbatch.Reporter(said),
    )
    assert [(r["status"], r.get("parsed")) for r in again[:3]] == [("succeeded", None)] * 3
    assert again[3]["status"] == "failed" and "at most 5 characters" in again[3]["error_message"]
    assert "3 rows answered by an earlier call are refused by the model Label as it is now" in said.getvalue()
    hinted = io.StringIO()  # the hint: every row asked again, and judged by the model as it is
    restarted = asyncbatch.map_sync(
        rows,
        template="Say {text}",
        tools=_label_model(True),
        endpoint=_endpoint(),
        output_path=tmp_path / "again.jsonl",
        reporter=asyncbatch.Reporter(hinted),
    )
    assert [r["error_code"] for r in restarted] == [
        "invalid_tool_arguments"
    ] * 3 and "refused by" not in hinted.getvalue()


def test_parsed_is_never_another_tools_answer_validated_by_the_model() -> None:
    """A model and a tool of its own: an answer calling the other tool is not the model's (``parsed`` raised
    pydantic's ValidationError for it, after the run); nor is an input field named ``parsed`` overwritten."""
    skip = {
        "type": "function",
        "function": {"name": "skip", "parameters": {"type": "object", "properties": {"why": {"type": "string"}}}},
    }

    def script(received: Received) -> Answer:
        call = ("skip", '{"why": "off topic"}') if "t0" in received.prompt else ("Label", '{"label": "ok"}')
        return Answer(body=completion(None, calls=(call,)), request_id="req")

    with serve(script) as server:
        endpoint = asyncbatch.Endpoint(kind="openai", base_url=server.url, api_key=KEY, deployment="m")
        rows = [{"text": f"t{i}", "parsed": "mine"} for i in range(2)]
        mixed = asyncbatch.map_sync(rows, template="Say {text}", tools=[_label_model(False), skip], endpoint=endpoint)
        assert [r["output"] for r in mixed] == [{"why": "off topic"}, {"label": "ok"}]
        assert all(r["parsed"] == "mine" for r in mixed)  # no model's: the row's own field
        alone = asyncbatch.map_sync(rows[1:], template="Say {text}", tools=_label_model(False), endpoint=endpoint)
        assert alone[0]["parsed"].label == "ok" and alone[0]["input_parsed"] == "mine"


def test_a_schema_given_to_map_is_never_judged_by_the_model_of_the_request_it_replaces(sim: Simulator) -> None:
    """``request=RequestDefaults(response_format=Sentiment)`` and a schema of its own given to ``map``: Sentiment,
    the schema no longer sent, refused every answer to the schema that was (asked again, then failed)."""
    schema = {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}
    own = {"type": "json_schema", "json_schema": {"name": "word", "schema": schema}}
    base = asyncbatch.RequestDefaults(response_format=Sentiment)
    (row,) = asyncbatch.map_sync(
        [{"text": "x"}], template="{text}", request=base, response_format=own, endpoint=_endpoint()
    )
    assert (row["status"], row["output"], row["attempts"]) == ("succeeded", {"word": "word: x"}, 1)
    (kept,) = asyncbatch.map_sync([{"text": "y"}], template="{text}", request=base, endpoint=_endpoint())
    assert kept["parsed"] == Sentiment(label="label: y", score=4.2)  # given no schema, the request's model stays


def test_a_run_stopped_early_returns_every_row_in_input_order_and_the_hint_runs_the_rest(
    tmp_path: Path, sim: Simulator
) -> None:
    """``max_cost`` reached: a DataFrame raised pandas' ValueError (a length mismatch: the answers paid for,
    lost), and a list came back shorter than its input. Every row comes back, the unanswered ones failed
    ``not_run``, saying how to run them; doing so sends those alone."""
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(12)]}, index=[f"row{i}" for i in range(12)])
    kept, prices = tmp_path / "kept.jsonl", asyncbatch.Prices(input=1000, output=1000)
    arguments = {"template": "{text}", "endpoint": _endpoint(), "output_path": kept, "prices": prices}
    out = asyncbatch.map_sync(frame, **arguments, max_cost=0.02, limits=asyncbatch.Limits(concurrency=1))
    assert list(out.index) == list(frame.index) and list(out["text"]) == list(frame["text"])
    done = out["status"] == "succeeded"
    assert 0 < done.sum() < 12 and sim.requests == done.sum()
    (message,) = set(out.loc[~done, "error_message"])
    assert set(out.loc[~done, "error_code"]) == {"not_run"} and "--max-cost" in message
    assert "HINT: call map again with the same output_path to run it" in message
    assert list(out.loc[~done, "custom_id"]) == [f"line-{i + 1}" for i in range(12) if not done.iloc[i]]
    again = asyncbatch.map_sync(frame, **arguments)
    assert list(again["status"]) == ["succeeded"] * 12 and sim.requests == 12  # each row asked once in all
