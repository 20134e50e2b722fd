"""The metrics log (report/metrics.py): rows per time, never per line; bounded by thinning; read back safely."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.batch.parts import BatchState, Part
from asyncbatch.cli.main import main
from asyncbatch.config import StatePaths
from asyncbatch.cost import Prices
from asyncbatch.display.summary import summary_data
from asyncbatch.redact import Redactor
from asyncbatch.report.failures import Example, Failures
from asyncbatch.report.metrics import (
    COLUMNS,
    JOB_ID_CHARS,
    PART_EVENTS,
    SUMMARY_NUMBERS,
    MetricsLog,
    read_log,
    read_summary,
    thinned,
)
from asyncbatch.report.prometheus import RunCollector
from asyncbatch.report.reading import bounded_lines
from asyncbatch.report.series import series
from asyncbatch.stats import MAX_REASONS, REASON_CHARS, RunStats

from .helpers import FakeClock, batch_line, write_jsonl

MB = 1024 * 1024
PRICES = Prices(input=1.0, output=1.0)


@dataclass
class FakeRoute:
    """A pool's deployment as the display and the log read it (``stats.RouteView``)."""

    name: str
    succeeded: int = 0
    in_flight: int = 0
    throttled: int = 0
    failed: int = 0
    learned_tpm: float | None = None
    charge_ratio: float | None = None

    def state(self) -> str:
        return "ok"

    def notice(self) -> str | None:
        return None

    def waiting(self) -> float | None:
        return 0.0


def _log(
    tmp_path: Path, clock: FakeClock, routes: int = 0, prices: Prices | None = None, **options: Any
) -> tuple[MetricsLog, RunStats]:
    paths = StatePaths.beside(tmp_path / "run.results.jsonl")
    paths.dir.mkdir(exist_ok=True)
    deployments = [FakeRoute(f"deployment-{i}") for i in range(routes)]
    stats = RunStats(total=10_000_000, clock=clock, routes=deployments, prices=prices)
    log = MetricsLog(paths, stats, summary_data, **options)
    log.start()
    return log, stats


def _work(stats: RunStats, lines: int) -> None:
    """``lines`` inputs answered, with their tokens, latencies and a few 429s."""
    stats.add_latency(800.0 + lines % 7)
    stats.succeeded += lines
    stats.attempts += lines + lines // 50
    stats.throttled += lines // 50
    stats.prompt_tokens += 120 * lines
    stats.completion_tokens += 40 * lines
    stats.charged_tokens += 180.0 * lines
    for route in stats.routes:
        assert isinstance(route, FakeRoute)
        route.succeeded += lines // len(stats.routes)


def _size(log: MetricsLog) -> int:
    return log.paths.metrics.stat().st_size


def test_the_log_grows_with_time_not_with_lines(tmp_path: Path) -> None:
    sizes = {}
    for lines_per_row in (1, 100_000):
        clock, directory = FakeClock(0.0), tmp_path / str(lines_per_row)
        directory.mkdir()
        log, stats = _log(directory, clock, routes=2)
        for _ in range(100):
            clock.now += log.every
            _work(stats, lines_per_row)
            log.tick()
        log.finish()
        sizes[lines_per_row] = _size(log)
        assert [len(s.rows) for s in read_log(log.paths.metrics).sessions] == [102]  # start, 100 rows, the final one
    # 100,000 times the lines: the same rows, a few digits longer each
    assert sizes[100_000] < 1.6 * sizes[1]


def test_a_ten_million_line_day_long_run_keeps_a_log_under_a_megabyte(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    log, stats = _log(tmp_path, clock, routes=2, max_rows=4096, summary_every=float("inf"))
    day = 30 * 3600.0
    rate = 10_000_000 / day  # inputs per second
    while clock.now < day:
        clock.now += log.every
        _work(stats, round(rate * log.every))
        log.tick()
    log.finish()
    (session,) = read_log(log.paths.metrics).sessions
    assert len(session.rows) <= 4096
    assert _size(log) < 1 * MB
    assert log.every >= 16  # rows came less often as the run went on: ~30 s apart at the end
    assert session.rows[-1]["succeeded"] == stats.succeeded >= 9_900_000  # the totals survive the thinning
    assert session.rows[0]["t"] == 0.0


def test_thinning_keeps_every_header_and_each_sessions_last_row() -> None:
    lines = [b'{"session":1}', b"[0]", b"[1]", b"[2]", b'{"job":"a"}', b"[3]", b'{"session":2}', b"[10]", b"[11]"]
    assert thinned(lines) == [b'{"session":1}', b'{"job":"a"}', b"[0]", b"[2]", b"[3]", b'{"session":2}', b"[10]",
                              b"[11]"]  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=5))
def test_thinning_halves_the_rows_and_never_loses_a_session_or_its_last_row(sessions: list[int]) -> None:
    lines: list[bytes] = []
    for number, rows in enumerate(sessions):
        lines.append(b'{"session":%d}' % number)
        lines += [b"[%d,%d]" % (number, i) for i in range(rows)]
    kept = thinned(lines)
    assert [line for line in kept if line.startswith(b"{")] == [line for line in lines if line.startswith(b"{")]
    for number, rows in enumerate(sessions):
        mine = [line for line in kept if line.startswith(b"[%d," % number)]
        assert len(mine) == (rows // 2 + 1 if rows else 0)
        if rows:
            assert mine[-1] == b"[%d,%d]" % (number, rows - 1)


def test_a_resume_starts_a_new_session_after_cutting_a_torn_row(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    log, stats = _log(tmp_path, clock)
    clock.now += 1
    _work(stats, 10)
    log.tick()
    log.close()  # killed: no final row
    with log.paths.metrics.open("ab") as f:
        f.write(b"[1.5,10000000,12")  # a row torn by the kill
    again, _ = _log(tmp_path, FakeClock(0.0))
    again.finish()
    first, second = read_log(log.paths.metrics).sessions
    assert (first.number, second.number) == (1, 2)
    assert [row["succeeded"] for row in first.rows] == [0, 10]
    assert len(second.rows) == 2
    assert b"[1.5,10000000,12\n" not in log.paths.metrics.read_bytes()


def test_the_reader_skips_what_is_not_ours_and_a_torn_last_line(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    log, stats = _log(tmp_path, clock, routes=1)
    clock.now += 1
    _work(stats, 5)
    log.finish()
    good = read_log(log.paths.metrics)
    with log.paths.metrics.open("ab") as f:
        for junk in (b"not json", b"[1,2,3]", b'{"session":"x"}', b'[9.0,"a"' + b",0" * 16 + b"]", b"[2.0,1,2"):
            f.write(junk + b"\n")
        f.write(b'{"job":7,"part":0}\n[3.0, 1')
    assert read_log(log.paths.metrics) == good
    log.paths.summary.write_bytes(b'{"session": 1, "t": 1.0, "final": tru')  # being replaced as it is read
    assert read_summary(log.paths.summary) is None


def test_the_summary_snapshot_is_the_summary_of_the_same_counters(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    log, stats = _log(tmp_path, clock, routes=2)
    _work(stats, 1234)
    stats.count_failure("content_filter")
    stats.finished = clock()
    log.finish()
    snapshot = read_summary(log.paths.summary)
    assert snapshot is not None and snapshot.final and snapshot.session == 1
    written = orjson.loads(orjson.dumps(summary_data(stats)))
    assert {key: snapshot.summary[key] for key in SUMMARY_NUMBERS} == {key: written[key] for key in SUMMARY_NUMBERS}
    assert snapshot.summary["failure_reasons"] == written["failure_reasons"] == {"content_filter": 1}
    assert [(d.name, d.answers, d.throttled, d.failed_attempts, d.state) for d in snapshot.summary["deployments"]] == [
        (d["name"], d["answers"], d["throttled"], d["failed_attempts"], d["state"]) for d in written["deployments"]
    ]


def test_a_log_that_cannot_be_written_warns_once_and_the_run_goes_on(tmp_path: Path) -> None:
    warnings: list[str] = []
    clock = FakeClock(0.0)
    log, _ = _log(tmp_path, clock, warn=warnings.append)
    log.paths.metrics.unlink()
    log.paths.metrics.mkdir()  # the next thinning cannot replace it
    log.max_rows = 1
    for _ in range(3):
        clock.now += 1
        log.tick()
    log.finish()
    assert len(warnings) == 1 and "metrics log stops" in warnings[0]


@pytest.mark.parametrize("name", ["metrics", "summary", "summary.tmp"])
def test_a_metrics_file_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path: Path, name: str) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    state = tmp_path / "in.results.jsonl.state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (state / name).symlink_to(victim)
    assert main(["in.jsonl", "--simulate", "--sim-latency-ms", "0", "-q"]) == 2
    assert victim.read_bytes() == b"precious\n" and not (tmp_path / "in.results.jsonl").exists()


def test_no_secret_reaches_the_log_or_the_summary_even_when_a_server_quotes_it_as_an_error_code(tmp_path: Path) -> None:
    secret = "sk-the-deployment-key-1234"
    log, stats = _log(tmp_path, FakeClock(0.0), redactor=Redactor([secret]))
    stats.count_failure(f"rejected:{secret}")
    stats.aborted = f"the server said {secret}"
    log.finish()
    for path in (log.paths.metrics, log.paths.summary):
        assert secret.encode() not in path.read_bytes()
    snapshot = read_summary(log.paths.summary)
    assert snapshot is not None and snapshot.summary["failure_reasons"] == {"rejected:***": 1}


# -- bounded whatever the number of sessions and of job events ---------------------------------------


def test_the_log_stays_bounded_over_many_sessions_and_keeps_numbering_them(tmp_path: Path) -> None:
    """Every resume starts a session: past ``max_sessions`` the oldest are dropped whole, their cost kept."""
    options: dict[str, Any] = {"max_rows": 64, "max_sessions": 8}
    sizes = []
    for number in range(1, 121):
        clock = FakeClock(0.0)
        log, stats = _log(tmp_path, clock, routes=2, prices=PRICES, **options)
        stats.cost += 0.5  # each session spends 0.5 USD
        for _ in range(number % 5):
            clock.now += log.every
            _work(stats, 3)
            log.tick()
        log.finish()
        assert log.session == number
        sizes.append(_size(log))
    read = read_log(log.paths.metrics)
    assert [s.number for s in read.sessions] == list(range(113, 121))
    assert read.dropped is not None and read.dropped.sessions == 112
    assert read.dropped.cost == pytest.approx(0.5 * 112)
    lines = log.paths.metrics.read_bytes().splitlines()
    assert len(lines) <= 64 + 8 + 1 + 8  # rows, headers, the dropped line, and at most one row past a thinning each
    assert max(sizes[40:]) < 2 * max(sizes[:40])  # no growth with the sessions
    assert log.every == 0.5  # a session's rows come as often as ever: no re-thinning at every tick


def test_the_cost_of_dropped_sessions_stays_in_the_cost_chart(tmp_path: Path) -> None:
    for _ in range(5):
        log, stats = _log(tmp_path, FakeClock(0.0), prices=PRICES, max_sessions=2)
        stats.cost = 1.0
        log.finish()
    read = read_log(log.paths.metrics)
    cost = series(read.sessions, read.dropped).cost
    assert cost[-1]["value"] == pytest.approx(5.0)  # every session's dollar, the three dropped ones' too


def _batches(log: MetricsLog, parts: list[Part]) -> None:
    BatchState(run="r", parts=parts).save(log.paths.batches)


def test_a_job_flapping_at_every_poll_logs_a_bounded_number_of_events_and_its_end(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    log, _ = _log(tmp_path, clock, batches=True)
    long_id = "batch_" + "x" * 10_000  # a server's id, of any length
    for poll in range(100):
        clock.now += 1
        status = ("validating", "in_progress")[poll % 2]
        _batches(log, [Part(index=0, api="chat", batch_id=long_id, status=status, lines=10)])
        os.utime(log.paths.batches, ns=(poll, poll))  # a new look each poll, whatever the file system's clock
        log.tick()
    _batches(log, [Part(index=0, api="chat", batch_id=long_id, status="completed", lines=10, merged=True)])
    os.utime(log.paths.batches, ns=(1000, 1000))
    log.finish()
    (session,) = read_log(log.paths.metrics).sessions
    assert len(session.jobs) == PART_EVENTS + 1  # the flapping, bounded, and the job's end
    assert session.jobs[-1].status == "merged"
    assert all(job.job is not None and len(job.job) <= JOB_ID_CHARS for job in session.jobs)


def test_job_events_are_bounded_in_a_session_and_in_the_file(tmp_path: Path) -> None:
    for _ in range(3):
        clock = FakeClock(0.0)
        log, _ = _log(tmp_path, clock, batches=True, max_events=40)
        for poll in range(30):  # 30 jobs, each seen in 3 states: 90 changes a session
            clock.now += 1
            status = ("validating", "in_progress", "finalizing")[poll % 3]
            _batches(log, [Part(index=i, api="chat", batch_id=f"b{i}", status=status, lines=1) for i in range(30)])
            os.utime(log.paths.batches, ns=(poll, poll))
            log.tick()
        log.finish()
        events = [line for line in log.paths.metrics.read_bytes().splitlines() if line.startswith(b'{"job"')]
        assert len(events) <= 40
    assert len(read_log(log.paths.metrics).sessions[-1].jobs) == 40  # the newest session's events are the ones kept


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=12), st.integers(1, 6))
def test_thinning_keeps_the_latest_sessions_and_counts_the_others(rows: list[int], keep: int) -> None:
    lines: list[bytes] = []
    for number, n in enumerate(rows, start=1):
        header = {"session": number, "wall": 1e9 + number, "columns": ["t", "cost", "deployments"],
                  "deployment_columns": [], "deployments": [], "priced": True}  # fmt: skip
        lines.append(orjson.dumps(header))
        lines += [orjson.dumps([float(i), float(number), []]) for i in range(n)]
    kept = thinned(lines, sessions=keep)
    headers = [orjson.loads(line) for line in kept if line.startswith(b'{"session"')]
    assert [h["session"] for h in headers] == list(range(max(1, len(rows) - keep + 1), len(rows) + 1))
    dropped = [orjson.loads(line)["dropped"] for line in kept if line.startswith(b'{"dropped"')]
    gone = rows[: max(0, len(rows) - keep)]
    if gone:
        assert dropped == [{"sessions": len(gone), "cost": sum(float(i + 1) for i, n in enumerate(gone) if n),
                            "since": 1e9 + 1}]  # fmt: skip
    else:
        assert dropped == []


# -- read as bytes from outside: every field judged, nothing raises --------------------------------


ROUTES = b"[[0,0,0,0,null,null],[0,0,0,0,null,null]]]"


def _good_log(tmp_path: Path) -> MetricsLog:
    (tmp_path / "run.results.jsonl").write_bytes(b"")
    clock = FakeClock(0.0)
    log, stats = _log(tmp_path, clock, routes=2)
    for _ in range(3):
        clock.now += 1
        _work(stats, 10)
        log.tick()
    stats.count_failure("server_error")
    log.finish()
    return log


@pytest.mark.parametrize(
    "line",
    [
        b"[1.0, 10, null, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, null, null, null, null, " + ROUTES,  # done: null
        b'{"session": 9, "wall": 1e12, "columns": ["t", "deployments"], "deployment_columns": [], "deployments": []}',
        b'{"session": 9, "wall": -1e11, "columns": ["t", "deployments"], "deployment_columns": [], "deployments": []}',
        b'{"session": 9, "wall": 1e300, "columns": ["t", "deployments"], "deployment_columns": [], "deployments": []}',
        b"[1e300, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, null, null, null, null, " + ROUTES,  # t: 1e300
        b'{"job": "' + b"j" * 5000 + b'", "part": 0, "status": "in_progress", "t": 1.0, "lines": 3}',
        b'{"job": null, "part": 1e300, "status": "x", "t": 1.0, "lines": 3}',
    ],
)
def test_a_damaged_row_or_header_is_skipped_or_judged_and_the_report_is_written(
    tmp_path: Path, line: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _good_log(tmp_path)
    with log.paths.metrics.open("ab") as f:
        f.write(line + b"\n")
    assert main(["report", "run.results.jsonl", "-o", "r.html"]) == 0, capsys.readouterr().err
    for session in read_log(log.paths.metrics).sessions:
        assert 0 <= session.wall <= 1e10
        assert all(0 <= row["t"] <= 1e9 for row in session.rows)
        assert all(job.job is None or len(job.job) <= JOB_ID_CHARS for job in session.jobs)


@pytest.mark.parametrize(
    "summary",
    [
        {"session": 1, "t": 1e300, "final": True, "summary": {"succeeded": 1}},
        {"session": 1, "t": 1.0, "final": True, "summary": {"deployments": [{}], "succeeded": 1}},
        {"session": 1, "t": 1.0, "final": True, "summary": {"deployments": [{"name": "a", "answers": "x"}]}},
        {"session": 1, "t": 1.0, "final": True, "summary": {"failure_reasons": {"x" * 100_000: 3, "y": "z"}}},
        {"session": 1, "t": 1.0, "final": True, "summary": {"batch_api": {"jobs": 1}, "cache": [], "stopped": 7}},
    ],
)
def test_a_damaged_summary_is_judged_and_the_report_is_written(
    tmp_path: Path, summary: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = _good_log(tmp_path)
    log.paths.summary.write_bytes(orjson.dumps(summary))
    assert main(["report", "run.results.jsonl", "-o", "r.html"]) == 0, capsys.readouterr().err
    assert "x" * 100 not in (tmp_path / "r.html").read_text()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["session", "wall", "columns", "deployment_columns", "deployments", "tpm_limit", "priced",
                        "job", "part", "status", "t", "lines", "dropped", "sessions", "cost", "since"])  # fmt: skip


@st.composite
def damage(draw: st.DrawFn) -> bytes:
    """A line to append to a good log: random JSON, a good row or header with one field changed, or raw bytes."""
    kind = draw(st.sampled_from(["json", "row", "header", "job", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    if kind == "json":
        value = draw(JSON)
    elif kind == "row":
        value = [1.5, 10, 3, 3, 0, 3, 0, 0, 0, 1, 1, 1, 0.1, None, None, 1.0, 2.0, [[1, 0, 0, 0, None, None]] * 2]
        value[draw(st.integers(0, len(value) - 1))] = draw(JSON)
    else:
        value = ({"session": 2, "wall": 1.7e9, "columns": list(COLUMNS), "deployment_columns": [], "deployments": []}
                 if kind == "header" else {"job": "b", "part": 0, "status": "s", "t": 1.0, "lines": 1})  # fmt: skip
        value[draw(KEYS)] = draw(JSON)
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity too: JSON that orjson refuses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(damage(), min_size=1, max_size=6), summary=st.none() | st.dictionaries(KEYS, JSON) | JSON)
# a row 1e-261 s after the one before: a rate over that sliver overflowed the chart's JSON
@example(
    lines=[b"[5e-261,10,3,3,0,3,0,0,0,1,1,1,0.1,null,null,1.0,2.0,[[1,0,0,0,null,null],[1,0,0,0,null,null]]]"],
    summary=None,
)
def test_report_never_raises_on_a_damaged_log_or_summary(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], summary: Any
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    log = _good_log(directory)
    with log.paths.metrics.open("ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    if summary is not None:
        good = orjson.loads(log.paths.summary.read_bytes())
        damaged = {**good, "summary": {**good["summary"], **summary}} if isinstance(summary, dict) else summary
        log.paths.summary.write_bytes(json.dumps(damaged, allow_nan=True).encode())
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(["report", str(directory / "run.results.jsonl"), "-o", str(directory / "r.html")])
    assert code == 0, errors.getvalue()
    assert "Traceback" not in errors.getvalue()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8), st.integers(1, 30))
def test_lines_longer_than_the_limit_are_skipped_and_the_others_read_whole(lines: list[bytes], limit: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    read = list(bounded_lines(io.BytesIO(data), limit))
    assert read == [line + b"\n" if len(line) + 1 <= limit + 1 else None for line in lines]


# -- failure codes: bounded once, the same in every reader -------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), max_size=120))
def test_failure_codes_are_bounded_and_every_reader_counts_them_alike(codes: list[str]) -> None:
    stats = RunStats()
    failures = Failures()
    for i, code in enumerate(codes):
        stats.count_failure(code)
        failures.add(code, Example(i + 1, f"r{i}", "message"))
    reasons = stats.failure_reasons
    assert sum(reasons.values()) == len(codes)
    assert len(reasons) <= MAX_REASONS + 1 and all(len(code) <= REASON_CHARS for code in reasons)
    assert dict(failures.counts) == dict(reasons)  # the page's table, from the errors file
    assert summary_data(stats)["failure_reasons"] == dict(reasons.most_common())  # the JSON summary and the page's
    collector = RunCollector()
    collector.stats = stats
    labels = {
        sample.labels["code"]: sample.value
        for metric in collector.collect()
        if metric.name == "asyncbatch_failures"
        for sample in metric.samples
    }
    assert labels == dict(reasons)  # the Prometheus label values


def test_a_server_code_of_60_kb_leaves_a_small_summary(tmp_path: Path) -> None:
    log, stats = _log(tmp_path, FakeClock(0.0))
    for i in range(300):
        stats.count_failure(f"{i}-" + "x" * 60_000)
    log.finish()
    assert log.paths.summary.stat().st_size < 20_000
    snapshot = read_summary(log.paths.summary)
    assert snapshot is not None and sum(snapshot.summary["failure_reasons"].values()) == 300


JSON_WORDS = st.sampled_from(
    ["true", "null", "false", "session", "summary", "final", "columns", "deployments", "succeeded", "cost", "0.5,"]
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=JSON_WORDS | st.text(alphabet="QXZJ", min_size=4, max_size=8))
def test_a_key_that_is_a_json_word_masks_the_data_and_leaves_the_log_and_summary_readable(
    tmp_path_factory: pytest.TempPathFactory, secret: str
) -> None:
    """The redactor sees the texts written (names, codes, job ids), never the JSON they are written in."""
    paths = StatePaths.beside(tmp_path_factory.mktemp("log") / "run.results.jsonl")
    paths.dir.mkdir()
    clock = FakeClock(0.0)
    stats = RunStats(total=10, clock=clock, routes=[FakeRoute(f"east-{secret}"), FakeRoute("west")], prices=PRICES)
    log = MetricsLog(paths, stats, summary_data, redactor=Redactor([secret]))
    log.start()
    clock.now += 1
    _work(stats, 10)
    stats.count_failure(f"code-{secret}")
    stats.interrupted = True
    log.finish()
    (session,) = read_log(log.paths.metrics).sessions
    assert [row["succeeded"] for row in session.rows] == [0, 10] and session.deployments == ["east-***", "west"]
    snapshot = read_summary(log.paths.summary)
    assert snapshot is not None and snapshot.final and snapshot.summary["succeeded"] == 10
    assert snapshot.summary["failure_reasons"] == {"code-***": 1} and snapshot.summary["interrupted"] is True
    assert [d.name for d in snapshot.summary["deployments"]] == ["east-***", "west"]
