from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import orjson

from asyncbatch.records import body_fragment, result_record
from asyncbatch.store.checkpoint import ResumeState
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


def test_body_is_embedded_byte_for_byte_unless_it_has_newlines() -> None:
    raw = b'{"b":1.0,"a":[1e2]}'
    record = result_record(
        custom_id="c",
        line_no=1,
        request_id="r",
        raw_body=raw,
        body=orjson.loads(raw),
        output=None,
        attempts=1,
        latency_ms=1.0,
    )
    assert b'"body":{"b":1.0,"a":[1e2]}' in orjson.dumps(record)
    pretty = b'{\n "a": 1\n}'
    assert body_fragment(pretty, {"a": 1}) == {"a": 1}
