"""The worker's half of asyncbatch.ray and asyncbatch.spark, without Ray or Spark: batches, the lock, markers.

``run_batch`` is what every Ray task and Spark partition runs; here it runs in this process (and in
threads, as two attempts of one batch would), against the simulator over real sockets.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import asyncbatch
from asyncbatch.display.status import look
from asyncbatch.distributed import (
    MARKER,
    SNAPSHOT,
    Column,
    JobFailed,
    JobStopped,
    Snapshots,
    Spec,
    Watch,
    arrow_type,
    cell,
    failure,
    prepare,
    result_columns,
    results_table,
    run_batch,
)
from asyncbatch.errors import AsyncBatchError
from asyncbatch.export import flat
from asyncbatch.simulator import SimConfig, serve_in_thread
from asyncbatch.stats import RunStats, Trend


class Sentiment(BaseModel):
    """The review's sentiment."""

    label: str
    score: float
    note: str | None = None


def _spec(url: str, state_dir: Path, *, key: str = "sim-key", workers: int = 2, **options: Any) -> Spec:
    endpoint = asyncbatch.Endpoint(kind="azure", base_url=url, api_key=key, deployment="dep", simulated=True)
    arguments: dict[str, Any] = {"template": "Classify: {text}", "tools": Sentiment, "response_format": None}
    arguments |= {"endpoint": endpoint, "deployments": (), "limits": asyncbatch.Limits(concurrency=4)}
    return prepare(**arguments, request=None, state_dir=state_dir, workers=workers, options=options)


def _table(n: int, start: int = 0) -> pa.Table:
    ids = [f"r{i}" for i in range(start, start + n)]
    return pa.table({"id": ids, "text": [f"review {i}" for i in range(start, start + n)], "n": list(range(n))})


def test_a_batch_gives_asyncbatch_maps_rows_and_columns_in_order(tmp_path: Path) -> None:
    table = _table(12)
    with serve_in_thread(SimConfig(latency=0.01)) as (url, sim):
        out = run_batch(_spec(url, tmp_path / "state"), table)
        endpoint = asyncbatch.Endpoint(kind="azure", base_url=url, api_key="sim-key", deployment="dep", simulated=True)
        arguments = {"template": "Classify: {text}", "tools": Sentiment, "endpoint": endpoint}
        expected = asyncbatch.map_sync(table.to_pylist(), **arguments)
    want = [{k: v for k, v in flat(row).items() if k != "parsed"} for row in expected]
    assert out.to_pylist() == want  # values, order and (dict order) column order
    assert out.column_names == list(want[0])
    assert out.schema.field("output.score").type == pa.float64()
    assert sim.requests == 2 * 12 and sim.billed_twice() == 12  # once here, once by asyncbatch.map: no cache shared


def test_a_batch_run_again_sends_nothing_and_two_attempts_at_once_send_each_row_once(tmp_path: Path) -> None:
    table = _table(20)
    with serve_in_thread(SimConfig(latency=0.02)) as (url, sim):
        spec = _spec(url, tmp_path / "state")
        outs: list[pa.Table] = []
        attempts = [threading.Thread(target=lambda: outs.append(run_batch(spec, table))) for _ in range(2)]
        for attempt in attempts:
            attempt.start()
        for attempt in attempts:
            attempt.join()
        assert sim.requests == 20 and sim.billed_twice() == 0  # the second attempt waited, then found every answer
        again = run_batch(spec, table)
        assert sim.requests == 20
    assert len(outs) == 2 and outs[0].equals(outs[1]) and again.equals(outs[0])


def test_rows_in_other_batches_next_time_are_answered_from_the_cache(tmp_path: Path) -> None:
    with serve_in_thread(SimConfig(latency=0.01)) as (url, sim):
        spec = _spec(url, tmp_path / "state")
        run_batch(spec, _table(10))
        out = run_batch(spec, _table(15, start=5))  # five of these rows are new: a new batch, a new key
    assert sim.requests == 10 + 10 and sim.billed_twice() == 0  # r5..r9 came from the cache
    assert out.column("status").to_pylist() == ["succeeded"] * 15


def test_a_bad_row_is_a_row_and_the_batch_goes_on(tmp_path: Path) -> None:
    script = {"Classify: review 3": ["content-filter-400"]}
    with serve_in_thread(SimConfig(script=script)) as (url, _):
        out = run_batch(_spec(url, tmp_path / "state"), _table(6)).to_pylist()
    assert [row["status"] for row in out] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2
    assert out[3]["error_code"] == "content_filter" and out[3]["output.label"] is None


def test_a_duplicate_id_is_a_bad_row_within_a_batch_but_not_across_batches_as_documented(tmp_path: Path) -> None:
    twice = pa.table({"id": ["a", "b", "a"], "text": ["x", "y", "z"], "n": [0, 1, 2]})
    with serve_in_thread(SimConfig()) as (url, sim):
        spec = _spec(url, tmp_path / "state")
        within = run_batch(spec, twice).to_pylist()
        across = [run_batch(spec, twice.slice(0, 2)).to_pylist(), run_batch(spec, twice.slice(2)).to_pylist()]
    assert [r["status"] for r in within] == ["succeeded", "succeeded", "failed"]
    assert (within[2]["error_code"], within[2]["error_message"]) == ("invalid_input", "row 3: duplicate custom_id 'a'")
    assert [r["status"] for batch in across for r in batch] == ["succeeded"] * 3  # docs/distributed.md says so
    assert sim.requests == 3  # x, y, then z: x and y came from the cache the second time


def test_a_wrong_key_fails_the_job_once_with_asyncbatchs_message_and_other_tasks_send_nothing(tmp_path: Path) -> None:
    with serve_in_thread(SimConfig()) as (url, sim):
        spec = _spec(url, tmp_path / "state", key="wrong-key-12345")
        with pytest.raises(JobFailed, match=r"^authentication failed: HTTP 401") as raised:
            run_batch(spec, _table(30))
        sent = sim.requests
        with pytest.raises(asyncbatch.FatalAPIError) as again:  # another task of the job: the marker, no request
            run_batch(spec, _table(30, start=30))
        assert sim.requests == sent <= 4  # the job's concurrency at most, not a request per row
    error = failure(spec.job_dir)
    assert isinstance(error, asyncbatch.FatalAPIError) and error.kind == "authentication"
    assert str(error) == str(raised.value) == str(again.value)
    assert "wrong-key-12345" not in (spec.job_dir / "fatal.json").read_text()


def test_an_exhausted_quota_stops_the_job_resumably(tmp_path: Path) -> None:
    with serve_in_thread(SimConfig(exhaust_after=5)) as (url, _):
        spec = _spec(url, tmp_path / "state", workers=4)  # concurrency 1: the five answers come first
        with pytest.raises(JobFailed, match=r"stopped: .*longer than max_wait"):  # the library's word
            run_batch(spec, _table(12))
    assert isinstance(failure(spec.job_dir), JobStopped)
    with serve_in_thread(SimConfig()) as (url, sim):  # the quota is back: a new job sends what is missing
        out = run_batch(_spec(url, tmp_path / "state", workers=4), _table(12))
    assert sim.requests == 7 and out.column("status").to_pylist() == ["succeeded"] * 12


@settings(max_examples=6, deadline=None)
@given(
    texts=st.lists(st.integers(0, 7), min_size=1, max_size=14),  # the same text twice is the same request
    first=st.lists(st.integers(1, 5), min_size=1, max_size=4),  # batch sizes of the first job
    stop_after=st.integers(0, 3),  # batches the first job finished before it was stopped
    second=st.integers(1, 6),  # batch size of the job run again: other batches
)
@example(texts=[0, 1, 2, 3], first=[2], stop_after=1, second=3)
def test_a_job_run_again_in_other_batches_answers_every_row_once_and_pays_each_request_once(
    texts: list[int], first: list[int], stop_after: int, second: int
) -> None:
    rows = pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": [f"review {t}" for t in texts]})
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(SimConfig()) as (url, sim):
        spec, start = _spec(url, Path(tmp)), 0
        for size in first[:stop_after]:
            run_batch(spec, rows.slice(start, size))
            start += size
        spec = _spec(url, Path(tmp))  # a new job over the same state_dir
        out = [run_batch(spec, rows.slice(at, second)) for at in range(0, len(texts), second)]
    got = pa.concat_tables(out)
    assert got.column("custom_id").to_pylist() == rows.column("id").to_pylist()  # every row once, in order
    assert set(got.column("status").to_pylist()) == {"succeeded"}
    assert sim.billed_twice() == 0 and sim.requests == len(set(texts))  # each distinct request paid once


@pytest.mark.parametrize(
    ("option", "words"),
    [("output_path", "state_dir"), ("max_cost", "budget"), ("batch", "Batch API")],
)
def test_options_a_job_decides_itself_are_refused_before_anything_runs(tmp_path: Path, option: str, words: str) -> None:
    with pytest.raises(asyncbatch.ConfigError, match=words):
        _spec("http://127.0.0.1:9", tmp_path / "state", **{option: 1})
    assert not (tmp_path / "state").exists()


def test_a_mistake_in_the_options_is_said_on_the_driver(tmp_path: Path) -> None:
    with pytest.raises(asyncbatch.ConfigError, match="grace"):
        _spec("http://127.0.0.1:9", tmp_path / "state", grace=-1)
    with pytest.raises(asyncbatch.ConfigError, match=r"^map\(\) got an unknown keyword 'max_wiat'.*max_wait="):
        _spec("http://127.0.0.1:9", tmp_path / "state", max_wiat=5)


def test_columns_follow_the_one_schema_a_pydantic_models_fields_included() -> None:
    front, back = result_columns(asyncbatch.RequestDefaults(tools=Sentiment))
    assert [c.name for c in front] == ["line", "status", "custom_id"]
    spread = {c.name: c.kind for c in back if c.key}
    assert spread == {"output.label": "str", "output.score": "float", "output.note": "str"}
    _, text = result_columns(asyncbatch.RequestDefaults())
    assert text[0] == Column(name="output", kind="str")
    _, vectors = result_columns(asyncbatch.RequestDefaults(api="embeddings"))
    assert vectors[0] == Column(name="output", kind="vector")


JSON = st.recursive(  # what an answer parsed from JSON may hold: no NaN, no infinity
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _written_snapshot(path: Path, **counts: int) -> dict[str, Any]:
    """A snapshot as a worker writes it."""
    Snapshots(path).write(RunStats(**counts), final=False)
    written: dict[str, Any] = orjson.loads(path.read_bytes())
    return written


@st.composite
def _damaged(draw: st.DrawFn, whole: dict[str, Any]) -> bytes:
    """What a file under ``jobs/`` may hold on a shared file system: any bytes, any JSON, ours with a field changed."""
    kind = draw(st.sampled_from(["bytes", "json", "field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()  # the stdlib writes any integer: orjson reads 64 bits
    name = draw(st.sampled_from(sorted(whole)))
    return json.dumps(whole | {name: draw(JSON)}).encode()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
@example(data=None)
def test_a_damaged_snapshot_or_marker_is_left_out_or_stops_the_job_saying_so_never_a_traceback(data: Any) -> None:
    """The driver reads files workers wrote to a shared directory: bytes from disk, judged before they are used."""
    spec = _spec("http://127.0.0.1:9", Path(tempfile.mkdtemp()) / "state")
    stats_dir = spec.job_dir / "stats"
    ours = _written_snapshot(stats_dir / "a.1.json", total=5, succeeded=3, failed=1, attempts=4)
    if data is None:  # the shrunk case: a snapshot whose counter is a string; a marker of JSON null
        damaged, marker = orjson.dumps(ours | {"succeeded": "3"}), b"null"
    else:
        damaged, marker = data.draw(_damaged(ours)), data.draw(_damaged({"error": "FatalAPIError", "message": "m"}))
    (stats_dir / "b.1.json").write_bytes(damaged)
    watch = Watch(spec, asyncbatch.Reporter())
    watch.gather()
    other = _loads(damaged)
    counted = other if SNAPSHOT.is_valid(other) else {"succeeded": 0, "failed": 0}  # a whole one is another batch's
    assert (watch.stats.succeeded, watch.stats.failed) == (3 + counted["succeeded"], 1 + counted["failed"])
    assert failure(spec.job_dir) is None  # no marker: the job goes on
    (spec.job_dir / "fatal.json").write_bytes(marker)
    error = failure(spec.job_dir)
    assert isinstance(error, AsyncBatchError)  # a marker is there: the job stops, with a message either way
    if not MARKER.is_valid(_loads(marker)):
        assert "cannot be read" in str(error) and "HINT:" in str(error)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def test_the_driver_adds_up_every_attempt_and_takes_each_batchs_furthest(tmp_path: Path) -> None:
    spec = _spec("http://127.0.0.1:9", tmp_path / "state")
    snapshot = {"total": 10, "resumed": 0, "attempts": 4, "throttled": 1, "prompt_tokens": 40, "cost": 0.5}
    now, long_ago = time.time(), time.time() - 600
    written = {  # a.1 was killed after 4 answers, 2 in flight; a.2 runs with 3 in flight; b.1 is over
        "a.1": {**snapshot, "succeeded": 4, "failed": 0, "failure_reasons": {}, "at": long_ago, "in_flight": 2}
        | {"latencies": [100.0] * 4, "latencies_seen": 4, "final": False},
        "a.2": {**snapshot, "succeeded": 9, "failed": 1, "resumed": 4, "failure_reasons": {"content_filter": 1}}
        | {"latencies": [300.0] * 10, "latencies_seen": 12, "final": False, "at": now, "in_flight": 3},
        "b.1": {**snapshot, "succeeded": 10, "failed": 0, "resumed": 10, "attempts": 0, "failure_reasons": {}}
        | {"latencies": [], "latencies_seen": 0, "final": True, "at": now, "in_flight": 0},
    }
    for name, fields in written.items():
        zeros = dict.fromkeys(("retries", "estimated_tokens", "completion_tokens", "cached_tokens", "cache_hits"), 0)
        zeros |= dict.fromkeys(("shared_answers", "sampled_hits", "cache_saved", "cache_raced", "resent"), 0)
        (spec.job_dir / "stats" / f"{name}.json").write_bytes(orjson.dumps({**zeros, "input_errors": 0, **fields}))
    watch = Watch(spec, asyncbatch.Reporter())
    watch.gather()
    stats = watch.stats
    assert (stats.total, stats.succeeded, stats.failed) == (0, 19, 1)  # the total is not known while it runs...
    assert stats.resumed == 10  # batch b was answered by an earlier job; a's second attempt resumed its own first
    assert (stats.attempts, stats.throttled, stats.prompt_tokens, stats.cost) == (8, 3, 120, 1.5)
    assert stats.failure_reasons == {"content_filter": 1}
    assert stats.in_flight == 3  # the running attempt's: not the killed one's, nor the finished one's
    assert (stats.latency_percentile(0.1), stats.latency_percentile(0.5)) == (100.0, 300.0)  # weighed 4 to 12
    assert look(stats, Trend(stats)).percent is None
    watch.gather(final=True)
    assert (stats.total, stats.in_flight) == (20, 0)  # ...and is once it is over
    known = Watch(spec, asyncbatch.Reporter(), total=20)  # a Dataset that knows its rows
    known.gather()
    assert known.stats.total == 20 and look(known.stats, Trend(known.stats)).percent == 100


@given(kind=st.sampled_from(["int", "float", "bool", "str", "json", "vector"]), value=JSON)
@example(kind="int", value=True)  # a bool is no int here
@example(kind="int", value=2.5)
@settings(deadline=None)  # the first example imports pyarrow's types
def test_any_answer_value_fits_its_column_or_is_none(kind: str, value: Any) -> None:
    converted = cell(kind, value)
    pa.array([converted], arrow_type(kind))  # never raises: a bad value is never a failed task
    if value is not None and kind in ("str", "json"):
        assert converted == value if isinstance(value, str) else json.loads(converted) == value  # JSON text


def test_input_columns_named_like_ours_are_renamed_as_map_renames_them_never_a_second_column_of_a_name(
    tmp_path: Path,
) -> None:
    """A table exported before and run again holds ``output.label``: it was kept under its name, beside the
    answer's ``output.label`` (two columns of one name), where ``asyncbatch.map`` renames it ``input_output.label``."""
    table = pa.table(
        {"id": ["a", "b"], "text": ["x", "y"], "output.label": ["old", "old"], "input_output.label": ["older"] * 2}
    )
    with serve_in_thread(SimConfig(latency=0.0)) as (url, _):
        out = run_batch(_spec(url, tmp_path / "state"), table)
        endpoint = asyncbatch.Endpoint(kind="azure", base_url=url, api_key="sim-key", deployment="dep", simulated=True)
        expected = asyncbatch.map_sync(
            table.to_pylist(), template="Classify: {text}", tools=Sentiment, endpoint=endpoint
        )
    assert out.column_names == [k for k in flat(expected[0]) if k != "parsed"]
    assert len(set(out.column_names)) == len(out.column_names)
    rows = out.to_pylist()
    assert [(r["input_output.label"], r["input_input_output.label"]) for r in rows] == [("old", "older")] * 2
    assert [r["output.label"] for r in rows] == ["label: Classify: x", "label: Classify: y"]


def test_a_batch_whose_map_stopped_before_some_rows_fails_the_job_never_a_row_failed_not_run(tmp_path: Path) -> None:
    """``asyncbatch.map`` returns a stopped run's unanswered rows as failed ``not_run`` (the user calls it again);
    a batch's are unanswered still: the job stops, and running it again runs them."""
    table = _table(2)
    with serve_in_thread(SimConfig(latency=0.0)) as (url, _):
        spec = _spec(url, tmp_path / "state")
        rows = asyncbatch.map_sync(
            table.to_pylist(),
            template="Classify: {text}",
            tools=Sentiment,
            endpoint=asyncbatch.Endpoint(kind="azure", base_url=url, api_key="sim-key", deployment="dep"),
            prices=asyncbatch.Prices(input=1000, output=1000),
            max_cost=0.02,
            limits=asyncbatch.Limits(concurrency=1),
        )
    unanswered = sum(r["error_code"] == "not_run" for r in rows)
    assert unanswered and len(rows) == 2
    with pytest.raises(JobFailed, match=f"a batch ended with {unanswered} rows unanswered"):
        results_table(spec, table, rows)
