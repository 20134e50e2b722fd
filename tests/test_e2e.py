"""The CLI and the library against the simulator, over real sockets and the real openai SDK."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch import Endpoint, Limits, RetryPolicy, RunConfig, run
from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import FakeClock, batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "test-key-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent
TOOL_FILE = REPO / "examples" / "get_company_info.json"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Simulator]]:
    """A simulator on 127.0.0.1 and the Azure variables pointing at it (tests script faults per prompt)."""
    with simulator_env(SimConfig(api_key=KEY, deployment="dep"), monkeypatch) as (env, simulator):
        yield env["AZURE_OPENAI_ENDPOINT"], simulator


def _cli(tmp_path: Path, *args: str) -> tuple[int, list[dict], list[dict]]:
    code = main([str(tmp_path / "in.jsonl"), "-q", *args])
    return code, read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")


def test_happy_path_every_input_once_attached_to_its_own_input(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"req-{i}", f"prompt number {i}") for i in range(200)])
    code, results, errors = _cli(tmp_path, "--concurrency", "16")
    assert code == 0 and errors == []
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(200))
    for r in results:
        n = int(r["custom_id"].split("-")[1])
        assert r["output"] == f"Simulated answer to: prompt number {n}"
        assert r["line"] == n + 1
        assert r["response"]["body"]["model"] == "dep"  # the body's model was replaced by the deployment


def test_result_and_error_line_shapes(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    sim[1].config.script.update({"will fail": ["400"]})
    write_jsonl(tmp_path / "in.jsonl", [batch_line("ok", "fine"), batch_line("bad", "will fail")])
    code, results, errors = _cli(tmp_path)
    assert code == 1
    (result,) = results
    assert set(result) == {
        "id", "custom_id", "response", "error", "output", "attempts", "latency_ms", "deployment", "line", "line_hash"
    }  # fmt: skip
    assert result["id"].startswith("batch_req_") and result["error"] is None and result["deployment"] == "dep"
    assert result["response"]["status_code"] == 200 and result["response"]["request_id"].startswith("req-sim-")
    assert result["response"]["body"]["object"] == "chat.completion"
    assert result["attempts"] == 1 and result["latency_ms"] > 0
    (error,) = errors
    assert set(error) == {"id", "custom_id", "response", "error", "attempts", "deployment", "line", "line_hash"}
    assert result["line_hash"] != error["line_hash"] and len(result["line_hash"]) == 16
    assert error["custom_id"] == "bad" and error["line"] == 2 and error["attempts"] == 1  # 400: never retried
    assert error["response"]["status_code"] == 400
    assert error["error"] == {"code": "400", "message": "HTTP 400: Simulated 400."}


FAST_RETRY = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)  # no real backoff to sit through


def test_5xx_is_retried_then_succeeds(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    url, simulator = sim
    simulator.config.script.update({"flaky": ["500", "503"]})
    write_jsonl(tmp_path / "in.jsonl", [batch_line("f", "flaky")])
    endpoint = Endpoint(kind="azure", base_url=url, api_key=KEY, deployment="dep")
    stats = asyncio.run(run(RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint, retry=FAST_RETRY)))
    assert (stats.succeeded, stats.retries) == (1, 2)
    assert read_jsonl(tmp_path / "in.results.jsonl")[0]["attempts"] == 3
    assert simulator.statuses["500"] == 1 and simulator.statuses["503"] == 1


def test_a_server_below_60_rpm_admits_every_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "three.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(3)])
    code = main([str(tmp_path / "three.jsonl"), "-q", "--simulate", "--sim-rpm", "30", "--sim-latency-ms", "0"])
    assert code == 0 and len(read_jsonl(tmp_path / "three.results.jsonl")) == 3


def test_429_retry_after_is_honoured_exactly(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    url, simulator = sim
    simulator.config.script.update({"throttle me": ["429"]})
    write_jsonl(tmp_path / "in.jsonl", [batch_line("t", "throttle me")])
    clock = FakeClock(0.0)  # an injected clock: waiting costs no wall time
    config = RunConfig(
        input_path=tmp_path / "in.jsonl",
        output_path=tmp_path / "out.jsonl",
        errors_path=tmp_path / "err.jsonl",
        endpoint=Endpoint(kind="azure", base_url=url, api_key=KEY, deployment="dep"),
        limits=Limits(concurrency=2),
        retry=RetryPolicy(max_attempts=3),
    )
    stats = asyncio.run(run(config, sleep=clock.sleep, clock=clock))
    assert [w for w in clock.slept if w] == [1.234]  # the simulator's retry-after-ms, not a backoff guess
    assert (stats.succeeded, stats.throttled, stats.retries) == (1, 1, 1)
    assert read_jsonl(tmp_path / "out.jsonl")[0]["attempts"] == 2


def test_wrong_key_fails_fast_with_exit_2(
    tmp_path: Path, sim: tuple[str, Simulator], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "wrong-key-ffffffff")
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(500)])
    code, results, errors = _cli(tmp_path, "--concurrency", "4")
    err = capsys.readouterr().err
    assert code == 2 and "authentication failed" in err and "AZURE_OPENAI_API_KEY" in err
    assert sim[1].requests <= 8  # stopped within the first requests, no retries burned per line
    assert results == [] and errors == []  # nothing recorded: a re-run with the right key does everything
    assert "wrong-key-ffffffff" not in err


def test_wrong_deployment_fails_fast(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(100)])
    code, _, _ = _cli(tmp_path, "--deployment", "nope")
    assert code == 2 and "deployment" in capsys.readouterr().err
    assert sim[1].requests <= 40


def test_tool_arguments_are_parsed_from_records_with_a_template(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(20)])
    code, results, errors = _cli(tmp_path, "--template", "About {company}", "--tools", str(TOOL_FILE))
    assert code == 0 and errors == [] and len(results) == 20
    for r in results:
        out = r["output"]
        assert isinstance(out, dict) and out["industry"] == "software" and out["founded"] == 42
        assert out["name"] == f"name: About Co{r['custom_id']}"


def test_invalid_tool_arguments_are_an_error_line_with_the_raw_arguments(
    tmp_path: Path, sim: tuple[str, Simulator]
) -> None:
    sim[1].config.script.update({"About Bad": ["malformed"]})
    write_jsonl(tmp_path / "in.jsonl", [{"id": "good", "company": "Good"}, {"id": "bad", "company": "Bad"}])
    args = ("--template", "About {company}", "--tools", str(TOOL_FILE), "--max-attempts", "1")
    code, results, errors = _cli(tmp_path, *args)  # one attempt: no chance to ask again
    assert code == 1 and [r["custom_id"] for r in results] == ["good"]
    (error,) = errors
    assert error["error"]["code"] == "invalid_tool_arguments"
    raw = error["response"]["body"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert repr(raw) in error["error"]["message"]


def test_bad_input_lines_are_reported_and_good_lines_still_run(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(
        tmp_path / "in.jsonl", [batch_line("a", "x"), "{oops", batch_line("a", "dup"), "[]", batch_line("b", "y")]
    )
    code, results, errors = _cli(tmp_path)
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(r["custom_id"] for r in results) == ["a", "b"]
    assert sorted(e["line"] for e in errors) == [2, 3, 4]
    assert all(e["error"]["code"] == "invalid_input" for e in errors)
    for n in (2, 3, 4):
        assert f"in.jsonl:{n}:" in err


def test_openai_compatible_endpoint(
    tmp_path: Path, sim: tuple[str, Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT_NAME"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", sim[0] + "/v1")
    monkeypatch.setenv("OPENAI_MODEL", "some-model")
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "c", "messages": [{"role": "user", "content": "hey"}]}])
    code, results, _ = _cli(tmp_path)
    assert code == 0 and results[0]["response"]["body"]["model"] == "some-model"


def test_env_file_is_read_and_real_environment_wins(
    tmp_path: Path, sim: tuple[str, Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT_NAME")
    (tmp_path / ".env").write_text(
        "AZURE_OPENAI_ENDPOINT=http://127.0.0.1:9\nAZURE_OPENAI_API_KEY=from-dotenv\nAZURE_OPENAI_DEPLOYMENT_NAME=dep\n"
    )
    write_jsonl(tmp_path / "in.jsonl", [batch_line("c", "hi")])
    code, results, _ = _cli(tmp_path)
    assert code == 0 and len(results) == 1  # the real endpoint and key beat the .env's; its deployment was read


def test_missing_configuration_names_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("c", "hi")])
    code = main([str(tmp_path / "in.jsonl"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "AZURE_OPENAI_ENDPOINT" in err and ".env.example" in err and "--simulate" in err


def test_missing_and_empty_input_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.jsonl"), "--simulate", "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main([str(tmp_path / "empty.jsonl"), "--simulate", "-q"]) == 0
    assert "empty" in capsys.readouterr().err


def test_simulate_needs_no_credentials_and_says_so(tmp_path: Path) -> None:
    """The real console script path, in a subprocess, as a user runs it."""
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(30)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncbatch",
            "in.jsonl",
            "--simulate",
            "--sim-latency-ms",
            "5",
            "--template",
            "About {company}",
            "--tools",
            str(TOOL_FILE),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("SIMULATED") >= 2  # the progress line and the summary both say so
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(int(r["custom_id"]) for r in results) == list(range(30))


def test_api_key_never_appears_in_any_output(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    sim[1].config.script.update({"p1": ["500", "500"], "p2": ["400"], "p3": ["malformed"]})
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(10)] + ["{broken"])
    main([str(tmp_path / "in.jsonl"), "--no-progress", "--max-attempts", "2"])
    captured = capsys.readouterr()
    files = [p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file() and p.name != ".env"]
    for text in [captured.out, captured.err, *files]:
        assert KEY not in text
    assert "succeeded" in captured.err  # the summary did print, so there was output to search
    assert "top failure reasons" in captured.err and "invalid_input: 1" in captured.err


def test_quiet_prints_nothing_when_all_is_well(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    assert main([str(tmp_path / "in.jsonl"), "-q", "--simulate"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 1


def test_a_gateway_header_is_sent_with_every_request_and_never_appears_in_any_output(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    secret = "apim-subscription-9f9f9f9f"
    simulator.config.gateway_key = secret  # like API Management in front of Azure OpenAI
    simulator.config.script.update({"p3": ["echo-key"]})  # a server that quotes what it was given
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(10)])
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 2  # without it, the gateway refuses everything
    err = capsys.readouterr().err
    assert "authentication failed" in err and "missing subscription key" in err
    assert "HINT: API Management wants its subscription key: give it with --header 'Ocp-Apim-Subscription-Key" in err
    assert "check AZURE_OPENAI_API_KEY" not in err  # the key was right: the gateway's is what was missing
    code = main([str(tmp_path / "in.jsonl"), "--no-progress", "--header", f"Ocp-Apim-Subscription-Key: {secret}"])
    captured = capsys.readouterr()
    assert code == 1 and len(read_jsonl(tmp_path / "in.results.jsonl")) == 9  # one line was the echo
    files = [p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file()]
    assert any("***" in text for text in files)  # the echoed value was there to redact
    for text in [captured.out, captured.err, *files]:
        assert secret not in text


def test_a_header_without_a_value_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    assert main([str(tmp_path / "in.jsonl"), "--simulate", "--header", "Ocp-Apim-Subscription-Key"]) == 2
    assert "--header takes 'Name: value'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["openai", "azure"])
def test_the_v1_api_base_url_works_in_both_modes(
    tmp_path: Path, sim: tuple[str, Simulator], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    url, simulator = sim
    if mode == "openai":  # OpenAI mode with the v1 base URL
        for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/openai/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_MODEL", "dep")
    else:  # Azure mode, the endpoint as the portal shows it for the v1 API
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"{url}/openai/v1")
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(5)])
    code, results, errors = _cli(tmp_path)
    assert code == 0 and len(results) == 5 and errors == []
    assert all(body["model"] == "dep" for body in simulator.bodies)  # v1: the deployment goes in the body
