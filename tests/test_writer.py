from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import orjson

from asyncbatch.records import body_fragment, result_record
from asyncbatch.stats import RunStats
from asyncbatch.store.checkpoint import ResumeState
from asyncbatch.store.recorder import Recorder
from asyncbatch.store.writer import JsonlWriter


def test_writer_writes_every_queued_record_whole_in_order_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    state = ResumeState()

    async def go() -> JsonlWriter:
        writer = JsonlWriter(path, state.on_results, fsync_interval=0)
        task = asyncio.create_task(writer.run())
        for i in range(500):
            writer.put(i + 1, {"n": i, "text": "é\nline"})
        writer.close()
        await task
        return writer

    asyncio.run(go())
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["n"] for r in rows] == list(range(500))
    assert rows[0]["text"] == "é\nline"
    assert state.results_offset == path.stat().st_size and state.results_lines == 500
    assert len(state.done) == 500 and 1 in state.done and 500 in state.done and 501 not in state.done


def test_cancelled_writer_still_writes_what_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def go() -> None:
        writer = JsonlWriter(path, ResumeState().on_results, fsync_interval=None)
        task = asyncio.create_task(writer.run())
        await writer.opened.wait()
        for i in range(10):
            writer.put(i, {"n": i})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == list(range(10))


def test_writer_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"n": -1}\n')
    reported: list[tuple[list[int], int]] = []

    async def go() -> None:
        writer = JsonlWriter(path, lambda lines, size: reported.append((lines, size)))
        task = asyncio.create_task(writer.run())
        writer.put(1, {"n": 0})
        writer.close()
        await task

    asyncio.run(go())
    assert path.read_text().splitlines() == ['{"n": -1}', '{"n":0}']
    assert reported == [([1], len('{"n":0}\n'))]


def test_body_is_embedded_byte_for_byte_and_its_line_breaks_become_spaces() -> None:
    raw = b'{"b":1.0,"a":[1e2]}'
    record = result_record(
        custom_id="c", line_no=1, request_id="r", raw_body=raw, output=None, attempts=1, latency_ms=1.0
    )
    assert b'"body":{"b":1.0,"a":[1e2]}' in orjson.dumps(record)
    pretty = b'{\r\n "a": "x\\ny",\n "b": [1e2]\n}'
    line = orjson.dumps({"body": body_fragment(pretty)})
    assert b"\n" not in line and b"\r" not in line
    assert orjson.loads(line)["body"] == orjson.loads(pretty)  # the same JSON, never encoded again
    assert b"1e2" in line


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_put_never_raises_and_says_when_a_record_cannot_be_encoded(tmp_path: Path) -> None:
    writer = JsonlWriter(tmp_path / "out.jsonl", lambda lines, size: None)
    assert writer.put(1, {"ok": _deep(200)}) is True
    assert writer.put(2, {"too": _deep(300)}) is False  # orjson writes at most 254 levels: nothing queued
    assert writer._pending == 1


def test_a_record_the_encoder_refuses_becomes_one_error_line_with_its_request_id_and_usage(tmp_path: Path) -> None:
    """The safety net under every bound: a paid answer is recorded, once, whatever its record holds."""
    state = ResumeState()
    stats = RunStats()
    results = JsonlWriter(tmp_path / "r.jsonl", state.on_results, fsync_interval=None)
    errors = JsonlWriter(tmp_path / "e.jsonl", state.on_errors, fsync_interval=None)
    recorder = Recorder(results, errors, stats)
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    paid = result_record(
        custom_id="c\ud800",  # a lone surrogate orjson cannot write either
        line_no=5,
        request_id="req-5",
        raw_body=orjson.dumps({"usage": usage, "choices": []}),
        output=_deep(300),
        attempts=2,
        latency_ms=1.0,
        line_hash="ab",
    )
    failed = {"custom_id": "d", "line": 6, "line_hash": "cd", "response": {"status_code": 400, "body": _deep(300)}}

    async def go() -> None:
        tasks = [asyncio.create_task(w.run()) for w in (results, errors)]
        recorder.success(5, paid)
        recorder.failure(6, failed, "http_400")
        results.close()
        errors.close()
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert (tmp_path / "r.jsonl").read_bytes() == b""
    first, second = (json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines())
    assert first["line"] == 5 and first["line_hash"] == "ab" and first["custom_id"] == "c?"
    assert first["error"]["code"] == "unrecordable" and "--retry-failed" in first["error"]["message"]
    assert first["response"]["request_id"] == "req-5" and first["response"]["body"]["usage"] == usage
    assert second["line"] == 6 and second["response"] == {"status_code": 400, "request_id": None, "body": None}
    assert stats.succeeded == 0 and stats.failed == 2
    assert 5 in state.done and 6 in state.done and state.errors_lines == 2
