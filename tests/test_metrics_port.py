"""--metrics-port: Prometheus text on 127.0.0.1, scraped during a run; its counters are the summary's at the end."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

import asyncbatch
from asyncbatch.cli.main import main
from asyncbatch.display.reporters import Reporter
from asyncbatch.display.summary import summary_data
from asyncbatch.report.prometheus import METRICS, serving
from asyncbatch.stats import RunStats

from .helpers import batch_line, write_jsonl

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, *, openmetrics: bool = False) -> Samples:
    """Every sample of a scrape, by name and labels; the parser refuses text that is not the format."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    found: Samples = {}
    for family in parse(text):
        assert family.name in METRICS, family.name
        assert family.type == METRICS[family.name][0]
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class Scraper(Reporter):
    """Scrapes the run's endpoint once it has sent requests (as text and as OpenMetrics), and once more after
    the run has ended: the endpoint lingers until that scrape has read the final counters."""

    def __init__(self, interrupt: asyncbatch.Interrupt | None = None) -> None:
        super().__init__()
        self.url: str | None = None
        self.during: list[Samples] = []
        self.openmetrics: Samples = {}
        self.final: Samples = {}
        self.work_done = asyncio.Event()
        self.interrupt = interrupt  # if given: asked to stop once the endpoint lingers, instead of scraping
        self.lingering = False

    def info(self, message: str) -> None:
        if found := re.search(r"http://127\.0\.0\.1:\d+/metrics", message):
            self.url = found.group()
        if "serves its final figures" in message:
            self.lingering = True
            if self.interrupt is not None:
                self.interrupt.request()  # Ctrl-C ends the linger

    async def run(self, stats: RunStats) -> None:
        assert self.url is not None  # said before the run starts
        try:
            async with aiohttp.ClientSession() as session:
                while not self.during or self.during[-1].get(("asyncbatch_requests_total", ()), 0) == 0:
                    self.during.append(samples(await self._get(session)))
                self.openmetrics = samples(await self._get(session, OPENMETRICS), openmetrics=True)
            await asyncio.Event().wait()  # until the work is done
        finally:
            self.work_done.set()

    async def after_the_end(self) -> None:
        """Scrape until the counters are final (``asyncbatch_finished``): the run has ended, the endpoint lingers."""
        await self.work_done.wait()
        async with aiohttp.ClientSession() as session:
            while self.final.get(("asyncbatch_finished", ())) != 1:
                self.final = samples(await self._get(session))

    async def _get(self, session: aiohttp.ClientSession, accept: str = "text/plain") -> str:
        assert self.url is not None
        async with session.get(self.url, headers={"Accept": accept}) as response:
            assert response.status == 200
            return await response.text()


async def _pool_run(tmp_path: Path, scraper: Scraper, linger: float) -> RunStats:
    faults = {"500": 0.05, "400": 0.03}
    async with (  # a pool: the second deployment's small quota gives 429s, the first carries the run
        asyncbatch.simulated(latency=0.002, fault_rates=faults, deployment="gpt-4o-mini") as east,
        asyncbatch.simulated(latency=0.002, rpm=600, fault_rates=faults, deployment="gpt-4o-mini") as west,
    ):
        config = asyncbatch.RunConfig(
            input_path=tmp_path / "in.jsonl",
            deployments=(asyncbatch.Deployment(name="east", endpoint=east),
                         asyncbatch.Deployment(name="west", endpoint=west)),
            limits=asyncbatch.Limits(concurrency=20),
            retry=asyncbatch.RetryPolicy(backoff_initial=0.01),
            metrics_port=0,
            metrics_linger=linger,
        )  # fmt: skip
        return await asyncbatch.run(config, reporter=scraper, interrupt=scraper.interrupt)


def test_a_scrape_during_the_run_parses_and_the_one_after_its_end_matches_the_summary(tmp_path: Path) -> None:
    n = 300
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"question {i}", max_tokens=20) for i in range(n)])
    scraper = Scraper()

    async def go() -> RunStats:
        final = asyncio.ensure_future(scraper.after_the_end())
        stats = await _pool_run(tmp_path, scraper, linger=600)  # ends as soon as the final scrape is read
        await final
        return stats

    stats = asyncio.run(go())
    summary: dict[str, Any] = json.loads(json.dumps(summary_data(stats)))
    assert summary["throttled"] > 0 and summary["failed"] > 0 and summary["retries"] > 0
    assert scraper.during[-1][("asyncbatch_requests_total", ())] > 0
    assert scraper.openmetrics[("asyncbatch_finished", ())] == 0  # OpenMetrics parses too, during the run
    scrape = scraper.final
    assert scrape[("asyncbatch_finished", ())] == 1  # read while the endpoint lingered, or before it began to
    assert _from_scrape(scrape) == _from_summary(summary)
    answers = {labels[0][1]: value for (name, labels), value in scrape.items() if name == "asyncbatch_answers_total"}
    assert sum(answers.values()) == summary["attempts"]  # every attempt came back: none is in flight
    assert answers["429"] == summary["throttled"]
    assert scrape[("asyncbatch_in_flight", ())] == 0 and scrape[("asyncbatch_queued_inputs", ())] == 0
    for deployment in summary["deployments"]:
        labels = (("deployment", deployment["name"]),)
        assert scrape[("asyncbatch_deployment_answers_total", labels)] == deployment["answers"]
        assert scrape[("asyncbatch_deployment_throttled_total", labels)] == deployment["throttled"]
        assert scrape[("asyncbatch_deployment_failed_attempts_total", labels)] == deployment["failed_attempts"]


def test_ctrl_c_ends_the_linger(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", "hi", max_tokens=5) for i in range(20)])
    scraper = Scraper(asyncbatch.Interrupt())
    stats = asyncio.run(_pool_run(tmp_path, scraper, linger=600))  # no scrape after the end: only the stop ends it
    assert scraper.lingering and stats.done == 20


def test_a_bad_port_is_refused_while_the_options_are_parsed_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    for bad in ("99999", "-1", "http"):
        with pytest.raises(SystemExit) as exited:
            main(["in.jsonl", "--simulate", "--metrics-port", bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --metrics-port: {bad!r} is not a port number, 0 to 65535" in err
        assert "SIMULATED" not in err and "metrics_port" not in err  # no simulator started; the option's own name
    assert not (tmp_path / "in.results.jsonl").exists()


def _from_scrape(scrape: Samples) -> dict[str, Any]:
    def one(name: str, **labels: str) -> float:
        return scrape[(name, tuple(sorted(labels.items())))]

    failures = {labels[0][1]: value for (name, labels), value in scrape.items() if name == "asyncbatch_failures_total"}
    return {
        "succeeded": one("asyncbatch_inputs_done_total", result="succeeded"),
        "failed": one("asyncbatch_inputs_done_total", result="failed"),
        "attempts": one("asyncbatch_requests_total"),
        "retries": one("asyncbatch_retries_total"),
        "throttled": one("asyncbatch_throttled_total"),
        "prompt_tokens": one("asyncbatch_tokens_total", kind="prompt"),
        "completion_tokens": one("asyncbatch_tokens_total", kind="completion"),
        "cached_tokens": one("asyncbatch_tokens_total", kind="cached"),
        "estimated_tokens": one("asyncbatch_estimated_tokens_total"),
        "cost_usd": round(one("asyncbatch_cost_usd_total"), 6),
        "latency_p50_ms": one("asyncbatch_latency_milliseconds", quantile="0.5"),
        "failure_reasons": failures,
    }


def _from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ["succeeded", "failed", "attempts", "retries", "throttled", "prompt_tokens", "completion_tokens",
            "cached_tokens", "estimated_tokens", "cost_usd", "latency_p50_ms", "failure_reasons"]  # fmt: skip
    return {key: summary[key] for key in keys}


def test_a_port_already_taken_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["in.jsonl", "--simulate", "--metrics-port", str(port), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--metrics-port {port}: cannot listen" in err and "HINT" in err
    assert not (tmp_path / "in.results.jsonl").exists() and not (tmp_path / "in.results.jsonl.state").exists()


def test_every_metric_is_documented() -> None:
    documented = (Path(__file__).parents[1] / "docs" / "report.md").read_text()
    for name, (kind, _) in METRICS.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert f"`{shown}`" in documented, name


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("evil.example:{port}", 403),  # DNS rebinding: a page's own name, pointed at 127.0.0.1
        ("127.0.0.1.evil.example:{port}", 403),
        ("", 403),
    ],
)
def test_the_metrics_answer_only_a_request_that_names_this_machine(host: str, status: int) -> None:
    async def go() -> tuple[int, str]:
        async with serving(0, lambda message: None) as endpoint, aiohttp.ClientSession() as session:
            assert endpoint is not None
            port = endpoint.url.split(":")[2].split("/")[0]
            headers = {"Host": host.format(port=port)}
            async with session.get(endpoint.url, headers=headers, skip_auto_headers=["Host"]) as response:
                return response.status, await response.text()

    got, text = asyncio.run(go())
    assert got == status
    assert ("asyncbatch_up 1" in text) == (status == 200)
