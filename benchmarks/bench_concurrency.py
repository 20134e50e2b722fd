"""Concurrency-bound throughput: asyncbatch against a naive SDK loop, next to the ideal.

    python benchmarks/bench_concurrency.py [--n 1000] [--latency-ms 50] [--concurrency 20]

Both clients run against the same simulator (its own process, 127.0.0.1). The
ideal span is N x latency / C. asyncbatch is timed as a user runs it (the CLI,
start-up included); start-up is measured separately and printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import KEY, azure_env, count_lines, machine, simulator_process, timed_cli, write_batch_lines


async def naive_sdk_loop(url: str, path: Path, concurrency: int) -> float:
    """What most people write first: chat.completions.create under a semaphore."""
    from openai import AsyncAzureOpenAI

    client = AsyncAzureOpenAI(azure_endpoint=url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)
    lines = [json.loads(line) for line in path.open()]

    async def one(line: dict) -> None:
        async with semaphore:
            body = line["body"]
            await client.chat.completions.create(
                model="bench", messages=body["messages"], max_tokens=body["max_tokens"]
            )

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for line in lines:
            tg.create_task(one(line))
    span = time.perf_counter() - started
    await client.close()
    return span


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--concurrency", type=int, default=20)
    a = p.parse_args()
    ideal = a.n * a.latency_ms / 1000 / a.concurrency
    with tempfile.TemporaryDirectory() as tmp, simulator_process("--latency-ms", str(a.latency_ms)) as url:
        work = Path(tmp)
        inputs = write_batch_lines(work / "in.jsonl", a.n)
        env = azure_env(url)
        startup, _ = timed_cli(["--version"], env, work)
        span, code = timed_cli(["in.jsonl", "-c", str(a.concurrency), "-q"], env, work)
        done = count_lines(work / "in.results.jsonl")
        failed = count_lines(work / "in.results.errors.jsonl")
        naive = asyncio.run(naive_sdk_loop(url, inputs, a.concurrency))
    print(f"machine: {machine()}")
    print(f"{a.n} Batch-API lines, {a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    print(f"{'client':<28}{'span s':>9}{'x ideal':>9}")
    print(f"{'ideal N*latency/C':<28}{ideal:>9.2f}{1:>9.2f}")
    print(f"{'asyncbatch CLI (total)':<28}{span:>9.2f}{span / ideal:>9.2f}   exit {code}, {done} ok, {failed} failed")
    net = span - startup
    print(f"{'asyncbatch minus start-up':<28}{net:>9.2f}{net / ideal:>9.2f}   start-up {startup:.2f} s")
    print(f"{'naive SDK loop':<28}{naive:>9.2f}{naive / ideal:>9.2f}")
    sys.exit(0 if code == 0 and done == a.n else 1)


if __name__ == "__main__":
    main()
