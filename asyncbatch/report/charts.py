"""The report's charts as Vega-Lite specs, built with Altair; the browser draws them (docs/report.md says why).

Each spec is validated by Altair without its data; the points go in afterwards as a named dataset
(validating thousands of points would take seconds and check nothing of ours). A chart with nothing to
show (no point, or every value 0: no 429s, no cost) is left out: every chart in a report draws something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt

from .failures import Failures
from .series import Point, Series

HEIGHT = 220


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    caption: str
    spec: dict[str, Any]  # Vega-Lite, its data inlined


def _finish(chart: alt.Chart, key: str, points: list[Point]) -> dict[str, Any]:
    spec: dict[str, Any] = chart.properties(width="container", height=HEIGHT).to_dict()
    spec["datasets"] = {key: points}
    return spec


def _time() -> alt.X:
    return alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S", labelOverlap=True))


def line(key: str, points: list[Point], unit: str, number: str = ",.1f") -> dict[str, Any]:
    """A line per series (and per session: a resumed run's clock starts again), every row a point."""
    encoding: dict[str, Any] = {
        "x": _time(),
        "y": alt.Y("value:Q", title=unit),
        "detail": alt.Detail("session:N"),
        "tooltip": [
            alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S", title="time"),
            alt.Tooltip("value:Q", format=number, title=unit),
            alt.Tooltip("session:N", title="session"),
        ],
    }
    if any("series" in p for p in points):
        encoding["color"] = alt.Color("series:N", title=None, legend=alt.Legend(orient="top"))
        encoding["tooltip"].insert(1, alt.Tooltip("series:N", title="series"))
    chart = alt.Chart(alt.NamedData(name=key)).mark_line(point=alt.OverlayMarkDef(size=12)).encode(**encoding)
    return _finish(chart, key, points)


def failure_bars(failures: Failures) -> dict[str, Any]:
    points: list[Point] = [{"code": code, "count": n} for code, n in failures.counts.most_common()]
    chart = (
        alt.Chart(alt.NamedData(name="failures"))
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="inputs"),
            y=alt.Y("code:N", title=None, sort="-x"),
            tooltip=[alt.Tooltip("code:N", title="code"), alt.Tooltip("count:Q", format=",", title="inputs")],
        )
    )
    return _finish(chart, "failures", points)


def job_bars(points: list[Point]) -> dict[str, Any]:
    """The Batch API jobs: one row each, a bar per state it was seen in."""
    chart = (
        alt.Chart(alt.NamedData(name="jobs"))
        .mark_bar()
        .encode(
            x=alt.X("start:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
            x2="end:T",
            y=alt.Y("job:N", title=None),
            color=alt.Color("status:N", title=None, legend=alt.Legend(orient="top")),
            tooltip=[
                alt.Tooltip("job:N", title="job"),
                alt.Tooltip("status:N", title="status"),
                alt.Tooltip("start:T", format="%Y-%m-%d %H:%M:%S", title="from"),
                alt.Tooltip("end:T", format="%Y-%m-%d %H:%M:%S", title="to"),
                alt.Tooltip("lines:Q", format=",", title="lines"),
            ],
        )
    )
    return _finish(chart, "jobs", points)


LIMITS = {  # what the quota chart's limit line is, by where it came from (``Series.quota_limits``)
    "given": "the limit given (--tpm, or a pool's deployments' tpm summed)",
    "learned": "the limit learned from 429s and headers",
    "pool": "the pool's deployments' learned limits, summed",
}


def quota_caption(limits: set[str]) -> str:
    """The quota chart's caption: it says which limit it draws, and that none is known when it draws none."""
    drawn = [words for kind, words in LIMITS.items() if kind in limits]
    limit = " and ".join(drawn) if drawn else "no limit line: none was given and none has been learned yet"
    return f"tokens per minute the quota counted (the server's units); {limit}"


def shows_something(points: list[Point]) -> bool:
    return any(point["value"] for point in points)


def charts(data: Series, failures: Failures) -> list[Chart]:
    """Every chart that has something to show, in the report's order."""
    lines = [
        ("throughput", "Throughput", "inputs finished per second", data.throughput, "inputs/s"),
        ("quota", "Tokens admitted against the quota", quota_caption(data.quota_limits), data.quota, "tokens/min"),
        ("throttling", "429s and retries", "429 answers and attempts made again, so far this session (counts: the "
         "last point is the summary's)", data.throttling, "so far"),
        ("latency", "Latency", "the answers' p50 and p95 between two rows of the log", data.latency, "ms"),
        ("cost", "Cost", "USD billed so far, every session of the run", data.cost, "USD"),
        ("deployments", "Each deployment: answers", "answers accepted per second, by deployment", data.deployments,
         "answers/s"),
        ("deployment_429s", "Each deployment: 429s", "429 answers so far this session, by deployment",
         data.deployment_429s, "429s so far"),
        ("limits", "The learned limit", "tokens per minute: --tpm, or what admission learned from 429s and headers",
         data.limits, "tokens/min"),
        ("ratio", "The charge ratio", "the server's charge per unit of the client's estimate, learned from its headers",
         data.ratio, "ratio"),
    ]  # fmt: skip
    found = [
        Chart(key, title, caption, line(key, points, unit, ",.4f" if key in ("cost", "ratio") else ",.1f"))
        for key, title, caption, points, unit in lines
        if shows_something(points)
    ]
    if failures.counts:
        found.append(Chart("failures", "Failures by code", "inputs recorded as failed", failure_bars(failures)))
    if data.jobs:
        caption = "each job's states, from when the run first saw each one"
        if data.jobs_left_out:
            caption += f" (the first {len({bar['job'] for bar in data.jobs}):,} jobs; "
            caption += f"{data.jobs_left_out:,} more are not drawn)"
        found.append(Chart("jobs", "Batch API jobs", caption, job_bars(data.jobs)))
    return found
