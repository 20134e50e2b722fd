"""Hostile conditions: server faults, bad input, bad configuration, secrets, output failures."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.input import reader as inputs
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.store.checkpoint import load_checkpoint
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "hostile-key-5f5f5f5f5f"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY, seed=11), monkeypatch) as env_and_simulator:
        yield env_and_simulator


def _cli(
    cwd: Path, env: dict[str, str], *args: str, limit_file_bytes: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    cmd = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)


def test_server_faults_are_survived_every_input_exactly_once(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    simulator.config.fault_rates.update({"500": 0.05, "503": 0.03, "reset": 0.02, "hang": 0.01, "garbage": 0.01})
    simulator.config.retry_after_503 = 0.2
    simulator.config.hang_seconds = 20
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(1000)])
    proc = _cli(tmp_path, env, "--timeout", "3", "--max-attempts", "8", "-c", "50", "--backoff", "0.1")
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(1000))
    assert read_jsonl(tmp_path / "in.results.errors.jsonl") == []
    assert all(r["output"] == f"Simulated answer to: prompt {r['custom_id'][1:]}" for r in results)
    for fault in ("500", "503", "reset", "200-garbage"):
        assert simulator.statuses[fault] > 0  # every kind of fault really happened
    assert sum(r["attempts"] > 1 for r in results) > 50


def test_a_file_mixing_bad_and_good_lines(
    tmp_path: Path,
    sim: tuple[dict[str, str], Simulator],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 4096)
    good = [json.dumps(batch_line(f"g{i}", f"good {i}")).encode() for i in range(4)]
    lines = [
        b"\xef\xbb\xbf" + good[0],  # 1: a BOM at the start is accepted
        b"this is not json",  # 2
        b'"a string"',  # 3
        b'{"custom_id": "x", "messages": "hello"}',  # 4
        b'{"custom_id": "y", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # 5: Latin-1, not UTF-8
        b"",  # 6: blank
        good[1],  # 7
        json.dumps(batch_line("g1", "again")).encode(),  # 8: duplicate custom_id
        json.dumps({"custom_id": "big", "messages": [{"role": "user", "content": "z" * 10_000}]}).encode(),  # 9
        good[2],  # 10
        b"   ",  # 11: blank
        good[3],  # 12
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code = main([str(tmp_path / "in.jsonl"), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == ["g0", "g1", "g2", "g3"]
    errors = {e["line"]: e["error"]["message"] for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert sorted(errors) == [2, 3, 4, 5, 8, 9]
    for line, words in {
        2: "not valid JSON",
        3: "expected a JSON object",
        4: "'messages' must be",
        5: "UTF-8",
        8: "duplicate",
        9: "longer than",
    }.items():
        assert words in errors[line] and f"in.jsonl:{line}:" in errors[line] and f"in.jsonl:{line}:" in err


def test_unreachable_endpoint_gives_a_clear_message_after_bounded_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", "x") for i in range(500)])
    code = main([str(tmp_path / "in.jsonl"), "-q", "--max-attempts", "2", "--max-outage", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot reach http://127.0.0.1:{port}/openai/deployments/dep/chat/completions" in err
    assert "connection failed" in err and "AZURE_OPENAI_ENDPOINT" in err and KEY not in err
    assert f"nothing answers at http://127.0.0.1:{port}" in err and "--timeout" not in err  # not "the model is slow"
    assert read_jsonl(tmp_path / "in.results.errors.jsonl") == []  # nothing recorded: a re-run does everything


def test_a_planted_key_appears_in_no_output(tmp_path: Path, sim: tuple[dict[str, str], Simulator]) -> None:
    env, simulator = sim
    simulator.config.script.update({"p1": ["echo-key"], "p2": ["500", "500"], "p3": ["400"]})
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(8)] + ["{broken"])
    proc = _cli(tmp_path, env, "--max-attempts", "2")
    assert proc.returncode == 1
    files = {p.name: p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()}
    assert "checkpoint" in files and "in.results.errors.jsonl" in files
    for text in [proc.stdout, proc.stderr, *files.values()]:
        assert KEY not in text
    echoed = next(e for e in read_jsonl(tmp_path / "in.results.errors.jsonl") if e["custom_id"] == "r1")
    assert "Request with key *** was rejected" in echoed["error"]["message"]  # the server did echo it; we masked it


def test_an_output_that_cannot_be_opened_fails_before_any_request(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    code = main([str(tmp_path / "in.jsonl"), "-q", "-o", str(tmp_path / "no-such-dir" / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-dir does not exist" in err
    assert simulator.requests == 0


def test_disk_full_keeps_what_was_written_and_the_next_run_resumes(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, _ = sim
    n = 400
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])
    full = _cli(tmp_path, env, "-c", "20", "--fsync", "always", limit_file_bytes=60_000)  # room for ~60 results
    assert full.returncode == 2 and "cannot write" in full.stderr and "File too large" in full.stderr
    assert "run the same command again to resume" in full.stderr
    results = tmp_path / "in.results.jsonl"
    whole = results.read_bytes()[: results.read_bytes().rfind(b"\n") + 1]
    kept = [json.loads(line)["custom_id"] for line in whole.splitlines()]  # every whole line is a valid record
    assert 10 < len(kept) < n
    checkpoint = load_checkpoint(tmp_path / "in.results.jsonl.state" / "checkpoint")
    assert checkpoint.results_offset <= results.stat().st_size
    again = _cli(tmp_path, env, "-c", "20")
    assert again.returncode == 0, again.stderr
    final = [r["custom_id"] for r in read_jsonl(results)]
    assert sorted(final) == sorted(f"r{i}" for i in range(n))  # exactly once: nothing lost, nothing doubled
    assert set(kept) <= set(final)
