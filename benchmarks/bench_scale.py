"""Scale: bounded memory at 10 million lines, and a fast resume with a million done.

    python benchmarks/bench_scale.py               # --lines 10000000
    python benchmarks/bench_scale.py --lines 2000000

1. Peak RSS of ``--dry-run`` on a file of N records with --template (it reads,
   checks and estimates every line, and looks for duplicate ids in all of them).
2. Resume with 1,000,000 inputs done and 2,000 to go: seconds from starting the
   CLI to the simulator seeing its first request, and peak RSS (bench_resume's part B).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine
from bench_resume import part_b


def peak_rss_mb(args: list[str], cwd: Path) -> float:
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def write_records(path: Path, n: int) -> None:
    with path.open("w") as f:
        block = []
        for i in range(n):
            block.append(json.dumps({"id": i, "company": f"Company {i}", "notes": "public sources only"}))
            if len(block) == 100_000:
                f.write("\n".join(block) + "\n")
                block = []
        if block:
            f.write("\n".join(block) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=10_000_000)
    a = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_records(work / "big.jsonl", a.lines)
        started = time.perf_counter()
        args = ["big.jsonl", "--dry-run", "--template", "Tell me about {company}. Notes: {notes}"]
        rss = peak_rss_mb([sys.executable, "-m", "asyncbatch", *args], work)
        took = time.perf_counter() - started
    print(f"--dry-run of {a.lines:,} lines: peak RSS {rss:.0f} MB (limit 150 MB), {took:.0f} s")
    ok = part_b()
    print(f"(max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    sys.exit(0 if ok and rss <= 150 else 1)


if __name__ == "__main__":
    main()
