"""The user's mistakes: refused before anything is sent or written, and a fix resumes without --restart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.config import template_problem
from asyncbatch.input.requests import render
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "mistake-key-0123456789"
TOOL = {"name": "my func", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, deployment="dep"), monkeypatch) as (_, simulator):
        yield simulator


def _outputs(tmp_path: Path, stem: str = "in") -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith(f"{stem}.results"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id,company\n1,Contoso\n", "looks like CSV"),
        (b"id\tcompany\n1\tContoso\n", "looks like TSV"),
        (b'[{"id": 1}, {"id": 2}]\n', "jq -c '.[]'"),
        ('{"id": 1}\n'.encode("utf-16"), "UTF-16 text (PowerShell's default)"),
        (b'{"id": 1}\x00\n', "NUL bytes"),
    ],
)
def test_a_whole_file_that_is_not_jsonl_exits_2_with_a_hint_and_writes_nothing(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    (tmp_path / "in.jsonl").write_bytes(content)
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", "x"]) == 2
    assert expected in capsys.readouterr().err
    assert _outputs(tmp_path) == [] and sim.requests == 0
    assert main([str(tmp_path / "in.jsonl"), "--dry-run"]) == 2  # the dry run says the same


def test_after_a_404_on_a_wrong_deployment_the_fixed_command_runs_without_restart(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(30)])
    assert main([str(tmp_path / "in.jsonl"), "-q", "--deployment", "wrong"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "/openai/deployments/wrong/chat/completions" in err  # the URL tried
    assert main([str(tmp_path / "in.jsonl"), "-q", "--deployment", "dep"]) == 0
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 30


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ([], 'add --template over the fields of the records (company, id, text), e.g. --template "...{company}..."'),
        (["--template", "About {compnay}"], "template field 'compnay' is missing"),
    ],
)
def test_a_records_file_with_a_whole_file_template_mistake_exits_2_once_then_the_fix_runs_all(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], first: list[str], expected: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}", "text": "t"} for i in range(1_000)])
    assert main([str(tmp_path / "in.jsonl"), *first]) == 2
    err = capsys.readouterr().err
    assert expected in err and "the first 20 lines all fail the same way" in err
    assert err.count("\n") == 1  # one error, not a line per input
    assert _outputs(tmp_path) == [] and sim.requests == 0  # nothing written, nothing sent
    assert main([str(tmp_path / "in.jsonl"), "--dry-run", *first]) == 2  # the dry run says the same
    assert expected in capsys.readouterr().err
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "50", "--template", "About {company}"]) == 0
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 1_000


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("About {company.upper}", "{company.upper} reads an attribute"),  # sent a method's repr, paid
        ("About {meta.__class__}", "{meta.__class__} reads an attribute"),
        ("About {meta.lang}", "write {meta[lang]} for a nested field"),
        ("About {company:zz}", "'zz' is a format that fits no value"),
        ("About {company:%Y}", "'%Y' is a format that fits no value"),
    ],
)
def test_a_template_that_reads_attributes_or_has_no_usable_format_exits_2_before_anything_is_sent(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], template: str, expected: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}", "meta": {"lang": "en"}} for i in range(30)])
    assert main([str(tmp_path / "in.jsonl"), "--template", template]) == 2
    assert expected in capsys.readouterr().err
    assert _outputs(tmp_path) == [] and sim.requests == 0
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", "About {company} in {meta[lang]}"]) == 0


@settings(max_examples=300, deadline=None)
@given(template=st.text(alphabet="{}[].:!%<>^,_0 aczYf", max_size=16))
def test_a_template_accepted_at_configuration_renders_each_record_as_text_or_fails_that_line(template: str) -> None:
    """Whatever the template: refused once (exit 2), or each line rendered from its fields' values, never from a
    Python object's insides (a method or a class, as ``str.format`` would read them), or failed as that line's."""
    if template_problem(template) is not None:
        return
    record = {"a": "x", "c": 5, "z": {"a": "y", "0": 1.5}, "f": ["q"]}
    try:
        text = render(template, record)
    except ValueError:  # SetupError too: a missing field
        return
    assert "built-in" not in text and "class '" not in text and "object at 0x" not in text


def test_a_template_field_only_some_records_lack_fails_those_lines_alone(tmp_path: Path, sim: Simulator) -> None:
    rows = [{"id": i, "company": f"C{i}"} if i % 3 else {"id": i, "name": "n"} for i in range(30)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", "About {company}"]) == 1
    failed = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert len(failed) == 10 and all("template field 'company' is missing" in r["error"]["message"] for r in failed)


def test_lines_appended_to_a_finished_input_are_the_only_ones_sent(tmp_path: Path, sim: Simulator) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(300)])
    assert main([str(path), "-q"]) == 0
    before = sim.requests
    with path.open("a") as f:
        for i in range(300, 400):
            f.write(json.dumps(batch_line(f"r{i}", f"p{i}")) + "\n")
    assert main([str(path), "-q"]) == 0
    assert sim.requests - before == 100
    assert sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == list(range(1, 401))


def test_changed_options_after_successes_are_refused_unless_accepted(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(10)])
    assert main([str(path), "-q", "--template", "A {company}"]) == 0
    with path.open("a") as f:
        f.write(json.dumps({"id": 10, "company": "C10"}) + "\n")
    assert main([str(path), "-q", "--template", "B {company}"]) == 2
    assert "template changed" in capsys.readouterr().err
    assert main([str(path), "--no-progress", "--template", "B {company}", "--accept-changes"]) == 0
    assert "results mix options" in capsys.readouterr().err
    rows = {r["line"]: r for r in read_jsonl(tmp_path / "in.results.jsonl")}
    assert len(rows) == 11 and rows[11]["response"]["body"]["choices"][0]["message"]["content"].endswith("B C10")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tools", "TOOL"], "tool name 'my func' is not allowed"),
        (["--temperature", "7"], "temperature (--temperature) must be between 0 and 2"),
        (["--max-tokens", "-5"], "max_tokens (--max-tokens) must be at least 1"),
        (["--grace", "-1"], "grace (--grace) must be 0 or more"),
        (["--max-outage", "-1"], "max_outage (--max-outage) must be 0 or more"),
    ],
)
def test_options_azure_would_refuse_are_refused_before_any_request(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "tool.json").write_text(json.dumps(TOOL))
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    args = [str(tmp_path / "tool.json") if a == "TOOL" else a for a in args]
    assert main([str(tmp_path / "in.jsonl"), "-q", *args]) == 2
    assert expected in capsys.readouterr().err
    assert sim.requests == 0 and _outputs(tmp_path) == []


def test_a_line_azure_would_refuse_is_an_error_line_naming_the_field(tmp_path: Path, sim: Simulator) -> None:
    rows = [batch_line("hot", "x", temperature=7), batch_line("odd", "x", n=0), batch_line("ok", "x")]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 1
    errors = {e["custom_id"]: e["error"]["message"] for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert "temperature must be a number from 0 to 2, got 7" in errors["hot"]
    assert "n must be a whole number of at least 1, got 0" in errors["odd"]
    assert sim.requests == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AZURE_OPENAI_ENDPOINT": "myres.openai.azure.com"}, "did you mean 'https://myres.openai.azure.com'"),
        (
            {
                "AZURE_OPENAI_ENDPOINT": "https://myres.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
                "?api-version=2024-10-21"
            },
            "AZURE_OPENAI_ENDPOINT=https://myres.openai.azure.com and pass --deployment gpt-4o",
        ),
        (
            {"AZURE_OPENAI_ENDPOINT": "", "AZURE_OPENAI_API_KEY": "", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
            "missing configuration: OPENAI_API_KEY",
        ),
    ],
)
def test_endpoint_mistakes_are_refused_at_once_naming_the_value_to_use(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k-123456")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "d")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "AZURE_OPENAI_ENDPOINT ," not in err


def test_a_named_env_file_that_does_not_exist_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    assert main([str(tmp_path / "in.jsonl"), "--simulate", "--env-file", "nosuch.env"]) == 2
    assert "--env-file nosuch.env does not exist" in capsys.readouterr().err


def test_a_negative_backoff_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    assert main([str(tmp_path / "in.jsonl"), "--simulate", "--backoff", "-1"]) == 2
    assert "backoff_initial (--backoff) must be between 0 and 60 seconds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (["in.jsonl", "--concurency", "20"], "--concurrency"),
        (["in.jsonl", "--max-tokes=5"], "--max-tokens"),
        (["export", "r.jsonl", "--ordred"], "--ordered"),
    ],
)
def test_a_misspelled_option_gets_the_one_it_most_likely_meant(
    argv: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"did you mean {meant}?" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("typed", "meant"), [(["exprot", "in.results.jsonl"], "export"), (["reprot", "in.results.jsonl"], "report")]
)
def test_a_misspelled_subcommand_gets_the_one_it_most_likely_meant_and_that_one_runs(
    tmp_path: Path, typed: list[str], meant: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(3)])
    assert main(["in.jsonl", "-q", "--simulate", "--template", "About {company}", "--sim-latency-ms", "0"]) == 0
    cli = [sys.executable, "-m", "asyncbatch"]
    done = subprocess.run([*cli, *typed], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"did you mean asyncbatch {meant}?" in done.stderr, done.stderr
    assert f"'{typed[0]}' is neither an input file nor a command" in done.stderr
    alone = subprocess.run([*cli, typed[0]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and f"did you mean asyncbatch {meant}?" in alone.stderr, alone.stderr
    fixed = subprocess.run([*cli, meant, *typed[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr  # the suggestion, taken, runs
    (tmp_path / typed[0]).write_text('{"id": 1, "company": "Co"}\n')  # a file of that name is an input, not a typo
    as_file = subprocess.run([*cli, typed[0], "--zzzz"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert as_file.returncode == 2 and "did you mean" not in as_file.stderr


def test_an_unknown_option_nothing_like_any_other_gets_no_guess(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["in.jsonl", "--zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("About {company", "expected '}' before end of string"),
        ("About company}", "Single '}' encountered"),
        ("About {}", "{} names no field"),
        ("About {company!x}", "!x in {company!x} is not a conversion"),
    ],
)
def test_a_template_that_cannot_render_any_record_exits_2_with_nothing_written_or_sent(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], template: str, expected: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(50)])
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", template]) == 2
    err = capsys.readouterr().err
    assert expected in err and "--template" in err and "{{ or }}" in err  # what to write instead
    assert err.count("\n") == 1  # said once
    assert _outputs(tmp_path) == [] and sim.requests == 0
    assert main([str(tmp_path / "in.jsonl"), "--dry-run", "--template", template]) == 2
    assert main([str(tmp_path / "in.jsonl"), "-q", "--template", "About {{ {company} }}"]) == 0  # literal braces


def _responses_line(i: int) -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/responses", "body": {"model": "m", "input": f"q{i}"}}


def test_responses_lines_on_an_api_version_without_that_route_exit_2_with_nothing_written_or_sent(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [_responses_line(i) for i in range(30)])
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api-version", "2024-10-21"]) == 2
    err = capsys.readouterr().err
    assert "the Responses API has no route in api-version 2024-10-21" in err and "HINT: use the v1 API" in err
    assert err.count("\n") == 1
    assert _outputs(tmp_path) == [] and sim.requests == 0
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api-version", "2025-04-01-preview"]) == 0  # the fix
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 30


def test_responses_lines_among_chat_lines_fail_alone_on_an_api_version_without_that_route(
    tmp_path: Path, sim: Simulator
) -> None:
    rows = [batch_line(f"c{i}", f"p{i}") for i in range(5)] + [_responses_line(i) for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(tmp_path / "in.jsonl"), "-q", "--api-version", "2024-10-21"]) == 1
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r1", "r2"] and sim.requests == 5
