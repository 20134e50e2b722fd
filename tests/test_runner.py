"""The orchestrator through its own interface, ``runner.run``: no CLI, the simulator in the same event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from asyncbatch.config import Endpoint, Limits, RetryPolicy, RunConfig
from asyncbatch.runner import Interrupt, run
from asyncbatch.simulator import SimConfig, serve
from asyncbatch.store.lock import AlreadyRunning
from tests.helpers import batch_line, read_jsonl, write_jsonl

KEY = "runner-key"


def config(tmp_path: Path, url: str, **kw: object) -> RunConfig:
    endpoint = Endpoint(kind="azure", base_url=url, api_key=KEY, deployment="dep")
    return RunConfig(
        input_path=tmp_path / "in.jsonl",
        endpoint=endpoint,
        limits=Limits(concurrency=4),
        retry=RetryPolicy(max_attempts=2, backoff_initial=0.01),
        **kw,  # type: ignore[arg-type]
    )


def lines_of(tmp_path: Path) -> list[int]:
    records = read_jsonl(tmp_path / "in.results.jsonl") + read_jsonl(tmp_path / "in.results.errors.jsonl")
    return sorted(r["line"] for r in records)


def test_good_lines_run_and_bad_lines_become_errors_naming_their_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x"), "{oops", batch_line("a", "dup"), batch_line("b", "y")])

    async def go() -> None:
        async with serve(SimConfig(api_key=KEY)) as (url, _):
            stats = await run(config(tmp_path, url))
        assert (stats.succeeded, stats.input_errors) == (2, 2)

    asyncio.run(go())
    assert lines_of(tmp_path) == [1, 2, 3, 4]
    errors = {e["line"]: e["error"]["code"] for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    assert errors == {2: "invalid_input", 3: "invalid_input"}


def test_an_interrupt_stops_gracefully_and_the_next_run_records_only_the_rest(tmp_path: Path) -> None:
    n = 60
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])

    async def go() -> None:
        async with serve(SimConfig(api_key=KEY, latency=0.05)) as (url, simulator):
            interrupt = Interrupt()
            first = asyncio.create_task(run(config(tmp_path, url), interrupt=interrupt))
            await asyncio.to_thread(simulator.first_request.wait, 30)
            interrupt.request()
            stopped = await first
            assert stopped.interrupted and stopped.succeeded < n
            again = await run(config(tmp_path, url))
            assert again.resumed == stopped.succeeded and again.succeeded == n
            assert simulator.billed_twice() == 0

    asyncio.run(go())
    assert lines_of(tmp_path) == list(range(1, n + 1))  # each line once, in results or errors


def test_a_second_run_on_the_same_outputs_is_refused_while_the_first_holds_them(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(20)])

    async def go() -> None:
        async with serve(SimConfig(api_key=KEY, latency=0.05)) as (url, simulator):
            first = asyncio.create_task(run(config(tmp_path, url)))
            await asyncio.to_thread(simulator.first_request.wait, 30)
            with pytest.raises(AlreadyRunning, match=r"in\.results\.jsonl"):
                await run(config(tmp_path, url, output_path=tmp_path / "in.results.jsonl"))
            assert (await first).succeeded == 20

    asyncio.run(go())
    assert lines_of(tmp_path) == list(range(1, 21))


def test_restart_moves_the_old_outputs_aside_and_runs_everything_again(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(5)])

    async def go() -> None:
        async with serve(SimConfig(api_key=KEY)) as (url, simulator):
            await run(config(tmp_path, url))
            again = await run(config(tmp_path, url), restart=True)
            assert (again.resumed, again.succeeded) == (0, 5) and simulator.statuses["200"] == 10

    asyncio.run(go())
    assert lines_of(tmp_path) == [1, 2, 3, 4, 5]
    (old,) = (p for p in tmp_path.glob("in.results.jsonl.*.old") if p.is_file())  # the first results, kept
    assert sorted(json.loads(line)["line"] for line in old.read_text().splitlines()) == [1, 2, 3, 4, 5]


def test_while_the_run_waits_for_what_the_server_asked_the_display_names_the_wait_and_counts_it_down(
    tmp_path: Path,
) -> None:
    """No answer arrives during the wait, yet each look at the run names it: the live state, not the last answer's."""
    from asyncbatch.display.reporters import Reporter
    from asyncbatch.display.status import look
    from asyncbatch.stats import RunStats, Trend

    class Watching(Reporter):
        interval = 0.2

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[int, str | None]] = []

        def tick(self, stats: RunStats, trend: Trend) -> None:
            status = look(stats, trend)
            self.seen.append((status.done, status.notice))

    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(6)])
    reporter = Watching()
    busy = SimConfig(api_key=KEY, latency=0.01, script={"p3": ["503"]}, retry_after_503=3.0)  # p3: back in 3 s

    async def go() -> None:
        async with serve(busy) as (url, _):
            one_at_a_time = dataclasses.replace(config(tmp_path, url, max_wait=60.0), limits=Limits(concurrency=1))
            stats = await run(one_at_a_time, reporter=reporter)
        assert stats.succeeded == 6

    asyncio.run(go())
    waits = [(done, notice) for done, notice in reporter.seen if notice and "asking to wait" in notice]
    assert len({notice for _, notice in waits}) >= 2, reporter.seen  # "waiting 3 s", "waiting 2 s", ...
    assert len({done for done, _ in waits}) == 1  # all during the one wait, while nothing was answered
