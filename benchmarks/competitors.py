"""The clients asyncbatch is measured against, runnable in a fresh process.

    python benchmarks/competitors.py {bare,naive,naive-retry} URL INPUT.jsonl CONCURRENCY

prints {"rps": requests per second, "cpu_ms": CPU milliseconds per request, "span": seconds}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from _common import KEY
from openai import AsyncAzureOpenAI, RateLimitError

API_VERSION = "2024-10-21"


async def bare_aiohttp_loop(url: str, bodies: list[dict[str, Any]], concurrency: int) -> None:
    """The floor for a Python client: aiohttp, a semaphore, orjson; no retries, no output."""
    target = f"{url}/openai/deployments/bench/chat/completions?api-version={API_VERSION}"
    headers = {"api-key": KEY, "Content-Type": "application/json"}
    payloads = [orjson.dumps(body) for body in bodies]
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(payload: bytes) -> None:
            async with semaphore, session.post(target, data=payload, headers=headers) as response:
                orjson.loads(await response.read())

        async with asyncio.TaskGroup() as tg:
            for payload in payloads:
                tg.create_task(one(payload))


async def naive_sdk_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, retry_429: bool = False) -> None:
    """What most people write first: chat.completions.create under a semaphore.

    With ``retry_429`` the SDK keeps its own retries (2) and a refused request
    is sent again until it succeeds, as a user would have to.
    """
    client = AsyncAzureOpenAI(
        azure_endpoint=url, api_key=KEY, api_version=API_VERSION, max_retries=2 if retry_429 else 0
    )
    semaphore = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> None:
        while True:
            async with semaphore:
                try:
                    given = {k: body[k] for k in ("tools", "tool_choice", "max_tokens") if k in body}
                    await client.chat.completions.create(model="bench", messages=body["messages"], **given)
                    return
                except RateLimitError:
                    if not retry_429:
                        raise

    async with asyncio.TaskGroup() as tg:
        for body in bodies:
            tg.create_task(one(body))
    await client.close()


def measure(kind: str, url: str, path: Path, concurrency: int) -> dict[str, float]:
    bodies = [json.loads(line)["body"] for line in path.open()]
    loops = {
        "bare": lambda: bare_aiohttp_loop(url, bodies, concurrency),
        "naive": lambda: naive_sdk_loop(url, bodies, concurrency),
        "naive-retry": lambda: naive_sdk_loop(url, bodies, concurrency, retry_429=True),
    }
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(loops[kind]())
    span = time.perf_counter() - started
    return {"rps": len(bodies) / span, "cpu_ms": (time.process_time() - cpu) / len(bodies) * 1000, "span": span}


def in_fresh_process(kind: str, url: str, path: Path, concurrency: int) -> dict[str, float]:
    """Run one competitor in its own process, so none shares a loop or a GIL with another."""
    import subprocess

    script = Path(__file__)
    out = subprocess.run(
        [sys.executable, str(script), kind, url, str(path), str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
        cwd=script.parent,
    )
    return dict(json.loads(out.stdout))


if __name__ == "__main__":
    kind, url, path, concurrency = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(measure(kind, url, path, concurrency)))
