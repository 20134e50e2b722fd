"""asyncbatch report: one self-contained HTML file of a run, from its files, during the run or after it.

It reads the state directory's metrics log and summary (``metrics.py``) and the errors file, never
takes the run's lock and never writes beside them. Every text from those files (a server's message or
code, a ``custom_id``, a deployment's name, a path) is redacted where it is read, before it enters the
page; the page's own structure (its markup, its scripts, the charts' JSON) never passes the redactor,
so no secret that happens to be a word (``none``, ``true``) can break it. Jinja2 renders the page, every
value escaped; the charts' runtime (Vega, Vega-Lite, vega-embed: one bundle from vl-convert, about
0.9 MB) is one of its variables, inlined once, so the file opens from disk with no network.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from ..config import StatePaths
from ..errors import ConfigError
from ..redact import Redactor
from .failures import Failures, read_failures
from .metrics import DeploymentSummary, Dropped, Log, Session, Snapshot, read_log, read_summary

EXTRA = 'HINT: pip install "asyncbatch[report]" (Altair and vl-convert draw the charts)'
# Every page begins with this line (after <head>): asyncbatch report replaces a file only if it holds it.
GENERATOR = '<meta name="generator" content="asyncbatch report">'


@dataclass(frozen=True)
class Run:
    """What the report reads of a run: every text in it already redacted."""

    results: str  # the results file's path, as given, redacted
    log: Log
    snapshot: Snapshot | None
    failures: Failures

    @property
    def sessions(self) -> list[Session]:
        return self.log.sessions


def read_run(results: Path, errors: Path, redactor: Redactor) -> Run:
    """A run's files as they are now; a run in progress goes on writing them meanwhile.

    :raises ConfigError: nothing to report (no state directory with a metrics log or summary), or something
        other than a regular file where a run keeps one (named).
    """
    paths = StatePaths.beside(results)
    log, snapshot = read_log(paths.metrics, redactor), read_summary(paths.summary, redactor)
    if not log.sessions and snapshot is None:
        raise ConfigError(
            f"nothing to report for {results}: {paths.dir} holds no metrics log. HINT: give the results file of a "
            "run (asyncbatch keeps the log in <results>.state/ from its first second)"
        )
    return Run(redactor.text(str(results)), log, snapshot, read_failures(errors, redactor))


@functools.cache
def runtime() -> str:
    """Vega, Vega-Lite and vega-embed as one script, from vl-convert (it bundles them; a few seconds, once)."""
    try:
        import altair
        import vl_convert
    except ImportError:
        raise ConfigError(f"asyncbatch report needs Altair and vl-convert. {EXTRA}") from None
    bundle: Callable[..., str] = vl_convert.javascript_bundle  # its stub wants a snippet; the default is wanted
    version = "_".join(altair.SCHEMA_VERSION.split(".")[:2])  # the Vega-Lite of Altair's specs ("v6_4")
    return bundle(vl_version=version).replace("</script", "<\\/script")


def render(run: Run, now: dt.datetime | None = None) -> str:
    """The page: the run's texts (redacted when read) escaped, the charts' data inlined, the runtime inlined once."""
    try:
        import jinja2
        import markupsafe

        from .charts import charts
    except ImportError:
        raise ConfigError(f"asyncbatch report needs Altair and Jinja2. {EXTRA}") from None
    from .series import series

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["json"] = _json
    template = environment.from_string(resources.files(__package__).joinpath("page.html").read_text("utf-8"))
    context = _context(run, now or dt.datetime.now(dt.UTC))
    context["charts"] = charts(series(run.sessions, run.log.dropped), run.failures)
    context["generator"] = markupsafe.Markup(GENERATOR)
    context["runtime"] = markupsafe.Markup(runtime())  # a library's code: no data of the run is in it
    return template.render(context)


def _json(value: Any) -> str:
    """JSON for a <script type="application/json">: '<' escaped, so no text can close the element."""
    return orjson.dumps(value).decode().replace("<", "\\u003c")


def _context(run: Run, now: dt.datetime) -> dict[str, Any]:
    snapshot, sessions = run.snapshot, run.sessions
    summary = snapshot.summary if snapshot is not None else {}
    latest = next((s for s in sessions if snapshot is not None and s.number == snapshot.session), None)
    as_of = _when(latest.wall + snapshot.t) if latest is not None and snapshot is not None else None
    return {
        "title": f"asyncbatch report: {run.results.rpartition('/')[2]}",
        "results": run.results,
        "generated": now.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "state": _state(snapshot, as_of),
        "simulated": bool(summary.get("simulated")) or any(s.simulated for s in sessions),
        "totals": totals(summary),
        "details": details(summary),
        "deployments": [_deployment_row(d) for d in summary.get("deployments") or []],
        "sessions": _dropped_line(run.log.dropped) + [_session_line(s) for s in sessions],
        "failures": run.failures,
    }


def _when(unix: float) -> str:
    """A time to show; the reader judged it a date (``metrics.MAX_WALL``), and this never raises all the same."""
    try:
        return dt.datetime.fromtimestamp(unix).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (ValueError, OverflowError, OSError):
        return "an unknown time"


def _state(snapshot: Snapshot | None, as_of: str | None) -> str:
    if snapshot is None:
        return "no summary in the state directory: the run has only just started, or a crash of the machine emptied it"
    if snapshot.final:
        return f"session {snapshot.session} finished" + (f" at {as_of}" if as_of else "")
    return f"session {snapshot.session} in progress (or stopped by a kill): as of {as_of or 'its last summary'}"


def _session_line(session: Session) -> str:
    last = session.rows[-1] if session.rows else None
    took = f", {last['t']:,.1f} s" if last else ""
    if last and last.get("done") is not None and last.get("total") is not None:
        took += f", {last['done']:,.0f} of {last['total']:,.0f} inputs done"
    return f"session {session.number}: started {_when(session.wall)}{took}"


def _dropped_line(dropped: Dropped | None) -> list[str]:
    if dropped is None or not dropped.sessions:
        return []
    since = f", from {_when(dropped.since)}" if dropped.since is not None else ""
    return [f"{dropped.sessions:,} earlier session(s){since}: dropped from the log to keep it bounded (their cost is "
            "counted in the cost chart)"]  # fmt: skip


def _deployment_row(d: DeploymentSummary) -> dict[str, str]:
    """A pool's deployment as the page's table shows it: counts, its learned limit and charge ratio (or not)."""

    def count(value: int | None) -> str:
        return f"{value:,}" if value is not None else "?"

    return {
        "name": d.name,
        "answers": count(d.answers),
        "throttled": count(d.throttled),
        "failed_attempts": count(d.failed_attempts),
        "learned_tpm": f"{d.learned_tpm:,.0f}" if d.learned_tpm is not None else "not learned",
        "charge_ratio": f"{d.charge_ratio:.3f}" if d.charge_ratio is not None else "not learned",
        "state": d.state,
    }


# The summary's totals the page shows first, and how: (key, label, format). The test compares them
# to the JSON summary (``--log-format json``), which comes from the same function of the same counters.
TOTALS = (
    ("succeeded", "succeeded", "int"),
    ("failed", "failed", "int"),
    ("attempts", "attempts", "int"),
    ("retries", "retries", "int"),
    ("throttled", "429 answers", "int"),
    ("prompt_tokens", "prompt tokens", "int"),
    ("completion_tokens", "completion tokens", "int"),
    ("cost_usd", "cost (USD)", "usd"),
    ("wall_seconds", "wall time (s)", "float"),
    ("requests_per_second", "inputs per second", "float"),
)
DETAILS = (
    ("bad_input_lines", "bad input lines", "int"),
    ("cached_tokens", "cached prompt tokens", "int"),
    ("estimated_tokens", "estimated tokens", "int"),
    ("latency_p50_ms", "latency p50 (ms)", "float"),
    ("latency_p95_ms", "latency p95 (ms)", "float"),
    ("resumed", "inputs recorded before this session", "int"),
    ("resent", "re-sent after a stop", "int"),
    ("learned_tpm", "learned limit (tokens/min)", "int"),
    ("charge_ratio", "charge ratio (server / estimate)", "ratio"),
    ("projected_cost_usd", "projected cost (USD)", "usd"),
    ("stopped", "stopped early", "text"),
    ("aborted", "aborted", "text"),
    ("interrupted", "interrupted", "text"),
)


def _shown(value: Any, kind: str) -> str | None:
    if value is None or value is False or value == "":
        return None
    if kind == "text":
        return "yes" if value is True else str(value)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    formats = {"int": f"{value:,.0f}", "usd": f"{value:,.6f}", "float": f"{value:,.2f}", "ratio": f"{value:.3f}"}
    return formats[kind]


def totals(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, shown) of the summary's totals, in ``TOTALS``' order; those it does not have are left out."""
    return [(key, label, shown) for key, label, kind in TOTALS if (shown := _shown(summary.get(key), kind))]


def details(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, shown) of the rest of the (judged) summary, those it has."""
    found = [(key, label, shown) for key, label, kind in DETAILS if (shown := _shown(summary.get(key), kind))]
    if batch := summary.get("batch_api"):
        found.append(("batch_api", "Batch API", f"{batch['answers']:,} inputs answered by {batch['jobs']:,} job(s)"))
    if (cache := summary.get("cache")) and (cache["hits"] or cache["shared"]):
        shown = f"{cache['hits']:,} from the cache, {cache['shared']:,} by identical requests"
        found.append(("cache", "answered without a request", shown))
    if reasons := summary.get("failure_reasons"):
        found.append(("failure_reasons", "failures this session", ", ".join(f"{k}: {v:,}" for k, v in reasons.items())))
    return found
