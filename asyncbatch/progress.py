"""What the user sees while a run works, and the summary at the end.

The display is refreshed by one ticker task reading ``RunStats``; requests
never call into it, so a progress bar costs nothing per request.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .stats import RunStats

MAX_WARNINGS = 20


class Reporter:
    """Quiet reporter (-q); the base of the others. ``warn`` still prints: problems are never hidden."""

    interval = 0.5
    verbose = False  # whether ``info`` prints

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self._warned = 0

    def warn(self, message: str) -> None:
        self._warned += 1
        if self._warned <= MAX_WARNINGS:
            self.console.print(message, markup=False)
        elif self._warned == MAX_WARNINGS + 1:
            self.console.print("... more problems not shown; every one is in the errors file", markup=False)

    def info(self, message: str) -> None:
        if self.verbose:
            self.console.print(message, markup=False)

    async def run(self, stats: RunStats) -> None:
        """Refresh until cancelled."""
        self.start()
        try:
            while True:
                self.tick(stats)
                await asyncio.sleep(self.interval)
        finally:
            self.tick(stats)
            self.stop()

    def start(self) -> None:
        pass

    def tick(self, stats: RunStats) -> None:
        pass

    def stop(self) -> None:
        pass

    def summary(self, stats: RunStats) -> None:
        pass


def status_text(stats: RunStats) -> str:
    tpm = (stats.prompt_tokens + stats.completion_tokens) / stats.elapsed * 60 if stats.elapsed else 0
    charged = stats.charged_tokens / stats.elapsed * 60 if stats.elapsed else 0
    learned = f" · quota use {charged:,.0f} of learned {stats.learned_tpm:,.0f} TPM" if stats.learned_tpm else ""
    notice = f" · {stats.notice}" if stats.notice else ""
    return (
        f"{stats.requests_per_second:.1f} req/s · {tpm:,.0f} tok/min · {stats.in_flight} in flight · "
        f"{stats.retries} retries · {stats.throttled} 429s · {stats.failed} failed{learned}{notice}"
    )


class PlainReporter(Reporter):
    """A status line every few seconds: for logs and pipes, where a bar would be noise."""

    interval = 5.0
    verbose = True

    def tick(self, stats: RunStats) -> None:
        label = "[SIMULATED] " if stats.simulated else ""
        total = stats.total or "?"
        self.console.print(f"{label}{stats.done}/{total} done · {status_text(stats)}", markup=False)

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats))


class RichReporter(PlainReporter):
    interval = 0.25

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("asyncbatch", total=None, status="starting")

    def tick(self, stats: RunStats) -> None:
        label = "[bold yellow]SIMULATED[/] asyncbatch" if stats.simulated else "asyncbatch"
        self.progress.update(
            self.task,
            description=label,
            completed=stats.done,
            total=stats.total or None,
            status=status_text(stats),
        )

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()


def summary_table(stats: RunStats) -> Table:
    title = "asyncbatch summary"
    if stats.simulated:
        title += " — SIMULATED run (local simulator, not Azure)"
    table = Table(title=title, show_header=False)
    p50, p95 = stats.latency_percentile(0.5), stats.latency_percentile(0.95)
    rows = [
        ("succeeded", f"{stats.succeeded:,}"),
        ("failed", f"{stats.failed:,}" + (f" ({stats.input_errors:,} bad input lines)" if stats.input_errors else "")),
        ("attempts", f"{stats.attempts:,} ({stats.retries:,} retries)"),
        ("429 answers", f"{stats.throttled:,}"),
        ("prompt tokens", f"{stats.prompt_tokens:,}"),
        ("completion tokens", f"{stats.completion_tokens:,}"),
        ("tokens: estimated / used", _estimate_vs_used(stats)),
        ("wall time", f"{stats.elapsed:.2f} s"),
        ("throughput", f"{stats.requests_per_second:.1f} req/s"),
        ("latency p50 / p95", "-" if p50 is None else f"{p50:.0f} ms / {p95:.0f} ms"),
    ]
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


def _estimate_vs_used(stats: RunStats) -> str:
    """Admission charges the estimate; billing counts usage. Showing both explains the quota."""
    used = stats.prompt_tokens + stats.completion_tokens
    ratio = f" (estimate is {stats.estimated_tokens / used:.2f}x usage)" if used else ""
    return f"{stats.estimated_tokens:,} / {used:,}{ratio}"


def make_reporter(*, quiet: bool, progress: bool, stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stderr
    if quiet:
        return Reporter(stream)
    if progress and stream.isatty():
        return RichReporter(stream)
    if progress:
        return PlainReporter(stream)
    return _SummaryOnly(stream)


class _SummaryOnly(Reporter):
    verbose = True

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats))
