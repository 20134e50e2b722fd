"""A new user's first hour: systematic mistakes said once, messages that say what to do, fixes that resume."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.config import RetryPolicy
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import read_jsonl, simulator_env, write_jsonl

KEY = "first-hour-key-0123456789"
TOOL = Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, deployment="gpt-4o-mini"), monkeypatch) as (_, simulator):
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")  # named after its model: priced
        yield simulator


def _records(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"id": f"co-{i}", "company": f"Company {i}", "notes": "n"} for i in range(n)])


def test_a_model_that_always_calls_another_tool_stops_after_20_lines_attempts_and_records_nothing(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "in.jsonl", 500)
    sim.config.fault_rates["wrong-tool"] = 1.0  # a proxy whose model calls 'submit_result', whatever it is offered
    args = [str(tmp_path / "in.jsonl"), "-q", "--template", "About {company}", "--tools", str(TOOL)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the first 20 lines all broke the schema the same way" in err
    assert "the model called an unknown tool 'submit_result'" in err
    assert "The model answered instead: a call to 'submit_result' with {" in err and "--tools" in err
    assert sim.requests <= 20 * RetryPolicy.max_attempts  # not 500 lines x 6 attempts
    assert read_jsonl(tmp_path / "in.results.jsonl") == [] and read_jsonl(tmp_path / "in.results.errors.jsonl") == []
    sim.config.fault_rates.clear()  # the schema (here: the model) fixed, the same command does every line
    assert main(args) == 0
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == sorted(
        f"co-{i}" for i in range(500)
    )


def test_output_failures_on_some_lines_only_are_recorded_and_the_run_goes_on(tmp_path: Path, sim: Simulator) -> None:
    _records(tmp_path / "in.jsonl", 200)
    for i in range(0, 200, 2):  # every other line: a model that never follows the tool on it
        sim.config.script[f"About Company {i}"] = ["wrong-tool"] * RetryPolicy.max_attempts
    args = [str(tmp_path / "in.jsonl"), "-q", "--template", "About {company}", "--tools", str(TOOL)]
    assert main(args) == 1
    failed = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert len(failed) == 100 and {r["error"]["code"] for r in failed} == {"invalid_tool_arguments"}
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 100


def test_a_pasted_request_url_gives_the_whole_fix_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://myres.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    _records(tmp_path / "in.jsonl", 3)
    assert main([str(tmp_path / "in.jsonl"), "--template", "{company}"]) == 2
    err = capsys.readouterr().err
    assert "AZURE_OPENAI_ENDPOINT=https://myres.openai.azure.com and pass --deployment gpt-4o" in err
    assert "--api-version 2024-10-21" in err and "missing configuration" not in err


def test_a_line_written_as_a_python_dict_is_named_as_one(tmp_path: Path, sim: Simulator) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "company": "A"}\n' + str({"id": 906, "company": "B"}) + "\n")
    assert main([str(path), "-q", "--template", "{company}"]) == 1
    (failed,) = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert f"{path}:2: a Python dict, not JSON" in failed["error"]["message"]
    assert "json.dumps(row)" in failed["error"]["message"] and "invalid literal" not in failed["error"]["message"]


def test_with_no_arguments_the_first_line_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([])
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(err) <= 2
    assert err[0] == "asyncbatch: error: give the JSONL file to run: asyncbatch INPUT [options]"


def test_the_simulated_banner_fits_80_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _records(tmp_path / "in.jsonl", 2)
    assert main([str(tmp_path / "in.jsonl"), "--simulate", "--template", "{company}", "--no-progress"]) == 0
    (banner,) = [line for line in capsys.readouterr().err.splitlines() if "SIMULATED" in line and "127.0.0.1" in line]
    assert len(banner) <= 80 and "nothing goes to Azure" in banner


def test_library_hints_name_library_options_and_the_cli_names_its_flags(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    import asyncbatch

    path = _records(tmp_path / "in.jsonl", 5)
    args = [str(path), "-q", "--template", "{company}"]
    assert main(args) == 0
    path.write_text(path.read_text().replace("Company 1", "Company one"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pass --restart" not in err and "start over with --restart" in err and "restart=True" not in err
    config = asyncbatch.RunConfig(
        input_path=path,
        endpoint=asyncbatch.Endpoint(
            base_url=os.environ["AZURE_OPENAI_ENDPOINT"],
            api_key=KEY,
            deployment="gpt-4o-mini",
            kind="azure",
            api_version="2024-10-21",
        ),
        request=asyncbatch.RequestDefaults(template="{company}"),
    )
    with pytest.raises(asyncbatch.ConfigError) as refused:
        asyncio.run(asyncbatch.run(config))
    assert "restart=True (or asyncbatch.restart(config))" in str(refused.value) and "--restart" not in str(
        refused.value
    )
