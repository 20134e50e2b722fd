"""Client overhead and memory: asyncbatch against a bare aiohttp loop and a naive SDK loop.

    python benchmarks/bench_overhead.py [--n 3000] [--concurrency 100] [--skip-memory]

Throughput: every client runs in its own fresh process against the same
zero-latency simulator (its own process, 127.0.0.1), so the client's CPU per
request is the ceiling. asyncbatch runs as a user runs it (the CLI); its req/s
is the run's own figure and its CPU excludes start-up (measured with --version).

Memory: peak RSS of a 1M-line --dry-run on records with --template, of the
same rows as a Parquet file (row groups of 100,000), and of a 2k-line against a
20k-line run.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import azure_env, clear_outputs, machine, simulator_process, write_batch_lines
from competitors import in_fresh_process

# A fresh parent per measurement, so RUSAGE_CHILDREN's peak is that one run's.
RSS = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def cli_cpu(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "asyncbatch", *args], env=env, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stderr


def asyncbatch_run(url: str, work: Path, c: int, n: int) -> dict[str, float]:
    env = azure_env(url)
    startup_cpu, _ = cli_cpu(["--version"], env, work)
    clear_outputs(work)
    cpu, stderr = cli_cpu(["in.jsonl", "-c", str(c), "--no-progress"], env, work)
    match = re.search(r"throughput\s*│\s*([\d.]+) req/s", stderr)
    assert match, stderr
    return {"rps": float(match.group(1)), "cpu_ms": (cpu - startup_cpu) / n * 1000}


def peak_rss_mb(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    cmd = [sys.executable, "-c", RSS, sys.executable, "-m", "asyncbatch", *args]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def throughput(n: int, c: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as url:
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n, content_chars=60, max_tokens=5)
        rows = {
            "bare aiohttp loop": in_fresh_process("bare", url, work / "in.jsonl", c),
            "naive SDK loop": in_fresh_process("naive", url, work / "in.jsonl", c),
            "asyncbatch CLI": asyncbatch_run(url, work, c, n),
        }
    bare, naive, ours = (rows[k]["rps"] for k in ("bare aiohttp loop", "naive SDK loop", "asyncbatch CLI"))
    print(f"throughput: {n} requests, concurrency {c}, zero-latency simulator")
    print(f"  {'client':<22}{'req/s':>9}{'CPU ms/req':>12}")
    for name, row in rows.items():
        print(f"  {name:<22}{row['rps']:>9.0f}{row['cpu_ms']:>12.2f}")
    print(f"  asyncbatch / bare aiohttp = {ours / bare:.2f}x   asyncbatch / naive SDK = {ours / naive:.1f}x")


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (work / "big.jsonl").open("w") as f:
            for i in range(1_000_000):
                f.write(json.dumps({"id": i, "company": f"Company {i}", "notes": "public sources only"}) + "\n")
        template = ["--template", "Tell me about {company}. Notes: {notes}"]
        dry = peak_rss_mb(["big.jsonl", "--dry-run", *template], cwd=work)
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetWriter(work / "big.parquet", pa.schema([("id", pa.int64()), ("company", pa.string()),
                                                              ("notes", pa.string())])) as writer:  # fmt: skip
            for start in range(0, 1_000_000, 100_000):
                ids = range(start, start + 100_000)
                columns = {"id": list(ids), "company": [f"Company {i}" for i in ids], "notes": ["public"] * 100_000}
                writer.write_table(pa.table(columns))
        parquet = peak_rss_mb(["big.parquet", "--dry-run", *template], cwd=work)
        with simulator_process() as url:
            env = azure_env(url)
            sizes = {}
            for n in (2_000, 20_000):
                write_batch_lines(work / "in.jsonl", n, content_chars=60, max_tokens=5)
                clear_outputs(work)
                sizes[n] = peak_rss_mb(["in.jsonl", "-c", "100", "-q"], env=env, cwd=work)
    print("memory (peak RSS):")
    print(f"  1M-line --dry-run with --template   {dry:7.0f} MB")
    print(f"  1M-row Parquet --dry-run            {parquet:7.0f} MB")
    print(f"  2k-line run                         {sizes[2_000]:7.0f} MB")
    ratio = sizes[20_000] / sizes[2_000]
    print(f"  20k-line run                        {sizes[20_000]:7.0f} MB   ({ratio:.2f}x the 2k run)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--skip-memory", action="store_true")
    a = p.parse_args()
    print(f"machine: {machine()}")
    started = time.perf_counter()
    throughput(a.n, a.concurrency)
    if not a.skip_memory:
        memory()
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
