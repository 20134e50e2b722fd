"""The summary at the end of a run: as a table, and as data for the JSON log."""

from collections.abc import Callable
from typing import Any

from rich.table import Table

from ..cost import decimal, why_no_cost
from ..stats import RunStats
from .status import deployment_views


def summary_data(stats: RunStats, words: Callable[[str], str] = str) -> dict[str, Any]:
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
        "learned_tpm_units": learned_units(stats),
        "charge_ratio": stats.charge_ratio,
        "changed": stats.changed,
        "interrupted": stats.interrupted,
        "stopped": words(stats.stopped) if stats.stopped else stats.stopped,
        "aborted": stats.aborted,
        "simulated": stats.simulated,
        "deployments": deployment_views(stats),
        "batch_api": {"jobs": stats.batch_jobs, "answers": stats.batch_answers} if stats.batch_jobs else None,
        "cache": {
            "hits": stats.cache_hits,
            "shared": stats.shared_answers,
            "sampled": stats.sampled_hits,
            "saved_usd": round(stats.cache_saved, 6),
            "sent_by_another_run": stats.cache_raced,
        },
    }


RESUME = "run again to resume"  # the library's words; the command line prints the command and points to it


def summary_table(stats: RunStats, resume: str = RESUME, words: Callable[[str], str] = str) -> Table:
    """:param resume: how to resume, when the run was interrupted or stopped early.
    :param words: how options are named (the command line's flags: ``cli_words``)."""
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
    if stats.prices is not None or stats.unpriced:
        rows.append(("cost", _cost(stats) if stats.prices is not None else why_no_cost(str(stats.unpriced))))
    if stats.cache_hits or stats.shared_answers or stats.cache_raced:
        rows.append(("cache", _cache(stats)))
    if stats.batch_jobs:
        live = stats.succeeded - stats.resumed - stats.batch_answers
        rows.append(
            ("Batch API", f"{stats.batch_answers:,} answered by {stats.batch_jobs} job(s), billed at half price; "
             f"{max(0, live):,} run live")
        )  # fmt: skip
    answers = sum(route.succeeded for route in stats.pool)
    for view in deployment_views(stats):
        share = f" ({view['answers'] / answers:.0%})" if answers else ""
        rows.append(
            (
                f"deployment {view['name']}",
                f"{view['answers']:,} answers{share}, {view['throttled']:,} 429s, {view['state']}",
            )
        )
    if stats.learned_tpm:
        rows.append(("learned limit", _learned(stats)))
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
        rows.append(("interrupted", f"yes, nothing is lost: {resume}"))
    if stats.stopped:
        rows.append(("stopped early", f"{words(stats.stopped)}; nothing is lost: {resume}"))
    if stats.aborted:
        rows.append(("aborted", stats.aborted))
    for name, value in rows:
        table.add_row(name, value)
    return table


def learned_units(stats: RunStats) -> str | None:
    """What the learned limit counts: the server's tokens once its headers have shown how it charges (the
    charge ratio), else the client's own estimate (no headers, or too few answers yet to learn from)."""
    if not stats.learned_tpm:
        return None
    return "server" if stats.charge_ratio is not None else "estimate"


def _learned(stats: RunStats) -> str:
    assert stats.learned_tpm is not None
    if learned_units(stats) == "server":
        units = "of the server's count, learned from its rate-limit headers"
    else:
        units = "of the client's estimate (the server sent no rate-limit headers to learn its own count from)"
    return f"{stats.learned_tpm:,.0f} tokens/min {units}; adaptive: no --tpm/--rpm given"


def _cost(stats: RunStats) -> str:
    prices = stats.prices
    assert prices is not None
    cached = f", cached {decimal(prices.cached_input)}" if prices.cached_input is not None else ""
    text = (
        f"{stats.cost:.4f} USD this run (per 1M tokens: prompt {decimal(prices.input)}{cached}, "
        f"completion {decimal(prices.output)}; {prices.source}"
        + ("; Batch API answers at half these)" if stats.batch_answers else ")")
    )
    projected = stats.projected_cost
    if projected is not None and stats.done < stats.total:
        text += f"; about {projected:.4f} USD with the {stats.total - stats.done:,} inputs still to run"
    return text


def _cache(stats: RunStats) -> str:
    text = f"{stats.cache_hits:,} answers from the cache, {stats.shared_answers:,} from identical requests of this run"
    if stats.prices is not None:
        text += f"; {stats.cache_saved:.4f} USD not paid again"
    if stats.sampled_hits:
        text += (
            f"; {stats.sampled_hits:,} of them reuse an earlier sample (temperature > 0 or n > 1): "
            "--cache-mode write asks again"
        )
    if stats.cache_raced:
        text += f"; {stats.cache_raced:,} sent by another run at the same time"
    return text


def _estimate_vs_used(stats: RunStats) -> str:
    """Admission charges the estimate; billing counts usage. Showing both explains the quota."""
    used = stats.prompt_tokens + stats.completion_tokens
    ratio = f" (estimate is {stats.estimated_tokens / used:.2f}x usage)" if used else ""
    return f"{stats.estimated_tokens:,} / {used:,}{ratio}"
