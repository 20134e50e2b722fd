"""Shared benchmark plumbing: a simulator in its own process, input files, timing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KEY = "bench-key"


def simulator_stats(url: str) -> dict[str, Any]:
    """The simulator's counters (requests, statuses, billed twice)."""
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as response:
        return dict(json.loads(response.read()))


def start_simulator(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m asyncbatch.simulator`` on a free loopback port; return the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncbatch.simulator", "--port", "0", "--key", KEY, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[3]


@contextmanager
def simulator_process(*args: str) -> Iterator[str]:
    """A simulator process for the block; yields its base URL."""
    proc, url = start_simulator(*args)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_batch_lines(path: Path, n: int, content_chars: int = 100, max_tokens: int = 50) -> Path:
    with path.open("w") as f:
        for i in range(n):
            content = f"request {i}: " + "x" * max(0, content_chars - 16)
            body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/chat/completions", "body": body}))
            f.write("\n")
    return path


def azure_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    env.update(AZURE_OPENAI_ENDPOINT=url, AZURE_OPENAI_API_KEY=KEY, AZURE_OPENAI_DEPLOYMENT_NAME="bench")
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, dict[str, str]]:
    """Run the CLI as a user does; return (total seconds, exit code, its summary table as a dict).

    The summary's "wall time" is the run itself, without the interpreter's start-up.
    """
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "asyncbatch", *args, "--no-progress"], env=env, cwd=cwd, capture_output=True
    )
    total = time.perf_counter() - started
    stderr = proc.stderr.decode()
    if proc.returncode not in (0, 1):
        sys.stderr.write(stderr)
    return total, proc.returncode, summary_rows(stderr)


def summary_rows(stderr: str) -> dict[str, str]:
    """The CLI's summary table, as a dict of its rows."""
    return dict(re.findall(r"│ (.+?)\s+│ (.+?)\s+│", stderr))


def wall_seconds(rows: dict[str, str]) -> float:
    return float(rows["wall time"].split()[0])


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


def clear_outputs(work: Path, stem: str = "in") -> None:
    """Remove a run's outputs and its state directory, so the next run starts afresh."""
    for path in work.glob(f"{stem}.results*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
