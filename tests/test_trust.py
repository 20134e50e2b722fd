"""Trust at run time: one writer per output, outages ridden out, an exhausted quota and systematic 4xx stop the run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch import ConfigError, Endpoint, Limits, RetryPolicy, RunConfig, run
from asyncbatch.cli.main import main
from asyncbatch.cli.parser import EXIT_STOPPED
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.store.lock import AlreadyRunning, OutputLock
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "trust-key-0123456789"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY), monkeypatch) as (env, simulator):
        yield env, simulator


def _lines(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])


def _outputs(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    return read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")


def _exactly_once(tmp_path: Path, n: int) -> list[dict]:
    results, errors = _outputs(tmp_path)
    assert sorted(r["line"] for r in results + errors) == list(range(1, n + 1))
    return errors


def test_a_second_run_on_the_same_outputs_exits_2_at_once_and_the_first_finishes_exactly_once(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    env, simulator = sim
    simulator.config.latency = 0.02
    n = 600
    _lines(tmp_path, n)
    first = subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", "in.jsonl", "-q", "-c", "10"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulator.first_request.wait(timeout=60)  # the first run is sending
        assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "10"]) == 2
        err = capsys.readouterr().err
        assert f"another asyncbatch run (pid {first.pid}, started at" in err and "in.results.jsonl" in err
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        first.kill()
    assert _exactly_once(tmp_path, n) == []
    assert simulator.billed_twice() == 0 and simulator.statuses["200"] == n


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path: Path) -> None:
    out, info = tmp_path / "out.jsonl", tmp_path / "out.jsonl.state" / "lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from asyncbatch.store.lock import OutputLock; from pathlib import Path\n"
            f"with OutputLock([Path({str(out)!r})], Path({str(info)!r})):\n    print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"), OutputLock([out], info):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with OutputLock([out], info):  # the OS dropped the dead process's lock
        pass
    assert issubclass(AlreadyRunning, ConfigError)


def test_an_outage_mid_run_is_ridden_out_without_using_attempts_or_writing_errors(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    simulator.config.outage_after, simulator.config.outage_seconds = 800, 0.8
    n = 3000
    _lines(tmp_path, n)
    config = RunConfig(
        input_path=tmp_path / "in.jsonl",
        endpoint=Endpoint(kind="azure", base_url=env["AZURE_OPENAI_ENDPOINT"], api_key=KEY, deployment="d"),
        limits=Limits(concurrency=50),
        retry=RetryPolicy(
            max_attempts=2, backoff_initial=0.05, backoff_max=0.2
        ),  # 2 attempts cannot outlast the outage
    )
    stats = asyncio.run(run(config))
    assert simulator.statuses["down"] > 0  # the outage did happen, mid-run
    assert (stats.succeeded, stats.failed, stats.stopped) == (n, 0, None)
    assert _exactly_once(tmp_path, n) == []
    assert simulator.statuses["down"] < 200  # one probe at a time while down, not every worker hammering


def test_an_outage_longer_than_max_outage_stops_resumably(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    simulator.config.outage_after, simulator.config.outage_seconds = 50, 3600.0
    _lines(tmp_path, 300)
    code = main([str(tmp_path / "in.jsonl"), "-q", "-c", "10", "--max-outage", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_STOPPED and "unreachable since" in err and "--max-outage" in err and "to resume" in err
    results, errors = _outputs(tmp_path)
    assert errors == [] and 40 <= len(results) < 300
    simulator.down_until = 0.0
    simulator.config.outage_after = None
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "10"]) == 0
    assert _exactly_once(tmp_path, 300) == []


def test_an_exhausted_quota_stops_at_once_and_the_same_command_finishes_later(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    simulator.config.exhaust_after = 100
    n = 400
    _lines(tmp_path, n)
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "20"]) == EXIT_STOPPED
    err = capsys.readouterr().err
    assert "quota is exhausted" in err and "86,400 s" in err and "resets at about" in err
    results, errors = _outputs(tmp_path)
    assert errors == [] and len(results) == 100
    simulator.config.exhaust_after = None  # the next day
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "20"]) == 0
    assert _exactly_once(tmp_path, n) == [] and simulator.billed_twice() == 0


def test_the_same_400_on_every_request_stops_within_the_first_requests_with_the_servers_message(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    simulator.config.fault_rates["400"] = 1.0
    _lines(tmp_path, 2000)
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "20"]) == 2
    err = capsys.readouterr().err
    assert "the first 20 requests were all refused the same way" in err and "Simulated 400." in err
    assert simulator.requests <= 60
    assert _outputs(tmp_path) == ([], [])  # nothing recorded: fixed, the same command runs everything


def test_a_line_a_gateway_refuses_for_its_content_is_that_lines_failure_even_when_its_retries_outlast_the_rest(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    """A 403 for one prompt alone (a firewall rule in front of the deployment) while the others are answered:
    its retries go on after every other line is done, and the run still ends with it recorded failed (exit 1),
    not stopped for a key that works (exit 2, the same refusal again on every resume)."""
    _, simulator = sim
    simulator.config.latency = 0.01
    simulator.config.script["prompt 2"] = ["403"] * 10  # after answers: before any, a 403 is the key's
    _lines(tmp_path, 6)
    args = [str(tmp_path / "in.jsonl"), "-q", "-c", "2", "--max-attempts", "5", "--backoff", "0.05"]
    assert main(args) == 1
    (error,) = _exactly_once(tmp_path, 6)
    assert error["custom_id"] == "r2" and error["attempts"] == 5 and "403" in error["error"]["message"]
    assert simulator.statuses["403"] == 5 and simulator.statuses["200"] == 5 and simulator.billed_twice() == 0
