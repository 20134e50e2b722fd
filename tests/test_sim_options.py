"""--simulate's options: faults (--sim-faults) and the simulated server's quota, for one deployment or a pool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asyncbatch.cli.main import main

from .helpers import batch_line, read_jsonl, write_jsonl

POOL = """\
[[deployments]]
name = "east"
endpoint = "https://east-res.openai.azure.com"
deployment = "gpt-4o-mini"
rpm = 6000

[[deployments]]
name = "west"
endpoint = "https://west-res.openai.azure.com"
deployment = "gpt-4o-mini"
rpm = 6000
"""


def _summary(err: str) -> dict[str, Any]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (summary,) = [e for e in events if e["event"] == "summary"]
    return summary


def test_a_simulated_pool_with_faults_and_a_smaller_server_quota_meets_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Done-when scenario, as a new user types it: the pool file tells the client 6,000 RPM a deployment,
    the simulators allow 600 (--sim-rpm wins over the entries' own: 10 a second), and fail 30% of the requests
    with a 400. Answers take 0.3 s, so the first second's requests go before any rate-limit header comes back
    to warn the client: the server refuses those past its 10."""
    n = 40
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"question {i}", max_tokens=5) for i in range(n)])
    (tmp_path / "pool.toml").write_text(POOL)
    argv = ["in.jsonl", "--simulate", "--deployments", "pool.toml", "--sim-latency-ms", "300", "--sim-rpm", "600",
            "--sim-faults", "400=0.3", "-c", "50", "--backoff", "0.01", "--log-format", "json"]  # fmt: skip
    assert main([*argv, "--no-progress"]) == 1
    summary = _summary(capsys.readouterr().err)
    assert summary["throttled"] > 0  # the server's quota, not the one the client was told
    assert summary["failed"] > 0 and set(summary["failure_reasons"]) == {"400"}
    assert summary["succeeded"] + summary["failed"] == n
    lines = [
        r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl") + read_jsonl(tmp_path / "in.results.errors.jsonl")
    ]
    assert sorted(lines) == list(range(1, n + 1))


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        ("500=0.02,nope=0.1", "'nope' is not a fault the simulator knows: 500, 503, 400, reset"),
        ("500=2", "give each fault a probability, 0 to 1"),
        ("500=x", "give each fault a probability, 0 to 1"),
        ("500", "give each fault a probability, 0 to 1"),
        ("500=0.6,400=0.6", "the probabilities add up to more than 1"),
    ],
)
def test_a_fault_it_does_not_know_or_a_wrong_probability_is_refused_before_anything_starts(
    tmp_path: Path, faults: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    with pytest.raises(SystemExit) as exited:
        main(["in.jsonl", "--simulate", "--sim-faults", faults])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sim-faults: " in err and said in err and "SIMULATED" not in err
    assert not (tmp_path / "in.results.jsonl").exists()
