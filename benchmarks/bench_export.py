"""Export: a million results back in input order, in bounded memory.

    python benchmarks/bench_export.py                 # --lines 1000000
    python benchmarks/bench_export.py --lines 200000

Writes a results file of N lines in a shuffled (completion) order, 1% of them in
the errors file, and the input they came from. Then, side by side:

* ``asyncbatch export --ordered`` (JSONL), and with ``--input`` to CSV and Parquet;
* the usual alternative, ``jq -s 'sort_by(.line)'`` done in Python: read every line,
  parse it, sort the list (what any whole-file sort does).

Prints each one's seconds and peak RSS, and the ratio of peak RSS. The target is
at most 200 MB for ``export --ordered`` at 1M lines.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import machine
from bench_scale import peak_rss_mb

NAIVE = """
import json, sys
rows = [json.loads(line) for name in sys.argv[1:3] for line in open(name)]
rows.sort(key=lambda r: r["line"])
with open(sys.argv[3], "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\\n")
"""


def write_files(work: Path, n: int) -> None:
    order = list(range(1, n + 1))
    random.Random(1).shuffle(order)
    with (work / "in.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "company": f"Company {i}", "notes": "public sources only"}) + "\n")
    with (work / "in.results.jsonl").open("w") as ok, (work / "in.results.errors.jsonl").open("w") as bad:
        for line in order:
            if line % 100 == 0:
                error = {"code": "server_error", "message": "The server had an error"}
                bad.write(json.dumps({"custom_id": str(line - 1), "error": error, "attempts": 8, "line": line}) + "\n")
                continue
            body = {
                "id": f"chatcmpl-{line}",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 120}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70},
            }
            record = {
                "id": f"batch_req_{line:032x}",
                "custom_id": str(line - 1),
                "response": {"status_code": 200, "request_id": f"req-{line}", "body": body},
                "error": None,
                "output": {"name": f"Company {line - 1}", "industry": "widgets", "employees": line % 5000},
                "attempts": 1,
                "latency_ms": 412.5,
                "line": line,
            }
            ok.write(json.dumps(record) + "\n")


def measure(args: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process."""
    started = time.perf_counter()
    rss = peak_rss_mb(args, cwd)
    return time.perf_counter() - started, rss


def check_order(path: Path, n: int) -> bool:
    with path.open() as f:
        return [json.loads(line)["line"] for line in f] == list(range(1, n + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000)
    a = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_files(work, a.lines)
        size = (work / "in.results.jsonl").stat().st_size / 1e6
        print(f"{a.lines:,} lines, results file {size:.0f} MB, shuffled")
        cli = [sys.executable, "-m", "asyncbatch", "export", "in.results.jsonl"]
        runs = {
            "export --ordered (jsonl)": [*cli, "--ordered", "-o", "ordered.jsonl"],
            "export --input, csv": [*cli, "--input", "in.jsonl", "-o", "table.csv"],
            "export --input, parquet": [*cli, "--input", "in.jsonl", "-o", "table.parquet"],
            "naive: load all, sort (like jq -s)": [
                sys.executable,
                "-c",
                NAIVE,
                "in.results.jsonl",
                "in.results.errors.jsonl",
                "naive.jsonl",
            ],
        }
        figures = {name: measure(args, work) for name, args in runs.items()}
        ordered = check_order(work / "ordered.jsonl", a.lines)
    for name, (seconds, rss) in figures.items():
        print(f"  {name:<36} {seconds:6.1f} s   peak RSS {rss:6.0f} MB")
    ours, naive = figures["export --ordered (jsonl)"][1], figures["naive: load all, sort (like jq -s)"][1]
    print(f"peak RSS, naive / export --ordered: {naive / ours:.1f}x")
    print(f"export --ordered wrote all {a.lines:,} lines in input order: {ordered}")
    ok = ordered and ours <= 200
    print(f"target (export --ordered at most 200 MB): {'met' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
