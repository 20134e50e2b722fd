"""Helpers shared by the tests: write inputs, read outputs, the one fake clock."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from asyncbatch.admission.admission import Admission
from asyncbatch.clock import Sleep
from asyncbatch.config import Deployment, Endpoint, Patience
from asyncbatch.live.router import Route, Router
from asyncbatch.live.transport import Answer, MemoryTransport
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread

T = TypeVar("T")
Handler = Callable[[dict[str, Any]], Answer]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/chat/completions",
        "body": {"model": "ignored", "messages": [{"role": "user", "content": content}], **body},
    }


@contextmanager
def serve_app(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """``app`` on 127.0.0.1 (over TLS with ``ssl_context``), on its own event loop in a thread; its URL."""
    started, box = threading.Event(), {}

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context is not None else "http"
        box["url"], box["loop"], box["stop"] = (
            f"{scheme}://127.0.0.1:{runner.addresses[0][1]}",
            asyncio.get_running_loop(),
            asyncio.Event(),
        )
        started.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


@contextmanager
def simulator_env(config: SimConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    """A simulator on 127.0.0.1 with the Azure variables pointing at it.

    The variables are set in this process (for in-process ``main()``) and returned
    as a clean environment for subprocesses.
    """
    with serve_in_thread(config) as (url, simulator):
        azure = {
            "AZURE_OPENAI_ENDPOINT": url,
            "AZURE_OPENAI_API_KEY": config.api_key,
            "AZURE_OPENAI_DEPLOYMENT_NAME": "dep",
        }
        for name, value in azure.items():
            monkeypatch.setenv(name, value)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
        yield {**env, **azure}, simulator


class FakeClock:
    """The tests' one clock. Call it for the time (``clock=fake``); inject ``fake.sleep`` (each wait is kept in
    ``slept``); set ``now`` by hand; ``at(when, action)`` runs ``action`` once the clock reaches ``when``.

    Under ``fake.run(main())`` it is the clock of an event loop that jumps to its next timer whenever every
    task waits (trio's ``MockClock`` idea): many workers sleeping and racing, minutes of them in
    milliseconds, and ``asyncio.sleep`` itself is fake. Under any other loop (one with real sockets, whose
    timers must stay real), ``fake.sleep`` moves the clock by what was asked and only yields.

    :param step: seconds the clock moves at every reading (a clock that is never read twice alike).
    """

    def __init__(self, now: float = 1000.0, *, step: float = 0.0) -> None:
        self.now, self.step = now, step
        self.slept: list[float] = []
        self._events: list[tuple[float, Callable[[], object]]] = []
        self._loop: _VirtualLoop | None = None

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def at(self, when: float, action: Callable[[], object]) -> None:
        if self._loop is not None:
            self._loop.call_at(when, action)
        else:
            self._events.append((when, action))
            self._events.sort(key=lambda event: event[0])

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self._loop is not None and asyncio.get_running_loop() is self._loop:
            await asyncio.sleep(seconds)
            return
        target = self.now + seconds
        while self._events and self._events[0][0] <= target:  # what falls inside this sleep, in order
            when, action = self._events.pop(0)
            self.now = max(self.now, when)
            action()
        self.now = max(self.now, target)
        await asyncio.sleep(0)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Drive ``main`` on an event loop whose time is this clock."""
        self._loop = loop = _VirtualLoop(self)
        for when, action in self._events:
            loop.call_at(when, action)
        self._events.clear()
        try:
            return loop.run_until_complete(main)
        finally:
            loop.close()
            self._loop = None


class _Instant(selectors.DefaultSelector):
    """A selector that never waits: the loop's clock jumps over the wait instead."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            self.clock.now += timeout
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        super().__init__(_Instant(clock))

    def time(self) -> float:
        return self.clock.now


def one_route(admission: Admission, clock: FakeClock, handler: Handler | None = None, name: str = "d") -> Route:
    """A deployment named ``name`` behind ``admission``, answered in memory by ``handler`` (default: nothing)."""
    endpoint = Endpoint(kind="azure", base_url="http://memory.test", api_key="k", deployment=name)
    transport = MemoryTransport(handler or _unanswered, url=f"http://{name}.test")
    return Route(Deployment(name=name, endpoint=endpoint), transport, admission)


def admitting(admission: Admission, clock: FakeClock, sleep: Sleep | None = None) -> Router:
    """A router over ``admission`` alone (one endpoint is a pool of one): ``await router.acquire(estimate)``."""
    patience = Patience(max_wait=admission.max_wait, max_outage=admission.max_outage)
    route = one_route(admission, clock)
    return Router([route], sleep=sleep or clock.sleep, on_aside=print, clock=clock, patience=patience)


def _unanswered(body: dict[str, Any]) -> Answer:
    raise AssertionError("this test's endpoint expects no request")
