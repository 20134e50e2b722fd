"""What the user sees while a run works, and the summary at the end.

The display is refreshed by one ticker task reading ``RunStats``; requests
never call into it, so a progress display costs nothing per request.

Three forms of one picture (``Status``):

* a terminal: two lines that fit its width, the first with the bar, done/total,
  failures and ETA, the second with rates, quota, cost and retries; what does
  not fit is left out, least useful first;
* text (stderr not a terminal, e.g. a log): a timestamped line every few seconds;
* JSON (``--log-format json``): each status line and the summary one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..redact import RedactingStream, Redactor
from ..stats import RunStats, Trend

MAX_WARNINGS = 20
SEP = " · "


class Reporter:
    """Quiet reporter (-q); the base of the others. ``warn`` still prints: problems are never hidden."""

    interval = 0.5
    verbose = False  # whether ``info`` prints

    def __init__(self, stream: TextIO | None = None, redactor: Redactor | None = None) -> None:
        """:param redactor: every byte written passes through it (the run adds its secrets to it)."""
        self.redactor = redactor or Redactor()
        self.stream: TextIO = RedactingStream(stream or sys.stderr, self.redactor)  # type: ignore[assignment]
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self._warned = 0

    def warn(self, message: str) -> None:
        self._warned += 1
        if self._warned <= MAX_WARNINGS:
            self.message("warning", self.redactor.text(message))
        elif self._warned == MAX_WARNINGS + 1:
            self.message("warning", "... more problems not shown; every one is in the errors file")

    def info(self, message: str) -> None:
        if self.verbose:
            self.message("info", self.redactor.text(message))

    def message(self, level: str, text: str) -> None:
        self.console.print(text, markup=False)

    async def run(self, stats: RunStats) -> None:
        """Refresh until cancelled."""
        trend = Trend(stats)
        self.start()
        try:
            while True:
                trend.sample()
                self.tick(stats, trend)
                await asyncio.sleep(self.interval)
        finally:
            trend.sample()
            self.tick(stats, trend)
            self.stop()

    def start(self) -> None:
        pass

    def tick(self, stats: RunStats, trend: Trend) -> None:
        pass

    def stop(self) -> None:
        pass

    def summary(self, stats: RunStats) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Status:
    """One look at a run: every figure the three display forms show."""

    time: str  # wall clock, ISO 8601 UTC
    elapsed: float
    done: int
    total: int
    failed: int
    requests_per_second: float | None  # this run's recent rate
    charged_tpm: float | None  # tokens the quota counted per minute, recently (server's units)
    limit_tpm: float | None  # --tpm, or the learned limit: the same units as charged_tpm
    used_tpm: float  # prompt + completion tokens per minute, as billed
    in_flight: int
    retries: int
    throttled: int
    eta_seconds: float | None
    cost_usd: float | None
    projected_cost_usd: float | None
    notice: str | None
    simulated: bool
    deployments: list[dict[str, Any]]  # a pool's: name, answers, rate, in flight, 429s, state

    @property
    def percent(self) -> float | None:
        return 100 * self.done / self.total if self.total else None


def look(stats: RunStats, trend: Trend) -> Status:
    used = stats.prompt_tokens + stats.completion_tokens
    return Status(
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        elapsed=round(stats.elapsed, 1),
        done=stats.progress,
        total=stats.total,
        failed=stats.failed,
        requests_per_second=trend.per_second,
        charged_tpm=trend.charged_per_minute,
        limit_tpm=stats.tpm_limit or stats.learned_tpm,
        used_tpm=used / stats.elapsed * 60 if stats.elapsed > 0 else 0.0,
        in_flight=stats.in_flight,
        retries=stats.retries,
        throttled=stats.throttled,
        eta_seconds=trend.eta(),
        cost_usd=stats.cost if stats.prices is not None else None,
        projected_cost_usd=trend.projected_cost(),
        notice=stats.notice,
        simulated=stats.simulated,
        deployments=deployment_views(stats),
    )


def deployment_views(stats: RunStats) -> list[dict[str, Any]]:
    """Each pooled deployment's figures (``router.Route``), for the display, the JSON lines and the summary."""
    elapsed = stats.elapsed
    return [
        {
            "name": route.name,
            "answers": route.succeeded,
            "requests_per_second": round(route.succeeded / elapsed, 2) if elapsed > 0 else 0.0,
            "in_flight": route.in_flight,
            "throttled": route.throttled,
            "failed_attempts": route.failed,
            "state": route.state(),
        }
        for route in stats.routes
    ]


def deployment_line(view: dict[str, Any]) -> str:
    return SEP.join(
        [
            f"{view['name']}: {view['requests_per_second']:.1f} req/s",
            f"{view['answers']:,} answers",
            f"{view['in_flight']} in flight",
            f"{view['throttled']:,} 429s",
            view["state"],
        ]
    )


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def si(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def counts(s: Status) -> list[str]:
    """The first line's figures, all of which must be seen: done/total, %, failed, ETA."""
    done = f"{s.done:,}/{s.total:,}" if s.total else f"{s.done:,}/?"
    parts = [done + (f" {s.percent:.0f}%" if s.percent is not None else "")]
    parts.append(f"{s.failed:,} failed")
    parts.append(f"ETA {duration(s.eta_seconds)}")
    return parts


def details(s: Status) -> list[str]:
    """The second line's figures, most useful first: the narrower the terminal, the fewer shown."""
    parts = [f"{s.requests_per_second:.1f} req/s" if s.requests_per_second is not None else "- req/s"]
    if s.cost_usd is not None:
        projected = f" of ~{money(s.projected_cost_usd)}" if s.projected_cost_usd is not None else ""
        parts.append(f"{money(s.cost_usd)}{projected}")
    if s.limit_tpm:
        parts.append(f"quota {si(s.charged_tpm or 0)}/{si(s.limit_tpm)} TPM")
    elif s.charged_tpm:
        parts.append(f"charged {si(s.charged_tpm)} TPM")
    parts.append(f"{s.throttled:,} 429s")
    parts.append(f"{s.retries:,} retries")
    parts.append(f"{s.in_flight} in flight")
    parts.append(f"used {si(s.used_tpm)} tok/min")
    return parts


def fit(parts: list[str], width: int) -> str:
    """As many of ``parts`` as fit in ``width``, in order."""
    shown = ""
    for part in parts:
        joined = f"{shown}{SEP}{part}" if shown else part
        if len(joined) > width:
            break
        shown = joined
    return shown


def bar(fraction: float, width: int) -> Text:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return Text("━" * filled, style="green") + Text("━" * (width - filled), style="grey23")


def screen(s: Status, width: int) -> list[Text]:
    """The terminal's lines for ``width`` columns: counts and ETA always; the bar and label when there is room."""
    figures = SEP.join(counts(s))
    if len(figures) > width:
        figures = " ".join(counts(s))  # tighter, before anything is cut
    label = "SIMULATED" if s.simulated else "asyncbatch"
    room = width - len(figures) - 1
    first = Text()
    if room >= len(label) + 1 + 8:  # label and a bar of at least 8
        first.append(label + " ", style="bold yellow" if s.simulated else "bold")
        room -= len(label) + 1
    if room >= 8 and s.total:
        first += bar(s.done / s.total, min(room - 1, 40))
        first.append(" ")
    first.append(figures[:width] if len(figures) > width else figures)
    lines = [first, Text(fit(details(s), width))]
    if s.notice:
        lines.append(Text(s.notice[:width], style="yellow"))
    for view in s.deployments:
        lines.append(Text(fit(deployment_line(view).split(SEP), width)))
    return lines


def text_line(s: Status) -> str:
    """One status line for a log: time, elapsed, counts, ETA, then the rest."""
    pool = [f"[{deployment_line(view)}]" for view in s.deployments]
    return SEP.join(
        [f"{s.time} +{duration(s.elapsed)}", *counts(s), *details(s), *([s.notice] if s.notice else []), *pool]
    )


class PlainReporter(Reporter):
    """A status line every few seconds: for logs and pipes, where a bar would be noise."""

    interval = 5.0
    verbose = True

    def tick(self, stats: RunStats, trend: Trend) -> None:
        status = look(stats, trend)
        prefix = "[SIMULATED] " if status.simulated else ""
        self.console.print(prefix + text_line(status), markup=False)

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats))


class JsonReporter(Reporter):
    """--log-format json: every status line, message and the summary is one JSON object on its own line."""

    interval = 5.0
    verbose = True

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        self.stream.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
        self.stream.flush()

    def message(self, level: str, text: str) -> None:
        self.emit("message", {"level": level, "message": text})

    def tick(self, stats: RunStats, trend: Trend) -> None:
        status = look(stats, trend)
        self.emit("status", {**asdict(status), "percent": status.percent})

    def summary(self, stats: RunStats) -> None:
        self.emit("summary", summary_data(stats))


class RichReporter(PlainReporter):
    """A terminal: two lines that fit its width, redrawn four times a second."""

    interval = 0.25

    def __init__(self, stream: TextIO | None = None, redactor: Redactor | None = None) -> None:
        super().__init__(stream, redactor)
        self.live = Live(Text(""), console=self.console, auto_refresh=False, transient=False)

    def tick(self, stats: RunStats, trend: Trend) -> None:
        lines = screen(look(stats, trend), self.console.width)
        self.live.update(Group(*lines), refresh=True)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()


def summary_data(stats: RunStats) -> dict[str, Any]:
    """The summary's figures, for JSON (``summary_table`` shows the same in words)."""
    return {
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "bad_input_lines": stats.input_errors,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "completion_tokens": stats.completion_tokens,
        "estimated_tokens": stats.estimated_tokens,
        "cost_usd": round(stats.cost, 6) if stats.prices is not None else None,
        "projected_cost_usd": stats.projected_cost,
        "wall_seconds": round(stats.elapsed, 3),
        "requests_per_second": round(stats.requests_per_second, 2),
        "latency_p50_ms": stats.latency_percentile(0.5),
        "latency_p95_ms": stats.latency_percentile(0.95),
        "resumed": stats.resumed,
        "resent": stats.resent,
        "failure_reasons": dict(stats.failure_reasons.most_common()),
        "learned_tpm": stats.learned_tpm,
        "charge_ratio": stats.charge_ratio,
        "changed": stats.changed,
        "interrupted": stats.interrupted,
        "stopped": stats.stopped,
        "aborted": stats.aborted,
        "simulated": stats.simulated,
        "deployments": deployment_views(stats),
        "batch_api": {"jobs": stats.batch_jobs, "answers": stats.batch_answers} if stats.batch_jobs else None,
    }


def summary_table(stats: RunStats) -> Table:
    title = "asyncbatch summary"
    if stats.simulated:
        title += " — SIMULATED run (local simulator, not Azure)"
    table = Table(title=title, show_header=False)
    p50, p95 = stats.latency_percentile(0.5), stats.latency_percentile(0.95)
    cached = f" ({stats.cached_tokens:,} cached)" if stats.cached_tokens else ""
    rows = [
        ("succeeded", f"{stats.succeeded:,}"),
        ("failed", f"{stats.failed:,}" + (f" ({stats.input_errors:,} bad input lines)" if stats.input_errors else "")),
        ("attempts", f"{stats.attempts:,} ({stats.retries:,} retries)"),
        ("429 answers", f"{stats.throttled:,}"),
        ("prompt tokens", f"{stats.prompt_tokens:,}{cached}"),
        ("completion tokens", f"{stats.completion_tokens:,}"),
        ("tokens: estimated / used", _estimate_vs_used(stats)),
        ("wall time", f"{stats.elapsed:.2f} s"),
        ("throughput", f"{stats.requests_per_second:.1f} req/s"),
        ("latency p50 / p95", "-" if p50 is None else f"{p50:.0f} ms / {p95:.0f} ms"),
    ]
    if stats.prices is not None:
        rows.append(("cost", _cost(stats)))
    if stats.batch_jobs:
        live = stats.succeeded - stats.resumed - stats.batch_answers
        rows.append(
            ("Batch API", f"{stats.batch_answers:,} answered by {stats.batch_jobs} job(s), billed at half price; "
             f"{max(0, live):,} run live")
        )  # fmt: skip
    answers = sum(route.succeeded for route in stats.routes)
    for view in deployment_views(stats):
        share = f" ({view['answers'] / answers:.0%})" if answers else ""
        rows.append(
            (
                f"deployment {view['name']}",
                f"{view['answers']:,} answers{share}, {view['throttled']:,} 429s, {view['state']}",
            )
        )
    if stats.learned_tpm:
        rows.append(("learned limit", f"{stats.learned_tpm:,.0f} tokens/min (adaptive: no --tpm/--rpm given)"))
    if stats.charge_ratio is not None:
        rows.append(("server charge", f"{stats.charge_ratio:.2f} x the client's estimate (learned from its headers)"))
    if stats.resumed:
        rows.insert(0, ("resumed", f"{stats.resumed:,} inputs were already recorded and were skipped"))
    if stats.resent:
        rows.insert(1, ("re-sent", f"{stats.resent:,} requests in flight when the last run stopped were sent again"))
    if stats.changed:
        rows.append(("results mix options", f"{', '.join(stats.changed)} changed at this resume (--accept-changes)"))
    if stats.failure_reasons:
        top = stats.failure_reasons.most_common(5)
        rows.append(("top failure reasons", ", ".join(f"{code}: {n:,}" for code, n in top)))
    if stats.interrupted:
        rows.append(("interrupted", "yes: run the same command again to resume"))
    if stats.stopped:
        rows.append(("stopped early", f"{stats.stopped}; run the same command again to resume"))
    if stats.aborted:
        rows.append(("aborted", stats.aborted))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _cost(stats: RunStats) -> str:
    prices = stats.prices
    assert prices is not None
    cached = f", cached {prices.cached_input:g}" if prices.cached_input is not None else ""
    text = (
        f"{stats.cost:.4f} USD this run (per 1M tokens: prompt {prices.input:g}{cached}, "
        f"completion {prices.output:g}; {prices.source}"
        + ("; Batch API answers at half these)" if stats.batch_answers else ")")
    )
    projected = stats.projected_cost
    if projected is not None and stats.done < stats.total:
        text += f"; about {projected:.4f} USD with the {stats.total - stats.done:,} inputs still to run"
    return text


def _estimate_vs_used(stats: RunStats) -> str:
    """Admission charges the estimate; billing counts usage. Showing both explains the quota."""
    used = stats.prompt_tokens + stats.completion_tokens
    ratio = f" (estimate is {stats.estimated_tokens / used:.2f}x usage)" if used else ""
    return f"{stats.estimated_tokens:,} / {used:,}{ratio}"


def make_reporter(
    *,
    quiet: bool,
    progress: bool,
    log_format: str = "text",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Reporter:
    stream = stream or sys.stderr
    if log_format == "json":
        return JsonReporter(stream, redactor) if progress and not quiet else _JsonSummaryOnly(stream, quiet, redactor)
    if quiet:
        return Reporter(stream, redactor)
    if progress and stream.isatty():
        return RichReporter(stream, redactor)
    if progress:
        return PlainReporter(stream, redactor)
    return _SummaryOnly(stream, redactor)


class _SummaryOnly(Reporter):
    verbose = True

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats))


class _JsonSummaryOnly(JsonReporter):
    def __init__(self, stream: TextIO, quiet: bool, redactor: Redactor | None = None) -> None:
        super().__init__(stream, redactor)
        self.verbose, self.quiet = not quiet, quiet

    async def run(self, stats: RunStats) -> None:
        await asyncio.Event().wait()  # no status lines; cancelled at the end

    def summary(self, stats: RunStats) -> None:
        if not self.quiet:
            super().summary(stats)
