"""A hostile HTTP server on 127.0.0.1 that answers each request with exactly the bytes its script says.

Not the simulator: that one models Azure and answers like a server would. This one serves arbitrary
bytes (a Content-Length that lies, a body cut short, any Content-Encoding, JSON nested past any
parser's limit) and writes down what it received and which 200s it sent, so a test can check that
every paid answer was recorded and that no credential went where it should not.

    with serve(script) as server:      # script: Received -> Answer
        ... server.url, server.received, server.sent
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from asyncbatch.simulator.server import Asked

HEAD_LIMIT = 1 << 20  # a request head longer than this is not one of ours


@dataclass(frozen=True)
class Received:
    """One request as it arrived: header names lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    @property
    def prompt(self) -> str:
        """The text that names the case: the last user message of a chat request, or a Responses/embeddings input."""
        try:
            body = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return ""
        if not isinstance(body, dict):
            return ""
        messages = body.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            return str(messages[0].get("content"))
        return str(body.get("input", ""))


@dataclass(frozen=True)
class Answer:
    """What to send back, byte for byte.

    :param body: the body as sent on the wire (already compressed, if ``headers`` say so).
    :param length: the Content-Length to claim; None sends the true one, -1 sends none (then the connection closes).
    :param cut: send only this many bytes of the body, then close.
    :param request_id: sent as ``x-request-id``; a 200 with one counts as a paid answer in ``Server.sent``.
    """

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    length: int | None = None
    cut: int | None = None
    request_id: str | None = None
    close: bool = False


Script = Callable[[Received], Answer]


@dataclass
class Sent:
    """A 200 the server sent (whole or, when scripted so, cut short): an answer someone pays for.

    Not one framed wrong, with bytes past its Content-Length: that is no HTTP message, and aiohttp
    refuses all of it (head included) when the extra bytes arrive with it.
    """

    request_id: str
    prompt: str
    at: float


@dataclass
class Server:
    url: str
    received: list[Received] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    journal: list[Asked] = field(default_factory=list)  # as the simulator keeps it, for ``invariants``


def _head(answer: Answer) -> bytes:
    reason = {200: "OK"}.get(answer.status, "Status")
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    if answer.request_id is not None:
        lines.append(f"x-request-id: {answer.request_id}")
    close = answer.close or answer.length == -1 or answer.cut is not None or answer.length is not None
    if answer.length != -1:
        lines.append(f"Content-Length: {len(answer.body) if answer.length is None else answer.length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")  # "\udce9": the byte 0xe9


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    first, *rest = head.decode("latin-1").split("\r\n")
    method, path, _ = [*first.split(" ", 2), "", ""][:3]
    headers = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        return None
    return method, path, headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # no trailers from the clients tested here
    return bytes(body)


def _handler(
    server: Server, script: Script
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                received = Received(*request, at=time.monotonic())
                server.received.append(received)
                asked = Asked(received.at, received.prompt)
                server.journal.append(asked)
                answer = script(received)
                body = answer.body if answer.cut is None else answer.body[: answer.cut]
                head = _head(answer)
                writer.write(head + body)
                await writer.drain()
                framed = answer.length is None or answer.length < 0 or answer.length >= len(body)
                if answer.status == 200 and answer.request_id is not None and framed:
                    server.sent.append(Sent(answer.request_id, received.prompt, time.monotonic()))
                    asked.request_id = answer.request_id
                if b"Connection: close" in head:
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    return handle


@contextmanager
def serve(script: Script) -> Iterator[Server]:
    """Serve ``script`` on 127.0.0.1 (a port of its own) in a thread, for the ``with`` block."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        server = Server(url="")
        tcp = await asyncio.start_server(_handler(server, script), "127.0.0.1", 0, limit=HEAD_LIMIT)
        server.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
        holder["server"], holder["tcp"] = server, tcp
        started.set()
        async with tcp:
            await tcp.serve_forever()

    thread = threading.Thread(target=lambda: _run(loop, main()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield holder["server"]  # type: ignore[misc]
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(10)


def _run(loop: asyncio.AbstractEventLoop, main: object) -> None:
    asyncio.set_event_loop(loop)
    with suppress(asyncio.CancelledError):
        loop.run_until_complete(main)  # type: ignore[arg-type]
    loop.close()


# -- bodies -------------------------------------------------------------------------------------


def completion(
    content: str | None = "ok",
    *,
    tool_arguments: str | None = None,
    extra: bytes = b"",
    calls: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A chat completion's bytes; ``extra`` is spliced in as more fields of the top object (``"k": v`` pairs).

    :param tool_arguments: one call of the tool ``label`` with these arguments (the content then null).
    :param calls: calls as (name, arguments), beside the content.
    """
    message: dict[str, object] = {"role": "assistant", "content": content}
    if tool_arguments is not None:
        call = {"id": "call_1", "type": "function", "function": {"name": "label", "arguments": tool_arguments}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(calls, 1)
        ]
    called = tool_arguments is not None or bool(calls)
    answer = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if called else "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    raw = orjson.dumps(answer)
    return raw[:-1] + b", " + extra + b"}" if extra else raw


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """A JSON value ``depth`` lists deep."""
    return b"[" * depth + leaf + b"]" * depth


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def deflated(data: bytes) -> bytes:
    return zlib.compress(data, 6)


@lru_cache(maxsize=8)
def bomb(decoded: int, encoding: str = "gzip", fill: bytes = b" ") -> bytes:
    """``decoded`` bytes of ``fill`` (JSON whitespace: a body no size limit may read whole), compressed."""
    wbits = 31 if encoding == "gzip" else 15
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = fill * (1 << 20)
    parts = [compressor.compress(b'{"padding": "')]
    for _ in range(decoded // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.compress(b'"}'))
    parts.append(compressor.flush())
    return b"".join(parts)
