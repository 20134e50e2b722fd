"""The CLI against simulated servers that count differently from the client, and say less."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import Charging, SimConfig, Simulator
from asyncbatch.simulator.charge import charge
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "quota-key-0000"
TOOL = json.loads((Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json").read_text())


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, latency=0.05), monkeypatch) as (_, simulator):
        yield simulator


def _inputs(tmp_path: Path, n: int) -> list[dict]:
    forced = {"type": "function", "function": {"name": TOOL["name"]}}
    tools = [{"type": "function", "function": TOOL}]
    rows = [
        batch_line(f"r{i}", f"{i:04d}" + "x" * 1196, max_tokens=50, tools=tools, tool_choice=forced) for i in range(n)
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    return [r["body"] for r in rows]


def _all_once(tmp_path: Path, n: int) -> bool:
    results = read_jsonl(tmp_path / "in.results.jsonl")
    return sorted(r["line"] for r in results) == list(range(1, n + 1)) and not read_jsonl(
        tmp_path / "in.results.errors.jsonl"
    )


def _learned_ratio(err: str) -> float:
    found = re.search(r"server charge\s*│\s*([\d.]+) x", err)
    assert found is not None, err
    return float(found[1])


def test_quota_given_against_a_server_charging_twice_the_estimate_draws_almost_no_429s(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    tpm, n = 1_200_000, 240
    sim.config.charging = Charging(factor=2.0)
    sim.quota.__init__(tpm, 7200)  # type: ignore[misc]  # the server's quota, counted its own way
    bodies = _inputs(tmp_path, n)
    server_total = sum(charge(b, Charging(factor=2.0)) for b in bodies)
    assert server_total > 1.1 * tpm / 6  # more than one 10-second window: the limit is reached
    assert main([str(tmp_path / "in.jsonl"), "--no-progress", "-c", "50", "--tpm", str(tpm), "--rpm", "7200"]) == 0
    assert _all_once(tmp_path, n)
    assert sim.statuses["429"] <= 0.02 * n
    assert _learned_ratio(capsys.readouterr().err) == pytest.approx(
        server_total / sum(charge(b, Charging()) for b in bodies), rel=0.1
    )


def _varied_inputs(tmp_path: Path, n: int) -> list[dict]:
    """Requests of varied shape: 100 to 2,500 characters, 1 to 3 messages, a tool on most, no max_tokens on some."""
    forced = {"type": "function", "function": {"name": TOOL["name"]}}
    rows = []
    for i in range(n):
        row = batch_line(f"r{i}", f"{i:04d}" + "x" * (100 + (i * 7919) % 2400))
        body = row["body"]
        if i % 3:
            body["messages"].insert(0, {"role": "system", "content": "Use the tool."})
        if i % 3 == 2:
            body["messages"].insert(1, {"role": "assistant", "content": "Ready."})
        if i % 5:
            body["max_tokens"] = 50
        if i % 3 != 1:
            body |= {"tools": [{"type": "function", "function": TOOL}], "tool_choice": forced}
        rows.append(row)
    write_jsonl(tmp_path / "in.jsonl", rows)
    return [r["body"] for r in rows]


CHARGE_MODELS = {
    "4 a message, no tools": Charging(per_message=4, count_tools=False),
    "half the prompt, 4 a message, no tools": Charging(factor=0.5, per_message=4, count_tools=False),
    "twice the prompt, 4 a message": Charging(factor=2.0, per_message=4),
    "256 reserved without max_tokens": Charging(default_max_tokens=256),
}


@pytest.mark.parametrize("charging", CHARGE_MODELS.values(), ids=CHARGE_MODELS.keys())
def test_quota_given_against_servers_counting_in_another_structure_fills_it_with_almost_no_429s(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], charging: Charging
) -> None:
    n = 300
    sim.config.charging = charging
    bodies = _varied_inputs(tmp_path, n)
    server_total = sum(charge(b, charging) for b in bodies)
    tpm = int(server_total * 6 / 1.5)  # the work needs one and a half 10-second windows
    sim.quota.__init__(tpm, 12_000)  # type: ignore[misc]
    assert main([str(tmp_path / "in.jsonl"), "--no-progress", "-c", "50", "--tpm", str(tpm), "--rpm", "12000"]) == 0
    assert _all_once(tmp_path, n)
    assert sim.statuses["429"] <= 0.02 * n
    assert _learned_ratio(capsys.readouterr().err) == pytest.approx(
        server_total / sum(charge(b, Charging()) for b in bodies), rel=0.15
    )


def test_adaptive_against_a_server_charging_half_learns_its_ratio_and_loses_nothing(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 300
    sim.config.charging = Charging(factor=0.5, count_tools=False)
    sim.quota.__init__(300_000, 6000)  # type: ignore[misc]
    bodies = _inputs(tmp_path, n)
    server_total = sum(charge(b, sim.config.charging) for b in bodies)
    assert server_total > 1.1 * 300_000 / 6  # more than one 10-second window: the limit is reached
    assert main([str(tmp_path / "in.jsonl"), "--no-progress", "-c", "50"]) == 0
    assert _all_once(tmp_path, n)
    expected = server_total / sum(charge(b, Charging()) for b in bodies)
    assert _learned_ratio(capsys.readouterr().err) == pytest.approx(expected, rel=0.1)
    assert sim.statuses["429"] <= 0.08 * n  # it followed the server's own budget, found in its headers


def test_a_gateway_with_fixed_windows_and_no_hints_at_all_still_gets_every_line_through(
    tmp_path: Path, sim: Simulator
) -> None:
    n = 20
    # 1 s windows, for speed, each of less than the first wave's 20 requests: refusals however slow the client is
    sim.quota.__init__(4_000, None, shape="minute", window=1.0)  # type: ignore[misc]
    bodies = _inputs(tmp_path, n)
    assert sum(charge(b, Charging()) for b in bodies[:20]) > 4_000 * 1.5  # needs two windows or more
    assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "20"]) == 0
    assert _all_once(tmp_path, n)
    assert sim.statuses["429"] > 0  # refused without retry-after or rate-limit headers, and ridden out


def _lines(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"line {i}", max_tokens=20) for i in range(n)])


def _rate_at_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: SimConfig, *args: str) -> float:
    """Requests a second, as the server counted them (its own clock, first request to last), for 300 lines."""
    with simulator_env(config, monkeypatch) as (_, simulator):
        _lines(tmp_path, 300)
        assert main([str(tmp_path / "in.jsonl"), "-q", "-c", "20", "--restart", *args]) == 0
        return simulator.requests / simulator.span()


@pytest.mark.parametrize("says", ["0", "-1"])
@pytest.mark.parametrize("quota", [[], ["--tpm", "200000"]], ids=["adaptive", "quota given"])
def test_a_server_saying_its_budget_is_gone_on_every_answer_but_refusing_nothing_keeps_half_the_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, says: str, quota: list[str]
) -> None:
    """Azure's Responses API has been reported to send 0 and -1 in its budget headers and never refuse."""
    plain = _rate_at_the_server(tmp_path, monkeypatch, SimConfig(api_key=KEY, latency=0.05), *quota)
    config = SimConfig(api_key=KEY, latency=0.05, remaining_tokens_says=says, remaining_requests_says=says)
    told = _rate_at_the_server(tmp_path, monkeypatch, config, *quota)
    assert told >= 0.5 * plain


def test_a_first_try_refused_with_a_bare_429_then_admitted_costs_one_refusal_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "the per-minute window is used up": each line is refused once and admitted on its first retry,
    within --max-wait 20, and the run ends with every line."""
    with simulator_env(SimConfig(api_key=KEY, latency=0.02, first_try="429-nohint"), monkeypatch) as (_, simulator):
        _lines(tmp_path, 300)
        assert main([str(tmp_path / "in.jsonl"), "--no-progress", "-c", "20", "--max-wait", "20"]) == 0
    assert _all_once(tmp_path, 300)
    assert simulator.requests == 600 and simulator.statuses["429"] == 300  # no line probed twice
    assert "window" not in capsys.readouterr().err


def test_x_ms_retry_after_ms_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Azure's SDKs honour x-ms-retry-after-ms: a 429 saying only that, 3000 ms, is waited out."""
    config = SimConfig(api_key=KEY, first_try="429", retry_after_429=3.0, retry_after_headers=("x-ms-retry-after-ms",))
    with simulator_env(config, monkeypatch) as (_, simulator):
        _lines(tmp_path, 1)
        assert main([str(tmp_path / "in.jsonl"), "-q"]) == 0
    (first, _), (second, _) = simulator.arrivals  # the server's own clock
    assert second - first >= 3.0
