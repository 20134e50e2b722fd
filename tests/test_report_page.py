"""asyncbatch report without a browser: what goes into the page, what the command may write, what it refuses.

The page is read back with the standard library's HTML parser: every chart's JSON must parse, the
runtime must be in its one script, and a run's texts (a line's ``custom_id``, a server's code and
message, a deployment's name, a job's id), whatever they hold, must come out as text, redacted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from asyncbatch.batch.parts import BatchState, Part
from asyncbatch.cli.main import main
from asyncbatch.config import StatePaths
from asyncbatch.cost import Prices
from asyncbatch.display.summary import summary_data
from asyncbatch.records import error_record
from asyncbatch.redact import Redactor
from asyncbatch.report.charts import charts
from asyncbatch.report.failures import Failures
from asyncbatch.report.metrics import MetricsLog, Session, read_log
from asyncbatch.report.page import GENERATOR, read_run, render, runtime
from asyncbatch.report.series import series
from asyncbatch.stats import RunStats

from .helpers import FakeClock
from .test_metrics_log import FakeRoute

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
RUNTIME_MARK = "/*@vega-runtime@*/"  # where an older page put the runtime, by replacing this text


class Page(HTMLParser):
    """What a test reads of a page: each script (its id, its text), each failure's example, the CSP."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[str | None, str]] = []
        self.messages: list[str] = []
        self.csp: str | None = None
        self._in: str | None = None
        self._id: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in, self._id = "script", found.get("id")
            self.scripts.append((self._id, ""))
        elif tag == "div" and found.get("class") == "message":
            self._in = "message"
            self.messages.append("")
        elif tag == "meta" and found.get("http-equiv") == "Content-Security-Policy":
            self.csp = found.get("content")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] = (self._id, self.scripts[-1][1] + data)
        elif self._in == "message":
            self.messages[-1] += data

    def specs(self) -> dict[str, Any]:
        return {name: json.loads(text) for name, text in self.scripts if name and name.startswith("spec-")}


def make_run(directory: Path, text: str = "plain words", *, deployments: tuple[str, ...] = ("east", "west")) -> Path:
    """A run's files, written by the run's own writers: ``text`` as a line's custom_id and message, a server's
    error code, a deployment's name and a Batch API job's id."""
    results = directory / "run.results.jsonl"
    results.write_bytes(b"")
    paths = StatePaths.beside(results)
    paths.dir.mkdir()
    clock = FakeClock(0.0)
    routes = [FakeRoute(name) for name in (*deployments, text)]
    stats = RunStats(total=10, clock=clock, routes=routes, prices=Prices(input=1.0, output=1.0))
    log = MetricsLog(paths, stats, summary_data, batches=True)
    log.start()
    for i in range(4):
        clock.now += 1
        stats.succeeded += 2
        stats.throttled += 1
        stats.charged_tokens += 1000
        stats.cost += 0.01
        stats.add_latency(100.0 + i)
        routes[0].succeeded += 2
        routes[0].throttled += 1
        BatchState(run="r", parts=[Part(index=0, api="chat", batch_id=text, status=f"s{i}", lines=2)]).save(
            paths.batches
        )
        os.utime(paths.batches, ns=(i, i))
        log.tick()
    stats.count_failure(text)
    log.finish()
    record = error_record(custom_id=text, line_no=3, code=text, message=text, attempts=1)
    (directory / "run.results.errors.jsonl").write_bytes(orjson.dumps(record) + b"\n")
    return results


def page_of(results: Path, redactor: Redactor) -> str:
    return render(read_run(results, results.with_name("run.results.errors.jsonl"), redactor), now=NOW)


@pytest.fixture(scope="module")
def bundle() -> str:
    return runtime()  # bundled once for the module (a few seconds)


TEXT = st.text(max_size=40).filter(lambda t: t.strip())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
@example(text=RUNTIME_MARK)
@example(text="</script><script>alert(1)</script>")
@example(text='"}]}</script>')
def test_any_text_from_a_line_or_a_server_stays_text_and_the_runtime_is_in_its_one_script(
    tmp_path_factory: pytest.TempPathFactory, bundle: str, text: str
) -> None:
    results = make_run(tmp_path_factory.mktemp("run"), text)
    page = Page(page_of(results, Redactor()))
    holding = [name for name, script in page.scripts if bundle in script]
    assert holding == [None] and sum(script == bundle for _, script in page.scripts) == 1
    specs = page.specs()  # every chart's JSON parses
    assert {"throughput", "throttling", "quota", "cost", "deployments", "failures", "jobs"} <= {
        name.removeprefix("spec-") for name in specs
    }
    codes = [point["code"] for point in specs["spec-failures"]["datasets"]["failures"]]
    assert codes == [text[:63] + "\u2026" if len(text) > 64 else text]
    assert text in {point["series"] for point in specs["spec-deployments"]["datasets"]["deployments"]}
    assert any(text in point["job"] for point in specs["spec-jobs"]["datasets"]["jobs"])
    assert page.messages == [f"line 3, {text}: {text}"]
    assert page.csp is not None and page.csp.startswith("default-src 'none';")


SECRETS = st.sampled_from(["none", "true", "false", "null", "script", "chart", "html", "data", "self", "utf-8"]) | (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=4, max_size=12)
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=SECRETS)
def test_a_secret_the_data_does_not_hold_changes_nothing_in_the_page(
    tmp_path_factory: pytest.TempPathFactory, bundle: str, secret: str
) -> None:
    """The redactor sees the run's texts, never the page's structure: CSP, markup, scripts and charts' JSON."""
    directory = tmp_path_factory.mktemp("run")
    assume(secret not in str(directory) + "plain words east west run.results.jsonl" and secret not in "0123456789.")
    results = make_run(directory)
    assert page_of(results, Redactor([secret])) == page_of(results, Redactor())


@pytest.mark.parametrize("secret", ["none", "true"])
def test_a_secret_in_the_data_is_masked_and_the_page_still_works(tmp_path: Path, bundle: str, secret: str) -> None:
    results = make_run(tmp_path, f"id-{secret}-1")
    page = Page(page_of(results, Redactor([secret])))
    assert page.csp is not None and page.csp.startswith("default-src 'none';")
    assert page.messages == ["line 3, id-***-1: id-***-1"]
    specs = page.specs()
    assert [p["code"] for p in specs["spec-failures"]["datasets"]["failures"]] == ["id-***-1"]


# -- what -o may replace ---------------------------------------------------------------------------


def _untouched(path: Path) -> tuple[int, bytes | None]:
    info = path.lstat()
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    return stat.S_IFMT(info.st_mode), content


@pytest.mark.parametrize(
    "target",
    ["input", "results", "errors", "checkpoint", "in_state", "user_file", "link", "fifo", "directory", "device"],
)
def test_report_refuses_to_replace_anything_but_its_own_page(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = make_run(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"custom_id": "a"}\n')
    state = StatePaths.beside(results).dir
    (state / "checkpoint").write_text('{"version": 1}')
    (tmp_path / "notes.html").write_text("<p>mine</p>")
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "link.html").symlink_to(tmp_path / "victim")
    os.mkfifo(tmp_path / "fifo.html")
    (tmp_path / "dir.html").mkdir()
    if target == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(tmp_path / "null.html", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    path = {
        "input": tmp_path / "p.jsonl",
        "results": results,
        "errors": tmp_path / "run.results.errors.jsonl",
        "checkpoint": state / "checkpoint",
        "in_state": state / "report.html",
        "user_file": tmp_path / "notes.html",
        "link": tmp_path / "link.html",
        "fifo": tmp_path / "fifo.html",
        "directory": tmp_path / "dir.html",
        "device": tmp_path / "null.html",
    }[target]
    before = _untouched(path) if path.exists() or path.is_symlink() else None
    assert main(["report", str(results), "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"-o {path}" in err and "Traceback" not in err
    assert (_untouched(path) if before is not None else path.exists()) == (before if before is not None else False)
    assert (tmp_path / "victim").read_text() == "precious"


def test_report_replaces_its_own_page_and_writes_it_private(tmp_path: Path, bundle: str) -> None:
    results = make_run(tmp_path)
    (tmp_path / "empty.html").write_bytes(b"")
    for out in ("run.results.report.html", "run.results.report.html", "empty.html"):  # new, its own, empty
        assert main(["report", str(results), *(["-o", out] if out == "empty.html" else [])]) == 0
        written = tmp_path / out
        assert stat.S_IMODE(written.stat().st_mode) == 0o600  # as private as the files it is made of
        assert GENERATOR in written.read_text()[:1024]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["report", "."], ". is not a results file"),
        (["report", "/"], "/ is not a results file"),
        (["report", ""], "is not a results file"),
        (["report", "nope.jsonl"], "nope.jsonl does not exist"),
        (["report", "in.jsonl"], "its results are in.results.jsonl"),
        (["report", "run.results.jsonl", "-o", ""], "give a file name"),
        (["report", "run.results.jsonl", "-o", "/nonexistent/dir/r.html"], "the directory /nonexistent/dir does not"),
    ],
)
def test_report_says_what_is_wrong_with_a_path_and_exits_2(
    tmp_path: Path, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path)
    (tmp_path / "in.jsonl").write_text("{}\n")
    (tmp_path / "in.results.jsonl").write_text("")
    (tmp_path / "in.results.jsonl.state").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and ".tmp" not in err


@pytest.mark.parametrize(("name", "kind"), [("metrics", "fifo"), ("summary", "fifo"), ("summary", "directory"),
                                            ("errors", "fifo")])  # fmt: skip
def test_a_fifo_or_a_directory_where_a_run_keeps_a_file_is_named_not_waited_on(
    tmp_path: Path, name: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = make_run(tmp_path)
    path = tmp_path / "run.results.errors.jsonl" if name == "errors" else StatePaths.beside(results).dir / name
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    assert main(["report", str(results)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and ("not a regular file" in err or "is a directory" in err)


# -- what the charts show --------------------------------------------------------------------------


def _session(rows: list[dict[str, Any]], deployments: tuple[str, ...] = (), tpm: float | None = None) -> Session:
    columns = ["t", "done", "throttled", "retries", "charged_tokens", "cost", "limit_tpm", "deployments"]
    session = Session(1, 1.7e9, columns, ["answers", "throttled", "limit_tpm"], list(deployments), True, False,
                      tpm, None)  # fmt: skip
    base = dict.fromkeys(columns[1:-1], 0)
    session.rows = [{**base, "limit_tpm": None, "deployments": [], **row} for row in rows]
    return session


def test_429s_are_counted_as_the_summary_counts_them_not_scaled_to_a_minute() -> None:
    rows = [{"t": 0.0}, {"t": 0.5, "throttled": 15, "done": 5}, {"t": 1.0, "throttled": 15, "done": 10}]
    throttled = [p["value"] for p in series([_session(rows)]).throttling if p["series"] == "429s"]
    assert throttled == [0, 15, 15]  # the last point is the summary's 15, never "1,800/min"


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.001, max_value=0.24), st.integers(1, 50))
def test_the_runs_last_sliver_of_time_never_drops_its_rate_to_zero(sliver: float, per_second: int) -> None:
    """The final row comes when the run ends, a moment after the last tick: joined to the slice before."""
    rows = [{"t": t * 0.5, "done": round(t * 0.5 * per_second, 6)} for t in range(10)]
    rows.append({"t": 4.5 + sliver, "done": rows[-1]["done"]})
    rates = [p["value"] for p in series([_session(rows)]).throughput]
    assert min(rates) >= per_second * 0.5 / (0.5 + 0.24) - 0.001  # (rates are rounded to 0.001)


def test_a_chart_with_nothing_to_show_is_left_out() -> None:
    rows = [{"t": float(t), "done": t * 10, "charged_tokens": t * 100} for t in range(5)]  # no 429, no cost
    keys = [chart.key for chart in charts(series([_session(rows)]), Failures())]
    assert "throughput" in keys and "quota" in keys
    assert "throttling" not in keys and "cost" not in keys


def test_the_quota_chart_says_which_limit_it_draws() -> None:
    pool = ("east", "west")
    learned = [
        {"t": float(t), "charged_tokens": t * 100, "deployments": [[t, 0, 6000], [t, 0, 4000]]} for t in range(3)
    ]
    for row in learned:
        row["deployments"] = [
            dict(zip(["answers", "throttled", "limit_tpm"], r, strict=True)) for r in row["deployments"]
        ]
    data = series([_session(learned, pool)])
    (quota,) = [chart for chart in charts(data, Failures()) if chart.key == "quota"]
    assert {p["value"] for p in data.quota if p["series"] == "limit (the pool's, summed)"} == {10_000}
    assert "learned limits, summed" in quota.caption
    unknown = [{"t": float(t), "charged_tokens": t * 100} for t in range(3)]
    (quota,) = [chart for chart in charts(series([_session(unknown)]), Failures()) if chart.key == "quota"]
    assert "no limit line" in quota.caption


def test_the_page_shows_each_deployments_learned_limit_or_says_it_has_none(tmp_path: Path, bundle: str) -> None:
    results = make_run(tmp_path)
    summary = StatePaths.beside(results).summary
    snapshot = orjson.loads(summary.read_bytes())
    snapshot["summary"]["deployments"][0] |= {"learned_tpm": 123456, "charge_ratio": 0.5}
    summary.write_bytes(orjson.dumps(snapshot))
    page = page_of(results, Redactor())
    assert 'data-key="learned_tpm">123,456<' in page and 'data-key="charge_ratio">0.500<' in page
    assert 'data-key="learned_tpm">not learned<' in page


def test_the_sessions_dropped_from_the_log_are_said(tmp_path: Path, bundle: str) -> None:
    results = make_run(tmp_path)
    metrics = StatePaths.beside(results).metrics
    metrics.write_bytes(b'{"dropped":{"sessions":40,"cost":2.5,"since":1700000000.0}}\n' + metrics.read_bytes())
    assert read_log(metrics).dropped is not None
    assert "40 earlier session(s)" in page_of(results, Redactor())
