"""A new user's first hour: systematic mistakes said once, messages that say what to do, fixes that resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.config import RetryPolicy
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import read_jsonl, simulator_env, write_jsonl

KEY = "first-hour-key-0123456789"
TOOL = Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json"
QUICK_SIMULATION = ["--simulate", "--sim-latency-ms", "0", "--no-progress"]


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
    assert all(r["response"]["request_id"].startswith("req-sim-") for r in failed)  # the answer's own id
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
    with pytest.raises(SystemExit):
        main(["--cache", "in.jsonl"])  # the optional PATH took the input
    assert "put it after the input: asyncbatch INPUT --cache" in capsys.readouterr().err


def test_the_simulated_banner_fits_80_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _records(tmp_path / "in.jsonl", 2)
    assert main([str(tmp_path / "in.jsonl"), *QUICK_SIMULATION, "--template", "{company}"]) == 0
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
    assert "run(config, restart=True) (or asyncbatch.restart(config))" in str(refused.value) and "--restart" not in str(
        refused.value
    )


def _companies(path: Path, n: int) -> Path:
    rows = [
        {"id": i, "company": f"Company {i}" + " x" * (i % 17), "notes": "public sources only" * (1 + i % 4)}
        for i in range(n)
    ]
    return write_jsonl(path, rows)


DEMO = ["--template", "Tell me about {company}. Notes: {notes}", "--tools", str(TOOL), "--deployment", "gpt-4o-mini"]


def test_the_dry_runs_projection_is_within_25_percent_of_the_runs_cost_and_at_most_has_a_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _companies(tmp_path / "in.jsonl", 3000)
    assert main([str(path), "--dry-run", *DEMO]) == 0
    bound = capsys.readouterr().out
    assert "3,000 requests set no max_tokens" in bound and "gpt-4o-mini's output limit (16,384 each)" in bound
    assert main([str(path), "--dry-run", "--deployment", "my-chat", *DEMO[:4]]) == 0
    unknown = capsys.readouterr().out
    assert "no bound: 3,000 requests set no max_tokens" in unknown and "at most" not in unknown
    assert "'my-chat' is not in the price table" in unknown and "--price-in" in unknown
    simulate = ["--simulate", "--sim-latency-ms", "20"]
    assert main([str(path), "--dry-run", "--sample", "40", *simulate, *DEMO]) == 0
    sampled = capsys.readouterr().out
    projected = float(re.search(r"cost +about ([\d.]+) USD live", sampled).group(1))
    assert "projected from 40 sampled answers" in sampled and not list(tmp_path.glob("in.results*"))
    assert main([str(path), "--no-progress", "-c", "100", *simulate, *DEMO]) == 0
    actual = float(re.search(r"cost +│ ([\d.]+) USD this run", capsys.readouterr().err).group(1))
    assert abs(projected - actual) <= 0.25 * actual


def test_a_run_without_prices_says_why_and_batch_lines_naming_a_model_are_priced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "in.jsonl", 3)
    assert main([str(tmp_path / "in.jsonl"), *QUICK_SIMULATION, "--template", "{company}"]) == 0
    err = capsys.readouterr().err
    assert "no cost: 'simulated-deployment' is not in the" in err and "--price-in" in err
    reviews = Path(__file__).resolve().parent.parent / "examples" / "reviews_batch.jsonl"
    (tmp_path / "reviews.jsonl").write_bytes(reviews.read_bytes())
    schema = str(Path(__file__).resolve().parent.parent / "examples" / "classify_sentiment.json")
    assert main([str(tmp_path / "reviews.jsonl"), *QUICK_SIMULATION, "--tools", schema, "--strict"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"cost +│ [\d.]+ USD this run", err) and "for the lines' model" in err.replace("│", "")


def _api_line(i: int, url: str, body: dict[str, object]) -> dict[str, object]:
    return {"custom_id": f"s{i}", "method": "POST", "url": url, "body": {"model": "m", **body}}


def test_requests_the_published_specs_refuse_are_refused_first_naming_the_field(tmp_path: Path, sim: Simulator) -> None:
    tool = {"type": "function", "name": "label", "parameters": {"type": "object", "properties": {}}}
    lines = [
        _api_line(0, "/embeddings", {"input": [f"t{i}" for i in range(2049)]}),
        _api_line(1, "/embeddings", {"input": ["fine", ""]}),
        _api_line(2, "/embeddings", {"input": [[1, 2, 3], [4, 5]]}),
        _api_line(3, "/embeddings", {"input": ["a good one"]}),
    ]
    write_jsonl(tmp_path / "in.jsonl", lines)
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 1  # the default api-version, 2024-10-21
    errors = {r["custom_id"]: r["error"]["message"] for r in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert "holds 2,049 inputs; an embeddings request takes at most 2,048" in errors["s0"]
    assert "'input' holds an empty string" in errors["s1"]
    assert "token arrays, which api-version 2024-10-21 does not take" in errors["s2"] and "/openai/v1" in errors["s2"]
    assert sim.requests == 1  # only the good line was sent
    responses = [
        _api_line(0, "/v1/responses", {"input": "hi", "tools": [tool]}),
        _api_line(1, "/v1/responses", {"input": "hi", "max_output_tokens": 8}),
        _api_line(2, "/v1/responses", {"input": "hi", "max_output_tokens": 16}),
    ]
    write_jsonl(tmp_path / "resp.jsonl", responses)
    assert main([str(tmp_path / "resp.jsonl"), "-q", "--api-version", "v1"]) == 1
    errors = {r["custom_id"]: r["error"]["message"] for r in read_jsonl(tmp_path / "resp.results.errors.jsonl")}
    assert "function tool 'label' sets no 'strict'" in errors["s0"]
    assert "max_output_tokens must be a whole number of at least 16, got 8" in errors["s1"] and len(errors) == 2
    write_jsonl(tmp_path / "classic.jsonl", responses[2:])
    sent = sim.requests
    assert main([str(tmp_path / "classic.jsonl"), "-q"]) == 2  # Responses on 2024-10-21: no such route, said once
    assert not (tmp_path / "classic.results.jsonl").exists() and sim.requests == sent


def test_api_responses_on_a_classic_version_without_the_route_is_refused_before_anything(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "in.jsonl", 3)
    assert main([str(tmp_path / "in.jsonl"), "--api", "responses", "--template", "{company}"]) == 2
    assert "has no route in api-version 2024-10-21" in capsys.readouterr().err and sim.requests == 0
    assert not list(tmp_path.glob("in.results*"))


def test_simulated_responses_on_a_classic_version_names_the_api_versions_that_run_and_no_banner_comes_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hint names what to pass to --simulate (no endpoint to set), and SIMULATED is said only of a run."""
    _records(tmp_path / "in.jsonl", 3)
    base = [str(tmp_path / "in.jsonl"), *QUICK_SIMULATION, "--api", "responses", "--template", "{company}"]
    assert main([*base, "--api-version", "2024-10-21"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has no route in api-version 2024-10-21" in err and "AZURE_OPENAI_ENDPOINT" not in err
    assert "SIMULATED" not in err  # the configuration was refused: no simulator was ever used
    versions = re.findall(r"--api-version ([\w.-]+)", err.partition("HINT:")[2])
    assert versions == ["v1", "2025-04-01-preview"]
    for version in versions:  # each one the hint names runs
        assert main([*base, "--api-version", version, "-o", str(tmp_path / f"{version}.jsonl")]) == 0
        assert "SIMULATED: a local simulator at" in capsys.readouterr().err
        assert len(read_jsonl(tmp_path / f"{version}.jsonl")) == 3


def test_the_simulated_banner_is_not_printed_before_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "in.jsonl", 2)
    assert main([str(tmp_path / "in.jsonl"), *QUICK_SIMULATION, "--template", "{company}", "--max-cost", "1"]) == 2
    err = capsys.readouterr().err
    assert "--max-cost needs prices" in err and "SIMULATED" not in err
    assert main([str(tmp_path / "in.jsonl"), *QUICK_SIMULATION, "--template", "{nothing}"]) == 2
    err = capsys.readouterr().err
    assert "template field 'nothing' is missing" in err and "SIMULATED" not in err


def test_a_responses_failure_names_the_responses_route_and_output_failures_keep_the_request_id(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.config.script["About Company 0"] = ["404"]
    _records(tmp_path / "in.jsonl", 1)
    args = ["--api", "responses", "--template", "About {company}", "--api-version", "2025-04-01-preview"]
    assert main([str(tmp_path / "in.jsonl"), "-q", *args]) == 2
    assert "URL tried: http://127.0.0.1" in (err := capsys.readouterr().err) and "/openai/responses" in err
    assert "/chat/completions" not in err
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps({"name": "answer", "schema": {"type": "object", "required": ["label"]}}))
    sim.config.fault_rates["schema"] = 1.0
    write_jsonl(tmp_path / "two.jsonl", [{"id": f"r{i}", "company": f"c{i}"} for i in range(25)])
    assert main([str(tmp_path / "two.jsonl"), "-q", "--template", "{company}", "--response-format", str(schema)]) == 2
    err = capsys.readouterr().err
    assert "invalid_output:" in err and "invalid_tool_arguments" not in err  # a JSON answer is not a tool call


def test_an_invalid_input_line_fixed_in_place_resumes_sending_exactly_that_line(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [json.dumps({"id": i, "company": f"C{i}"}) if i % 10 != 8 else f"{{'id': {i}, broken" for i in range(100)]
    path.write_text("\n".join(rows) + "\n")
    args = [str(path), "-q", "--template", "About {company}"]
    assert main(args) == 1
    assert len(read_jsonl(tmp_path / "mixed.results.errors.jsonl")) == 10 and sim.requests == 90
    lines = path.read_text().splitlines()
    lines[8] = json.dumps({"id": 8, "company": "C8 fixed"})  # line 9, corrected where it stands
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([str(path), "--no-progress", *args[2:]]) == 1  # the other nine bad lines are still bad
    assert sim.requests == 91 and sim.answered["About C8 fixed"] == 1  # exactly that line was sent
    results = read_jsonl(tmp_path / "mixed.results.jsonl")
    assert len(results) == 91 and len({r["line"] for r in results}) == 91
    assert 9 not in {r["line"] for r in read_jsonl(tmp_path / "mixed.results.errors.jsonl")}
    assert "corrected in place" in capsys.readouterr().err
    assert main(args) == 1 and sim.requests == 91  # and again: nothing more to send
    lines[0] = json.dumps({"id": 0, "company": "C0 edited"})  # a line whose answer is recorded
    path.write_text("\n".join(lines) + "\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "changed at line 1, and its answer is recorded" in err and "append the corrected line" in err
    assert "--restart" in err and sim.requests == 91


def test_the_simulator_has_no_classic_responses_route_before_its_api_version_either(sim: Simulator) -> None:
    import urllib.error
    import urllib.request

    def post(version: str) -> int:
        url = f"{os.environ['AZURE_OPENAI_ENDPOINT']}/openai/responses?api-version={version}"
        body = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
        request = urllib.request.Request(url, data=body, headers={"api-key": KEY, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post("2024-10-21") == 404 and post("2025-04-01-preview") == 200  # the server's own reading of the docs


@pytest.mark.parametrize("command", [["--help"], ["export", "--help"], ["cache", "--help"], ["report", "--help"]])
def test_help_into_a_pipe_already_closed_exits_0_quietly(command: list[str]) -> None:
    """``asyncbatch export --help | head -1``: head may be gone before the help is written (EPIPE)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written: the worst case of `| head`
    try:
        done = subprocess.run([sys.executable, "-m", "asyncbatch", *command], stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == b""


@pytest.mark.parametrize(
    ("command", "shown"),
    [("false", "--token-command `false` exited with 1"), ("exit 3 # sk-secret", "--token-command `exit ...` exited")],
)
def test_a_token_command_that_fails_is_named_by_its_program_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, shown: str
) -> None:
    for name in [n for n in os.environ if n.startswith(("AZURE_", "OPENAI_", "ASYNCBATCH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["in.jsonl", "-q", "--token-command", command]) == 2
    err = capsys.readouterr().err
    assert shown in err and "sk-secret" not in err and "(false" not in err


def test_a_copy_of_env_example_not_yet_filled_in_is_named_and_the_hint_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copied, not filled in: the run went to https://your-resource.openai.azure.com, a host that does not
    exist, and failed on the network. It names the variables; what its hint says to try runs."""
    (tmp_path / ".env").write_text((Path(__file__).parents[1] / ".env.example").read_text())
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["in.jsonl", "--no-progress"]) == 2
    err = capsys.readouterr().err
    variables = "AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, AZURE_OPENAI_DEPLOYMENT_NAME"
    assert f"{variables} still hold .env.example's placeholders" in err and "add --simulate" in err
    assert not (tmp_path / "in.results.jsonl").exists()
    assert main(["in.jsonl", "--no-progress", "-q", "--simulate"]) == 0  # the hint's way to try it first
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 1
