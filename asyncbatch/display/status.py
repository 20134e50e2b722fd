"""One picture of a run (``Status``), drawn three ways: terminal lines that fit, a text line, JSON."""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from ..stats import RunStats, Trend

SEP = " · "


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
    cached: int  # lines answered without a request: from the cache, or by an identical one
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
        notice=stats.current_notice(),
        simulated=stats.simulated,
        cached=stats.cache_hits + stats.shared_answers,
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
            "learned_tpm": round(route.learned_tpm) if route.learned_tpm is not None else None,
            "charge_ratio": round(route.charge_ratio, 3) if route.charge_ratio is not None else None,
            "state": route.state(),
        }
        for route in stats.pool
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
    if s.cached:
        parts.append(f"{s.cached:,} cached")
    if s.limit_tpm:
        parts.append(f"quota {si(s.charged_tpm or 0)}/{si(s.limit_tpm)} TPM")
    elif s.charged_tpm:
        parts.append(f"quota {si(s.charged_tpm)}/? TPM")  # counted against the quota; its limit not yet learned
    parts.append(f"{s.throttled:,} 429s")
    parts.append(f"{s.retries:,} retries")
    parts.append(f"{s.in_flight} in flight")
    parts.append(f"billed {si(s.used_tpm)} tok/min")
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
