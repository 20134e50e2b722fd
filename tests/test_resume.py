"""Interrupt anything, resume exactly once: real CLI subprocesses killed against the simulator."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import FakeClock, batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "resume-key-42424242"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY, latency=0.03), monkeypatch) as env_and_simulator:
        yield env_and_simulator


def _start(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> int:
    try:  # not a look, then a read: a file moved aside between the two is none
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_for_progress(path: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Poll the results file until it has grown enough (a condition, not a guess at timing)."""
    deadline = time.monotonic() + timeout
    while _lines(path) < at_least:
        if proc.poll() is not None:
            return  # finished before we could interrupt it; the test still checks the outcome
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


def _assert_exactly_once(tmp_path: Path, n: int) -> None:
    results = read_jsonl(tmp_path / "in.results.jsonl")  # json.loads fails on any torn or corrupt line
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    ids = [r["custom_id"] for r in results + errors]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))
    assert errors == []
    for r in results:
        assert r["output"] == f"Simulated answer to: prompt {r['custom_id']}"


@pytest.mark.parametrize("seed", [int(os.environ.get("ASYNCBATCH_KILL_SEED", "1"))])
def test_kill_9_at_random_moments_then_resume(tmp_path: Path, sim: tuple[dict[str, str], Simulator], seed: int) -> None:
    env, simulator = sim
    n, concurrency, kills = 400, 40, 3
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt r{i}") for i in range(n)])
    rng = random.Random(seed)
    results = tmp_path / "in.results.jsonl"
    for _ in range(kills):
        proc = _start(tmp_path, env, "-c", str(concurrency))
        _wait_for_progress(results, _lines(results) + rng.randint(1, n // (kills + 1)), proc)
        proc.kill()
        assert proc.wait() == -signal.SIGKILL, "the run had finished: nothing was killed"
    billed_twice_before = simulator.billed_twice()
    final = _start(tmp_path, env, "-c", str(concurrency))
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    _assert_exactly_once(tmp_path, n)
    resent = re.search(r"re-sent\s*│\s*(\d+) requests", err.decode())
    assert resent is not None, err.decode()  # the summary says how many were sent again
    # every request paid twice by this resume was one the journal knew was out and unrecorded at the kill
    assert simulator.billed_twice() - billed_twice_before <= int(resent[1]) <= 2 * concurrency
    assert simulator.billed_twice() <= kills * concurrency  # only requests in flight at a kill were paid twice


def test_sigint_exits_130_quickly_and_the_next_run_resumes(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    n = 800
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt r{i}") for i in range(n)])
    proc = _start(tmp_path, env, "-c", "20")
    _wait_for_progress(tmp_path / "in.results.jsonl", 100, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "to resume, run the same command again" in err.decode()
    typed = shlex.join([sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "-c", "20"])
    assert f"\n  {typed}" in err.decode()  # the command as it was typed, interpreter and all
    done_before = _lines(tmp_path / "in.results.jsonl")
    assert 100 <= done_before < n
    assert simulator.billed_twice() == 0  # graceful: in-flight requests finished and were recorded
    code = main([str(tmp_path / "in.jsonl"), "-q", "-c", "20"])
    assert code == 0
    _assert_exactly_once(tmp_path, n)
    assert simulator.billed_twice() == 0


def test_changed_input_or_options_are_refused_and_restart_moves_outputs_aside(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"C{i}"} for i in range(5)])
    assert main([str(path), "-q", "--template", "About {company}"]) == 0
    assert main([str(path), "-q", "--template", "Tell me about {company}"]) == 2
    assert "template changed" in capsys.readouterr().err
    write_jsonl(path, [{"id": i, "company": f"D{i}"} for i in range(5)])
    assert main([str(path), "-q", "--template", "About {company}"]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl changed" in err and "--restart" in err
    assert main([str(path), "-q", "--template", "About {company}", "--restart"]) == 0
    assert "moved" in capsys.readouterr().err
    olds = sorted(p.name for p in tmp_path.glob("*.old"))
    assert len(olds) == 3  # results, errors and the state directory kept beside the new ones
    outputs = sorted(r["output"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert outputs == [f"Simulated answer to: About D{i}" for i in range(5)]


def test_rerun_of_a_finished_run_sends_nothing(tmp_path: Path, sim: tuple[dict[str, str], Simulator]) -> None:
    _, simulator = sim
    path = write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt r{i}") for i in range(30)])
    assert main([str(path), "-q"]) == 0
    sent = simulator.requests
    assert main([str(path), "-q"]) == 0
    assert simulator.requests == sent
    _assert_exactly_once(tmp_path, 30)


def test_retry_failed_runs_only_the_failed_requests_again(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    simulator.config.script.update({"prompt r3": ["400"], "prompt r7": ["500", "500"]})
    rows = [batch_line(f"r{i}", f"prompt r{i}") for i in range(10)] + ["{bad json"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main([str(path), "-q", "--max-attempts", "2"]) == 1
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == ["line-11", "r3", "r7"]
    sent = simulator.requests
    assert main([str(path), "-q", "--retry-failed"]) == 1  # the bad line still fails
    assert simulator.requests == sent + 2  # only r3 and r7 were sent again
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert [e["custom_id"] for e in errors] == ["line-11"]
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(10))
    assert json.loads((tmp_path / "in.results.jsonl.state" / "checkpoint").read_text())["errors_lines"] == 1


def test_restart_with_a_broken_configuration_moves_nothing(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    assert main([str(path), "-q"]) == 0
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT_NAME")
    assert main([str(path), "-q", "--restart"]) == 2
    assert list(tmp_path.glob("*.old")) == [] and len(read_jsonl(tmp_path / "in.results.jsonl")) == 1


def test_a_resumed_run_counts_only_its_own_work_in_its_rate(tmp_path: Path) -> None:
    from asyncbatch.stats import RunStats

    clock = FakeClock(0.0)
    stats = RunStats(succeeded=1000, resumed=1000, clock=clock)
    clock.now = 2.0
    assert stats.requests_per_second == 0.0  # nothing was sent: 1,000 skipped lines are not 500 req/s
    stats.succeeded += 10
    assert stats.requests_per_second == 5.0
