"""The kill -9 battery: a 3,000-line run killed 20 times at random instants, live and with --batch-api.

    python benchmarks/bench_kill.py                 # both modes, seed 1
    python benchmarks/bench_kill.py --mode live --kills 20 --seed 3

Each kill lands at a random instant (0.3 to 2.5 s after the process starts: start-up, reading,
sending, writing, polling or merging). After the last one the same command runs to the end.
Checked: every input line in exactly one line of results or errors, every line whole, exit 0 at
the end, and how many requests the simulator billed twice (only those in flight at a kill may be).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KEY, azure_env, machine, write_batch_lines

from asyncbatch.simulator import SimConfig, serve_in_thread

MODES = {
    "live": ["-c", "20"],
    "batch": ["--batch-api", "--max-lines-per-file", "500", "--poll-interval", "0.2", "-c", "20"],
}


def battery(mode: str, n: int, kills: int, seed: int) -> bool:
    rng = random.Random(seed)
    # slow enough that the kills spread over the whole run: about 100 requests a second, jobs of 12 s
    config = SimConfig(api_key=KEY, latency=0.2, batch_seconds=12.0, batch_fail_rate=0.02)
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(config) as (url, sim):
        work = Path(tmp)
        write_batch_lines(work / "in.jsonl", n)
        cmd = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "-q", *MODES[mode]]
        env, started = azure_env(url), time.perf_counter()
        landed = 0
        for _ in range(kills):
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 2.5))  # the kill point
            landed += proc.poll() is None  # the process was still at work
            proc.kill()
            proc.wait()
        final = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        lines = []
        whole = True
        for name in ("in.results.jsonl", "in.results.errors.jsonl"):
            path = work / name
            data = path.read_bytes() if path.exists() else b""
            whole &= data.endswith(b"\n") or not data
            lines += [json.loads(raw)["line"] for raw in data.splitlines()]
        once = sorted(lines) == list(range(1, n + 1))
        ok = final.returncode == 0 and once and whole
        print(
            f"{mode:>5}: {landed} of {kills} kills landed mid-run, then exit {final.returncode}; "
            f"every input exactly once: {once}; every line whole: {whole}; billed twice: {sim.billed_twice()}; "
            f"{time.perf_counter() - started:.0f} s"
        )
        if not ok:
            print(final.stderr[-2000:])
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(machine())
    modes = list(MODES) if args.mode == "both" else [args.mode]
    return 0 if all([battery(mode, args.lines, args.kills, args.seed) for mode in modes]) else 1


if __name__ == "__main__":
    sys.exit(main())
