"""Interrupt and resume: the kill -9 / SIGINT scenario, and resume start-up with 1M inputs done.

    python benchmarks/bench_resume.py            # both parts
    python benchmarks/bench_resume.py --part a   # 3000 requests, c=50, 4 x kill -9 + 1 x SIGINT
    python benchmarks/bench_resume.py --part b   # 1,000,000 done + 2,000 to go: time to first request, peak RSS

The simulator runs in this process (a thread, 127.0.0.1), the CLI in subprocesses, as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KEY, azure_env, machine, write_batch_lines

from asyncbatch.simulator import SimConfig, serve_in_thread


def _start(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    while _lines(path) < n and proc.poll() is None:
        time.sleep(0.01)


def part_a(seed: int = 7) -> bool:
    n, c = 3000, 50
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(SimConfig(api_key=KEY, latency=0.1)) as (url, sim):
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        env, results = azure_env(url), work / "in.results.jsonl"
        in_flight_at_stops = 0
        for kind in ["kill", "kill", "sigint", "kill", "kill"]:
            proc = _start(work, env, "-c", str(c))
            _wait_lines(results, _lines(results) + rng.randint(100, 500), proc)
            in_flight_at_stops += sim.active  # requests on the wire at this interruption
            if kind == "kill":
                proc.kill()
                proc.wait()
                print(f"  kill -9 at {_lines(results)} results")
            else:
                sent = time.perf_counter()
                proc.send_signal(signal.SIGINT)
                code = proc.wait(timeout=30)
                took = time.perf_counter() - sent
                print(f"  SIGINT at {_lines(results)} results: exit {code} after {took:.2f} s")
                sigint_ok = code == 130 and took < 10
        final = _start(work, env, "-c", str(c))
        final.wait(timeout=600)
        rows = [json.loads(x) for x in results.read_text().splitlines()]
        errors = _lines(work / "in.results.errors.jsonl")
        ids = [r["custom_id"] for r in rows]
        exactly_once = sorted(ids) == sorted(f"r{i}" for i in range(n)) and errors == 0
        twice = sim.billed_twice()
    print(f"part A: {n} requests, concurrency {c}, 4 x kill -9 + 1 x SIGINT, then resumed")
    print(f"  final exit {final.returncode}; {len(ids)} results, {len(set(ids))} distinct, {errors} errors")
    print(f"  every input exactly once, all succeeded, no corrupt line: {exactly_once}")
    print(f"  requests billed twice: {twice}; requests in flight at the interruptions: {in_flight_at_stops}")
    return exactly_once and sigint_ok and twice <= in_flight_at_stops and final.returncode == 0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _time_to_first_request(work: Path, env: dict[str, str], sim_factory: SimConfig) -> tuple[float, float]:
    with serve_in_thread(sim_factory) as (url, sim):
        env = {**env, "AZURE_OPENAI_ENDPOINT": url}
        started = time.monotonic()
        proc = _start(work, env, "--template", "Classify: {text}", "-c", "20")
        while sim.first_request_at is None and proc.poll() is None:
            time.sleep(0.005)
        first = (sim.first_request_at or float("nan")) - started
        ckpt = work / "in.results.jsonl.state" / "checkpoint"
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.01)
        rss = _peak_rss_mb(proc.pid) if proc.poll() is None else float("nan")
        proc.kill()
        proc.wait()
    return first, rss


def part_b() -> bool:
    done, todo = 1_000_000, 2_000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (work / "in.jsonl").open("w") as f:
            for i in range(done + todo):
                f.write(json.dumps({"id": i, "text": f"item {i} to classify"}) + "\n")
        with (work / "in.results.jsonl").open("w") as f:
            for i in range(done):
                f.write(json.dumps({"id": f"batch_req_{i}", "custom_id": str(i), "error": None, "line": i + 1}) + "\n")
        env = azure_env("unused")
        sim = SimConfig(api_key=KEY, latency=0.05)
        rebuild, rss_rebuild = _time_to_first_request(work, env, sim)
        from_ckpt, rss_ckpt = _time_to_first_request(work, env, sim)
    print(f"part B: {done:,} inputs already done, {todo:,} to go")
    print(f"  {'state from':<40}{'first request after':>20}{'peak RSS':>12}")
    print(f"  {'outputs (no checkpoint: rebuild)':<40}{rebuild:>18.2f} s{rss_rebuild:>9.0f} MB")
    print(f"  {'checkpoint':<40}{from_ckpt:>18.2f} s{rss_ckpt:>9.0f} MB")
    return from_ckpt < 10 and rss_ckpt < 300


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["a", "b", "both"], default="both")
    part = p.parse_args().part
    print(f"machine: {machine()}")
    ok = True
    if part in ("a", "both"):
        ok &= part_a()
    if part in ("b", "both"):
        ok &= part_b()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
