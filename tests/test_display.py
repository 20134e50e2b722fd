"""What the user sees: a display that fits 80 columns, ETA and cost, text and JSON status lines."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyte
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from asyncbatch.cli.main import main
from asyncbatch.cost import Prices
from asyncbatch.display.reporters import RichReporter, fold
from asyncbatch.display.status import Status, look, screen, text_line
from asyncbatch.stats import RunStats, Trend

from .helpers import FakeClock, write_jsonl


def status(**changes: object) -> Status:
    base = dict(
        time="2026-11-25T12:00:00Z",
        elapsed=83.0,
        done=1_234_567,
        total=10_000_000,
        failed=1_234,
        requests_per_second=123.4,
        charged_tpm=912_000.0,
        limit_tpm=1_200_000.0,
        used_tpm=650_000.0,
        in_flight=200,
        retries=3_456,
        throttled=789,
        eta_seconds=3 * 3600 + 12 * 60 + 5,
        cost_usd=12.3456,
        projected_cost_usd=99.87,
        notice=None,
        simulated=False,
        cached=0,
        deployments=[],
    )
    base.update(changes)
    return Status(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [80, 60, 50])
def test_counts_failures_and_eta_stay_visible_as_the_terminal_narrows(width: int) -> None:
    first, second = (line.plain for line in screen(status(), width))
    assert "1,234,567/10,000,000" in first and "12%" in first
    assert "1,234 failed" in first and "ETA 3:12:05" in first
    assert len(first) <= width and len(second) <= width
    assert second.startswith("123.4 req/s")
    if width >= 60:
        assert "$12.35 of ~$99.87" in second


def test_at_80_columns_the_second_line_has_rate_cost_quota_and_429s_and_the_bar_is_drawn() -> None:
    first, second = (line.plain for line in screen(status(), 80))
    assert first.startswith("asyncbatch ━")
    assert "quota 912k/1.2M TPM" in second and "789 429s" in second


def test_without_a_known_limit_the_quota_is_named_as_such_beside_the_tokens_billed() -> None:
    line = screen(status(limit_tpm=None, charged_tpm=475_000.0, used_tpm=757_000.0), 200)[1].plain
    assert "quota 475k/? TPM" in line and "billed 757k tok/min" in line and "charged" not in line


def test_a_wide_terminal_shows_every_figure_and_a_notice_gets_its_own_line() -> None:
    lines = [line.plain for line in screen(status(notice="endpoint unreachable since 12:00:01"), 200)]
    assert "3,456 retries" in lines[1] and "200 in flight" in lines[1] and "billed 650k tok/min" in lines[1]
    assert lines[2] == "endpoint unreachable since 12:00:01"


def test_the_text_status_line_has_time_elapsed_counts_rates_eta_and_cost() -> None:
    line = text_line(status())
    assert line.startswith("2026-11-25T12:00:00Z +0:01:23 · 1,234,567/10,000,000 12% · 1,234 failed · ETA 3:12:05")
    assert "123.4 req/s" in line and "$12.35 of ~$99.87" in line


def test_eta_comes_from_the_quota_before_any_rate_is_known_and_is_never_below_the_recent_rate() -> None:
    clock = FakeClock()
    stats = RunStats(total=1000, clock=clock, tpm_limit=60_000)
    trend = Trend(stats)
    stats.attempts, stats.charged_tokens = 10, 1000.0  # 100 tokens a request, 1,000 tokens a second allowed
    assert trend.eta() == pytest.approx(1000 * 100 / 1000)  # nothing done yet: the quota alone
    clock.now += 10
    stats.succeeded = 20  # 2 a second: slower than the quota's 10 a second
    trend.sample()
    assert trend.eta() == pytest.approx(980 / 2)


def test_an_early_eta_at_high_latency_counts_from_the_start_not_from_the_first_answers() -> None:
    """20 answers arrive together after 3 s of latency: the rate is 20 per 3 s, not 20 per tick."""
    clock = FakeClock()
    stats = RunStats(total=10_000, clock=clock)
    trend = Trend(stats)
    clock.now += 2.9
    trend.sample()
    assert trend.eta() is None  # nothing to go on yet
    clock.now += 0.1
    stats.succeeded = 20
    trend.sample()
    assert trend.eta() == pytest.approx(9_980 / (20 / 3.0))


def test_rates_count_only_this_runs_work_and_forget_what_is_older_than_the_window() -> None:
    clock = FakeClock()
    stats = RunStats(total=2000, succeeded=1000, resumed=1000, clock=clock)
    trend = Trend(stats)
    for _ in range(60):  # one a second for a minute, then ten a second
        clock.now += 1
        stats.succeeded += 1
        trend.sample()
    for _ in range(40):
        clock.now += 1
        stats.succeeded += 10
        trend.sample()
    assert trend.per_second == pytest.approx(10, rel=0.05)


def test_projected_cost_is_the_cost_so_far_plus_the_remaining_inputs_at_the_cost_per_input() -> None:
    stats = RunStats(total=100, clock=FakeClock(), prices=Prices(1.0, 2.0))
    stats.succeeded, stats.cost = 25, 0.5
    assert Trend(stats).projected_cost() == pytest.approx(2.0)
    assert look(stats, Trend(stats)).cost_usd == pytest.approx(0.5)


def _records(tmp_path: Path, n: int, bad: int = 0) -> Path:
    rows: list[object] = [{"id": i, "company": f"Co{i}"} for i in range(n)]
    rows[5 : 5 + bad] = ["{not json"] * bad
    return write_jsonl(tmp_path / "in.jsonl", rows)


def _pty_screens(argv: list[str], cwd: Path, columns: int = 80, rows: int = 24) -> list[list[str]]:
    """Run ``argv`` in a pseudo-terminal of ``columns`` x ``rows``; every screen a terminal would have shown."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    term = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(term)
    screens = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            stream.feed(data)
            screens.append(list(term.display))
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 1  # the bad lines failed; every other line succeeded
    return screens


def test_a_real_80_by_24_terminal_shows_done_total_failures_eta_and_cost_during_a_run(tmp_path: Path) -> None:
    _records(tmp_path, 400, bad=3)
    argv = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--simulate", "--deployment", "gpt-4o-mini"]
    argv += ["--template", "About {company}", "--sim-latency-ms", "150", "-c", "20", "--max-tokens", "20"]
    screens = _pty_screens(argv, tmp_path)
    running = re.compile(r"(\d[\d,]*)/400 +\d+% · 3 failed · ETA \d:\d\d:\d\d")
    during = []
    for shown in screens:
        text = "\n".join(shown)
        match = running.search(text)
        if match and int(match.group(1).replace(",", "")) < 400 and re.search(r"\$\d+\.\d{4}", text):
            during.append(shown)
    assert during, "no screen showed done/total, failures, ETA and cost while the run worked"
    assert all(len(line.rstrip()) <= 80 for line in during[-1])


def test_text_status_lines_in_a_log_carry_a_timestamp_and_the_json_format_is_one_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path, 30, bad=1)
    base = ["in.jsonl", "--simulate", "--template", "About {company}"]
    base += ["--price-in", "2.5", "--price-out", "10", "--sim-latency-ms", "5"]
    assert main(base) == 1  # stderr is not a terminal here, as in a log
    text = capsys.readouterr().err
    assert re.search(r"^\[SIMULATED\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \+0:00:\d\d · \d+/30 ", text, re.M)
    assert main([*base, "--log-format", "json", "-o", "again.jsonl"]) == 1
    stderr = capsys.readouterr().err
    events = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    kinds = {event["event"] for event in events}
    assert {"status", "summary", "message"} <= kinds
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["succeeded"] == 29 and summary["failed"] == 1
    assert summary["failure_reasons"] == {"invalid_input": 1}
    expected = (summary["prompt_tokens"] * 2.5 + summary["completion_tokens"] * 10) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected, abs=1e-6)
    status_line = next(e for e in events if e["event"] == "status")
    assert {"time", "done", "total", "percent", "eta_seconds", "cost_usd", "requests_per_second"} <= status_line.keys()


def test_lines_batch_jobs_have_finished_count_toward_progress_and_eta_before_they_are_merged() -> None:
    clock = FakeClock()
    stats = RunStats(total=1000, clock=clock)
    trend = Trend(stats)
    clock.now += 10
    stats.remote_done = 500  # request_counts of open jobs
    trend.sample()
    assert trend.eta() == pytest.approx(500 / 50)
    assert look(stats, trend).done == 500


@settings(max_examples=200)
@given(
    words=st.lists(st.text(st.characters(blacklist_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]), min_size=1), max_size=40)
)
def test_a_message_is_folded_at_spaces_and_keeps_every_word(words: list[str]) -> None:
    text = "stopping: " + " ".join(words)
    folded = fold(text, 80)
    assert folded.split() == text.split()  # nothing cut, nothing lost
    assert all(len(line) <= 80 or " " not in line.strip() for line in folded.splitlines())


def test_messages_on_an_80_column_terminal_break_at_spaces(tmp_path: Path) -> None:
    stream = _Terminal()
    reporter = RichReporter(stream)
    long = tmp_path / ("deep-folder-" * 4) / "reviews.results.jsonl"
    message = f"restart: moved {long} to {long}.1 and the errors file beside it as well, with the state"
    reporter.warn(message)
    shown = stream.getvalue().splitlines()
    assert len(shown) > 1 and all(len(line) <= 80 for line in shown if " " in line.strip())
    assert " ".join(shown).split() == message.split()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("ratio", "units", "said"),
    [(0.55, "server", "of the server's count"), (None, "estimate", "of the client's estimate")],
)
def test_the_summary_says_which_units_the_learned_limit_is_in(ratio: float | None, units: str, said: str) -> None:
    """Learned from budget headers, the limit counts what the server charges; with none, the client's estimate."""
    from asyncbatch.display.summary import summary_data, summary_table

    from .test_metrics_log import FakeRoute

    stats = RunStats(clock=FakeClock(), routes=[FakeRoute("d", learned_tpm=400_000.0, charge_ratio=ratio)])
    assert summary_data(stats)["learned_tpm_units"] == units
    console = Console(width=200, record=True)
    console.print(summary_table(stats))
    row = next(line for line in console.export_text().splitlines() if "learned limit" in line)
    assert "400,000 tokens/min" in row and said in row
