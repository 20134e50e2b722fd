"""Signals as the system really sends them: a closing SSH session's SIGHUP, twice a millisecond apart; a stop
request never cancels what is paid for unless the user asks for it (Ctrl-C again)."""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncbatch.cli.signals import SETTLE, Stop, StopRequests
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "sk-signals-4711"
CLI = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "-c", "5"]
N = 60

# -- the policy, on an injected clock --------------------------------------------------------------------

SIGNALS = st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])


@given(st.lists(st.tuples(SIGNALS, st.floats(0, 3)), min_size=1, max_size=8))
def test_only_a_later_ctrl_c_stops_at_once_and_only_once(signals: list[tuple[signal.Signals, float]]) -> None:
    now = [0.0]
    stops = StopRequests(clock=lambda: now[0])
    seen = []
    for signum, gap in signals:
        now[0] += gap
        seen.append(stops.on(signum))
    assert seen[0] is Stop.GRACEFUL and Stop.GRACEFUL not in seen[1:]
    assert seen.count(Stop.NOW) <= 1
    if Stop.NOW in seen:
        at = seen.index(Stop.NOW)
        since_first = sum(gap for _, gap in signals[1 : at + 1])
        assert signals[at][0] == signal.SIGINT and since_first >= SETTLE
    else:  # nothing asked for "now": no SIGINT came late enough
        late = [s for i, (s, _) in enumerate(signals[1:], 1) if sum(g for _, g in signals[1 : i + 1]) >= SETTLE]
        assert signal.SIGINT not in late


def test_the_policy_by_example() -> None:
    now = [0.0]
    stops = StopRequests(clock=lambda: now[0])
    assert stops.on(signal.SIGHUP) is Stop.GRACEFUL
    now[0] += 0.001  # the shell forwarding the same hang-up
    assert stops.on(signal.SIGHUP) is Stop.IGNORED
    now[0] += 5
    assert stops.on(signal.SIGTERM) is Stop.IGNORED and stops.on(signal.SIGHUP) is Stop.IGNORED
    assert stops.on(signal.SIGINT) is Stop.NOW  # the user, again
    fresh = StopRequests(clock=lambda: now[0])
    assert fresh.on(signal.SIGINT) is Stop.GRACEFUL and fresh.on(signal.SIGINT) is Stop.IGNORED  # forwarded twice


# -- real processes ----------------------------------------------------------------------------------------


@pytest.fixture
def slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    """Answers that take 0.4 s, so that a signal finds requests in flight."""
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(N)])
    with simulator_env(SimConfig(api_key=KEY, latency=0.4), monkeypatch) as running:
        yield running


def _resumed_and_paid_once(tmp_path: Path, env: dict[str, str], simulator: Simulator) -> None:
    done = len(read_jsonl(tmp_path / "in.results.jsonl"))
    assert 0 < done < N  # stopped in the middle, with what was answered recorded
    again = subprocess.run(CLI, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    ids = sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert ids == sorted(f"r{i}" for i in range(N))
    assert simulator.billed_twice() == 0 and simulator.statuses["200"] == N


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGHUP, signal.SIGHUP), (signal.SIGHUP, signal.SIGTERM), (signal.SIGTERM, signal.SIGHUP)],
    ids=["hup-hup", "hup-term", "term-hup"],
)
def test_two_signals_a_moment_apart_stop_gracefully_and_nothing_paid_is_lost(
    tmp_path: Path, slow: tuple[dict[str, str], Simulator], signals: tuple[signal.Signals, ...]
) -> None:
    env, simulator = slow
    running = subprocess.Popen(CLI, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert simulator.first_request.wait(timeout=60)
        for signum in signals:  # microseconds apart: closer than the kernel and a shell ever are
            os.kill(running.pid, signum)
        err = running.communicate(timeout=60)[1].decode()
    finally:
        running.kill()
    assert running.returncode == 130 and "asyncbatch summary" in err and "Traceback" not in err, err
    _resumed_and_paid_once(tmp_path, env, simulator)


def _wait_for(path: Path, timeout: float = 60) -> str:
    """``path``'s text once it is written (a poll of the file system, not a wait for time to pass)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return path.read_text()


def test_an_ssh_session_closing_under_a_shell_stops_gracefully_and_the_resume_pays_for_nothing_twice(
    tmp_path: Path, slow: tuple[dict[str, str], Simulator]
) -> None:
    """bash in a pseudo-terminal that closes, as an SSH session does: the kernel hangs up the terminal's
    foreground job and bash forwards SIGHUP to it again, a moment apart."""
    env, simulator = slow
    master, slave = pty.openpty()
    shell = subprocess.Popen(
        ["setsid", "-c", "bash", "--norc", "--noprofile", "-i"],
        cwd=tmp_path,
        env={**env, "PS1": "$ "},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    # sh ignores the hang-up only to write down asyncbatch's exit code; asyncbatch installs its own handlers
    command = f"trap '' HUP; {shlex.join(CLI)} 2>err.txt; echo $? > rc.txt"
    os.write(master, f"sh -c {shlex.quote(command)}\n".encode())
    try:
        assert simulator.first_request.wait(timeout=60)
        while select.select([master], [], [], 0)[0]:  # what the terminal showed so far: drained, not read
            os.read(master, 65536)
        os.close(master)  # the session closes
        rc = _wait_for(tmp_path / "rc.txt")
        shell.wait(timeout=60)
    finally:
        shell.kill()
    err = (tmp_path / "err.txt").read_text()
    assert rc.strip() == "130" and "asyncbatch summary" in err and "Traceback" not in err, err
    _resumed_and_paid_once(tmp_path, env, simulator)


# -- a stderr that goes away ---------------------------------------------------------------------------


@pytest.mark.parametrize("display", [[], ["--log-format", "json"], ["--no-progress"]], ids=["text", "json", "summary"])
def test_a_stderr_pipe_closed_early_silences_the_display_and_the_run_finishes_and_records_everything(
    tmp_path: Path, slow: tuple[dict[str, str], Simulator], display: list[str]
) -> None:
    """``asyncbatch in.jsonl 2>&1 | head -n 1``: every write after the reader left fails with EPIPE."""
    env, simulator = slow
    command = [sys.executable, "-m", "asyncbatch", "in.jsonl", "-c", "20", *display]
    running = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert running.stderr is not None
        running.stderr.readline()  # head -n 1
        running.stderr.close()
        running.wait(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0
    ids = sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert ids == sorted(f"r{i}" for i in range(N))
    assert simulator.billed_twice() == 0 and simulator.statuses["200"] == N
    again = subprocess.run(CLI, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and simulator.statuses["200"] == N  # nothing left to send
