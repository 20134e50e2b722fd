from __future__ import annotations

import orjson
import pytest

from asyncbatch.config import RequestDefaults
from asyncbatch.input.reader import BadLine, ParsedLine
from asyncbatch.input.requests import Job, estimate_tokens, prepare, render

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_estimate_is_prompt_chars_over_four_plus_max_tokens_times_n() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50, "n": 2}
    assert estimate_tokens(body) == 100 + 100


def test_estimate_rounds_up_and_counts_text_parts_and_tools() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": [{"type": "text", "text": "de"}, {"type": "image_url", "image_url": {}}]},
        ],
        "tools": [TOOL],
    }
    assert estimate_tokens(body) == -(-(5 + len(orjson.dumps([TOOL]))) // 4)


def test_estimate_uses_best_of_and_max_completion_tokens() -> None:
    body = {"messages": [], "max_completion_tokens": 10, "best_of": 3}
    assert estimate_tokens(body) == 30


def _line(kind: str, obj: dict) -> ParsedLine:
    return ParsedLine(3, "cid", kind, obj)  # type: ignore[arg-type]


def test_batch_body_is_sent_as_is_except_model() -> None:
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "seed": 7}
    job = prepare(_line("batch", {"custom_id": "cid", "body": body}), RequestDefaults(), "my-deploy")
    assert isinstance(job, Job)
    assert job.body == {**body, "model": "my-deploy"}
    assert orjson.loads(job.payload) == job.body
    assert body["model"] == "gpt-x"  # the input object is not mutated


def test_chat_line_keeps_parameters_and_drops_ids() -> None:
    obj = {"custom_id": "c", "id": "x", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5}
    job = prepare(_line("chat", obj), RequestDefaults(max_tokens=9, temperature=0.1), "d")
    assert isinstance(job, Job)
    assert job.body == {"messages": obj["messages"], "top_p": 0.5, "model": "d", "max_tokens": 9, "temperature": 0.1}


def test_line_values_win_over_defaults() -> None:
    obj = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 1.0}
    job = prepare(_line("chat", obj), RequestDefaults(max_tokens=9, temperature=0.1), "d")
    assert isinstance(job, Job)
    assert (job.body["max_tokens"], job.body["temperature"]) == (3, 1.0)


def test_record_renders_template_and_system() -> None:
    defaults = RequestDefaults(template="About {company} ({n})", system="Be brief.")
    job = prepare(_line("record", {"company": "Acme", "n": 3}), defaults, "d")
    assert isinstance(job, Job)
    assert job.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "About Acme (3)"},
    ]


def test_record_without_template_is_a_bad_line() -> None:
    bad = prepare(_line("record", {"company": "Acme"}), RequestDefaults(), "d")
    assert isinstance(bad, BadLine) and "--template" in bad.reason and bad.line_no == 3


def test_missing_template_field_names_the_field() -> None:
    bad = prepare(_line("record", {"company": "Acme"}), RequestDefaults(template="{company} {notes}"), "d")
    assert isinstance(bad, BadLine) and "'notes'" in bad.reason


def test_single_tool_is_forced() -> None:
    job = prepare(_line("chat", {"messages": [{"role": "user", "content": "x"}]}), RequestDefaults(tools=[TOOL]), "d")
    assert isinstance(job, Job)
    assert job.body["tools"] == [TOOL]
    assert job.body["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_several_tools_are_not_forced() -> None:
    tools = [TOOL, {"type": "function", "function": {"name": "g"}}]
    job = prepare(_line("chat", {"messages": [{"role": "user", "content": "x"}]}), RequestDefaults(tools=tools), "d")
    assert isinstance(job, Job) and "tool_choice" not in job.body


@pytest.mark.parametrize("template", ["{0}", "{a.b.c}", "{a!z}"])
def test_broken_templates_raise_value_error(template: str) -> None:
    with pytest.raises(ValueError):
        render(template, {"a": 1})
