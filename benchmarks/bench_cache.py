"""The response cache: what a second run of the same file sends, saves and takes.

    python benchmarks/bench_cache.py [--n 100000] [--concurrency 100]

One simulator process (127.0.0.1, no latency, gpt-4o-mini's prices by the deployment's
name). The same file of N distinct requests runs three times as a user runs it (the CLI):
without a cache, with an empty cache, and again with the cache the second run filled. The
simulator counts what reached it; the run's own summary gives its wall time and what the
cached answers would have cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import azure_env, machine, simulator_process, simulator_stats, write_batch_lines


def run(work: Path, url: str, args: list[str]) -> dict[str, object]:
    env = {**azure_env(url), "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-4o-mini"}
    cmd = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "--log-format", "json", *args]
    before = simulator_stats(url)["requests"]
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, check=True)
    summary = next(json.loads(line) for line in proc.stderr.splitlines() if '"summary"' in line)
    return {**summary, "sent": simulator_stats(url)["requests"] - before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=100)
    a = p.parse_args()
    print(f"machine: {machine()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as url:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", a.n, content_chars=60, max_tokens=5)
        c = ["-c", str(a.concurrency)]
        rows = {
            "no cache": run(work, url, [*c, "-o", "plain.jsonl"]),
            "empty cache": run(work, url, [*c, "--cache", "c.sqlite", "-o", "first.jsonl"]),
            "full cache": run(work, url, [*c, "--cache", "c.sqlite", "-o", "second.jsonl"]),
        }
    print(f"{a.n:,} distinct requests, concurrency {a.concurrency}, zero-latency simulator")
    print(f"  {'run':<14}{'sent':>9}{'wall s':>9}{'lines/s':>10}{'cost USD':>11}{'saved USD':>11}")
    for name, row in rows.items():
        wall = float(row["wall_seconds"])  # type: ignore[arg-type]
        cache = row["cache"]
        saved = cache["saved_usd"]  # type: ignore[index]
        cost = row["cost_usd"] or 0.0
        print(f"  {name:<14}{row['sent']:>9,}{wall:>9.2f}{a.n / wall:>10,.0f}{cost:>11.4f}{saved:>11.4f}")
    full, plain = rows["full cache"], rows["no cache"]
    ratio = float(plain["wall_seconds"]) / float(full["wall_seconds"])  # type: ignore[arg-type]
    print(f"  a fully cached run is {ratio:.1f}x faster than sending, and sends {full['sent']} requests")
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
