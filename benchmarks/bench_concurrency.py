"""Concurrency-bound throughput: asyncbatch against a naive SDK loop, next to the ideal.

    python benchmarks/bench_concurrency.py [--n 1000] [--latency-ms 50] [--concurrency 20]

Both clients run against the same simulator (its own process, 127.0.0.1). The
ideal span is N x latency / C. asyncbatch runs as a user runs it (the CLI); its span is the run's own
wall time from its summary, and the total with start-up is printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import azure_env, count_lines, machine, run_cli, simulator_process, wall_seconds, write_batch_lines
from competitors import in_fresh_process


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
        total, code, summary = run_cli(["in.jsonl", "-c", str(a.concurrency)], env, work)
        span = wall_seconds(summary)
        done = count_lines(work / "in.results.jsonl")
        failed = count_lines(work / "in.results.errors.jsonl")
        naive = in_fresh_process("naive", url, inputs, a.concurrency)["span"]
    print(f"machine: {machine()}")
    print(f"{a.n} Batch-API lines, {a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    print(f"{'client':<28}{'span s':>9}{'x ideal':>9}")
    print(f"{'ideal N*latency/C':<28}{ideal:>9.2f}{1:>9.2f}")
    print(f"{'asyncbatch (the run)':<28}{span:>9.2f}{span / ideal:>9.2f}   exit {code}, {done} ok, {failed} failed")
    print(f"{'asyncbatch CLI incl. start-up':<28}{total:>9.2f}{total / ideal:>9.2f}")
    print(f"{'naive SDK loop':<28}{naive:>9.2f}{naive / ideal:>9.2f}")
    sys.exit(0 if code == 0 and done == a.n else 1)


if __name__ == "__main__":
    main()
