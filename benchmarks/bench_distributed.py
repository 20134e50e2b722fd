"""Four workers on Ray and on Spark sharing one deployment, against the same four each paced to a quarter of it.

    python benchmarks/bench_distributed.py [--rows 4000] [--tpm 1200000] [--rpm 7200] [--latency-ms 300]
                                           [--concurrency 200] [--workers 4] [--only ray|spark]

A table of --rows rows runs on a local Ray (--workers CPUs, ``asyncbatch.ray.map``) and a local Spark
(``local[--workers]``, ``asyncbatch.spark.map``), each run against a fresh simulator process holding one
deployment's quota, in two layouts (one partition per worker; four per worker, handed out as workers free
up) and three ways:

  shared, given      asyncbatch: every worker is given the deployment's --tpm/--rpm and shares it by
                     following the server's remaining-budget headers
  shared, adaptive   asyncbatch: no quota given; every worker learns it from the same headers
  1/4 each           what the engines' own HTTP clients do: each worker paced to a quarter of the quota
                     (requests spread at RPM/4, tokens from a bucket at TPM/4), a 429 waited out as its
                     retry-after says; no headers followed (a per-worker qps, Spark or Ray left to keep
                     the sum under the limit)

The rows are as a real table's are: not all alike. Each asks "Classify: <text>" with max_tokens 50, the
text growing from 100 to 1,200 characters along the table (a table sorted by source, short reviews first),
so partitions differ in tokens: a worker paced to a quarter with the heaviest partition finishes last,
while shared workers hand the quota to whoever still has work.

ideal = max(max(0, total charge - TPM/6) / (TPM/60), N / (RPM/60), N x latency / C) + latency, from the
server's own charge (as bench_quota.py). span = from the first worker's start to the last one's end (Ray's
and Spark's own start-up left out; the driver's whole call is shown apart as wall). Every row must come back
exactly once: each id once, each answered once by the server (billed twice: 0). Last, a wrong key: how
long until the job fails, and with which message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
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


def paced(rows: list[dict[str, Any]], url: str, rpm: float, tpm: float, concurrency: int) -> list[dict[str, Any]]:
    """One worker of "1/4 each": its rows at its own pace, as an engine's per-worker HTTP client sends them."""
    started = time.time()
    statuses = asyncio.run(_paced(rows, url, rpm, tpm, concurrency))
    ended = time.time()
    return [{"id": row["id"], "status": statuses[row["id"]], "started": started, "ended": ended} for row in rows]


async def _paced(rows: list[dict[str, Any]], url: str, rpm: float, tpm: float, concurrency: int) -> dict[str, str]:
    target = f"{url}/openai/deployments/bench/chat/completions?api-version=2024-10-21"
    headers = {"api-key": KEY, "content-type": "application/json"}
    loop = asyncio.get_running_loop()
    gap, rate, capacity = 60 / rpm, tpm / 60, tpm / 6  # requests spread evenly; tokens from a 10-second bucket
    level, filled, next_at = capacity, loop.time(), loop.time()
    slots, statuses = asyncio.Semaphore(concurrency), {}

    async def one(session: aiohttp.ClientSession, row_id: str, body: bytes) -> None:
        try:
            while True:
                async with session.post(target, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 429:
                        statuses[row_id] = "succeeded" if response.status == 200 else "failed"
                        return
                    wait = float(response.headers.get("retry-after", "1"))
                await asyncio.sleep(wait)
        finally:
            slots.release()

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tasks:
        for row in rows:
            content = TEMPLATE.format(**row)
            estimate = len(content) / 4 + MAX_TOKENS
            await slots.acquire()
            now = loop.time()
            level, filled = min(capacity, level + (now - filled) * rate), now
            wait = max(next_at - now, (estimate - level) / rate)
            if wait > 0:
                await asyncio.sleep(wait)
                now = loop.time()
                level, filled = min(capacity, level + (now - filled) * rate), now
            level, next_at = level - estimate, max(now, next_at) + gap
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS}
            tasks.create_task(one(session, row["id"], orjson.dumps(body)))
    return statuses


class Engine:
    """One engine's session: runs a job of rows in ``parts`` partitions, with asyncbatch or the paced baseline."""

    def asyncbatch(self, rows: list[dict[str, Any]], parts: int, **job: Any) -> list[tuple[str, str]]:
        """``(custom_id, status)`` of each row, in order."""
        raise NotImplementedError

    def paced(self, rows: list[dict[str, Any]], parts: int, **pace: Any) -> list[dict[str, Any]]:
        """Each row's ``id``, ``status`` and its worker's ``started``/``ended``, in order."""
        raise NotImplementedError


def run(a: argparse.Namespace, engine: Engine, rows: list[dict[str, Any]], parts: int, way: str) -> dict[str, Any]:
    sim_args = ["--tpm", str(a.tpm), "--rpm", str(a.rpm), "--latency-ms", str(a.latency_ms)]
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp, simulator_process(*sim_args) as url:
        started = time.perf_counter()
        if way == "1/4 each":
            share = {"rpm": a.rpm / a.workers, "tpm": a.tpm / a.workers, "concurrency": a.concurrency // a.workers}
            out = engine.paced(rows, parts, url=url, **share)
            done = [(row["id"], row["status"]) for row in out]
            took = max(row["ended"] for row in out) - min(row["started"] for row in out)
        else:
            quota = {"tpm": a.tpm, "rpm": a.rpm} if way == "shared, given" else {}
            limits = asyncbatch.Limits(concurrency=a.concurrency, **quota)
            done = engine.asyncbatch(rows, parts, endpoint=endpoint(url), limits=limits, state_dir=Path(tmp))
            took = span(Path(tmp))
        wall = time.perf_counter() - started
        stats = simulator_stats(url)
    once = [custom_id for custom_id, _ in done] == [row["id"] for row in rows]
    once = once and all(status == "succeeded" for _, status in done) and stats["billed_twice"] == 0
    once = once and stats["statuses"].get("200", 0) == len(rows)
    return {"span": took, "wall": wall, "stats": stats, "once": once}


def wrong_key(engine: Engine, rows: list[dict[str, Any]], parts: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp, simulator_process() as url:
        job = {"endpoint": endpoint(url, "a-wrong-key"), "limits": asyncbatch.Limits(), "state_dir": Path(tmp)}
        started = time.perf_counter()
        try:
            engine.asyncbatch(rows, parts, **job)
        except asyncbatch.FatalAPIError as error:
            return time.perf_counter() - started, f"FatalAPIError: {error}"
        except Exception as error:
            return time.perf_counter() - started, f"{type(error).__name__} (not asyncbatch's)"
    return time.perf_counter() - started, "no error"


def _job(workers: int) -> dict[str, Any]:
    request = asyncbatch.RequestDefaults(max_tokens=MAX_TOKENS)
    return {"template": TEMPLATE, "request": request, "workers": workers, "reporter": asyncbatch.Reporter()}


class RayEngine(Engine):
    def __init__(self, workers: int) -> None:
        import ray
        import ray.cloudpickle
        import ray.data

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the baseline travels by value
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.ray, self.workers = ray, workers

    def asyncbatch(self, rows: list[dict[str, Any]], parts: int, **job: Any) -> list[tuple[str, str]]:
        import asyncbatch.ray

        ds = self.ray.data.from_items(rows, override_num_blocks=parts)
        out = asyncbatch.ray.map(ds, **_job(self.workers), **job).select_columns(["custom_id", "status"])
        return [(row["custom_id"], row["status"]) for row in out.take_all()]

    def paced(self, rows: list[dict[str, Any]], parts: int, **pace: Any) -> list[dict[str, Any]]:
        def batch(table: Any) -> Any:
            import pyarrow as pa

            return pa.Table.from_pylist(paced(table.to_pylist(), **pace))

        ds = self.ray.data.from_items(rows, override_num_blocks=parts)
        compute = self.ray.data.TaskPoolStrategy(size=self.workers)
        out = ds.map_batches(batch, batch_format="pyarrow", batch_size=None, compute=compute)
        out.context.execution_options.preserve_order = True
        return list(out.take_all())

    def close(self) -> None:
        self.ray.shutdown()


class SparkEngine(Engine):
    def __init__(self, workers: int) -> None:
        os.environ["PYSPARK_PYTHON"] = sys.executable
        from pyspark import cloudpickle
        from pyspark.sql import SparkSession

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        self.spark = (
            SparkSession.builder.master(f"local[{workers}]")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        self.workers = workers

    def frame(self, rows: list[dict[str, Any]], parts: int) -> Any:
        return self.spark.createDataFrame(self.spark.sparkContext.parallelize(rows, parts)).select("id", "text")

    def asyncbatch(self, rows: list[dict[str, Any]], parts: int, **job: Any) -> list[tuple[str, str]]:
        import asyncbatch.spark

        out = asyncbatch.spark.map(self.frame(rows, parts), **_job(self.workers), **job)
        return [(row.custom_id, row.status) for row in out.select("custom_id", "status").collect()]

    def paced(self, rows: list[dict[str, Any]], parts: int, **pace: Any) -> list[dict[str, Any]]:
        import pyarrow as pa

        def partition(batches: Iterator[Any]) -> Iterator[Any]:
            given = [row for batch in batches for row in batch.to_pylist()]
            yield pa.RecordBatch.from_pylist(paced(given, **pace), schema=schema)

        schema = pa.schema([("id", pa.string()), ("status", pa.string()), ("started", pa.float64()),
                            ("ended", pa.float64())])  # fmt: skip
        out = self.frame(rows, parts).mapInArrow(partition, "id string, status string, started double, ended double")
        return [row.asDict() for row in out.collect()]

    def close(self) -> None:
        self.spark.stop()


@contextmanager
def session(name: str, workers: int) -> Iterator[Engine]:
    engine: RayEngine | SparkEngine = RayEngine(workers) if name == "ray" else SparkEngine(workers)
    try:
        yield engine
    finally:
        engine.close()


WAYS = ("shared, given", "shared, adaptive", "1/4 each")


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
    load = os.getloadavg()[0]
    results: list[tuple[str, str, str, dict[str, Any]]] = []
    failures: list[tuple[str, float, str]] = []
    layouts = {f"{a.workers} partitions": a.workers, f"{4 * a.workers} partitions": 4 * a.workers}
    for name in ("ray", "spark"):
        if a.only not in (None, name):
            continue
        with session(name, a.workers) as engine:
            run(a, engine, table(8 * a.workers), a.workers, "shared, given")  # warm: every worker started
            for layout, parts in layouts.items():
                for way in WAYS:
                    results.append((name, layout, way, run(a, engine, rows, parts, way)))
            failures.append((name, *wrong_key(engine, rows, a.workers)))
    print(f"machine: {machine()}; load average: {load:.1f} before the run, {os.getloadavg()[0]:.1f} after")
    print(
        f"{a.rows} rows, {a.workers} workers; one deployment: TPM {a.tpm:,}, RPM {a.rpm:,}, {a.latency_ms:g} ms "
        f"latency; concurrency {a.concurrency} in all"
    )
    print(f"{a.workers} partitions' shares of the tokens: {' / '.join(f'{s:.0%}' for s in shares)}")
    print(f"shared ideal {best:.1f} s")
    header = f"{'engine':<7}{'layout':<15}{'workers':<18}{'span s':>7}{'x ideal':>8}{'429s':>6}{'%':>6}{'wall s':>8}"
    print(header + "  once")
    for name, layout, way, r in results:
        throttled = r["stats"]["statuses"].get("429", 0)
        share = 100 * throttled / max(1, r["stats"]["requests"])
        print(
            f"{name:<7}{layout:<15}{way:<18}{r['span']:>7.1f}{r['span'] / best:>8.2f}{throttled:>6}{share:>5.1f}%"
            f"{r['wall']:>8.1f}  {r['once']}"
        )
    for name, seconds, said in failures:
        print(f"{name}: a wrong key failed the job after {seconds:.1f} s with {said}")
    print("(span: first worker's start to last one's end; wall: the driver's whole call, Ray's or Spark's start-up in)")


if __name__ == "__main__":
    main()
