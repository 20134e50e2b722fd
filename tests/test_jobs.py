"""The Batch API phase's own decisions, with no server: which lines a plan puts in which part, what a finished
job's answer lines become (a result, a failure, or a line left for the live phase, by the failure's class), and
a job refused for the queued-token limit created again later, on the fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from asyncbatch.batch.jobs import BatchRunner, Merge
from asyncbatch.config import BatchOptions, Endpoint, RequestDefaults, RunConfig
from asyncbatch.input.reader import BadLine, ParsedLine
from asyncbatch.input.requests import Job, prepare
from asyncbatch.stats import RunStats
from asyncbatch.store.checkpoint import DoneSet
from asyncbatch.store.recorder import Recorder
from asyncbatch.store.writer import JsonlWriter
from tests.helpers import FakeClock, batch_line, read_jsonl, write_jsonl

ENDPOINT = Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment="gpt-4o-batch")


class Phase:
    """A Batch API runner whose outcomes go to two real writers, and what it said."""

    def __init__(self, tmp_path: Path, n: int, *, live_fallback: bool = True, max_lines: int = 100_000) -> None:
        write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])
        options = BatchOptions(live_fallback=live_fallback, max_lines_per_file=max_lines)
        self.config = RunConfig(input_path=tmp_path / "in.jsonl", endpoint=ENDPOINT, batch=options)
        self.config.state.dir.mkdir()
        self.results = JsonlWriter(self.config.output_path, lambda lines, size: None)
        self.errors = JsonlWriter(self.config.errors_path, lambda lines, size: None)
        self.stats, self.said, self.clock = RunStats(), list[str](), FakeClock()
        self.done = DoneSet()
        self.runner = BatchRunner(
            self.config,
            stats=self.stats,
            recorder=Recorder(self.results, self.errors, self.stats),
            written=self.written,
            done=self.done,
            info=self.said.append,
            sleep=self.clock.sleep,
            wall=self.clock,
        )

    async def written(self) -> None:
        await self.results.written()
        await self.errors.written()

    def flush(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async def drain() -> None:
            writers = [asyncio.ensure_future(w.run()) for w in (self.results, self.errors)]
            for writer in (self.results, self.errors):
                writer.close()
            await asyncio.gather(*writers)

        asyncio.run(drain())
        return read_jsonl(self.config.output_path), read_jsonl(self.config.errors_path)


def job(line_no: int) -> Job:
    line = ParsedLine(line_no, f"r{line_no}", "chat", {"messages": [{"role": "user", "content": f"p{line_no}"}]})
    made = prepare(line, RequestDefaults(), "gpt-4o-batch")
    assert isinstance(made, Job)
    return made


def answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": "x", "response": {"status_code": status, "request_id": "req", "body": body}}


COMPLETION = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _error(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"{code} from the job"}}


def test_a_finished_job_s_lines_are_recorded_or_left_for_the_live_phase_by_the_failure_s_class(tmp_path: Path) -> None:
    phase, merge = Phase(tmp_path, 0), Merge()
    batch = SimpleNamespace(id="batch_1", status="completed")
    settle = phase.runner._settle
    settle(job(1), answer(200, COMPLETION), batch, merge)  # an answer
    settle(job(2), answer(500, _error("server_error")), batch, merge)  # the server's trouble: live
    settle(job(3), answer(429, _error("429")), batch, merge)  # not yet: live
    settle(job(4), answer(400, _error("content_filter")), batch, merge)  # this line's content: recorded
    settle(job(5), answer(400, _error("invalid_parameter")), batch, merge)  # refused: recorded
    settle(job(6), None, batch, merge)  # no answer at all: live
    settle(job(7), answer(200, {"object": "chat.completion.chunk"}), batch, merge)  # not an answer: live
    assert (merge.results, merge.errors, merge.fallback) == (1, 2, 4)
    results, errors = phase.flush()
    assert [(r["line"], r["batch_id"]) for r in results] == [(1, "batch_1")] and phase.stats.batch_answers == 1
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(4, "content_filter"), (5, "invalid_parameter")]


def test_without_live_fallback_what_the_live_phase_would_run_is_recorded_as_failed(tmp_path: Path) -> None:
    phase, merge = Phase(tmp_path, 0, live_fallback=False), Merge()
    phase.runner._settle(job(1), answer(503, _error("server_error")), SimpleNamespace(id="b", status="failed"), merge)
    _, errors = phase.flush()
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(1, "server_error")] and merge.fallback == 1


def test_a_plan_puts_the_lines_no_output_holds_in_parts_and_a_bad_line_on_the_errors_side(tmp_path: Path) -> None:
    phase = Phase(tmp_path, 5, max_lines=2)
    phase.done.add(2)  # recorded by an earlier run: never in a job
    with (tmp_path / "in.jsonl").open("a") as f:
        f.write('{"custom_id": "bad", "messages": "not a list"}\n')
    rejected: list[BadLine] = []
    asyncio.run(phase.runner.plan(rejected.append))
    parts = phase.runner.state.parts
    assert [list(p.line_numbers()) for p in parts] == [[1, 3], [4, 5]] and [r.line_no for r in rejected] == [6]
    first = phase.config.state.part(parts[0].index).read_bytes().splitlines()
    assert [orjson.loads(line)["custom_id"] for line in first] == ["line-1", "line-3"]
    assert phase.stats.estimated_tokens > 0


def test_a_job_refused_for_the_queued_token_limit_is_created_again_after_a_growing_backoff(tmp_path: Path) -> None:
    phase = Phase(tmp_path, 2)
    asyncio.run(phase.runner.plan(lambda bad: None))
    (part,) = phase.runner.state.parts
    refused = SimpleNamespace(id="b", status="failed", errors={"data": [{"code": "token_limit_exceeded"}]})
    for tries, backoff in ((1, 120.0), (2, 240.0)):
        part.batch_id, part.status = "b", "failed"
        asyncio.run(phase.runner._finished(part, refused))
        assert (part.batch_id, part.tries, part.merged) == (None, tries, False)
        assert part.retry_at == pytest.approx(phase.clock.now + backoff)  # poll_interval 60 x 2^tries
    assert "token_limit_exceeded" in phase.said[-1]
