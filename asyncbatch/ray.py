"""``asyncbatch.ray.map``: a Ray Dataset's rows through the engine, on every worker, under one quota.

    import asyncbatch.ray

    out = asyncbatch.ray.map(ds, template="Classify: {text}", tools=Sentiment, endpoint=endpoint,
                             limits=asyncbatch.Limits(tpm=1_200_000, rpm=7_200, concurrency=200),
                             state_dir="/mnt/shared/classify", workers=4)

Each block (or ``batch_size`` rows of one) is a batch: a task runs the engine on it (``asyncbatch.map``),
with its record under ``state_dir`` (see ``asyncbatch.distributed``). The job runs when called, with Ray
Data's progress and asyncbatch's own status lines and summary on the driver, and the results come back
as a materialized Dataset: the input's columns with ``asyncbatch.map``'s around them. Imported only when
used: ``pip install "asyncbatch[ray]"``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .config import Deployment, Endpoint, Limits, RequestDefaults
from .display.reporters import Reporter
from .distributed import Spec, Watch, prepare, run_batch


def map(  # the data world's word; the builtin is not used here
    ds: Any,
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
    ray_remote_args: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Run ``template`` over each row of ``ds`` on ``workers`` Ray tasks at once; return the results.

    :param ds: a ``ray.data.Dataset``.
    :param limits: the job's: ``tpm``/``rpm`` are the deployment's (every worker shares them, following
        the server's headers); ``concurrency`` is the job's, split between the workers.
    :param state_dir: a directory every worker reaches (a shared or mounted file system): the record that
        makes the job exactly once and resumable, and the response cache.
    :param workers: tasks at once (default: the cluster's CPUs).
    :param batch_size: rows per batch (default: a whole block).
    :param reporter: the driver's display (default: a status line every few seconds, and the summary).
    :param ray_remote_args: passed to ``map_batches`` (``num_cpus=0.5``...).
    :param options: any other ``RunConfig`` option (``retry_failed``, ``prices``, ``cache``, ``max_attempts``...).
    :returns: a materialized ``ray.data.Dataset``, in the input's order.
    :raises FatalAPIError: a wrong key, deployment or endpoint, raised once for the job.
    :raises ConfigError: an option the job cannot run with.
    :raises JobStopped: the job stopped early, resumably (an exhausted quota): run it again later.
    """
    import ray
    import ray.data

    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
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
        call="asyncbatch.ray.map",
    )
    mapped = ds.map_batches(
        functools.partial(_batch, spec),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.TaskPoolStrategy(size=workers),
        zero_copy_batch=True,
        **(ray_remote_args or {}),
    )
    execution = mapped.context.execution_options  # the input's context: set for this job only
    kept, execution.preserve_order = execution.preserve_order, True  # the results in the input's order
    try:
        with Watch(spec, reporter, total=_known_count(ds)) as watch:
            try:
                return mapped.materialize()
            except Exception:  # Ray wraps a worker's error in its own: the marker says what it was
                if (error := watch.failure()) is None:
                    raise
                raise error from None
    finally:
        execution.preserve_order = kept


def _known_count(ds: Any) -> int | None:
    """The Dataset's rows, where its metadata says without running anything (``from_items``, a read of
    Parquet...); else None, and the driver's status line shows the rows done without a percentage."""
    try:
        count = ds._meta_count()  # Ray's own shortcut (ds.count() would run the pipeline before the job)
    except Exception:  # a Ray without it, or a Dataset that cannot say: the job runs all the same
        return None
    return count if isinstance(count, int) else None


def _batch(spec: Spec, table: Any) -> Any:
    return run_batch(spec, table)
