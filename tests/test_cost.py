"""Cost: the price table, given prices, the summary's cost, and --max-cost stopping and resuming."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import asyncbatch
from asyncbatch.cli.main import main
from asyncbatch.cost import TABLE, Budget, Prices, lookup, resolve
from asyncbatch.simulator import SimConfig

from .helpers import read_jsonl, simulator_env, write_jsonl


def test_prices_count_cached_prompt_tokens_at_their_own_price() -> None:
    prices = Prices(input=2.0, output=8.0, cached_input=0.5)
    assert prices.cost(prompt=1_000_000, completion=500_000, cached=400_000) == pytest.approx(1.2 + 0.2 + 4.0)
    assert Prices(2.0, 8.0).cost(1_000_000, 0, cached=1_000_000) == pytest.approx(2.0)  # no cached price: full
    assert prices.batch().cost(1_000_000, 1_000_000) == pytest.approx(5.0)


def test_deployments_named_after_a_model_find_its_prices_and_others_do_not() -> None:
    assert lookup("gpt-4o-2024-08-06") == TABLE["gpt-4o"]
    assert lookup("GPT-4o-mini") == TABLE["gpt-4o-mini"]
    assert lookup("gpt-4.1-nano-batch") == TABLE["gpt-4.1-nano"]
    assert lookup("prod-chat") is None
    assert lookup("gpt-4o2") is None


def test_given_prices_override_the_table_and_a_model_outside_it_needs_both() -> None:
    mixed = resolve("gpt-4o", 3.0, None, None)
    assert mixed is not None and (mixed.input, mixed.output, mixed.cached_input) == (3.0, 10.0, 1.25)
    assert resolve("prod-chat", None, None, None) is None
    with pytest.raises(asyncbatch.ConfigError, match="give both --price-in and --price-out"):
        resolve("prod-chat", 1.0, None, None)
    with pytest.raises(asyncbatch.ConfigError, match=r"input \(--price-in\) must be 0 or more"):
        Prices(-1.0, 1.0)


def test_the_budget_refuses_a_request_whose_estimate_would_pass_the_limit_with_those_in_flight() -> None:
    budget = Budget(1.0)
    first, second = budget.reserve(0.4), budget.reserve(0.4)
    assert first == second == pytest.approx(0.4)
    assert budget.reserve(0.4) is None  # 0.8 reserved + 0.4 would pass 1.0
    budget.settle(0.4, 0.4, 0.1)  # the answer cost less than its estimate
    budget.settle(0.4, 0.4, None)  # no answer: nothing billed
    assert budget.spent == pytest.approx(0.1) and budget.reserved == pytest.approx(0)
    with pytest.raises(asyncbatch.ConfigError, match=r"max_cost \(--max-cost\) must be more than 0"):
        Budget(0)


def test_answers_costing_more_than_their_estimates_scale_the_next_reservations() -> None:
    budget = Budget(1.0)
    reserved = budget.reserve(0.1)
    assert reserved is not None
    budget.settle(reserved, 0.1, 0.2)  # the server counted twice the estimated tokens
    assert budget.reserve(0.1) == pytest.approx(0.2)
    assert budget.reserve(0.35) is None  # 0.2 spent + 0.2 reserved + 0.7 would pass 1.0


def test_max_cost_without_prices_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    endpoint = asyncbatch.Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment="prod")
    with pytest.raises(asyncbatch.ConfigError, match="--max-cost needs prices"):
        asyncbatch.RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint, max_cost=5.0)


def _records(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"id": i, "text": f"item {i} " + "x" * 200} for i in range(n)])


def test_the_summary_cost_is_the_tokens_times_the_given_prices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "in.jsonl", 40)
    with simulator_env(SimConfig(latency=0.0), monkeypatch):
        code = main(["in.jsonl", "--template", "{text}", "--price-in", "2.5", "--price-out", "10", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    prompt = int(_row(err, "prompt tokens").replace(",", ""))
    completion = int(_row(err, "completion tokens").replace(",", ""))
    cost = float(_row(err, "cost").split()[0])
    assert prompt > 0 and completion > 0
    assert cost == pytest.approx((prompt * 2.5 + completion * 10) / 1e6, abs=5e-5)


def _row(summary: str, name: str) -> str:
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("│|").split("│")]
        if len(cells) == 2 and cells[0] == name:
            return cells[1]
    raise AssertionError(f"no {name!r} row in:\n{summary}")


def test_max_cost_stops_well_short_of_the_full_cost_and_the_same_command_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 lines cost about 1.00 USD at these prices; a 0.25 budget stops after about a quarter, exit 75."""
    _records(tmp_path / "in.jsonl", 400)
    argv = ["in.jsonl", "--simulate", "--template", "{text}"]
    argv += ["--max-tokens", "50", "--price-in", "10", "--price-out", "40", "--sim-latency-ms", "5", "-c", "8"]
    argv += ["--max-cost", "0.25", "--no-progress", "--log-format", "json"]
    code, err = main(argv), capsys.readouterr().err
    assert code == 75, err
    summary = _summary(err)
    assert "--max-cost 0.25 USD reached" in summary["stopped"]
    assert summary["cost_usd"] <= 0.25
    done = read_jsonl(tmp_path / "in.results.jsonl")
    assert 60 < len(done) < 200  # well short of 400, and not stopped at once
    assert summary["projected_cost_usd"] == pytest.approx(summary["cost_usd"] * 400 / len(done), rel=0.01)
    assert not (tmp_path / "in.results.errors.jsonl").exists() or not read_jsonl(tmp_path / "in.results.errors.jsonl")
    full = [*argv[:-5], "--no-progress", "--log-format", "json"]  # the same command, without the budget
    code, err = main(full), capsys.readouterr().err
    assert code == 0, err
    lines = sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert lines == list(range(1, 401))  # every input exactly once across the two runs
    assert _summary(err)["resumed"] == len(done)


def _summary(stderr: str) -> dict[str, object]:
    events = [json.loads(line) for line in stderr.splitlines()]
    return next(e for e in events if e["event"] == "summary")


def test_the_same_budget_again_resumes_and_spends_at_most_as_much_again(tmp_path: Path) -> None:
    _records(tmp_path / "in.jsonl", 200)
    endpoint_options = {"latency": 0.0}

    async def once() -> asyncbatch.RunStats:
        async with asyncbatch.simulated(**endpoint_options) as endpoint:
            config = asyncbatch.RunConfig(
                input_path=tmp_path / "in.jsonl",
                endpoint=endpoint,
                request=asyncbatch.RequestDefaults(template="{text}", max_tokens=50),
                prices=Prices(10.0, 40.0),
                max_cost=0.05,
            )
            return await asyncbatch.run(config)

    first = asyncio.run(once())
    second = asyncio.run(once())
    assert first.stopped and second.stopped
    assert 0 < first.cost <= 0.05 and 0 < second.cost <= 0.05
    assert second.resumed == first.succeeded
    lines = [r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")]
    assert len(lines) == len(set(lines)) == second.succeeded > first.succeeded
