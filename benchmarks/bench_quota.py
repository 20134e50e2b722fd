"""Run at the quota of servers that count differently from the client.

    python benchmarks/bench_quota.py [--n 2000] [--tpm 1200000] [--rpm 7200] [--latency-ms 300] [--concurrency 200]
    python benchmarks/bench_quota.py --only minute      # just the fixed-minute-window server

Requests are Batch-API lines with a forced tool (about 1,100 prompt characters,
a tool definition of about 600, max_tokens 50). Every client gets a fresh
simulator process (127.0.0.1). The simulator charges each request by its own
model, in four modes:

  client   what the client estimates: prompt and tool characters / 4 + max_tokens
  no-tools tool definitions not counted
  half     0.5 x the prompt estimate
  double   2 x the prompt estimate, tool definitions counted

Each mode runs with the quota given (--tpm --rpm) and adaptive (no quota given).
Then a gateway-like server with fixed wall-clock minute windows, no rate-limit
headers and no retry-after (TPM --minute-tpm per minute), adaptive. The naive
SDK loop (chat.completions.create under a semaphore, 429s retried) runs on the
"no-tools" server, the kind the issue measured.

ideal (Azure windows) = max(max(0, total charge - TPM/6) / (TPM/60), N / (RPM/60), N x latency / C) + latency,
computed from the server's own charge.
ideal (minute windows) = the wait for as many minute turns as the work needs, from the run's start, + latency.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import azure_env, count_lines, machine, run_cli, simulator_process, simulator_stats, wall_seconds
from competitors import in_fresh_process

from asyncbatch.simulator.charge import Charging, charge

TOOL = json.loads((Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json").read_text())
MODES: dict[str, tuple[list[str], Charging]] = {
    "client": ([], Charging()),
    "no-tools": (["--no-tool-charge"], Charging(count_tools=False)),
    "half": (["--charge-factor", "0.5"], Charging(factor=0.5)),
    "double": (["--charge-factor", "2"], Charging(factor=2.0)),
}


def write_lines(path: Path, n: int) -> list[dict[str, Any]]:
    bodies = []
    with path.open("w") as f:
        for i in range(n):
            content = f"request {i}: " + "x" * 1084
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 50,
                "tools": [{"type": "function", "function": TOOL}],
                "tool_choice": {"type": "function", "function": {"name": TOOL["name"]}},
            }
            bodies.append(body)
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/chat/completions", "body": body}))
            f.write("\n")
    return bodies


def run_asyncbatch(work: Path, sim_args: list[str], extra: list[str], c: int) -> tuple[float, dict[str, Any], str]:
    for f in work.glob("in.results*"):
        f.unlink()
    with simulator_process(*sim_args) as url:
        _, code, summary = run_cli(["in.jsonl", "-c", str(c), *extra], azure_env(url), work)
        stats = simulator_stats(url)
    note = f"exit {code}, {count_lines(work / 'in.results.jsonl')} ok"
    if "server charge" in summary:
        note += f", learned charge {summary['server charge'].split(' x')[0]}x"
    return wall_seconds(summary), stats, note


def azure_windows(a: argparse.Namespace, work: Path, bodies: list[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
    latency = a.latency_ms / 1000
    quota = ["--tpm", str(a.tpm), "--rpm", str(a.rpm)]
    base = [*quota, "--latency-ms", str(a.latency_ms)]
    for mode, (flags, charging) in MODES.items():
        total = sum(charge(b, charging) for b in bodies)
        ideal = max(max(0, total - a.tpm / 6) / (a.tpm / 60), a.n / (a.rpm / 60), a.n * latency / a.concurrency)
        ideal += latency
        ratio = total / sum(charge(b, Charging()) for b in bodies)
        for name, extra in (("quota given", quota), ("adaptive", [])):
            span, stats, note = run_asyncbatch(work, [*base, *flags], extra, a.concurrency)
            rows.append((f"{mode} ({ratio:.2f}x)", f"asyncbatch {name}", span, ideal, stats, note))
        if mode == "no-tools" and not a.skip_naive:
            with simulator_process(*base, *flags) as url:
                span = in_fresh_process("naive-retry", url, work / "in.jsonl", a.concurrency)["span"]
                rows.append((f"{mode} ({ratio:.2f}x)", "naive SDK loop", span, ideal, simulator_stats(url), ""))


def minute_windows(
    a: argparse.Namespace, work: Path, bodies: list[dict[str, Any]], rows: list[tuple[Any, ...]]
) -> None:
    latency = a.latency_ms / 1000
    total = sum(charge(b, Charging()) for b in bodies)
    sim_args = [
        "--window",
        "minute",
        "--tpm",
        str(a.minute_tpm),
        "--rpm",
        str(a.rpm),
        "--latency-ms",
        str(a.latency_ms),
    ]
    with simulator_process(*sim_args) as url:
        wall = time.time()
        time.sleep((15 - wall % 60) % 60)  # start 15 s into a minute, so the ideal is the same every time
        started = time.time()
        for f in work.glob("in.results*"):
            f.unlink()
        _, code, summary = run_cli(["in.jsonl", "-c", str(a.concurrency)], azure_env(url), work)
        stats = simulator_stats(url)
    turns = math.ceil(total / a.minute_tpm) - 1
    ideal = (60 - started % 60 + 60 * (turns - 1) if turns else a.n * latency / a.concurrency) + latency
    span = wall_seconds(summary)
    note = f"exit {code}, {count_lines(work / 'in.results.jsonl')} ok, {turns} minute turns needed"
    rows.append((f"minute windows, TPM {a.minute_tpm:,}", "asyncbatch adaptive", span, ideal, stats, note))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--tpm", type=int, default=1_200_000)
    p.add_argument("--rpm", type=int, default=7200)
    p.add_argument("--minute-tpm", type=int, default=400_000)
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--only", choices=["azure", "minute"])
    p.add_argument("--skip-naive", action="store_true")
    a = p.parse_args()
    rows: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies = write_lines(work / "in.jsonl", a.n)
        if a.only != "minute":
            azure_windows(a, work, bodies, rows)
        if a.only != "azure":
            minute_windows(a, work, bodies, rows)
    print(f"machine: {machine()}")
    print(f"{a.n} requests; TPM {a.tpm:,}, RPM {a.rpm:,}, {a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    print(f"{'server charge (x client)':<30}{'client':<26}{'span s':>8}{'ideal s':>9}{'x ideal':>9}{'429s':>7}{'%':>7}")
    for server, client, span, ideal, stats, note in rows:
        throttled = stats["statuses"].get("429", 0)
        share = 100 * throttled / max(1, stats["requests"])
        print(
            f"{server:<30}{client:<26}{span:>8.1f}{ideal:>9.1f}{span / ideal:>9.2f}{throttled:>7}{share:>6.1f}%  {note}"
        )
    print("(asyncbatch spans are the run's own wall time, from its summary: no interpreter start-up)")


if __name__ == "__main__":
    main()
