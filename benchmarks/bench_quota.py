"""Run at the quota, not into it: quota-given and adaptive asyncbatch against a naive SDK loop.

    python benchmarks/bench_quota.py [--n 2000] [--tpm 1200000] [--rpm 7200] [--latency-ms 300] [--concurrency 200]

Each client gets a fresh simulator process (127.0.0.1) enforcing the quota the
way Azure does (RPM per second, TPM over a 10 s bucket). Requests are Batch-API
lines of about 325 estimated tokens (1100 prompt characters / 4 + max_tokens 50).

ideal = max(max(0, total_estimate - TPM/6) / (TPM/60),  N / (RPM/60),  N x latency / C) + latency
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import (
    azure_env,
    count_lines,
    machine,
    run_cli,
    simulator_process,
    simulator_stats,
    wall_seconds,
    write_batch_lines,
)
from competitors import in_fresh_process

from asyncbatch.requests import estimate_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--tpm", type=int, default=1_200_000)
    p.add_argument("--rpm", type=int, default=7200)
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--skip-naive", action="store_true")
    a = p.parse_args()
    sim_args = ["--tpm", str(a.tpm), "--rpm", str(a.rpm), "--latency-ms", str(a.latency_ms)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = write_batch_lines(work / "in.jsonl", a.n, content_chars=1100, max_tokens=50)
        total = sum(estimate_tokens(json.loads(x)["body"]) for x in inputs.open())
        latency = a.latency_ms / 1000
        ideal = max(max(0, total - a.tpm / 6) / (a.tpm / 60), a.n / (a.rpm / 60), a.n * latency / a.concurrency)
        ideal += latency
        runs = [
            ("asyncbatch --tpm --rpm", ["--tpm", str(a.tpm), "--rpm", str(a.rpm)]),
            ("asyncbatch adaptive", []),
        ]
        for name, extra in runs:
            for f in work.glob("in.results*"):
                f.unlink()
            with simulator_process(*sim_args) as url:
                _, code, summary = run_cli(["in.jsonl", "-c", str(a.concurrency), *extra], azure_env(url), work)
                stats = simulator_stats(url)
            ok = count_lines(work / "in.results.jsonl")
            rows.append((name, wall_seconds(summary), stats, f"exit {code}, {ok} ok"))
        if not a.skip_naive:
            with simulator_process(*sim_args) as url:
                span = in_fresh_process("naive-retry", url, inputs, a.concurrency)["span"]
                rows.append(("naive SDK loop (retry 429s)", span, simulator_stats(url), ""))
    print(f"machine: {machine()}")
    print(f"{a.n} requests, {total / a.n:.0f} estimated tokens each; TPM {a.tpm:,}, RPM {a.rpm:,}, ", end="")
    print(f"{a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    print(f"{'client':<30}{'span s':>8}{'x ideal':>9}{'429s':>7}{'% of requests':>15}")
    print(f"{'ideal':<30}{ideal:>8.1f}{1:>9.2f}")
    for name, span, stats, note in rows:
        throttled = stats["statuses"].get("429", 0)
        share = 100 * throttled / stats["requests"]
        print(f"{name:<30}{span:>8.1f}{span / ideal:>9.2f}{throttled:>7}{share:>14.1f}%   {note}")
    print("(asyncbatch spans are the run's own wall time, from its summary: no interpreter start-up)")
    sys.exit(0)


if __name__ == "__main__":
    main()
