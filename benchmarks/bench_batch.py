"""The Batch API backend against live requests: cost, exactly once, memory.

    python benchmarks/bench_batch.py                  # --lines 100000 --fail-rate 0.05

One simulator process serves both the live API and the Batch API (its jobs take
``--batch-seconds``; ``--fail-rate`` of their lines fail server-side). Side by side:

* ``--batch-api --max-lines-per-file 20000``: the jobs, then the failed lines live;
* the same input live, at concurrency 200 (no quota, zero latency: the fastest live run).

Prints each run's wall time, peak RSS, the cost at gpt-4o-mini's list prices, the
lines answered by jobs and live, and whether every input ended exactly once with
no request billed twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import KEY, machine, simulator_stats, start_simulator

# Runs the CLI as a child and prints its exit code and peak RSS (kB); the CLI's stderr passes through.
PEAK = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
COMMON = ["--template", "Classify: {text}", "--max-tokens", "20", "--deployment", "gpt-4o-mini"]


def write_records(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "text": f"review {i}: the product arrived on time"}) + "\n")


def run(work: Path, url: str, extra: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    env |= {"AZURE_OPENAI_ENDPOINT": url, "AZURE_OPENAI_API_KEY": KEY, "AZURE_OPENAI_DEPLOYMENT_NAME": "x"}
    argv = [sys.executable, "-m", "asyncbatch", "in.jsonl", *COMMON, *extra, "--no-progress", "--log-format", "json"]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *argv], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    code, rss = (int(x) for x in proc.stdout.split())
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    summary = next(e for e in events if e["event"] == "summary")
    lines = sorted(json.loads(line)["line"] for line in (work / "in.results.jsonl").open())
    return {"code": code, "seconds": seconds, "rss": rss / 1024, "summary": summary, "lines": lines}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--fail-rate", type=float, default=0.05)
    p.add_argument("--batch-seconds", type=float, default=5.0)
    a = p.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (
            ("--batch-api (then live)", ["--batch-api", "--max-lines-per-file", "20000", "--poll-interval", "1"]),
            ("live, concurrency 200", ["-c", "200"]),
        ):
            work = Path(tmp) / name.split()[0].strip("-")
            work.mkdir()
            write_records(work / "in.jsonl", a.lines)
            sim_args = ["--batch-seconds", str(a.batch_seconds), "--batch-fail-rate", str(a.fail_rate)]
            proc, url = start_simulator(*sim_args)
            try:
                result = run(work, url, extra)
                result["billed_twice"] = simulator_stats(url)["billed_twice"]
            finally:
                proc.terminate()
                proc.wait()
            rows.append((name, result))
    print(f"{a.lines:,} record lines; Batch API jobs take {a.batch_seconds:g} s and fail {a.fail_rate:.0%} of lines")
    print(f"{'run':<26}{'exit':>5}{'wall s':>8}{'peak RSS':>10}{'cost USD':>10}{'by jobs':>9}{'live':>8}  exactly once")
    for name, r in rows:
        s = r["summary"]
        jobs = (s.get("batch_api") or {}).get("answers", 0)
        once = r["lines"] == list(range(1, a.lines + 1)) and r["billed_twice"] == 0
        print(
            f"{name:<26}{r['code']:>5}{r['seconds']:>8.1f}{r['rss']:>8.0f}MB{s['cost_usd']:>10.4f}{jobs:>9,}"
            f"{s['succeeded'] - jobs:>8,}  {once} (billed twice: {r['billed_twice']})"
        )
    batch_cost, live_cost = rows[0][1]["summary"]["cost_usd"], rows[1][1]["summary"]["cost_usd"]
    print(f"cost, Batch API / live: {batch_cost / live_cost:.2f}")


if __name__ == "__main__":
    main()
