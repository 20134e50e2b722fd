"""The command line's arguments: groups, defaults (from the config dataclasses), help and exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

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
from ..errors import ConfigError, close_to
from ..export import FORMATS
from ..protocol import APIS
from ..simulator import FAULTS
from ..store.cache import default_path
from ..structured.schemas import load_model, load_response_format, load_tools

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
  or OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL;
  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY (the real environment's only)

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


SUBCOMMANDS = ("export", "report", "cache")  # a first word that names another command than a run's


def meant_command(word: str) -> str | None:
    """The subcommand a first word that is no file meant: ``exprot`` -> ``export``; else None."""
    if word.startswith("-") or word in SUBCOMMANDS or Path(word).exists():
        return None
    return close_to(word, SUBCOMMANDS)


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
        if self.given and (command := meant_command(self.given[0])):  # ``exprot x``: x is not what is wrong
            message = f"{self.given[0]!r} is neither an input file nor a command"
            suggestion: str | None = f"{self.prog} {command}"
        else:
            suggestion = self._suggest(message)
        if suggestion:
            message += f" (did you mean {suggestion}?)"
        self.exit(EXIT_FATAL, f"{self.prog}: error: {message}\n  {self.prog} --help shows every option\n")

    def _suggest(self, message: str) -> str | None:
        """The option a misspelled one most likely meant: ``--concurency`` -> ``--concurrency``."""
        if not message.startswith("unrecognized arguments: "):
            return None
        known = [o for o in self._option_string_actions if o.startswith("--")]
        for word in message.removeprefix("unrecognized arguments: ").split():
            name = word.split("=", 1)[0]
            if name.startswith("--") and (close := close_to(name, known)):
                return close
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


class Option:
    """One option of ``asyncbatch INPUT``, declared once: its group in ``--help``, its flags, argparse's words for
    it, and where its value goes in ``RunConfig`` (``field``, ``section.name``; None: the command line's own).

    Its default is that field's, defined once in ``config.py``. ``to`` turns the parsed value into the field's;
    ``read`` makes the field's value from every argument (a text given inline or as a file).
    """

    def __init__(
        self,
        group: str,
        flags: tuple[str, ...],
        field: str | None = None,
        *,
        to: Callable[[Any], Any] | None = None,
        read: Callable[[argparse.Namespace], Any] | None = None,
        **settings: Any,
    ) -> None:
        self.group, self.flags, self.field, self.to, self.read, self.settings = group, flags, field, to, read, settings
        self.dest = next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
        section, _, name = (field or "").rpartition(".")
        if field and "default" not in settings and settings.get("action") != "store_true":
            self.settings["default"] = _default(SECTIONS[section], name)

    def value(self, args: argparse.Namespace) -> Any:
        """The field's value from the parsed arguments."""
        if self.read is not None:
            return self.read(args)
        given = getattr(args, self.dest)
        return self.to(given) if self.to is not None else given


SECTIONS: dict[str, Any] = {
    "": RunConfig,
    "limits": Limits,
    "retry": RetryPolicy,
    "transport": TransportOptions,
    "request": RequestDefaults,
    "batch": BatchOptions,
}


def schema(value: Path | None, load: Callable[[Path], Any]) -> Any:
    """--tools and --response-format: a JSON file, or ``module:Model`` (a Pydantic model importable from here)."""
    if value is None:
        return None
    if ":" in str(value) and not value.exists():
        return load_model(str(value))
    return load(value)


def text_option(args: argparse.Namespace, name: str) -> str | None:
    """--template or --system, given inline or as a file (``--template-file``), not both."""
    value, path = getattr(args, name), getattr(args, f"{name}_file")
    if path is None:
        return cast(str | None, value)
    if value is not None:
        raise ConfigError(f"give --{name} or --{name}-file, not both")
    try:
        return cast(str, path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --{name}-file {path}: {exc.strerror}") from None


def sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each ``RunConfig`` section's fields, as the options given (or their defaults) make them."""
    made: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for option in OPTIONS:
        if option.field is not None:
            section, _, name = option.field.rpartition(".")
            made[section][name] = option.value(args)
    return made


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
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
        groups[option.group].add_argument(*option.flags, **option.settings)
    return p


# The option groups of --help, in their order.
OUTPUT = "output"
RESUME = "resume (re-run the same command to resume an interrupted run)"
CACHE = "response cache (never pay twice for the same question)"
SPEED = "speed and quota"
REQUESTS = "requests"
BATCH = "Batch API (half price, within 24 h; needs a Global Batch deployment)"
PLANNING = "planning"
COST = "cost (USD per 1M tokens; default: the price table's, by the deployment's name)"
ENVIRONMENT = "environment"
SIMULATOR = "simulator (no credentials needed)"
DISPLAY = "display"

OPTIONS: tuple[Option, ...] = (
    Option(
        OUTPUT,
        ("-o", "--output"),
        field="output_path",
        type=Path,
        metavar="PATH",
        help="results file (default: <input stem>.results.jsonl beside the input; for a table, "
        "<input name>.results.jsonl, e.g. items.csv.results.jsonl)",
    ),
    Option(
        OUTPUT,
        ("--errors",),
        field="errors_path",
        type=Path,
        metavar="PATH",
        help="failures file (default: <output stem>.errors.jsonl)",
    ),
    Option(
        OUTPUT,
        ("--checkpoint",),
        field="checkpoint_path",
        type=Path,
        metavar="PATH",
        help="resume checkpoint (default: <output>.state/checkpoint; the other state files stay in <output>.state/)",
    ),
    Option(
        OUTPUT,
        ("--fsync",),
        field="fsync",
        choices=("always", "periodic", "never"),
        help="when outputs reach the disk: after every write batch, at least once a second, "
        "or only at exit (default %(default)s); see docs/usage.md 'Durability'",
    ),
    Option(
        RESUME,
        ("--restart",),
        action="store_true",
        help="start over; the old outputs are moved aside, not deleted",
    ),
    Option(
        RESUME,
        ("--retry-failed",),
        field="retry_failed",
        action="store_true",
        help="run again the inputs that failed (bad lines are checked again)",
    ),
    Option(
        RESUME,
        ("--accept-changes",),
        field="accept_changes",
        action="store_true",
        help="resume although request options changed after results were written; the remaining lines run "
        "with the new options (the summary says the results mix the two)",
    ),
    Option(
        RESUME,
        ("--max-wait",),
        field="max_wait",
        type=float,
        metavar="SECONDS",
        help="a 429 asking to wait longer than this (an exhausted quota), 429s with no success for this long, "
        "or the server's holds on the next request adding up to this, stop the run; run the same command later "
        "to resume (default %(default)s)",
    ),
    Option(
        RESUME,
        ("--max-outage",),
        field="max_outage",
        type=float,
        metavar="SECONDS",
        help="ride out an unreachable endpoint (connection errors, timeouts, 5xx on every request) this long, "
        "probing it, then stop; run the same command later to resume (default %(default)s)",
    ),
    Option(
        RESUME,
        ("--grace",),
        field="grace",
        type=float,
        metavar="SECONDS",
        help="seconds in-flight requests get to finish after Ctrl-C (default %(default)s)",
    ),
    Option(
        CACHE,
        ("--cache",),
        field="cache",
        nargs="?",
        type=Path,
        const=default_path(),
        metavar="PATH",
        help="answer a request from this SQLite cache when it holds the same request to the same endpoint, "
        "and keep every new answer in it; identical requests in one run are sent once "
        "(PATH left out: ~/.cache/asyncbatch/responses.sqlite). See docs/usage.md 'Response cache'",
    ),
    Option(
        CACHE,
        ("--cache-mode",),
        field="cache_mode",
        choices=MODES,
        help="read-write (default), read (use, keep nothing new), write (send everything, refresh "
        "the answers: a new sample for temperature > 0), off",
    ),
    Option(
        SPEED,
        ("-c", "--concurrency"),
        field="limits.concurrency",
        type=int,
        metavar="N",
        help="requests in flight at most (default %(default)s)",
    ),
    Option(
        SPEED,
        ("--deployments",),
        type=Path,
        metavar="FILE",
        help="TOML file listing several deployments to pool, each with its own quota (tpm, rpm), credentials "
        "(api_key_env names the variable holding the key) and priority; requests go to whichever can take them "
        "soonest and fail over (see docs/pools.md)",
    ),
    Option(
        SPEED,
        ("--tpm",),
        field="limits.tpm",
        type=int,
        metavar="N",
        help="tokens per minute the deployment allows",
    ),
    Option(
        SPEED,
        ("--rpm",),
        field="limits.rpm",
        type=int,
        metavar="N",
        help="requests per minute the deployment allows",
    ),
    Option(
        SPEED,
        ("--max-attempts",),
        field="retry.max_attempts",
        type=int,
        metavar="N",
        help="attempts per input, first included (default %(default)s); 429s do not count",
    ),
    Option(
        SPEED,
        ("--backoff",),
        field="retry.backoff_initial",
        type=float,
        metavar="SECONDS",
        help="first wait before retrying a failure the server gave no retry-after for; it doubles, with jitter, "
        "up to 60 s (default %(default)s)",
    ),
    Option(
        SPEED,
        ("--timeout",),
        field="transport.timeout",
        type=float,
        metavar="SECONDS",
        help="seconds per attempt (default %(default)s)",
    ),
    Option(
        SPEED,
        ("--max-response-mb",),
        field="transport.max_response_mb",
        type=float,
        metavar="MB",
        help="the largest answer read, in MiB once decoded (gzip too); a larger one is read no further and its "
        "line fails as response_too_large, so memory stays bounded whatever the server sends (default %(default)s)",
    ),
    Option(
        REQUESTS,
        ("--deployment",),
        metavar="NAME",
        help="deployment (model) name; overrides AZURE_OPENAI_DEPLOYMENT_NAME",
    ),
    Option(
        REQUESTS,
        ("--api-version",),
        metavar="VERSION",
        help=f"Azure API version; overrides AZURE_OPENAI_API_VERSION (default {DEFAULT_API_VERSION}); 'v1' uses "
        "the v1 API ({endpoint}/openai/v1, no api-version), as does an endpoint ending in /openai/v1",
    ),
    Option(
        REQUESTS,
        ("--auth",),
        choices=("key", "entra"),
        help="key: AZURE_OPENAI_API_KEY; entra: Entra ID bearer tokens, refreshed before they expire (default: "
        "the key if one is set, else Entra ID: --token-command, or DefaultAzureCredential from "
        'pip install "asyncbatch[entra]")',
    ),
    Option(
        REQUESTS,
        ("--token-command",),
        metavar="CMD",
        help="Entra ID: run CMD for each new token and use what it prints (also ASYNCBATCH_TOKEN_COMMAND), e.g. "
        "'az account get-access-token --resource https://cognitiveservices.azure.com --query accessToken -o tsv'",
    ),
    Option(
        REQUESTS,
        ("--token-timeout",),
        type=float,
        default=TOKEN_TIMEOUT,
        metavar="SECONDS",
        help="a token command that takes longer is stopped, with whatever it started, and the run refused "
        "(default: %(default)g)",
    ),
    Option(
        REQUESTS,
        ("--header",),
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request, repeatable: e.g. 'Ocp-Apim-Subscription-Key: ...' for API Management "
        "(values are kept out of every output, like keys)",
    ),
    Option(
        REQUESTS,
        ("--tools",),
        field="request.tools",
        to=lambda path: schema(path, load_tools),
        type=Path,
        metavar="FILE|MODULE:MODEL",
        help="JSON file: one function schema {name, description, parameters} or a list of tools; "
        "a single function is forced with tool_choice. Or module:Model, a Pydantic model importable "
        "from here: its schema is sent and each answer validated by it",
    ),
    Option(
        REQUESTS,
        ("--response-format",),
        field="request.response_format",
        to=lambda path: schema(path, load_response_format),
        type=Path,
        metavar="FILE|MODULE:MODEL",
        help="JSON file: a JSON Schema (or {name, schema}) sent as a json_schema response_format; "
        "the reply's content is parsed and validated like tool arguments. Or module:Model (Pydantic)",
    ),
    Option(
        REQUESTS,
        ("--strict",),
        field="request.strict",
        action="store_true",
        help="send strict: true structured outputs; the schema is checked first and every reason it does "
        "not qualify is listed before anything is sent",
    ),
    Option(
        REQUESTS,
        ("--no-feedback",),
        field="request.feedback",
        to=operator.not_,
        action="store_true",
        help="when output breaks the schema, ask again without telling the model what was wrong",
    ),
    Option(
        REQUESTS,
        ("--max-tokens",),
        field="request.max_tokens",
        type=int,
        metavar="N",
        help="max_tokens for lines that do not set it (>= 1)",
    ),
    Option(
        REQUESTS,
        ("--temperature",),
        field="request.temperature",
        type=float,
        metavar="X",
        help="temperature for lines that do not set it (0-2)",
    ),
    Option(
        REQUESTS,
        ("--template",),
        field="request.template",
        read=lambda args: text_option(args, "template"),
        metavar="STR",
        help='for record lines: Python str.format template over the record, e.g. "Summarise {text}"',
    ),
    Option(REQUESTS, ("--template-file",), type=Path, metavar="FILE", help="read --template from a file"),
    Option(
        REQUESTS,
        ("--system",),
        field="request.system",
        read=lambda args: text_option(args, "system"),
        metavar="STR",
        help="for record lines: the system message (instructions)",
    ),
    Option(
        REQUESTS,
        ("--api",),
        field="request.api",
        choices=APIS,
        help="what record lines become: chat completions, embeddings of the rendered --template, or Responses API "
        "requests (tools in its format, --response-format as text.format) (default %(default)s)",
    ),
    Option(REQUESTS, ("--system-file",), type=Path, metavar="FILE", help="read --system from a file"),
    Option(
        BATCH,
        ("--batch-api",),
        action="store_true",
        help="send the inputs as Batch API jobs instead of live requests, then write their results like a live "
        "run's; what the jobs did not answer well runs live (see docs/batch-api.md)",
    ),
    Option(
        BATCH,
        ("--max-lines-per-file",),
        field="batch.max_lines_per_file",
        type=int,
        metavar="N",
        help="lines per Batch API file and job, at most 100000; files are also split at 190 MB (default %(default)s)",
    ),
    Option(
        BATCH,
        ("--poll-interval",),
        field="batch.poll_interval",
        type=float,
        metavar="SECONDS",
        help="seconds between looks at the jobs (default %(default)s; Azure asks for no more than once a minute)",
    ),
    Option(
        BATCH,
        ("--no-live-fallback",),
        field="batch.live_fallback",
        to=operator.not_,
        action="store_true",
        help="record as failed the lines a job did not answer well, instead of running them live",
    ),
    Option(
        BATCH,
        ("--cancel",),
        field="batch.cancel",
        action="store_true",
        help="with --batch-api: cancel this run's open jobs, and stop",
    ),
    Option(
        PLANNING,
        ("--dry-run",),
        action="store_true",
        help="read and check the whole input; print counts, the token estimate, the time the quota implies "
        "and (with prices) the cost; send nothing, need no credentials",
    ),
    Option(
        PLANNING,
        ("--sample",),
        type=int,
        metavar="N",
        help="with --dry-run: send N lines spread over the file (paid for, not kept) and project the whole "
        "file's output tokens and cost from their answers, with a range",
    ),
    Option(
        COST,
        ("--price-in",),
        type=float,
        metavar="USD",
        help="price per 1M prompt (input) tokens",
    ),
    Option(
        COST,
        ("--price-out",),
        type=float,
        metavar="USD",
        help="price per 1M completion (output) tokens",
    ),
    Option(
        COST,
        ("--price-cached",),
        type=float,
        metavar="USD",
        help="price per 1M cached prompt tokens (default: --price-in's)",
    ),
    Option(
        COST,
        ("--max-cost",),
        field="max_cost",
        type=float,
        metavar="USD",
        help="stop (exit 75) before this run's spend, plus what requests in flight may cost, would pass USD; "
        "the same command resumes, with a new budget of USD",
    ),
    Option(
        ENVIRONMENT,
        ("--env-file",),
        type=Path,
        metavar="PATH",
        help="dotenv file to read (default: ./.env if it exists)",
    ),
    Option(
        SIMULATOR,
        ("--simulate",),
        action="store_true",
        help="run against the built-in local simulator instead of Azure",
    ),
    Option(
        SIMULATOR,
        ("--sim-latency-ms",),
        type=float,
        default=1200.0,
        metavar="MS",
        help="simulated latency (default %(default)s: a function call's)",
    ),
    Option(
        SIMULATOR,
        ("--sim-tpm",),
        type=int,
        metavar="N",
        help="the simulated server's TPM quota, whatever the client is told (--tpm, or a pool entry's tpm): "
        "over it, it answers 429 (default: none; with --deployments, each entry's own tpm)",
    ),
    Option(
        SIMULATOR,
        ("--sim-rpm",),
        type=int,
        metavar="N",
        help="the simulated server's RPM quota, as --sim-tpm (default: none; with --deployments, each entry's rpm)",
    ),
    Option(
        SIMULATOR,
        ("--sim-faults",),
        type=fault_rates,
        metavar="NAME=P,...",
        help="faults the simulator injects, each with its probability per request, e.g. "
        "500=0.02,400=0.01,reset=0.005 (a 500, a 400, a connection reset mid-answer); every simulated deployment "
        "of a pool gets them. Names: docs/simulator.md",
    ),
    Option(
        SIMULATOR,
        ("--sim-window",),
        choices=("azure", "minute"),
        default="azure",
        help="azure: RPM per second, TPM over 10 s, with rate-limit headers; minute: fixed wall-clock minutes "
        "and 429s without any hint, like some gateways (default %(default)s)",
    ),
    Option("display", ("--no-progress",), action="store_true", help="no progress display (the summary still prints)"),
    Option("display", ("-q", "--quiet"), action="store_true", help="print only problems"),
    Option(
        DISPLAY,
        ("--log-format",),
        choices=("text", "json"),
        default="text",
        help="text: a live display on a terminal, else a status line every 5 s; json: each status line, "
        "message and the summary one JSON object on stderr, for CI logs and dashboards (default %(default)s)",
    ),
    Option(
        DISPLAY,
        ("--metrics-port",),
        field="metrics_port",
        type=port,
        metavar="PORT",
        help="serve the run's counters as Prometheus text at http://127.0.0.1:PORT/metrics while it runs "
        "(0: any free port, said in a message); names in docs/report.md. Off by default",
    ),
    Option(
        DISPLAY,
        ("--metrics-linger",),
        field="metrics_linger",
        type=float,
        metavar="SECONDS",
        help="with --metrics-port: once the run has ended, keep serving its final figures until a scrape has "
        "read them, or for SECONDS at most (give your scraper's interval; default %(default)g: the endpoint "
        "closes with the run)",
    ),
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
