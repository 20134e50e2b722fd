"""asyncbatch report: a pool run with faults and 429s, its page opened in headless Chromium with no network.

The page must draw every chart (marks in each SVG), log nothing to the console, ask for nothing but
its own file, and show the totals of the run's ``--log-format json`` summary. One browser serves the
module (Debian's ``chromium``, driven by Playwright with no browser download of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import asyncbatch
from asyncbatch.cli.main import main
from asyncbatch.display.reporters import Reporter
from asyncbatch.report.metrics import read_log
from asyncbatch.report.page import TOTALS
from asyncbatch.simulator import SimConfig, serve_in_thread
from asyncbatch.stats import RunStats, Trend

from .helpers import read_jsonl, simulator_env

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LINES = int(os.environ.get("ASYNCBATCH_REPORT_LINES", "1000"))  # 5000 for the acceptance run (docs/benchmarks.md)
MAX_BYTES = 5 * 1024 * 1024
pytestmark = pytest.mark.xdist_group("browser")  # one worker: one browser start, one bundling of the runtime


class Browser:
    """One Chromium for the module, driven by Playwright's async API on an event loop of its own thread.

    (Playwright's sync API would leave its loop marked running in the tests' thread, where
    asyncbatch runs its own.)
    """

    def __init__(self) -> None:
        from playwright.async_api import async_playwright

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.playwright = self.call(async_playwright().start())
        self.chromium = self.call(self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS))

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def close(self) -> None:
        self.call(self.chromium.close())
        self.call(self.playwright.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    def open(self, page_file: Path, screenshot: Path) -> dict[str, Any]:
        return dict(self.call(self._open(page_file, screenshot)))

    async def _open(self, page_file: Path, screenshot: Path) -> dict[str, Any]:
        """The page from disk with the network off: what it drew, what it logged, what it asked for."""
        context = await self.chromium.new_context(offline=True, viewport={"width": 1200, "height": 900})
        asked: list[str] = []
        logged: list[str] = []

        async def only_files(route: Any) -> None:
            if route.request.url.startswith("file://"):
                await route.continue_()
            else:
                asked.append(route.request.url)
                await route.abort()

        await context.route("**/*", only_files)
        page = await context.new_page()
        page.on("console", lambda m: logged.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: logged.append(f"pageerror: {e}"))
        await page.goto(page_file.as_uri())
        await page.wait_for_selector("body[data-charts=done]", timeout=30_000)
        seen = {name: await page.evaluate(script) for name, script in READ.items()}
        seen["shown"] = dict(seen["shown"])
        await page.screenshot(path=str(screenshot), full_page=True)
        await context.close()
        return {**seen, "logged": logged, "asked": asked}


READ = {  # what the tests read of a page, in its own JavaScript
    "charts": """Array.from(document.querySelectorAll(".chart")).map(div => ({
        key: div.dataset.chart,
        rendered: div.dataset.rendered,
        width: div.querySelector("svg") ? div.querySelector("svg").getBoundingClientRect().width : 0,
        marks: Array.from(div.querySelectorAll("g.role-mark path")).filter(p => {
            const box = p.getBBox();
            return p.getAttribute("d") && box.width + box.height > 0;
        }).length,
    }))""",
    "shown": """Array.from(document.querySelectorAll("#summary [data-key]"))
        .map(e => [e.dataset.key, e.textContent])""",
    "pool": """Array.from(document.querySelectorAll("#pool tr[data-deployment]")).map(r => [r.dataset.deployment,
        ...["answers", "throttled", "failed_attempts"].map(k => r.querySelector(`[data-key=${k}]`).textContent)])""",
    "failures": """Array.from(document.querySelectorAll("#failures tr[data-code]")).map(r => [r.dataset.code,
        r.querySelector("td.num").textContent, r.querySelectorAll(".message").length])""",
    "state": """document.getElementById("state").textContent""",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("the browser test needs Debian's chromium: apt-get install chromium")
    found = Browser()
    yield found
    found.close()


def number(text: str) -> float:
    return float(text.replace(",", ""))


def assert_totals_equal(shown: dict[str, str], summary: dict[str, Any]) -> None:
    kinds = {key: kind for key, _, kind in TOTALS}
    for key, kind in kinds.items():
        if summary.get(key) is None:
            assert key not in shown
            continue
        digits = {"int": 0, "usd": 6, "float": 2}[kind]
        assert number(shown[key]) == round(summary[key], digits), key
    assert {"succeeded", "failed", "attempts", "throttled", "prompt_tokens", "cost_usd"} <= set(shown)


def _pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> None:
    """Two simulators with faults; the second's quota is small: the client, with none given, meets its 429s."""
    entries = []
    faults = {"500": 0.02, "400": 0.01, "reset": 0.005}
    for name, rpm in (("east", 60_000), ("west", 600)):
        config = SimConfig(api_key=f"key-{name}", rpm=rpm, fault_rates=faults, seed=len(name))
        url, _ = stack.enter_context(serve_in_thread(config))
        monkeypatch.setenv(f"KEY_{name.upper()}", config.api_key)
        entries.append(f'[[deployments]]\nname = "{name}"\nendpoint = "{url}"\ndeployment = "gpt-4o-mini"\n'
                       f'api_key_env = "KEY_{name.upper()}"\n')  # fmt: skip
    (tmp_path / "pool.toml").write_text("\n".join(entries))


def _input(path: Path, n: int) -> Path:
    rows = [{"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 20}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _summary(err: str) -> dict[str, Any]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (summary,) = [e for e in events if e["event"] == "summary"]
    return summary


def test_a_pool_run_with_faults_and_429s_gives_a_page_that_draws_every_chart_and_shows_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], browser: Browser
) -> None:
    _input(tmp_path / "in.jsonl", LINES)
    with ExitStack() as stack:
        _pool(tmp_path, monkeypatch, stack)
        code = main(["in.jsonl", "--deployments", "pool.toml", "-c", "50", "--backoff", "0.01", "--log-format",
                     "json", "--no-progress"])  # fmt: skip
    summary = _summary(capsys.readouterr().err)
    assert code == 1 and summary["failed"] > 0 and summary["throttled"] > 0 and summary["retries"] > 0
    assert main(["report", "in.results.jsonl", "-o", "report.html"]) == 0
    page_file = tmp_path / "report.html"
    assert page_file.stat().st_size <= MAX_BYTES

    seen = browser.open(page_file, tmp_path / "report.png")
    assert seen["asked"] == [] and seen["logged"] == []
    keys = [chart["key"] for chart in seen["charts"]]
    assert {
        "throughput",
        "quota",
        "throttling",
        "latency",
        "cost",
        "deployments",
        "deployment_429s",
        "failures",
    } <= set(keys)
    for chart in seen["charts"]:
        assert chart["rendered"] == "yes" and chart["marks"] > 0 and chart["width"] > 100, chart
    assert_totals_equal(seen["shown"], summary)
    assert seen["pool"] == [
        [d["name"], f"{d['answers']:,}", f"{d['throttled']:,}", f"{d['failed_attempts']:,}"]
        for d in summary["deployments"]
    ]
    written = Counter(r["error"]["code"] for r in read_jsonl(tmp_path / "in.results.errors.jsonl"))
    assert written == Counter(summary["failure_reasons"])
    assert {code: number(n) for code, n, _ in seen["failures"]} == dict(written)
    assert all(0 < examples <= 3 for _, _, examples in seen["failures"])
    assert "finished" in seen["state"]


class ReportMidway(Reporter):
    """Writes the report (another reader of the files, in this process) once the log holds a third of the run."""

    interval = 0.05

    def __init__(self, results: Path, total: int) -> None:
        super().__init__()
        self.results, self.total = results, total
        self.codes: list[int] = []
        self.done_then: int | None = None

    def tick(self, stats: RunStats, trend: Trend) -> None:
        if self.codes:
            return
        sessions = read_log(self.results.with_name(self.results.name + ".state") / "metrics").sessions
        rows = sessions[-1].rows if sessions else []
        if rows and rows[-1]["done"] >= self.total // 3:
            self.done_then = stats.done
            self.codes.append(main(["report", str(self.results), "-o", str(self.results.parent / "midway.html")]))


def test_a_report_during_the_run_shows_the_run_so_far_and_the_run_finishes_exactly_once(
    tmp_path: Path, browser: Browser
) -> None:
    n = 400
    source = _input(tmp_path / "in.jsonl", n)
    reporter = ReportMidway(tmp_path / "in.results.jsonl", n)

    async def run() -> RunStats:
        async with asyncbatch.simulated(latency=0.01) as endpoint:
            limits = asyncbatch.Limits(concurrency=4)
            return await asyncbatch.run(asyncbatch.RunConfig(input_path=source, endpoint=endpoint, limits=limits),
                                        reporter=reporter)  # fmt: skip

    stats = asyncio.run(run())
    assert reporter.codes == [0] and reporter.done_then is not None and reporter.done_then < n
    lines = sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert lines == list(range(1, n + 1)) and stats.succeeded == n  # every input once: the report took no lock
    assert not (tmp_path / "in.results.errors.jsonl").read_text()

    seen = browser.open(tmp_path / "midway.html", tmp_path / "midway.png")
    assert seen["logged"] == [] and seen["asked"] == []
    assert "in progress" in seen["state"]
    assert {"throughput", "latency"} <= {chart["key"] for chart in seen["charts"]}
    assert all(chart["rendered"] == "yes" and chart["marks"] > 0 for chart in seen["charts"])
    assert 0 < number(seen["shown"]["succeeded"]) < n  # the summary as of the log's last row


def test_report_refuses_a_results_file_with_no_run_behind_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.results.jsonl").write_text("")
    assert main(["report", "x.results.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "nothing to report" in err and "HINT" in err
    assert not (tmp_path / "x.results.report.html").exists()
    shutil.rmtree(tmp_path / "x.results.jsonl.state", ignore_errors=True)


def test_the_batch_api_jobs_are_a_timeline_on_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Browser
) -> None:
    rows = [{"id": i, "company": f"Co{i}"} for i in range(60)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with simulator_env(SimConfig(api_key="batch-key", batch_seconds=1.0), monkeypatch):
        argv = ["in.jsonl", "--batch-api", "--template", "About {company}", "--max-lines-per-file", "20"]
        assert main([*argv, "--poll-interval", "0.05", "-q"]) == 0
    (session,) = read_log(tmp_path / "in.results.jsonl.state" / "metrics").sessions
    assert {event.part for event in session.jobs} == {0, 1, 2}
    statuses = {event.status for event in session.jobs}
    assert "merged" in statuses and len(statuses) >= 2  # and a state while it ran (the log looks twice a second)
    assert main(["report", "in.results.jsonl", "-o", "batch.html"]) == 0
    seen = browser.open(tmp_path / "batch.html", tmp_path / "batch.png")
    assert seen["logged"] == [] and seen["asked"] == []
    (jobs,) = [chart for chart in seen["charts"] if chart["key"] == "jobs"]
    assert jobs["rendered"] == "yes" and jobs["marks"] >= 3  # a bar at least for each job
