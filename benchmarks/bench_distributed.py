"""Four workers on Ray and on Spark sharing one deployment, against the same four each paced to a quarter of it.

    python benchmarks/bench_distributed.py [--rows 4000] [--tpm 1200000] [--rpm 7200] [--latency-ms 300]
                                           [--concurrency 200] [--workers 4] [--only ray|spark]

A table of --rows rows runs through ``asyncbatch.ray.map`` (a local Ray with --workers CPUs, the table in
--workers blocks) and ``asyncbatch.spark.map`` (``local[--workers]``, --workers partitions), each against a
fresh simulator process with one deployment's quota, in three ways:

  shared, given      every worker is given the deployment's --tpm/--rpm, and shares it by following the
                     server's remaining-budget headers (what asyncbatch does)
  shared, adaptive   no quota given: every worker learns it from the same headers
  quarter each       every worker paced to a quarter of the quota, as the engines' own HTTP clients do
                     (a per-worker qps or concurrency, Spark or Ray left to keep the sum under the limit)

The rows are as a real table's are: not all alike. Each asks "Classify: <text>" with max_tokens 50, the
text growing from 100 to 1,200 characters along the table (a table sorted by source, short reviews first),
so the workers' partitions differ in tokens: a worker paced to a quarter with the heaviest partition
finishes last, while shared workers hand the quota to whoever still has work.

ideal = max(max(0, total charge - TPM/6) / (TPM/60), N / (RPM/60), N x latency / C) + latency, from the
server's own charge (as bench_quota.py); span = from the first worker's run start to the last one's end
(from the workers' counters under state_dir: Ray's and Spark's own start-up is left out, and shown
apart as the driver's wall time). Every row must come back exactly once: each id once, each answered
once by the server (billed twice: 0). Last, a wrong key: how long until the job fails with asyncbatch's
message.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from _common import KEY, machine, simulator_process, simulator_stats

import asyncbatch
from asyncbatch.simulator.charge import Charging, charge

TEMPLATE = "Classify: {text}"
MAX_TOKENS = 50


def table(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"row {i}: " + "x" * (100 + 1100 * i // n)} for i in range(n)]


def ideal(a: argparse.Namespace, rows: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """The shared ideal span, and each partition's share of the tokens."""
    bodies = [
        {"messages": [{"role": "user", "content": TEMPLATE.format(**row)}], "max_tokens": MAX_TOKENS} for row in rows
    ]
    charges = [charge(b, Charging()) for b in bodies]
    total, latency = sum(charges), a.latency_ms / 1000
    best = max(max(0, total - a.tpm / 6) / (a.tpm / 60), len(rows) / (a.rpm / 60), len(rows) * latency / a.concurrency)
    size = len(rows) // a.workers
    shares = [sum(charges[i * size : (i + 1) * size]) / total for i in range(a.workers)]
    return best + latency, shares


def span(state_dir: Path) -> float:
    """From the first worker's run start to the last one's end, from their counters."""
    snapshots = [orjson.loads(p.read_bytes()) for p in state_dir.glob("jobs/*/stats/*.json")]
    return max(s["at"] for s in snapshots) - min(s["started_at"] for s in snapshots)


def endpoint(url: str, key: str = KEY) -> asyncbatch.Endpoint:
    return asyncbatch.Endpoint(kind="azure", base_url=url, api_key=key, deployment="bench", simulated=True)


Mapper = Callable[..., list[tuple[str, str]]]  # runs the job; returns (custom_id, status) in order


def run(a: argparse.Namespace, mapper: Mapper, rows: list[dict[str, Any]], limits: asyncbatch.Limits) -> dict[str, Any]:
    sim_args = ["--tpm", str(a.tpm), "--rpm", str(a.rpm), "--latency-ms", str(a.latency_ms)]
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp, simulator_process(*sim_args) as url:
        started = time.perf_counter()
        out = mapper(rows, endpoint=endpoint(url), limits=limits, state_dir=Path(tmp))
        wall = time.perf_counter() - started
        stats = simulator_stats(url)
        engine_span = span(Path(tmp))
    once = [custom_id for custom_id, _ in out] == [row["id"] for row in rows]
    once = once and all(status == "succeeded" for _, status in out) and stats["billed_twice"] == 0
    once = once and stats["statuses"].get("200", 0) == len(rows)
    return {"span": engine_span, "wall": wall, "stats": stats, "once": once}


def wrong_key(mapper: Mapper, rows: list[dict[str, Any]]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp, simulator_process() as url:
        started = time.perf_counter()
        try:
            mapper(rows, endpoint=endpoint(url, "a-wrong-key"), limits=asyncbatch.Limits(), state_dir=Path(tmp))
        except asyncbatch.FatalAPIError as error:
            return time.perf_counter() - started, f"FatalAPIError: {error}"
        except Exception as error:
            return time.perf_counter() - started, f"{type(error).__name__} (not asyncbatch's)"
    return time.perf_counter() - started, "no error"


@contextmanager
def ray_mapper(workers: int) -> Iterator[Mapper]:
    import ray
    import ray.data

    import asyncbatch.ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False

    def mapper(rows: list[dict[str, Any]], **job: Any) -> list[tuple[str, str]]:
        ds = ray.data.from_items(rows, override_num_blocks=workers)
        out = asyncbatch.ray.map(ds, **_job(workers), **job)
        return [(row["custom_id"], row["status"]) for row in out.select_columns(["custom_id", "status"]).take_all()]

    try:
        yield mapper
    finally:
        ray.shutdown()


@contextmanager
def spark_mapper(workers: int) -> Iterator[Mapper]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import asyncbatch.spark

    spark = (
        SparkSession.builder.master(f"local[{workers}]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    def mapper(rows: list[dict[str, Any]], **job: Any) -> list[tuple[str, str]]:
        df = spark.createDataFrame(rows).select("id", "text")  # defaultParallelism slices, in order
        out = asyncbatch.spark.map(df, **_job(workers), **job)
        return [(row.custom_id, row.status) for row in out.select("custom_id", "status").collect()]

    try:
        yield mapper
    finally:
        spark.stop()


def _job(workers: int) -> dict[str, Any]:
    request = asyncbatch.RequestDefaults(max_tokens=MAX_TOKENS)
    return {"template": TEMPLATE, "request": request, "workers": workers, "reporter": asyncbatch.Reporter()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--tpm", type=int, default=1_200_000)
    p.add_argument("--rpm", type=int, default=7200)
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--only", choices=["ray", "spark"])
    a = p.parse_args()
    rows = table(a.rows)
    best, shares = ideal(a, rows)
    quarter = {"tpm": a.tpm // a.workers, "rpm": a.rpm // a.workers}
    ways = {
        "shared, given": asyncbatch.Limits(concurrency=a.concurrency, tpm=a.tpm, rpm=a.rpm),
        "shared, adaptive": asyncbatch.Limits(concurrency=a.concurrency),
        f"1/{a.workers} each, given": asyncbatch.Limits(concurrency=a.concurrency, **quarter),
    }
    load = os.getloadavg()[0]
    results: list[tuple[str, str, dict[str, Any]]] = []
    failures: list[tuple[str, float, str]] = []
    engines = {"ray": ray_mapper, "spark": spark_mapper}
    for name, engine in engines.items():
        if a.only not in (None, name):
            continue
        with engine(a.workers) as mapper:
            run(a, mapper, table(8 * a.workers), ways["shared, given"])  # warm: every worker started, imports done
            for way, limits in ways.items():
                results.append((name, way, run(a, mapper, rows, limits)))
            failures.append((name, *wrong_key(mapper, rows)))
    print(f"machine: {machine()}; load average: {load:.1f} before the run, {os.getloadavg()[0]:.1f} after")
    print(
        f"{a.rows} rows, {a.workers} workers; one deployment: TPM {a.tpm:,}, RPM {a.rpm:,}, {a.latency_ms:g} ms "
        f"latency; concurrency {a.concurrency} in all"
    )
    print(f"partitions' shares of the tokens: {' / '.join(f'{s:.0%}' for s in shares)}; shared ideal {best:.1f} s")
    print(f"{'engine':<8}{'workers':<20}{'span s':>8}{'x ideal':>9}{'429s':>7}{'%':>7}{'wall s':>8}  exactly once")
    for name, way, r in results:
        throttled = r["stats"]["statuses"].get("429", 0)
        share = 100 * throttled / max(1, r["stats"]["requests"])
        print(
            f"{name:<8}{way:<20}{r['span']:>8.1f}{r['span'] / best:>9.2f}{throttled:>7}{share:>6.1f}%"
            f"{r['wall']:>8.1f}  {r['once']}"
        )
    for name, seconds, said in failures:
        print(f"{name}: a wrong key failed the job after {seconds:.1f} s: {said}")
    print("(span: the workers' runs, first start to last end; wall: the driver's call, Ray's or Spark's start-up in)")


if __name__ == "__main__":
    main()
