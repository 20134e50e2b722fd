"""What the report's charts show, computed from the metrics log: plain points, no drawing.

Rows hold cumulative counters, so a rate is the difference of two rows over their time apart (a
slice shorter than half the one before, like the run's last one, is joined to it: a rate over a
sliver of time is noise). Counts that the summary gives as totals (429s, retries) are drawn as they
are, so far, so the chart's last point is the summary's figure. Each session (one run of the command)
is read apart: its clock starts again, and a curve never joins the end of one session to the start of
the next. Times are Unix milliseconds (Vega-Lite's).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .metrics import Dropped, JobEvent, Session

MAX_POINTS = 1000  # per session and series: a longer log is read every k-th row (rates stay exact)
MAX_JOBS = 200  # Batch API jobs drawn in the timeline (the first ones); the caption says how many more
# Rows' times are written to 0.1 s: two rows nearer than half that are a damaged log's, and a rate over so short
# a slice unbounded (a counter over 1e-261 s overflowed the chart's JSON). No rate is taken over one.
LEAST_SLICE = 0.05  # seconds
Point = dict[str, Any]
Row = dict[str, Any]


@dataclass
class Series:
    """The points of every chart, each a list of Vega-Lite records."""

    throughput: list[Point] = field(default_factory=list)  # time, session, value (lines/s)
    quota: list[Point] = field(default_factory=list)  # time, session, series (admitted, limit), value (tokens/min)
    quota_limits: set[str] = field(default_factory=set)  # which limits the quota chart draws ("given", "learned"...)
    throttling: list[Point] = field(default_factory=list)  # time, session, series (429s, retries), value (so far)
    latency: list[Point] = field(default_factory=list)  # time, session, series (p50, p95), value (ms)
    cost: list[Point] = field(default_factory=list)  # time, session, value (USD, every session so far)
    deployments: list[Point] = field(default_factory=list)  # time, session, series (name), value (answers/s)
    deployment_429s: list[Point] = field(default_factory=list)  # time, session, series (name), value (so far)
    limits: list[Point] = field(default_factory=list)  # time, session, series (run, each deployment), value
    ratio: list[Point] = field(default_factory=list)  # time, session, series, value (the charge ratio)
    jobs: list[Point] = field(default_factory=list)  # job, status, start, end (ms), lines
    jobs_left_out: int = 0  # jobs past MAX_JOBS, not drawn


def sampled(rows: list[dict[str, Any]], most: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most about ``most`` rows, evenly spread, always with the last (cumulative counters: nothing lost)."""
    if len(rows) <= most:
        return rows
    step = -(-len(rows) // most)
    return rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])


def slices(rows: list[Row]) -> list[tuple[Row, Row, float]]:
    """(before, after, seconds) between consecutive rows; a slice shorter than half the one before (the run's
    last, cut short by its end) is joined to that one, so no rate is taken over a sliver of time."""
    found: list[tuple[Row, Row, float]] = []
    for before, after in itertools.pairwise(rows):
        if (seconds := after["t"] - before["t"]) < LEAST_SLICE:
            continue
        if found and seconds < found[-1][2] / 2:
            before = found.pop()[0]
            seconds = after["t"] - before["t"]
        found.append((before, after, seconds))
    return found


def _rate(before: dict[str, Any], after: dict[str, Any], key: str, seconds: float) -> float | None:
    if before.get(key) is None or after.get(key) is None:
        return None
    return max(0.0, float(after[key] - before[key]) / seconds)


def series(sessions: list[Session], dropped: Dropped | None = None) -> Series:
    out = Series()
    spent = dropped.cost if dropped is not None else 0.0  # USD of the sessions before
    for session in sessions:
        rows = sampled(session.rows)
        at = _clock(session)
        _rates(out, session, rows, at)
        _gauges(out, session, rows, at)
        if session.priced:
            out.cost += [_point(at(r), session, r["cost"] + spent) for r in rows if r.get("cost") is not None]
            spent += rows[-1]["cost"] if rows and rows[-1].get("cost") is not None else 0.0
        end = at(rows[-1]) if rows else session.wall * 1000
        out.jobs += _jobs(session.jobs, session, end)
    jobs = list(dict.fromkeys(bar["job"] for bar in out.jobs))
    drawn = set(jobs[:MAX_JOBS])
    out.jobs_left_out = len(jobs) - len(drawn)
    out.jobs = [bar for bar in out.jobs if bar["job"] in drawn]
    return out


Clock = Callable[[dict[str, Any]], float]


def _clock(session: Session) -> Clock:
    """A row's time, Unix milliseconds."""
    return lambda row: round((session.wall + row["t"]) * 1000)


def _point(time: float, session: Session, value: float, name: str | None = None) -> Point:
    point: Point = {"time": time, "session": session.number, "value": value}
    if name is not None:
        point["series"] = name
    return point


def _rates(out: Series, session: Session, rows: list[Row], at: Clock) -> None:
    """Throughput, quota use, each deployment's answers: rates between consecutive rows."""
    for before, after, seconds in slices(rows):
        time = at(after)
        if (done := _rate(before, after, "done", seconds)) is not None:
            out.throughput.append(_point(time, session, round(done, 3)))
        if (charged := _rate(before, after, "charged_tokens", seconds)) is not None:
            out.quota.append(_point(time, session, round(charged * 60), "admitted"))
        for name, b, a in zip(session.deployments, before["deployments"], after["deployments"], strict=True):
            if (answers := _rate(b, a, "answers", seconds)) is not None:
                out.deployments.append(_point(time, session, round(answers, 3), name))


def _gauges(out: Series, session: Session, rows: list[Row], at: Clock) -> None:
    """Values read as they are: 429s and retries so far, latency, the limit (given or learned), the charge ratio."""
    for row in rows:
        time = at(row)
        for key, name in (("throttled", "429s"), ("retries", "retries")):
            if row.get(key) is not None:
                out.throttling.append(_point(time, session, row[key], name))
        for key in ("p50", "p95"):
            if row.get(key) is not None:
                out.latency.append(_point(time, session, row[key], key))
        _limit(out, session, row, time)
        if row.get("limit_tpm") is not None:
            out.limits.append(_point(time, session, row["limit_tpm"], "the run"))
        if row.get("charge_ratio") is not None:
            out.ratio.append(_point(time, session, row["charge_ratio"], "the run"))
        for name, route in zip(session.deployments, row["deployments"], strict=True):
            if route.get("throttled") is not None:
                out.deployment_429s.append(_point(time, session, route["throttled"], name))
            if route.get("limit_tpm") is not None:
                out.limits.append(_point(time, session, route["limit_tpm"], name))
            if route.get("charge_ratio") is not None:
                out.ratio.append(_point(time, session, route["charge_ratio"], name))


def _limit(out: Series, session: Session, row: Row, time: float) -> None:
    """The quota chart's limit: the run's (--tpm, or learned), else a pool's learned limits summed, all known."""
    routes = [route.get("limit_tpm") for route in row["deployments"]]
    if row.get("limit_tpm") is not None:
        out.quota.append(_point(time, session, row["limit_tpm"], "limit"))
        out.quota_limits.add("given" if session.tpm_limit is not None else "learned")
    elif routes and all(limit is not None for limit in routes):
        out.quota.append(_point(time, session, sum(routes), "limit (the pool's, summed)"))
        out.quota_limits.add("pool")


def _jobs(events: list[JobEvent], session: Session, end: float) -> list[Point]:
    """Each Batch API job's states as bars: from the time it was first seen in a state to the next."""
    by_part: dict[int, list[JobEvent]] = {}
    for event in sorted(events, key=lambda e: e.t):
        by_part.setdefault(event.part, []).append(event)
    bars = []
    for part, changes in sorted(by_part.items()):
        name = f"part {part}" + (f" ({changes[-1].job})" if changes[-1].job else "")
        for event, following in zip(changes, [*changes[1:], None], strict=True):
            if following is None and event.status == "merged":
                break  # its answers are recorded: the job's life has ended
            start = round((session.wall + event.t) * 1000)
            stop = round((session.wall + following.t) * 1000) if following is not None else max(end, start)
            bars.append({"job": name, "status": event.status, "start": start, "end": stop, "lines": event.lines})
    return bars
