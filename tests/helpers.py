"""Helpers shared by the tests: write inputs, read outputs."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread

T = TypeVar("T")


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


class Time:
    """An injected clock that moves only when someone sleeps on it; ``slept`` lists each wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class _Instant(selectors.DefaultSelector):
    """A selector that never waits: the loop's virtual clock jumps over the wait instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            self.loop.now += timeout
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when every task waits, straight to the next timer (trio's MockClock
    idea): many concurrent workers sleeping and racing, minutes of them in milliseconds, nothing really waiting.

    Its ``time`` is the clock to inject (``clock=loop.time``, ``sleep=asyncio.sleep``); ``run`` drives a coroutine.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_Instant(self))

    def time(self) -> float:
        return self.now

    @classmethod
    def run(cls, main: Coroutine[Any, Any, T]) -> T:
        loop = cls()
        try:
            return loop.run_until_complete(main)
        finally:
            loop.close()
