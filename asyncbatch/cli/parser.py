"""The command line's arguments: groups, defaults (from the config dataclasses), help and exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..auth import TOKEN_TIMEOUT
from ..config import (
    DEFAULT_API_VERSION,
    MODES,
    BatchOptions,
    Limits,
    RequestDefaults,
    RetryPolicy,
    RunConfig,
    TransportOptions,
)
from ..export import FORMATS
from ..protocol import APIS
from ..simulator import FAULTS
from ..store.cache import default_path

EXIT_OK, EXIT_FAILURES, EXIT_FATAL, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
DEMO_TEMPLATE = "Tell me about {company}. Notes: {notes}"

USAGE = """asyncbatch INPUT [options]
       asyncbatch export RESULTS [options]
       asyncbatch report RESULTS [-o report.html]
       asyncbatch cache {stats,prune} [PATH]"""
DESCRIPTION = """\
Run a JSONL file of chat-completion, embeddings or Responses requests against
Azure OpenAI (or any OpenAI-compatible endpoint) at the quota's speed, exactly
once, resumably; or as Batch API jobs.

the three most common commands:
  asyncbatch prompts.jsonl --concurrency 50 --tpm 1200000 --rpm 7200
      every line at the quota's speed (Azure from the environment or .env);
      the same command again resumes
  asyncbatch prompts.jsonl --batch-api --deployment gpt-4o-batch
      the same lines as Batch API jobs, at half the price
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o out.csv
      the results in input order, joined with the input (CSV, Parquet, JSONL)

try it with no credentials (the built-in simulator):
  asyncbatch examples/companies.jsonl --simulate --deployment gpt-4o-mini \\
      --template "@DEMO@" \\
      --tools examples/get_company_info.json
  asyncbatch export examples/companies.results.jsonl \\
      --input examples/companies.jsonl -o companies.csv
""".replace("@DEMO@", DEMO_TEMPLATE)

EPILOG = """\
input formats (detected line by line):
  Batch API lines  {"custom_id": "a1", "method": "POST",
                    "url": "/chat/completions", "body": {...}}
  chat lines       {"custom_id": "a1", "messages": [...], "temperature": 0}
  records          {"id": 7, "company": "Acme"}
                   rendered with --template "Tell me about {company}"
  tables           *.csv, *.tsv (a header row) and *.parquet: each row a record

configuration (environment or .env; real environment variables win):
  AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY (without it: Entra ID),
  AZURE_OPENAI_DEPLOYMENT_NAME, AZURE_OPENAI_API_VERSION (default @API_VERSION@);
  or OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL

exit codes: 0 all succeeded; 1 some failed (see the errors file); 2 usage,
  configuration or fatal error; 75 stopped early, resumable; 130 interrupted
  (Ctrl-C, SIGTERM or SIGHUP). After 75 or 130, run the same command again.

more: docs/usage.md (formats, outputs, resuming), docs/options.md (every
  option), docs/azure.md, docs/pools.md, docs/batch-api.md, docs/python.md
""".replace("@API_VERSION@", DEFAULT_API_VERSION)


def _default(cls: Any, name: str) -> Any:
    """A config dataclass's default: defined once there, shown here with %(default)s."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


# Options that act once, on the run they are given to: a resume hint never repeats them. --restart would move
# the answers recorded so far aside, --retry-failed would pay again for the failures this run recorded,
# --cancel would cancel the jobs the resume should collect, and --accept-changes has done its work (the
# checkpoint now holds the new options): repeated, it would accept the next change unasked.
ONE_TIME = frozenset({"--restart", "--retry-failed", "--cancel", "--accept-changes"})


class _Parser(argparse.ArgumentParser):
    given: Sequence[str] = ()

    def long_option(self, token: str) -> str | None:
        """The long option ``token`` names, as argparse reads it (its name, or a prefix of one name), else None."""
        name = token.partition("=")[0]
        if not name.startswith("--"):
            return None
        known = [o for o in self._option_string_actions if o.startswith("--")]
        matches = [name] if name in known else [o for o in known if o.startswith(name)]
        return matches[0] if len(matches) == 1 else None

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self.given = list(args or ())
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """What is wrong first, then how to find out more: not the usage before the reason."""
        if "required: input" in message:
            message = "give the JSONL file to run: asyncbatch INPUT [options]"
            if "--cache" in self.given:  # --cache takes an optional PATH: it took the input
                message += " (--cache takes an optional PATH, so put it after the input: asyncbatch INPUT --cache)"
        if suggestion := self._suggest(message):
            message += f" (did you mean {suggestion}?)"
        self.exit(EXIT_FATAL, f"{self.prog}: error: {message}\n  {self.prog} --help shows every option\n")

    def _suggest(self, message: str) -> str | None:
        """The option a misspelled one most likely meant: ``--concurency`` -> ``--concurrency``."""
        if not message.startswith("unrecognized arguments: "):
            return None
        known = [o for o in self._option_string_actions if o.startswith("--")]
        for word in message.removeprefix("unrecognized arguments: ").split():
            name = word.split("=", 1)[0]
            if name.startswith("--") and (close := difflib.get_close_matches(name, known, n=1, cutoff=0.75)):
                return close[0]
        return None


def port(text: str) -> int:
    """--metrics-port: judged while the options are parsed, before anything starts (a simulator, a run)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number, 0 to 65535 (0: any free port)")
    return number


def fault_rates(text: str) -> dict[str, float]:
    """--sim-faults ``500=0.02,reset=0.005``: each fault's probability per request (``SimConfig.fault_rates``)."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = (word.strip() for word in item.partition("="))
        if name not in FAULTS:
            raise argparse.ArgumentTypeError(f"{name!r} is not a fault the simulator knows: {', '.join(FAULTS)}")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0 <= rate <= 1:
            raise argparse.ArgumentTypeError(f"{item!r}: give each fault a probability, 0 to 1 (e.g. 500=0.02)")
        rates[name] = rate
    if sum(rates.values()) > 1:
        raise argparse.ArgumentTypeError(f"the probabilities add up to more than 1 ({sum(rates.values()):g})")
    return rates


def build_parser() -> _Parser:
    p = _Parser(
        prog="asyncbatch",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", type=Path, help="JSONL file, one request or record per line; or a CSV, TSV or Parquet table"
    )
    p.add_argument("--version", action="version", version=f"asyncbatch {__version__}")
    _output_options(p)
    _resume_options(p)
    _cache_options(p)
    _rate_options(p)
    _request_options(p)
    _batch_options(p)
    _other_options(p)
    return p


def _output_options(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="results file (default: <input stem>.results.jsonl beside the input; for a table, "
        "<input name>.results.jsonl, e.g. items.csv.results.jsonl)",
    )
    out.add_argument("--errors", type=Path, metavar="PATH", help="failures file (default: <output stem>.errors.jsonl)")
    out.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="resume checkpoint (default: <output>.state/checkpoint; the other state files stay in <output>.state/)",
    )
    out.add_argument(
        "--fsync",
        choices=("always", "periodic", "never"),
        default=_default(RunConfig, "fsync"),
        help="when outputs reach the disk: after every write batch, at least once a second, "
        "or only at exit (default %(default)s); see docs/usage.md 'Durability'",
    )


def _cache_options(p: argparse.ArgumentParser) -> None:
    cache = p.add_argument_group("response cache (never pay twice for the same question)")
    cache.add_argument(
        "--cache",
        nargs="?",
        type=Path,
        const=default_path(),
        metavar="PATH",
        help="answer a request from this SQLite cache when it holds the same request to the same endpoint, "
        "and keep every new answer in it; identical requests in one run are sent once "
        "(PATH left out: ~/.cache/asyncbatch/responses.sqlite). See docs/usage.md 'Response cache'",
    )
    cache.add_argument(
        "--cache-mode",
        choices=MODES,
        default=_default(RunConfig, "cache_mode"),
        help="read-write (default), read (use, keep nothing new), write (send everything, refresh "
        "the answers: a new sample for temperature > 0), off",
    )


def _resume_options(p: argparse.ArgumentParser) -> None:
    resume = p.add_argument_group("resume (re-run the same command to resume an interrupted run)")
    resume.add_argument(
        "--restart", action="store_true", help="start over; the old outputs are moved aside, not deleted"
    )
    resume.add_argument(
        "--retry-failed", action="store_true", help="run again the inputs that failed (bad lines are checked again)"
    )
    resume.add_argument(
        "--accept-changes",
        action="store_true",
        help="resume although request options changed after results were written; the remaining lines run "
        "with the new options (the summary says the results mix the two)",
    )
    resume.add_argument(
        "--max-wait",
        type=float,
        default=_default(RunConfig, "max_wait"),
        metavar="SECONDS",
        help="a 429 asking to wait longer than this (an exhausted quota), 429s with no success for this long, "
        "or the server's holds on the next request adding up to this, stop the run; run the same command later "
        "to resume (default %(default)s)",
    )
    resume.add_argument(
        "--max-outage",
        type=float,
        default=_default(RunConfig, "max_outage"),
        metavar="SECONDS",
        help="ride out an unreachable endpoint (connection errors, timeouts, 5xx on every request) this long, "
        "probing it, then stop; run the same command later to resume (default %(default)s)",
    )
    resume.add_argument(
        "--grace",
        type=float,
        default=_default(RunConfig, "grace"),
        metavar="SECONDS",
        help="seconds in-flight requests get to finish after Ctrl-C (default %(default)s)",
    )


def _rate_options(p: argparse.ArgumentParser) -> None:
    rate = p.add_argument_group("speed and quota")
    rate.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=_default(Limits, "concurrency"),
        metavar="N",
        help="requests in flight at most (default %(default)s)",
    )
    rate.add_argument(
        "--deployments",
        type=Path,
        metavar="FILE",
        help="TOML file listing several deployments to pool, each with its own quota (tpm, rpm), credentials "
        "(api_key_env names the variable holding the key) and priority; requests go to whichever can take them "
        "soonest and fail over (see docs/pools.md)",
    )
    rate.add_argument("--tpm", type=int, metavar="N", help="tokens per minute the deployment allows")
    rate.add_argument("--rpm", type=int, metavar="N", help="requests per minute the deployment allows")
    rate.add_argument(
        "--max-attempts",
        type=int,
        default=_default(RetryPolicy, "max_attempts"),
        metavar="N",
        help="attempts per input, first included (default %(default)s); 429s do not count",
    )
    rate.add_argument(
        "--backoff",
        type=float,
        default=_default(RetryPolicy, "backoff_initial"),
        metavar="SECONDS",
        help="first wait before retrying a failure the server gave no retry-after for; it doubles, with jitter, "
        "up to 60 s (default %(default)s)",
    )
    rate.add_argument(
        "--timeout",
        type=float,
        default=_default(TransportOptions, "timeout"),
        metavar="SECONDS",
        help="seconds per attempt (default %(default)s)",
    )
    rate.add_argument(
        "--max-response-mb",
        type=float,
        default=_default(TransportOptions, "max_response_mb"),
        metavar="MB",
        help="the largest answer read, in MiB once decoded (gzip too); a larger one is read no further and its "
        "line fails as response_too_large, so memory stays bounded whatever the server sends (default %(default)s)",
    )


def _request_options(p: argparse.ArgumentParser) -> None:
    req = p.add_argument_group("requests")
    req.add_argument(
        "--deployment", metavar="NAME", help="deployment (model) name; overrides AZURE_OPENAI_DEPLOYMENT_NAME"
    )
    req.add_argument(
        "--api-version",
        metavar="VERSION",
        help=f"Azure API version; overrides AZURE_OPENAI_API_VERSION (default {DEFAULT_API_VERSION}); 'v1' uses "
        "the v1 API ({endpoint}/openai/v1, no api-version), as does an endpoint ending in /openai/v1",
    )
    req.add_argument(
        "--auth",
        choices=("key", "entra"),
        help="key: AZURE_OPENAI_API_KEY; entra: Entra ID bearer tokens, refreshed before they expire (default: "
        "the key if one is set, else Entra ID: --token-command, or DefaultAzureCredential from "
        'pip install "asyncbatch[entra]")',
    )
    req.add_argument(
        "--token-command",
        metavar="CMD",
        help="Entra ID: run CMD for each new token and use what it prints (also ASYNCBATCH_TOKEN_COMMAND), e.g. "
        "'az account get-access-token --resource https://cognitiveservices.azure.com --query accessToken -o tsv'",
    )
    req.add_argument(
        "--token-timeout",
        type=float,
        default=TOKEN_TIMEOUT,
        metavar="SECONDS",
        help="a token command that takes longer is stopped, with whatever it started, and the run refused "
        "(default: %(default)g)",
    )
    req.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request, repeatable: e.g. 'Ocp-Apim-Subscription-Key: ...' for API Management "
        "(values are kept out of every output, like keys)",
    )
    req.add_argument(
        "--tools",
        type=Path,
        metavar="FILE|MODULE:MODEL",
        help="JSON file: one function schema {name, description, parameters} or a list of tools; "
        "a single function is forced with tool_choice. Or module:Model, a Pydantic model importable "
        "from here: its schema is sent and each answer validated by it",
    )
    req.add_argument(
        "--response-format",
        type=Path,
        metavar="FILE|MODULE:MODEL",
        help="JSON file: a JSON Schema (or {name, schema}) sent as a json_schema response_format; "
        "the reply's content is parsed and validated like tool arguments. Or module:Model (Pydantic)",
    )
    req.add_argument(
        "--strict",
        action="store_true",
        help="send strict: true structured outputs; the schema is checked first and every reason it does "
        "not qualify is listed before anything is sent",
    )
    req.add_argument(
        "--no-feedback",
        action="store_true",
        help="when output breaks the schema, ask again without telling the model what was wrong",
    )
    req.add_argument("--max-tokens", type=int, metavar="N", help="max_tokens for lines that do not set it (>= 1)")
    req.add_argument("--temperature", type=float, metavar="X", help="temperature for lines that do not set it (0-2)")
    req.add_argument(
        "--template",
        metavar="STR",
        help='for record lines: Python str.format template over the record, e.g. "Summarise {text}"',
    )
    req.add_argument("--template-file", type=Path, metavar="FILE", help="read --template from a file")
    req.add_argument("--system", metavar="STR", help="for record lines: the system message (instructions)")
    req.add_argument(
        "--api",
        choices=APIS,
        default=_default(RequestDefaults, "api"),
        help="what record lines become: chat completions, embeddings of the rendered --template, or Responses API "
        "requests (tools in its format, --response-format as text.format) (default %(default)s)",
    )
    req.add_argument("--system-file", type=Path, metavar="FILE", help="read --system from a file")


def _batch_options(p: argparse.ArgumentParser) -> None:
    batch = p.add_argument_group("Batch API (half price, within 24 h; needs a Global Batch deployment)")
    batch.add_argument(
        "--batch-api",
        action="store_true",
        help="send the inputs as Batch API jobs instead of live requests, then write their results like a live "
        "run's; what the jobs did not answer well runs live (see docs/batch-api.md)",
    )
    batch.add_argument(
        "--max-lines-per-file",
        type=int,
        default=_default(BatchOptions, "max_lines_per_file"),
        metavar="N",
        help="lines per Batch API file and job, at most 100000; files are also split at 190 MB (default %(default)s)",
    )
    batch.add_argument(
        "--poll-interval",
        type=float,
        default=_default(BatchOptions, "poll_interval"),
        metavar="SECONDS",
        help="seconds between looks at the jobs (default %(default)s; Azure asks for no more than once a minute)",
    )
    batch.add_argument(
        "--no-live-fallback",
        action="store_true",
        help="record as failed the lines a job did not answer well, instead of running them live",
    )
    batch.add_argument("--cancel", action="store_true", help="with --batch-api: cancel this run's open jobs, and stop")


def _other_options(p: argparse.ArgumentParser) -> None:
    dry = p.add_argument_group("planning")
    dry.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check the whole input; print counts, the token estimate, the time the quota implies "
        "and (with prices) the cost; send nothing, need no credentials",
    )
    dry.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="with --dry-run: send N lines spread over the file (paid for, not kept) and project the whole "
        "file's output tokens and cost from their answers, with a range",
    )
    cost = p.add_argument_group("cost (USD per 1M tokens; default: the price table's, by the deployment's name)")
    cost.add_argument("--price-in", type=float, metavar="USD", help="price per 1M prompt (input) tokens")
    cost.add_argument("--price-out", type=float, metavar="USD", help="price per 1M completion (output) tokens")
    cost.add_argument(
        "--price-cached", type=float, metavar="USD", help="price per 1M cached prompt tokens (default: --price-in's)"
    )
    cost.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop (exit 75) before this run's spend, plus what requests in flight may cost, would pass USD; "
        "the same command resumes, with a new budget of USD",
    )
    env = p.add_argument_group("environment")
    env.add_argument("--env-file", type=Path, metavar="PATH", help="dotenv file to read (default: ./.env if it exists)")
    sim = p.add_argument_group("simulator (no credentials needed)")
    sim.add_argument(
        "--simulate", action="store_true", help="run against the built-in local simulator instead of Azure"
    )
    sim.add_argument(
        "--sim-latency-ms",
        type=float,
        default=1200.0,
        metavar="MS",
        help="simulated latency (default %(default)s: a function call's)",
    )
    sim.add_argument(
        "--sim-tpm",
        type=int,
        metavar="N",
        help="the simulated server's TPM quota, whatever the client is told (--tpm, or a pool entry's tpm): "
        "over it, it answers 429 (default: none; with --deployments, each entry's own tpm)",
    )
    sim.add_argument(
        "--sim-rpm",
        type=int,
        metavar="N",
        help="the simulated server's RPM quota, as --sim-tpm (default: none; with --deployments, each entry's rpm)",
    )
    sim.add_argument(
        "--sim-faults",
        type=fault_rates,
        metavar="NAME=P,...",
        help="faults the simulator injects, each with its probability per request, e.g. "
        "500=0.02,400=0.01,reset=0.005 (a 500, a 400, a connection reset mid-answer); every simulated deployment "
        "of a pool gets them. Names: docs/simulator.md",
    )
    sim.add_argument(
        "--sim-window",
        choices=("azure", "minute"),
        default="azure",
        help="azure: RPM per second, TPM over 10 s, with rate-limit headers; minute: fixed wall-clock minutes "
        "and 429s without any hint, like some gateways (default %(default)s)",
    )
    show = p.add_argument_group("display")
    show.add_argument("--no-progress", action="store_true", help="no progress display (the summary still prints)")
    show.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    show.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: a live display on a terminal, else a status line every 5 s; json: each status line, "
        "message and the summary one JSON object on stderr, for CI logs and dashboards (default %(default)s)",
    )
    show.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve the run's counters as Prometheus text at http://127.0.0.1:PORT/metrics while it runs "
        "(0: any free port, said in a message); names in docs/report.md. Off by default",
    )
    show.add_argument(
        "--metrics-linger",
        type=float,
        default=RunConfig.metrics_linger,
        metavar="SECONDS",
        help="with --metrics-port: once the run has ended, keep serving its final figures until a scrape has "
        "read them, or for SECONDS at most (give your scraper's interval; default %(default)g: the endpoint "
        "closes with the run)",
    )


EXPORT_EPILOG = """\
rows: line, status (succeeded or failed), custom_id, the input record's fields
(with --input), output, error_code, error_message, attempts, prompt_tokens,
completion_tokens. In CSV and Parquet an object output becomes one output.<key>
column per key.

examples:
  asyncbatch export prompts.results.jsonl --ordered > ordered.jsonl
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o table.csv
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o t.parquet
      (Parquet: pip install "asyncbatch[parquet]")

exit codes: 0 written; 2 usage error or a file that cannot be read or written.
"""


def build_export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="asyncbatch export",
        description="Write a run's results and failures as one table: in input order\n(on disk, in bounded "
        "memory, for any number of lines), joined with the input,\nas JSONL, CSV or Parquet.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path, help="the results file of a run (e.g. prompts.results.jsonl)")
    p.add_argument(
        "--errors", type=Path, metavar="PATH", help="its failures file (default: <results stem>.errors.jsonl, if any)"
    )
    p.add_argument(
        "--input",
        type=Path,
        metavar="PATH",
        help="the run's input: each row gets its input record's fields, with their JSON types (implies --ordered)",
    )
    p.add_argument("--ordered", action="store_true", help="rows in input order (default: the order they finished)")
    p.add_argument("--format", choices=FORMATS, help="jsonl, csv or parquet (default: from -o's suffix, else jsonl)")
    p.add_argument("-o", "--output", type=Path, metavar="PATH", help="where to write (default: standard output)")
    p.add_argument(
        "--keep-formulas",
        action="store_true",
        help="CSV: write text cells that begin with = + - @, a tab or CR as they are (default: a ' goes before "
        "them, so a spreadsheet shows them as text instead of running them as formulas)",
    )
    return p


REPORT_EPILOG = """\
It shows the summary; over time: throughput, tokens admitted against the quota,
429s and retries, latency p50 and p95, cost; failures by code with examples;
each deployment of a pool; the Batch API jobs; the learned limit and the
charge ratio. It reads the run's files (never its lock): run it during a run
for the run so far. Needs pip install "asyncbatch[report]". See docs/report.md.

-o replaces only a page asyncbatch report wrote (or an empty file), never
the run's files, a link, a device or a file of yours; the page is 0600.

exit codes: 0 written; 2 nothing to report (no such file, no run's state
beside it), an -o it may not replace, or a file that cannot be written.
"""


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncbatch report",
        description="Write one self-contained HTML file of a run (charts included; it opens from disk, "
        "with no network).",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path, help="the results file of a run (e.g. prompts.results.jsonl)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="where to write: a new file, or a page it wrote before (default: <results stem>.report.html)",
    )
    p.add_argument(
        "--errors", type=Path, metavar="PATH", help="its failures file (default: <results stem>.errors.jsonl)"
    )
    return p


def build_cache_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="asyncbatch cache",
        description="Look after a response cache (--cache): what it holds, and dropping old answers.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{stats,prune}")
    stats = sub.add_parser("stats", help="entries, size on disk, hits, oldest and newest answer")
    stats.add_argument("path", type=Path, nargs="?", default=default_path(), help="the cache (default: --cache's)")
    prune = sub.add_parser("prune", help="remove the answers stored longer ago than --older-than")
    prune.add_argument("path", type=Path, nargs="?", default=default_path(), help="the cache (default: --cache's)")
    prune.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m or 600s: answers older go"
    )
    return p


def reference() -> str:
    """docs/options.md, from the parsers themselves: every option, its default and its help."""
    parts = ["# Options", "", "Generated from the command's own parser (`python -m asyncbatch.cli.parser`).", ""]
    parsers = (
        ("asyncbatch INPUT", build_parser()),
        ("asyncbatch export RESULTS", build_export_parser()),
        ("asyncbatch report RESULTS", build_report_parser()),
    )
    for title, parser in parsers:
        parts += [f"## `{title}`", ""]
        for group in parser._action_groups:
            rows = [_row(parser, a) for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS]
            if rows:
                parts += [f"### {group.title}", "", "| option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(parts)


def _row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    names = ", ".join(f"{o} {metavar}" if action.nargs != 0 else o for o in action.option_strings)
    params = {**vars(action), "prog": parser.prog, "default": action.default}
    text = (action.help or "") % params
    escaped = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return f"| `{names}` | {escaped} |"


if __name__ == "__main__":
    print(reference())
