"""Helpers shared by the tests: write inputs, read outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread


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
