"""--dry-run: read and check the whole input, estimate tokens, time and cost; call nothing."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..batch.parts import Splitter, batch_line
from ..config import Limits, RequestDefaults
from ..cost import Prices, decimal, output_limit, projected, why_no_cost
from ..errors import ConfigError
from ..input.reader import BadLine, first_lines, read_lines
from ..input.requests import prepare, setup_mistake
from ..protocol import batchable


@dataclass
class DryRunReport:
    lines: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    bad: list[BadLine] = field(default_factory=list)  # the first few, for the report
    bad_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # at most: max_tokens x n, of the requests that set it
    unbounded: int = 0  # requests that may write an answer of any length: no max_tokens
    batch_files: Counter[str] = field(default_factory=Counter)  # --batch-api: files (and jobs) per API
    batch_live: Counter[str] = field(default_factory=Counter)  # --batch-api: lines no job of this endpoint takes

    @property
    def requests(self) -> int:
        return self.lines - self.bad_count


def dry_run(
    path: Path,
    defaults: RequestDefaults,
    model: str,
    keep_bad: int = 20,
    max_lines_per_file: int = 100_000,
    kind: str = "azure",
) -> DryRunReport:
    """Read and check every line; count, estimate, and plan the Batch API's files for an endpoint of ``kind``."""
    if mistake := setup_mistake(path, first_lines(path), defaults):
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
        report.unbounded += job.estimate == job.prompt_estimate and job.api != "embeddings"
        if batchable(kind, job.api):
            splitter.place(job.api, job.line_no, len(batch_line(job)))
        else:
            report.batch_live[job.api] += 1
    report.batch_files = Counter(part.api for part in splitter.parts)
    return report


def pick_sample(path: Path, report: DryRunReport, n: int, defaults: RequestDefaults, model: str) -> list[bytes]:
    """``n`` request lines spread evenly over the file's good ones (so one end of it does not stand for all of it);
    as many as asked, or every good line where the file has fewer."""
    step = max(1.0, report.requests / n)
    picked: list[bytes] = []
    good = 0  # good lines seen before this one
    for line in read_lines(path):
        if len(picked) >= n:
            break
        if isinstance(line, BadLine) or isinstance(prepare(line, defaults, model), BadLine):
            continue
        # The k-th pick is the good line numbered k * step or next among the good ones: a fixed grid, so that a
        # step of 1.2 picks 20 of 24 lines (not every other one). Counted over the good lines, not the file's
        # line numbers: bad lines at the end took the last picks with them, and blank lines bunched the picks.
        if good >= len(picked) * step:
            picked.append(orjson.dumps(line.obj))
        good += 1
    return picked


def implied_seconds(report: DryRunReport, limits: Limits) -> float | None:
    """The time the quota implies: TPM after the first 10 s burst, or RPM, whichever binds."""
    bounds = []
    if limits.tpm:
        total = report.prompt_tokens + report.completion_tokens
        bounds.append(max(0.0, total - limits.tpm / 6) / (limits.tpm / 60))
    if limits.rpm:
        bounds.append(report.requests / (limits.rpm / 60))
    return max(bounds) if bounds else None


@dataclass(frozen=True)
class Sample:
    """What a few real answers said (``--sample N``): their tokens and cost, to project the whole file's."""

    requests: int  # lines sampled
    answered: int
    prompt_tokens: int  # every attempt's, as billed
    completion_tokens: int
    cost: float  # every attempt's (output asked again included): what the lines really cost
    line_costs: tuple[float, ...]  # each answered line's own answer, for the range

    def projection(self, requests: int) -> tuple[float, float, float]:
        """(projected, low, high) USD for ``requests`` lines at the cost per line of the sample; 95% range."""
        total = projected(self.cost, self.answered, requests)
        spread = statistics.stdev(self.line_costs) if len(self.line_costs) > 1 else 0.0
        half = 1.96 * spread / math.sqrt(len(self.line_costs) or 1) * requests
        return total, max(0.0, total - half), total + half


def format_report(
    report: DryRunReport,
    path: Path,
    limits: Limits,
    prices: Prices | None,
    *,
    model: str = "",
    batch: bool = False,
    sample: Sample | None = None,
) -> str:
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(report.kinds.items())) or "none"
    limit = output_limit(model) if report.unbounded else None
    bound = None if report.unbounded and limit is None else report.completion_tokens + report.unbounded * (limit or 0)
    lines = [
        f"dry run of {path}: nothing was sent" if sample is None else f"dry run of {path}: {sample.requests} sent",
        f"  lines            {report.lines:,} ({kinds}; {report.bad_count:,} bad)",
        f"  requests         {report.requests:,}",
        f"  prompt tokens    {report.prompt_tokens:,} estimated (characters / 4, as Azure's admission counts)",
        f"  output tokens    {_output_bound(report, model, limit, bound)}",
    ]
    if sample is not None and sample.answered:
        per = sample.completion_tokens / sample.answered
        lines.append(
            f"                   about {per * report.requests:,.0f} projected ({per:,.0f} a line in the sample)"
        )
    seconds = implied_seconds(report, limits)
    if seconds is None:
        lines.append("  time             give --tpm and/or --rpm to see the time the quota implies")
    else:
        lines.append(f"  time             about {_duration(seconds)} at the quota given")
    lines += _cost_lines(report, prices, model, bound, sample, batch)
    if batch:
        files = sum(report.batch_files.values())
        per_api = ", ".join(f"{n} {api}" for api, n in sorted(report.batch_files.items()))
        lines.append(f"  Batch API        {files} file(s) and job(s) ({per_api or 'none'}); results within 24 h")
        for api, count in sorted(report.batch_live.items()):
            lines.append(f"{PAD}{count:,} {api} lines run live: Azure's Global Batch does not take {api}")
    for bad in report.bad:
        lines.append(f"  {path}:{bad.line_no}: {bad.reason}")
    if report.bad_count > len(report.bad):
        lines.append(f"  ... and {report.bad_count - len(report.bad):,} more bad lines")
    return "\n".join(lines)


PAD = " " * 19  # a continued line lines up under the first's value


def _output_bound(report: DryRunReport, model: str, limit: int | None, bound: int | None) -> str:
    if not report.unbounded:
        return f"{report.completion_tokens:,} at most (max_tokens x n)"
    if bound is not None:
        return (
            f"{bound:,} at most: {report.unbounded:,} requests set no max_tokens,\n"
            f"{PAD}counted at {model}'s output limit ({limit:,} each)"
        )
    return (
        f"no bound: {report.unbounded:,} requests set no max_tokens, and {model!r}\n{PAD}has no known output "
        "limit (pass --max-tokens for a bound, or --sample N to measure)"
    )


def usd(amount: float) -> str:
    return f"{amount:,.2f} USD" if amount >= 1 else f"{amount:.4f} USD"


def _cost_lines(
    report: DryRunReport, prices: Prices | None, model: str, bound: int | None, sample: Sample | None, batch: bool
) -> list[str]:
    if prices is None:
        return [f"  cost             {why_no_cost(model)}"]
    lines = []
    if sample is not None and sample.answered:
        live, low, high = sample.projection(report.requests)
        lines.append(f"  cost             about {usd(live)} live (95% range {usd(low)} to {usd(high)}),")
        lines.append(f"{PAD}projected from {sample.answered} sampled answers, which cost {usd(sample.cost)}")
        lines.append(f"{PAD}about {usd(live / 2)} through the Batch API (half price)")
    elif sample is not None:
        lines.append("  cost             no sampled line was answered, so nothing to project from")
    head = PAD if lines else "  cost             "
    if bound is None:
        if sample is None:
            lines.append(f"{head}no bound without max_tokens: {usd(prices.cost(report.prompt_tokens, 0))} for the")
            lines.append(f"{PAD}prompts alone; pass --max-tokens for a bound, or --sample N to project it")
    else:
        live = prices.cost(report.prompt_tokens, bound)
        halved = prices.batch().cost(report.prompt_tokens, bound)
        saving = f", {usd(live - halved)} less" if batch else ""
        lines.append(f"{head}at most {usd(live)} live, {usd(halved)} through the Batch API (half price{saving})")
    given = f"prompt {decimal(prices.input)}, completion {decimal(prices.output)}"
    lines.append(f"  prices           {given} USD per 1M tokens")
    lines.append(f"{PAD}({prices.source})")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
