"""Trust at run time, through the real CLI against a simulator in its own process.

    python benchmarks/bench_trust.py            # --outage-seconds 60

1. Outage: 3,000 requests; after 1,000 the endpoint drops every connection for
   --outage-seconds. Prints the exit code, whether every input is in the outputs
   exactly once, the error lines, and the time from recovery to the end.
2. Two runs of the same command, a second apart: the second's exit code and how
   long it took; whether the first finished exactly once; requests billed twice.
3. Exhausted quota: 429 "retry after 86400" after 100 answers. Prints how long
   the run took to stop, its exit code and error lines; then the same command
   after the quota is back.
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


def cli(work: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "-q", *args]
    return subprocess.Popen(cmd, cwd=work, env=env, stderr=subprocess.PIPE, text=True)


def check(work: Path, n: int) -> tuple[bool, int]:
    lines = []
    for name in ("in.results.jsonl", "in.results.errors.jsonl"):
        path = work / name
        if path.exists():
            lines += [json.loads(x)["line"] for x in path.read_text().splitlines()]
    errors = (
        (work / "in.results.errors.jsonl").read_text().count("\n") if (work / "in.results.errors.jsonl").exists() else 0
    )
    return sorted(lines) == list(range(1, n + 1)), errors


def outage(seconds: float) -> None:
    n = 3000
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator_process("--latency-ms", "20", "--outage-after", "1000", "--outage-seconds", str(seconds)) as url,
    ):
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        started = time.monotonic()
        proc = cli(work, azure_env(url), "-c", "50")
        _, err = proc.communicate(timeout=seconds + 600)
        took = time.monotonic() - started
        once, errors = check(work, n)
        stats = simulator_stats(url)
    print(f"1. outage of {seconds:g} s after 1,000 of {n:,} requests:")
    print(f"   exit {proc.returncode}, every input exactly once: {once}, error lines: {errors}, took {took:.1f} s")
    print(f"   connections dropped while down: {stats['statuses'].get('down', 0)} (one probe at a time)")
    if proc.returncode:
        print(err[-2000:])


def two_runs() -> None:
    n = 3000
    with tempfile.TemporaryDirectory() as tmp, simulator_process("--latency-ms", "50") as url:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        env = azure_env(url)
        first = cli(work, env, "-c", "50")
        time.sleep(1.0)  # the scenario itself: a second run started a second later
        started = time.monotonic()
        second = cli(work, env, "-c", "50")
        _, err2 = second.communicate(timeout=60)
        second_took = time.monotonic() - started
        first.communicate(timeout=600)
        once, errors = check(work, n)
        stats = simulator_stats(url)
    print("2. the same command twice, a second apart:")
    print(f"   second run: exit {second.returncode} after {second_took:.2f} s: {err2.strip()[:160]}")
    print(
        f"   first run: exit {first.returncode}, exactly once: {once}, error lines: {errors}, "
        f"billed twice: {stats['billed_twice']}"
    )


def quota() -> None:
    n = 2000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        with simulator_process("--latency-ms", "20", "--exhaust-after", "100") as url:
            started = time.monotonic()
            proc = cli(work, azure_env(url), "-c", "50")
            _, err = proc.communicate(timeout=120)
            took = time.monotonic() - started
            _, errors = check(work, n)
        with simulator_process("--latency-ms", "20") as url:
            again = cli(work, azure_env(url), "-c", "50")
            again.communicate(timeout=300)
            once, errors_after = check(work, n)
    print("3. quota exhausted (429, retry-after 86400) after 100 answers:")
    print(f"   stopped after {took:.1f} s with exit {proc.returncode}, error lines: {errors}")
    print(f"   message: {err.strip().splitlines()[0][:200] if err.strip() else ''}")
    print(
        f"   same command once the quota is back: exit {again.returncode}, exactly once: {once}, "
        f"error lines: {errors_after}"
    )


def entra(seconds: float) -> None:
    """Bearer JWTs that live 8 s, a run of ``seconds`` or more: through the CLI, then the library."""
    n = int(seconds * 20 / 0.2)  # concurrency 20, 200 ms latency
    with tempfile.TemporaryDirectory() as tmp, simulator_process("--latency-ms", "200", "--entra-only") as url:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        env = {k: v for k, v in azure_env(url).items() if k != "AZURE_OPENAI_API_KEY"}
        started = time.monotonic()
        token_command = f"{sys.executable} -m asyncbatch.simulator.tokens 8"
        proc = cli(work, env, "-c", "20", "--token-command", token_command)
        proc.communicate(timeout=600)
        took = time.monotonic() - started
        once, errors = check(work, n)
        statuses = simulator_stats(url)["statuses"]
    print(f"4. Entra ID only, tokens live 8 s, {n:,} requests through the CLI with --token-command:")
    print(
        f"   exit {proc.returncode} after {took:.1f} s, exactly once: {once}, error lines: {errors}, "
        f"401s: {statuses.get('401', 0)}"
    )
    print(f"   the same through the library with a token provider: {library_entra(n)}")


def library_entra(n: int) -> str:
    import asyncio

    import asyncbatch
    from asyncbatch.simulator import SimConfig
    from asyncbatch.simulator.tokens import make_token

    async def go(work: Path) -> str:
        config = SimConfig(latency=0.2, entra_only=True)
        async with asyncbatch.simulated(config) as endpoint:
            endpoint = asyncbatch.Endpoint(
                kind="azure", base_url=endpoint.base_url, deployment="d", token_provider=lambda: make_token(8)
            )
            run = asyncbatch.RunConfig(input_path=work / "in.jsonl", endpoint=endpoint)
            started = time.monotonic()
            stats = await asyncbatch.run(run)
        once, errors = check(work, n)
        return (
            f"{stats.succeeded:,} succeeded in {time.monotonic() - started:.1f} s, exactly once: {once}, "
            f"error lines: {errors}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        return asyncio.run(go(work))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage-seconds", type=float, default=60.0)
    p.add_argument("--entra-seconds", type=float, default=20.0)
    p.add_argument("--only", choices=["outage", "two-runs", "quota", "entra"])
    a = p.parse_args()
    print(f"machine: {machine()}")
    if a.only in (None, "outage"):
        outage(a.outage_seconds)
    if a.only in (None, "two-runs"):
        two_runs()
    if a.only in (None, "quota"):
        quota()
    if a.only in (None, "entra"):
        entra(a.entra_seconds)


if __name__ == "__main__":
    main()
