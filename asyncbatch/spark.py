"""``asyncbatch.spark.map``: a Spark DataFrame's rows through the engine, in every partition, under one quota.

    import asyncbatch.spark

    out = asyncbatch.spark.map(df, template="Classify: {text}", tools=Sentiment, endpoint=endpoint,
                               limits=asyncbatch.Limits(tpm=1_200_000, rpm=7_200, concurrency=200),
                               state_dir="/mnt/shared/classify", workers=8)

The DataFrame runs in ``workers`` partitions through ``mapInArrow`` with a declared schema; each Arrow
batch Spark hands a task (or ``batch_size`` rows of one) is a batch: the engine runs on it
(``asyncbatch.map``), with its record under ``state_dir`` (see ``asyncbatch.distributed``). The job runs
when called, with Spark's progress and asyncbatch's own status lines and summary on the driver; the
results come back persisted: the input's columns with ``asyncbatch.map``'s around them. Imported only
when used: ``pip install "asyncbatch[spark]"``.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import Deployment, Endpoint, Limits, RequestDefaults
from .display.reporters import Reporter
from .distributed import Column, Spec, Watch, input_names, prepare, run_batch
from .errors import ConfigError


def map(  # the data world's word; the builtin is not used here
    df: Any,
    *,
    template: str,
    tools: Any = None,
    response_format: Any = None,
    endpoint: Endpoint | None = None,
    deployments: tuple[Deployment, ...] = (),
    limits: Limits | None = None,
    request: RequestDefaults | None = None,
    state_dir: str | Path,
    workers: int | None = None,
    batch_size: int | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> Any:
    """Run ``template`` over each row of ``df`` in ``workers`` partitions; return the results.

    :param df: a ``pyspark.sql.DataFrame``.
    :param limits: the job's: ``tpm``/``rpm`` are the deployment's (every worker shares them, following
        the server's headers); ``concurrency`` is the job's, split between the workers.
    :param state_dir: a directory every executor reaches (a shared or mounted file system): the record
        that makes the job exactly once and resumable, and the response cache.
    :param workers: tasks at once: the cores the job runs on (default: Spark's default parallelism); the
        DataFrame is repartitioned to that many when it has fewer partitions, its rows kept in order.
    :param batch_size: rows per batch at most (default: each Arrow batch Spark hands over,
        ``spark.sql.execution.arrow.maxRecordsPerBatch`` rows).
    :param reporter: the driver's display (default: a status line every few seconds, and the summary).
    :param options: any other ``RunConfig`` option (``retry_failed``, ``prices``, ``cache``, ``max_attempts``...).
    :returns: a persisted ``pyspark.sql.DataFrame``, each partition in its input order.
    :raises FatalAPIError: a wrong key, deployment or endpoint, raised once for the job.
    :raises ConfigError: an option the job cannot run with.
    :raises JobStopped: the job stopped early, resumably (an exhausted quota): run it again later.
    """
    from pyspark import StorageLevel

    if workers is None:
        workers = max(1, int(df.sparkSession.sparkContext.defaultParallelism))
    spec = prepare(
        template=template,
        tools=tools,
        response_format=response_format,
        endpoint=endpoint,
        deployments=deployments,
        limits=limits,
        request=request,
        state_dir=state_dir,
        workers=workers,
        options=options,
        call="asyncbatch.spark.map",
    )
    df = _partitioned(df, workers)
    mapped = df.mapInArrow(functools.partial(_partition, spec, batch_size), schema(spec, df.schema))
    mapped = mapped.persist(StorageLevel.MEMORY_AND_DISK)
    with Watch(spec, reporter) as watch:
        try:
            mapped.count()  # runs the job now, once: the persisted rows are what the caller reads
        except Exception as exc:  # Spark wraps a worker's error in its own: the marker says what it was
            if (error := watch.failure() or _not_installed(exc)) is None:
                raise
            raise error from None
    return mapped


_MISSING = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")


def _not_installed(error: Exception) -> ConfigError | None:
    """A module the workers' Python cannot import (asyncbatch itself, most often: a local Spark runs its
    workers on the ``python3`` on PATH, not this venv's), said as what to do, in place of Spark's traceback."""
    if (found := _MISSING.search(str(error))) is None:
        return None
    return ConfigError(
        f"the Spark workers' Python cannot import {found[1]!r}: asyncbatch runs on every worker, so it (and "
        "what the rows' models import) must be installed where the workers run. HINT: on a local Spark, set "
        f"PYSPARK_PYTHON={sys.executable} before the session starts; on a cluster, install "
        '"asyncbatch[spark]" on it (Databricks: %pip install in the notebook, or a cluster library)'
    )


def _partitioned(df: Any, workers: int) -> Any:
    """``df`` in at least ``workers`` partitions, its rows in the same order: so its batches, and their keys, are
    the same every time the job runs. More partitions are kept: Spark hands them to the workers as they free up."""
    if df.rdd.getNumPartitions() >= workers:
        return df
    from pyspark.sql import functions

    order = "__asyncbatch_order"  # a range of row numbers per partition: the order kept, the split even
    numbered = df.withColumn(order, functions.monotonically_increasing_id())
    return numbered.repartitionByRange(workers, order).sortWithinPartitions(order).drop(order)


def schema(spec: Spec, given: Any) -> Any:
    """The results' declared schema: the input's fields with ours around them."""
    from pyspark.sql.types import StructField, StructType

    def ours(columns: tuple[Column, ...]) -> list[Any]:
        return [StructField(c.name, _spark_type(c.kind), True) for c in columns]

    names = input_names(f.name for f in given.fields)
    inputs = [StructField(name, f.dataType, f.nullable) for name, f in zip(names, given.fields, strict=True)]
    return StructType([*ours(spec.front), *inputs, *ours(spec.back)])


def _spark_type(kind: str) -> Any:
    from pyspark.sql.types import ArrayType, BooleanType, DoubleType, LongType, StringType

    types = {"int": LongType(), "float": DoubleType(), "bool": BooleanType(), "vector": ArrayType(DoubleType())}
    return types.get(kind, StringType())


def _partition(spec: Spec, batch_size: int | None, batches: Iterator[Any]) -> Iterator[Any]:
    """One partition: each Arrow batch (or ``batch_size`` rows of one) run as a batch, in order."""
    import pyarrow as pa

    for batch in batches:
        size = batch_size or max(1, batch.num_rows)
        for start in range(0, max(1, batch.num_rows), size):
            table = pa.Table.from_batches([batch.slice(start, size)], schema=batch.schema)
            yield from run_batch(spec, table).to_batches()
