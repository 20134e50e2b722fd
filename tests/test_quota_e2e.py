"""The CLI against a simulator that enforces a quota the way Azure does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli import main
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "quota-key-0000"
TPM, RPM, N = 600_000, 6_000, 300  # a 100k-token burst, then 10k tokens/s; 100 requests/s


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, tpm=TPM, rpm=RPM), monkeypatch) as (_, simulator):
        yield simulator


def _inputs(tmp_path: Path) -> Path:
    # 1800 prompt characters / 4 + max_tokens 50 = 500 estimated tokens each: 150k in all
    return write_jsonl(
        tmp_path / "in.jsonl", [batch_line(f"r{i}", f"{i:04d}" + "x" * 1796, max_tokens=50) for i in range(N)]
    )


def _all_once(tmp_path: Path) -> bool:
    results = read_jsonl(tmp_path / "in.results.jsonl")
    return sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(N))


def test_with_the_quota_given_the_server_almost_never_refuses(tmp_path: Path, sim: Simulator) -> None:
    code = main([str(_inputs(tmp_path)), "-q", "-c", "50", "--tpm", str(TPM), "--rpm", str(RPM)])
    assert code == 0 and _all_once(tmp_path)
    assert sim.statuses["429"] <= 0.02 * N


def test_adaptive_mode_learns_the_quota_and_loses_nothing(tmp_path: Path, sim: Simulator) -> None:
    code = main([str(_inputs(tmp_path)), "-q", "-c", "50"])
    assert code == 0 and _all_once(tmp_path)
    assert sim.statuses["429"] > 0  # it had to discover the quota: the server did push back
