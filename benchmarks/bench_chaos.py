"""Seeded schedules of hostile server behaviour through the CLI, with every invariant checked.

    python benchmarks/bench_chaos.py [--schedules 200] [--first-seed 0]

Each schedule (``asyncbatch.simulator.invariants.draw``) mixes faults from the
simulator's catalogue (5xx, resets, hangs, slow and 50 MB-class bodies, broken
answers, absurd header values, hint-less 429s), an outage window, fixed-minute
windows, a pool whose second member dies, and a kill -9 point; the CLI is run and
resumed (after kill -9 or exit 75) as a user would. Printed per schedule: its
faults, the exits, exactly once, billed twice, wall time against the ideal (the
lines at the concurrency with no faults), peak RSS, and every violated invariant.

Then two named scenarios: 1,000 lines against 5% 500s, 3% 503s, 2% resets and 1%
hangs (``--concurrency 50 --timeout 3 --max-attempts 8``), ten seeds.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _common import machine

from asyncbatch.simulator.invariants import Schedule, draw, play


def describe(s: Schedule) -> str:
    parts = [f"{name} {rate:.0%}" for name, rate in s.faults.items()]
    if s.outage:
        parts.append(f"down {s.outage[1]:.1f}s")
    if s.window == "minute":
        parts.append("minute windows")
    if s.pool:
        parts.append("pool" + (" (one dies)" if s.dies_after is not None else ""))
    if s.kill_after is not None:
        parts.append("kill -9")
    return f"{s.api}, {s.lines} lines: " + ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", type=int, default=200)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--scenario-runs", type=int, default=10)
    a = p.parse_args()
    print(f"machine: {machine()}")
    print(f"{'seed':>5} {'exits':<14}{'once':>5}{'wall s':>8}{'RSS MB':>8}  schedule")
    broken, walls, peaks, started = 0, [], [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.first_seed, a.first_seed + a.schedules):
            schedule = draw(random.Random(seed))
            found, runs = play(schedule, Path(tmp) / f"s{seed}")
            exits = ",".join("k" if r.killed else str(r.code) for r in runs)
            wall, peak = sum(r.seconds for r in runs), max(r.peak_rss_mb for r in runs)
            walls.append(wall)
            peaks.append(peak)
            once = not any("recorded" in f or "whole record" in f for f in found)
            print(f"{seed:>5} {exits:<14}{'yes' if once else 'NO':>5}{wall:>8.1f}{peak:>8.0f}  {describe(schedule)}")
            for violation in found:
                print(f"{'':>6}VIOLATION: {violation}")
            broken += bool(found)
        median = sorted(walls)[len(walls) // 2]
        print(
            f"{a.schedules} schedules in {time.monotonic() - started:.0f} s: {a.schedules - broken} with every "
            f"invariant holding, {broken} broken; wall time per schedule median {median:.1f} s, "
            f"max {max(walls):.1f} s; peak RSS max {max(peaks):.0f} MB"
        )
        scenario = {"500": 0.05, "503": 0.03, "reset": 0.02, "hang": 0.01}
        codes = []
        for seed in range(a.scenario_runs):
            options = ("-c", "50", "--timeout", "3", "--max-attempts", "8")
            found, runs = play(Schedule(seed=seed, faults=scenario, lines=1000, args=options), Path(tmp) / f"f{seed}")
            codes.append(runs[-1].code)
            for violation in found:
                print(f"  11% faults, seed {seed}: VIOLATION: {violation}")
        print(f"11% faults (1,000 lines): exits {codes}; exit 0 in {codes.count(0)} of {len(codes)}")


if __name__ == "__main__":
    main()
