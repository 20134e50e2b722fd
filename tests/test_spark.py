"""asyncbatch.spark on a local Spark (``local[2]``, a task may fail once), against the simulator with a quota.

One Spark session, started once (the JVM starts slowly): the steps run in one test.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncbatch
import asyncbatch.spark
from asyncbatch import FatalAPIError
from asyncbatch.simulator import SimConfig, serve_in_thread
from tests.distributed_helpers import (
    NULL_ROW,
    TEMPLATE,
    Killer,
    Sentiment,
    comparable,
    endpoint,
    expected,
    json_reporter,
    recorded,
    rows,
    with_null,
)

QUOTA = {"tpm": 200_000, "rpm": 6_000}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime: apt-get install openjdk-17-jre-headless (.ci/run does)")
    from pyspark import cloudpickle
    from pyspark.sql import SparkSession

    cloudpickle.register_pickle_by_value(sys.modules["tests.distributed_helpers"])  # the model travels by value
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYSPARK_PYTHON", sys.executable)  # the workers run this interpreter, with asyncbatch on its path
        session = (
            SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is tried once more
            .appName("asyncbatch-tests")
            .config("spark.ui.enabled", "false")
            # A short job: the JVM's quick compiler and serial GC, no whole-stage code generation (a third less CPU)
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto")
            .config("spark.sql.codegen.wholeStage", "false")
            .config("spark.sql.adaptive.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10")  # several batches per partition
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


def _rows_columns_and_order_are_asyncbatch_maps_and_a_bad_row_is_a_row(spark: Any, tmp_path: Path) -> None:
    given = with_null(rows(24))  # and a null text: a bad row, not sent
    script = {"Classify: review 5": ["content-filter-400"] * 2}  # refused for both runs: one bad row each
    reporter, summary = json_reporter()
    with serve_in_thread(SimConfig(latency=0.02, script=script, **QUOTA)) as (url, sim):
        out = asyncbatch.spark.map(
            spark.createDataFrame(given).select("id", "text", "stars").coalesce(1),  # one partition: made into 2
            template=TEMPLATE,
            tools=Sentiment,
            endpoint=endpoint(url),
            limits=asyncbatch.Limits(concurrency=8, **QUOTA),
            state_dir=tmp_path / "state",
            workers=2,
            reporter=reporter,
        )
        sent, billed_twice = sim.requests, sim.billed_twice()
        want = expected(given, url)
    assert out.rdd.getNumPartitions() == 2
    got = [row.asDict() for row in out.collect()]
    assert [list(row) for row in got] == [list(row) for row in want]  # the same columns, in the same order
    assert [comparable(row) for row in got] == [comparable(row) for row in want]  # the same values, in order
    assert [row["line"] for row in got] == [n for _ in range(2) for batch in (10, 2) for n in range(1, batch + 1)]
    assert dict(out.dtypes)["output.score"] == "double" and dict(out.dtypes)["stars"] == "bigint"
    assert sent == 23 and billed_twice == 0  # every row sent once, but the null one
    null = got[NULL_ROW]
    assert (null["status"], null["error_code"]) == ("failed", "invalid_input")
    assert null["error_message"].endswith(": template field 'text' is null (empty in the table)")
    figures = summary()
    assert (figures["succeeded"], figures["failed"]) == (22, 2)
    assert figures["failure_reasons"] == {"content_filter": 1, "invalid_input": 1}
    assert figures["latency_p50_ms"] is not None and figures["latency_p95_ms"] is not None  # the workers'
    assert figures["throttled"] == sim.statuses["429"]


def _a_task_killed_mid_partition_is_run_again_and_sends_no_request_twice(spark: Any, tmp_path: Path) -> None:
    given, state = rows(40), tmp_path / "state"
    with serve_in_thread(SimConfig(latency=0.05, outages=((0.6, 2.0),), **QUOTA)) as (url, sim):
        killer = Killer(sim, state)
        out = asyncbatch.spark.map(
            spark.createDataFrame(given).repartition(2),
            template=TEMPLATE,
            tools=Sentiment,
            endpoint=endpoint(url),
            limits=asyncbatch.Limits(concurrency=2, **QUOTA),
            state_dir=state,
            workers=2,
            reporter=asyncbatch.Reporter(),
        )
        killer.join()
        answered_once = sim.statuses["200"] == 40 and sim.billed_twice() == 0
    assert 0 < len(killer.recorded_at_kill) < 40
    assert answered_once
    assert sorted(row.custom_id for row in out.collect()) == [row["id"] for row in given]
    assert recorded(state) == {row["id"] for row in given}


def _a_missing_deployment_fails_the_job_at_once_with_asyncbatchs_message(spark: Any, tmp_path: Path) -> None:
    with serve_in_thread(SimConfig(deployment="another")) as (url, sim), pytest.raises(FatalAPIError) as raised:
        asyncbatch.spark.map(
            spark.createDataFrame(rows(40)),
            template=TEMPLATE,
            endpoint=endpoint(url),
            limits=asyncbatch.Limits(concurrency=4),
            state_dir=tmp_path / "state",
            workers=2,
            reporter=asyncbatch.Reporter(),
        )
    assert raised.value.kind == "not_found" and "deployment" in str(raised.value)
    assert sim.requests <= 4  # the job's concurrency at most: no request per row, no retries per task


BLOCKER = """
import sys


class _NotInstalled:  # this Python as a worker without asyncbatch installed (a local venv's Spark, no PYSPARK_PYTHON)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "asyncbatch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NotInstalled())
"""


def _workers_without_asyncbatch_fail_the_job_saying_what_to_install(spark: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir(parents=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    environment = spark.sparkContext.environment  # the workers' environment, for jobs defined from now on
    environment["PYTHONPATH"] = str(blocker)
    try:
        with serve_in_thread(SimConfig()) as (url, sim), pytest.raises(asyncbatch.ConfigError) as raised:
            asyncbatch.spark.map(
                spark.createDataFrame(rows(4)),
                template=TEMPLATE,
                endpoint=endpoint(url),
                state_dir=tmp_path / "state",
                workers=2,
                reporter=asyncbatch.Reporter(),
            )
    finally:
        del environment["PYTHONPATH"]
    assert str(raised.value).startswith("the Spark workers' Python cannot import 'asyncbatch")
    assert f"PYSPARK_PYTHON={sys.executable}" in str(raised.value) and sim.requests == 0


def test_on_a_local_spark(spark: Any, tmp_path: Path) -> None:
    """The steps share one Spark session: one test, so that one xdist worker runs them (``xdist_group`` does
    not group tests with this pytest), and the session starts once."""
    _rows_columns_and_order_are_asyncbatch_maps_and_a_bad_row_is_a_row(spark, tmp_path / "rows")
    _a_task_killed_mid_partition_is_run_again_and_sends_no_request_twice(spark, tmp_path / "killed")
    _a_missing_deployment_fails_the_job_at_once_with_asyncbatchs_message(spark, tmp_path / "missing")
    _workers_without_asyncbatch_fail_the_job_saying_what_to_install(spark, tmp_path / "not_installed")
