"""Pooled quota: 1, 2 and 4 deployments, equal and unequal, and failover when one is killed.

    python benchmarks/bench_pool.py [--n 2000] [--latency-ms 300] [--concurrency 200]

Every deployment is a simulator process of its own (127.0.0.1) with its own TPM
and RPM quota, Azure's windows and headers. The requests are bench_quota's
(Batch-API lines with a forced tool, max_tokens 50), run with ``--deployments``.

ideal = max(max(0, total charge - TPM/6) / (TPM/60), N / (RPM/60), N x latency / C) + latency,
for the pooled TPM and RPM (the sums), from the servers' own charge. Each line
prints the span against that ideal, the share of 429 answers, each deployment's
share of the requests against its share of the quota, and whether every input
was recorded exactly once. Failover kills one simulator process (kill -9) 5 s into
the run; its ideal is the pool's rate until then and the survivor's after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import KEY, clear_outputs, machine, run_cli, simulator_stats, start_simulator, wall_seconds
from bench_quota import write_lines

from asyncbatch.simulator.charge import Charging, charge

Quota = tuple[int, int]  # TPM, RPM
SETUPS: dict[str, list[Quota]] = {
    "1 deployment": [(1_200_000, 7_200)],
    "2 equal": [(600_000, 3_600)] * 2,
    "4 equal": [(300_000, 1_800)] * 4,
    "2 unequal (900k / 300k)": [(900_000, 5_400), (300_000, 1_800)],
    "4 unequal (600/300/200/100k)": [(600_000, 3_600), (300_000, 1_800), (200_000, 1_200), (100_000, 600)],
}


def deployments_file(path: Path, urls: list[str], quotas: list[Quota]) -> None:
    entries = [
        f'[[deployments]]\nname = "d{i}"\nendpoint = "{url}"\ndeployment = "bench"\napi_key_env = "BENCH_KEY"\n'
        f"tpm = {tpm}\nrpm = {rpm}\n"
        for i, (url, (tpm, rpm)) in enumerate(zip(urls, quotas, strict=True))
    ]
    path.write_text("\n".join(entries))


def run_pool(a: argparse.Namespace, work: Path, quotas: list[Quota], kill_after: float | None) -> dict[str, Any]:
    clear_outputs(work)
    sims = [
        start_simulator("--tpm", str(tpm), "--rpm", str(rpm), "--latency-ms", str(a.latency_ms)) for tpm, rpm in quotas
    ]
    try:
        deployments_file(work / "pool.toml", [url for _, url in sims], quotas)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))} | {"BENCH_KEY": KEY}
        if kill_after is not None:
            threading.Timer(kill_after, sims[-1][0].kill).start()  # kill -9 the last deployment's server
        _, code, summary = run_cli(
            ["in.jsonl", "--deployments", "pool.toml", "-c", str(a.concurrency)], env, work
        )  # fmt: skip
        stats = [simulator_stats(url) for proc, url in sims if proc.poll() is None]
    finally:
        for proc, _ in sims:
            proc.kill()
            proc.wait()
    results = [json.loads(line) for line in (work / "in.results.jsonl").open()]
    errors = (
        (work / "in.results.errors.jsonl").read_text().count("\n") if (work / "in.results.errors.jsonl").exists() else 0
    )
    lines = sorted(r["line"] for r in results)
    return {
        "span": wall_seconds(summary),
        "code": code,
        "once": lines == list(range(1, a.n + 1)) and errors == 0,
        "shares": Counter(r["deployment"] for r in results),
        "throttled": sum(s["statuses"].get("429", 0) for s in stats),
        "requests": sum(s["requests"] for s in stats),
        "billed_twice": sum(s["billed_twice"] for s in stats),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=200)
    a = p.parse_args()
    print(f"machine: {machine()}")
    print(f"{a.n} requests, {a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    print(
        f"{'deployments':<30}{'span s':>8}{'ideal s':>9}{'x ideal':>9}{'429 %':>7}  {'share of requests vs quota':<40}"
    )
    latency = a.latency_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies = write_lines(work / "in.jsonl", a.n)
        total = sum(charge(b, Charging()) for b in bodies)
        runs = [(name, quotas, None) for name, quotas in SETUPS.items()]
        runs.append(("2 equal, one killed at 5 s", SETUPS["2 equal"], 5.0))
        for name, quotas, kill in runs:
            tpm, rpm = sum(q[0] for q in quotas), sum(q[1] for q in quotas)
            ideal = max(max(0, total - tpm / 6) / (tpm / 60), a.n / (rpm / 60), a.n * latency / a.concurrency)
            ideal += latency
            if kill is not None:  # the pool's rate until the kill, then the survivors' alone
                survivors = tpm - quotas[-1][0]
                done = min(total, tpm / 6 + kill * tpm / 60)
                ideal = kill + max(0, total - done) / (survivors / 60) + latency
            r = run_pool(a, work, quotas, kill)
            shares = " ".join(
                f"d{i} {100 * r['shares'][f'd{i}'] / a.n:.0f}/{100 * q[0] / tpm:.0f}%" for i, q in enumerate(quotas)
            )
            throttled = 100 * r["throttled"] / max(1, r["requests"])
            print(
                f"{name:<30}{r['span']:>8.1f}{ideal:>9.1f}{r['span'] / ideal:>9.2f}{throttled:>6.1f}%  "
                f"{shares:<40} exit {r['code']}, exactly once: {r['once']}, billed twice: {r['billed_twice']}"
            )
            time.sleep(1)  # let the killed server's port go
    print("(spans are the run's own wall time, from its summary; after a kill, the ideal is the pool's rate until")
    print(" the kill and the survivor's quota after it)")


if __name__ == "__main__":
    main()
