"""The metrics log (report/metrics.py): rows per time, never per line; bounded by thinning; read back safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.display.summary import summary_data
from asyncbatch.redact import Redactor
from asyncbatch.report.metrics import SUMMARY_NUMBERS, MetricsLog, read_log, read_summary, thinned
from asyncbatch.stats import RunStats
from asyncbatch.store.files import StatePaths

from .helpers import Time, batch_line, write_jsonl

MB = 1024 * 1024


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


def _log(tmp_path: Path, clock: Time, routes: int = 0, **options: Any) -> tuple[MetricsLog, RunStats]:
    paths = StatePaths.beside(tmp_path / "run.results.jsonl")
    paths.dir.mkdir(exist_ok=True)
    stats = RunStats(total=10_000_000, clock=clock, routes=[FakeRoute(f"deployment-{i}") for i in range(routes)])
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
        clock, directory = Time(), tmp_path / str(lines_per_row)
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
    clock = Time()
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
    clock = Time()
    log, stats = _log(tmp_path, clock)
    clock.now += 1
    _work(stats, 10)
    log.tick()
    log.close()  # killed: no final row
    with log.paths.metrics.open("ab") as f:
        f.write(b"[1.5,10000000,12")  # a row torn by the kill
    again, _ = _log(tmp_path, Time())
    again.finish()
    first, second = read_log(log.paths.metrics).sessions
    assert (first.number, second.number) == (1, 2)
    assert [row["succeeded"] for row in first.rows] == [0, 10]
    assert len(second.rows) == 2
    assert b"[1.5,10000000,12\n" not in log.paths.metrics.read_bytes()


def test_the_reader_skips_what_is_not_ours_and_a_torn_last_line(tmp_path: Path) -> None:
    clock = Time()
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
    clock = Time()
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
    clock = Time()
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
    log, stats = _log(tmp_path, Time(), redactor=Redactor([secret]))
    stats.count_failure(f"rejected:{secret}")
    stats.aborted = f"the server said {secret}"
    log.finish()
    for path in (log.paths.metrics, log.paths.summary):
        assert secret.encode() not in path.read_bytes()
    snapshot = read_summary(log.paths.summary)
    assert snapshot is not None and snapshot.summary["failure_reasons"] == {"rejected:***": 1}
