"""asyncbatch.ray on a local Ray (2 CPUs), against the simulator on 127.0.0.1 with a quota.

One Ray session, started once (Ray starts slowly): the steps run in one test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncbatch
import asyncbatch.ray
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
def ray_data() -> Iterator[Any]:
    import ray
    import ray.cloudpickle
    import ray.data

    ray.cloudpickle.register_pickle_by_value(sys.modules["tests.distributed_helpers"])  # the model travels by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.data
    ray.shutdown()


def _rows_columns_and_order_are_asyncbatch_maps_and_a_bad_row_is_a_row(ray_data: Any, tmp_path: Path) -> None:
    given = with_null(rows(24))  # and a null text: a bad row, not sent
    script = {"Classify: review 5": ["content-filter-400"] * 2}  # refused for both runs: one bad row each
    reporter, summary = json_reporter()
    with serve_in_thread(SimConfig(latency=0.02, script=script, **QUOTA)) as (url, sim):
        out = asyncbatch.ray.map(
            ray_data.from_items(given, override_num_blocks=4),
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
    got = out.take_all()
    assert [list(row) for row in got] == [list(row) for row in want]  # the same columns, in the same order
    assert [comparable(row) for row in got] == [comparable(row) for row in want]  # the same values, in order
    assert [row["line"] for row in got] == [n for _ in range(4) for n in range(1, 7)]  # a row's number in its batch
    assert sent == 23 and billed_twice == 0  # every row sent once, but the null one
    null = got[NULL_ROW]
    assert (null["status"], null["error_code"]) == ("failed", "invalid_input")
    assert null["error_message"].endswith(": template field 'text' is null (empty in the table)")
    figures = summary()
    assert (figures["succeeded"], figures["failed"]) == (22, 2)
    assert figures["failure_reasons"] == {"content_filter": 1, "invalid_input": 1}
    assert figures["latency_p50_ms"] is not None and figures["latency_p95_ms"] is not None  # the workers'
    assert figures["prompt_tokens"] == sum(row["prompt_tokens"] or 0 for row in got)
    assert figures["throttled"] == sim.statuses["429"]


def _a_worker_killed_mid_job_then_the_job_run_again_sends_no_request_twice(ray_data: Any, tmp_path: Path) -> None:
    given, state = rows(40), tmp_path / "state"
    job: dict[str, Any] = {
        "template": TEMPLATE,
        "tools": Sentiment,
        "limits": asyncbatch.Limits(concurrency=2, **QUOTA),
        "state_dir": state,
        "workers": 2,
        "reporter": asyncbatch.Reporter(),
    }
    with serve_in_thread(SimConfig(latency=0.05, outages=((0.6, 2.0),), **QUOTA)) as (url, sim):
        killer = Killer(sim, state)
        with pytest.raises(Exception, match=r"(?i)worker|died|crash"):  # Ray's own error: nothing asyncbatch knew
            asyncbatch.ray.map(
                ray_data.from_items(given, override_num_blocks=2),
                endpoint=endpoint(url),
                ray_remote_args={"max_retries": 0},  # the job fails with its worker...
                **job,
            )
        killer.join()
        out = asyncbatch.ray.map(ray_data.from_items(given, override_num_blocks=2), endpoint=endpoint(url), **job)
        answered_once = sim.statuses["200"] == 40 and sim.billed_twice() == 0  # ...and is run again
    assert 0 < len(killer.recorded_at_kill) < 40
    assert answered_once
    assert [row["custom_id"] for row in out.take_all()] == [row["id"] for row in given]
    assert recorded(state) == {row["id"] for row in given}


def _a_wrong_key_fails_the_job_at_once_with_asyncbatchs_message(ray_data: Any, tmp_path: Path) -> None:
    with serve_in_thread(SimConfig(latency=0.02)) as (url, sim), pytest.raises(asyncbatch.FatalAPIError) as raised:
        asyncbatch.ray.map(
            ray_data.from_items(rows(40), override_num_blocks=4),
            template=TEMPLATE,
            endpoint=endpoint(url, key="a-wrong-key-0123"),
            limits=asyncbatch.Limits(concurrency=4),
            state_dir=tmp_path / "state",
            workers=2,
            reporter=asyncbatch.Reporter(),
        )
    assert raised.value.kind == "authentication"
    assert str(raised.value).startswith("authentication failed: HTTP 401") and "a-wrong-key" not in str(raised.value)
    assert sim.requests <= 4  # the job's concurrency at most: no request per row, no retries per task


def test_on_a_local_ray(ray_data: Any, tmp_path: Path) -> None:
    """The steps share one Ray session: one test, so that one xdist worker runs them (``xdist_group`` does
    not group tests with this pytest), and the session starts once."""
    _rows_columns_and_order_are_asyncbatch_maps_and_a_bad_row_is_a_row(ray_data, tmp_path / "rows")
    _a_worker_killed_mid_job_then_the_job_run_again_sends_no_request_twice(ray_data, tmp_path / "killed")
    _a_wrong_key_fails_the_job_at_once_with_asyncbatchs_message(ray_data, tmp_path / "wrong_key")
