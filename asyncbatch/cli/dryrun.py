"""--dry-run: read and check the whole input, estimate tokens, time and cost; call nothing."""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..batch.parts import Splitter, batch_line
from ..config import Limits, RequestDefaults
from ..cost import Prices
from ..errors import ConfigError
from ..input.reader import BadLine, read_lines
from ..input.requests import prepare, setup_mistake


@dataclass
class DryRunReport:
    lines: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    bad: list[BadLine] = field(default_factory=list)  # the first few, for the report
    bad_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # at most: max_tokens x n
    batch_files: Counter[str] = field(default_factory=Counter)  # --batch-api: files (and jobs) per API

    @property
    def requests(self) -> int:
        return self.lines - self.bad_count


def dry_run(
    path: Path, defaults: RequestDefaults, model: str, keep_bad: int = 20, max_lines_per_file: int = 100_000
) -> DryRunReport:
    with contextlib.closing(read_lines(path)) as first:
        if mistake := setup_mistake(path, first, defaults):
            raise ConfigError(mistake)
    report = DryRunReport()
    splitter = Splitter(max_lines_per_file)
    for line in read_lines(path):
        report.lines += 1
        job = line if isinstance(line, BadLine) else prepare(line, defaults, model)
        if isinstance(job, BadLine):
            report.bad_count += 1
            if len(report.bad) < keep_bad:
                report.bad.append(job)
            continue
        assert not isinstance(line, BadLine)
        report.kinds[line.kind] += 1
        report.prompt_tokens += job.prompt_estimate
        report.completion_tokens += job.estimate - job.prompt_estimate
        splitter.place(job.api, job.line_no, len(batch_line(job)))
    report.batch_files = Counter(part.api for part in splitter.parts)
    return report


def implied_seconds(report: DryRunReport, limits: Limits) -> float | None:
    """The time the quota implies: TPM after the first 10 s burst, or RPM, whichever binds."""
    bounds = []
    if limits.tpm:
        total = report.prompt_tokens + report.completion_tokens
        bounds.append(max(0.0, total - limits.tpm / 6) / (limits.tpm / 60))
    if limits.rpm:
        bounds.append(report.requests / (limits.rpm / 60))
    return max(bounds) if bounds else None


def format_report(
    report: DryRunReport, path: Path, limits: Limits, prices: Prices | None, *, batch: bool = False
) -> str:
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(report.kinds.items())) or "none"
    lines = [
        f"dry run of {path}: nothing was sent",
        f"  lines            {report.lines:,} ({kinds}; {report.bad_count:,} bad)",
        f"  requests         {report.requests:,}",
        f"  tokens estimated {report.prompt_tokens:,} prompt + {report.completion_tokens:,} completion at most "
        f"(Azure's admission estimate: prompt characters / 4 + max_tokens x n)",
    ]
    seconds = implied_seconds(report, limits)
    if seconds is None:
        lines.append("  time             give --tpm and/or --rpm to see the time the quota implies")
    else:
        lines.append(f"  time             about {_duration(seconds)} at the quota given")
    if prices is None:
        lines.append("  cost             give --price-in and --price-out (USD per 1M tokens) to see it")
    else:
        live = prices.cost(report.prompt_tokens, report.completion_tokens)
        halved = prices.batch().cost(report.prompt_tokens, report.completion_tokens)
        rates = f"prompt {prices.input:g}, completion {prices.output:g} USD per 1M tokens; {prices.source}"
        lines.append(f"  cost             at most {live:,.2f} USD live ({rates})")
        saving = f"; {live - halved:,.2f} USD less" if batch else ""
        lines.append(f"                   at most {halved:,.2f} USD through the Batch API (half price{saving})")
    if batch:
        files = sum(report.batch_files.values())
        per_api = ", ".join(f"{n} {api}" for api, n in sorted(report.batch_files.items()))
        lines.append(f"  Batch API        {files} file(s) and job(s) ({per_api or 'none'}); results within 24 h")
    for bad in report.bad:
        lines.append(f"  {path}:{bad.line_no}: {bad.reason}")
    if report.bad_count > len(report.bad):
        lines.append(f"  ... and {report.bad_count - len(report.bad):,} more bad lines")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
