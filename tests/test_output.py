from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import orjson

from asyncbatch.output import JsonlWriter, body_fragment, result_record


def test_writer_writes_every_queued_record_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def go() -> None:
        writer = JsonlWriter(path, fsync_interval=0)
        task = asyncio.create_task(writer.run())
        for i in range(500):
            await writer.put({"n": i, "text": "é\nline"})
        await writer.close()
        await task

    asyncio.run(go())
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["n"] for r in rows] == list(range(500))
    assert rows[0]["text"] == "é\nline"


def test_cancelled_writer_still_writes_what_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def go() -> None:
        writer = JsonlWriter(path, fsync_interval=None)
        task = asyncio.create_task(writer.run())
        await writer.opened.wait()
        for i in range(10):
            await writer.put({"n": i})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == list(range(10))


def test_writer_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"n": -1}\n')

    async def go() -> None:
        writer = JsonlWriter(path)
        task = asyncio.create_task(writer.run())
        await writer.put({"n": 0})
        await writer.close()
        await task

    asyncio.run(go())
    assert path.read_text().splitlines() == ['{"n": -1}', '{"n":0}']


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
