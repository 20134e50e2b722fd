"""Command line: arguments + environment (.env) -> RunConfig -> run -> exit code.

This is the only module that reads the environment, and the only one that
knows about exit codes and environment-variable hints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from dotenv import dotenv_values

from . import __version__
from .auth import TokenProvider, command_provider, default_credential_provider
from .config import (
    DEFAULT_API_VERSION,
    BatchOptions,
    Deployment,
    Endpoint,
    Limits,
    RequestDefaults,
    RetryPolicy,
    RunConfig,
    default_errors,
)
from .cost import resolve
from .deployments import DeploymentSpec, load_deployments
from .dryrun import dry_run, format_report
from .endpoints import check_base_url
from .errors import ConfigError, FatalAPIError, OutputError
from .export import FORMATS, ExportReport, Rows, export, format_for
from .inputs import sniff
from .progress import Reporter, make_reporter
from .protocol import APIS
from .redact import RedactingStream, Redactor
from .runner import Interrupt, run
from .schemas import load_response_format, load_tools
from .simulator import SimConfig, simulated

EXIT_OK, EXIT_FAILURES, EXIT_FATAL, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEMO_TEMPLATE = "Tell me about {company}. Notes: {notes}"

EPILOG = """\
input formats (detected line by line):
  Batch API lines  {"custom_id": "a1", "method": "POST", "url": "/chat/completions", "body": {...}}
                   (url may also be /embeddings or /responses, with or without /v1; a file may mix them)
  chat lines       {"custom_id": "a1", "messages": [...], "temperature": 0}
  records          {"id": 7, "company": "Acme"}   rendered with --template "Tell me about {company}"

configuration (environment or .env; real environment variables win):
  AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, AZURE_OPENAI_DEPLOYMENT_NAME,
  AZURE_OPENAI_API_VERSION (default @API_VERSION@); without a key: Entra ID
  (ASYNCBATCH_TOKEN_COMMAND, or DefaultAzureCredential with pip install "asyncbatch[entra]")
  or, for OpenAI and OpenAI-compatible servers: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL

exit codes:
  0 every input succeeded; 1 some inputs failed (see the errors file);
  2 usage, configuration or fatal error (e.g. wrong key, another run on the same outputs);
  75 stopped early, resumable: an outage past --max-outage, an exhausted quota (--max-wait),
     --max-cost reached, or --batch-api --cancel;
  130 interrupted (Ctrl-C). After 75 or 130, run the same command again to resume.

examples:
  asyncbatch examples/companies.jsonl --simulate --deployment gpt-4o-mini --template "@DEMO@" \\
      --tools examples/get_company_info.json
  asyncbatch export examples/companies.results.jsonl --input examples/companies.jsonl -o companies.csv
  asyncbatch prompts.jsonl --concurrency 50 --tpm 1200000 --rpm 7200 --max-tokens 200
  asyncbatch prompts.jsonl --dry-run --tpm 1200000 --price-in 2.5 --price-out 10
  asyncbatch prompts.jsonl --max-cost 20 ...   # stops (exit 75) before spending more than 20 USD
  asyncbatch prompts.jsonl --deployments pool.toml ...   # pool several deployments' quota, with failover
  asyncbatch prompts.jsonl --batch-api --deployment gpt-4o-batch ...   # Batch API jobs at half price
  asyncbatch prompts.jsonl ...     # the same command again resumes an interrupted run
  asyncbatch export --help         # results in input order, joined with the input: JSONL, CSV, Parquet
""".replace("@API_VERSION@", DEFAULT_API_VERSION).replace("@DEMO@", DEMO_TEMPLATE)


def _default(cls: Any, name: str) -> Any:
    """A config dataclass's default: defined once there, shown here with %(default)s."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncbatch",
        description="Run a JSONL file of chat-completion, embeddings or Responses requests against Azure OpenAI "
        "(or any OpenAI-compatible endpoint) as fast as the quota allows, exactly once, resumably; or as Batch "
        "API jobs at half price. Results stream to JSONL. Also: 'asyncbatch export RESULTS' writes them in input "
        "order as JSONL, CSV or Parquet (asyncbatch export --help).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="JSONL file, one request or record per line")
    p.add_argument("--version", action="version", version=f"asyncbatch {__version__}")
    _output_options(p)
    _resume_options(p)
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
        help="results file (default: <input stem>.results.jsonl beside the input)",
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
        "or only at exit (default %(default)s); see README 'Durability'",
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
        help="a 429 asking to wait longer than this (an exhausted quota), or 429s with no success for this "
        "long, stop the run; run the same command later to resume (default %(default)s)",
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
        "soonest and fail over (see README 'Pool deployments')",
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
        default=_default(RetryPolicy, "timeout"),
        metavar="SECONDS",
        help="seconds per attempt (default %(default)s)",
    )
    rate.add_argument(
        "--max-response-mb",
        type=float,
        default=_default(RetryPolicy, "max_response_mb"),
        metavar="MB",
        help="the largest answer read, in MiB; a larger one is not read and its line fails as response_too_large, "
        "so memory stays bounded whatever the server sends (default %(default)s)",
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
        metavar="FILE",
        help="JSON file: one function schema {name, description, parameters} or a list of tools; "
        "a single function is forced with tool_choice",
    )
    req.add_argument(
        "--response-format",
        type=Path,
        metavar="FILE",
        help="JSON file: a JSON Schema (or {name, schema}) sent as a json_schema response_format; "
        "the reply's content is parsed and validated like tool arguments",
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
        "run's; what the jobs did not answer well runs live (see README 'Batch API')",
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
    cost = p.add_argument_group(
        "cost (USD per 1M tokens; default: the price table's, when the deployment is named after a model there)"
    )
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
        "--sim-latency-ms", type=float, default=200.0, metavar="MS", help="simulated latency (default %(default)s)"
    )
    sim.add_argument("--sim-tpm", type=int, metavar="N", help="simulated server TPM quota (default: none)")
    sim.add_argument("--sim-rpm", type=int, metavar="N", help="simulated server RPM quota (default: none)")
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


COMMANDS = ("ASYNCBATCH_TOKEN_COMMAND",)  # never taken from a .env file: cloning a repository must not run code


@dataclasses.dataclass
class Env:
    """The variables asyncbatch reads: the real environment's, over a .env file's (which never sets a command)."""

    values: dict[str, str]
    loaded: list[str]  # names taken from the file
    ignored: list[str]  # names in the file that only the real environment may set
    path: Path | None = None

    def notes(self) -> tuple[list[str], list[str]]:
        """(info, warnings) to show: which file was read, and what in it was refused."""
        where = self.path.resolve() if self.path else None
        info = [f"read {', '.join(self.loaded)} from {where} (the real environment wins)"] if self.loaded else []
        warnings = [
            f"{where} sets {name}, which is ignored: a command is run only from the real environment or "
            "--token-command, never from a .env file"
            for name in self.ignored
        ]
        return info, warnings


def load_env(env_file: Path | None, environ: Mapping[str, str]) -> Env:
    """The .env file's values under the real environment's (real variables win); commands only from the latter.

    A file named with --env-file must exist; the default ./.env is read only if it does.
    """
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file} does not exist")
    path = env_file or Path(".env")
    if not path.is_file():
        return Env(dict(environ), [], [])
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    ignored = sorted(k for k in values if k in COMMANDS)
    kept = {k: v for k, v in values.items() if k not in COMMANDS}
    loaded = sorted(k for k in kept if k not in environ)
    return Env({**kept, **environ}, loaded, ignored, path)


def endpoint_from_env(env: Mapping[str, str], args: argparse.Namespace) -> Endpoint:
    azure_vars = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
    use_azure = any(env.get(v) for v in azure_vars) or not (env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"))
    if use_azure:
        deployment = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME")
        needed = {"AZURE_OPENAI_ENDPOINT": env.get("AZURE_OPENAI_ENDPOINT")}
        _require({**needed, "AZURE_OPENAI_DEPLOYMENT_NAME (or --deployment)": deployment})
        key, provider = azure_auth(env, args)
        base_url = check_base_url(env["AZURE_OPENAI_ENDPOINT"], "azure", "AZURE_OPENAI_ENDPOINT")
        api_version = args.api_version or env.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION
        if base_url.endswith("/openai/v1"):  # the v1 API's base URL, as the portal shows it
            base_url, api_version = base_url.removesuffix("/openai/v1"), "v1"
        return Endpoint(
            kind="azure",
            base_url=base_url,
            api_key=key,
            token_provider=provider,
            deployment=str(deployment),
            api_version=api_version,
            headers=parse_headers(args.header),
        )
    model = args.deployment or env.get("OPENAI_MODEL")
    _require({"OPENAI_API_KEY": env.get("OPENAI_API_KEY"), "OPENAI_MODEL (or --deployment)": model})
    base_url = check_base_url(env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL, "openai", "OPENAI_BASE_URL")
    return Endpoint(
        kind="openai",
        base_url=base_url,
        api_key=env["OPENAI_API_KEY"],
        deployment=str(model),
        headers=parse_headers(args.header),
    )


def deployments_from_env(
    specs: Sequence[DeploymentSpec], env: Mapping[str, str], args: argparse.Namespace
) -> tuple[Deployment, ...]:
    """A deployments file's entries, with the keys its ``api_key_env`` entries name read from ``env``."""
    credential: list[TokenProvider] = []  # DefaultAzureCredential, built once for every entry that wants it

    def auth(spec: DeploymentSpec) -> tuple[str, TokenProvider | None]:
        if spec.token_command:
            return "", command_provider(spec.token_command)
        if spec.auth == "entra":
            credential[:] = credential or [default_credential_provider()]
            return "", credential[0]
        if not spec.api_key_env:
            raise ConfigError(f'deployment {spec.name!r}: give api_key_env, auth = "entra" or token_command')
        key = env.get(spec.api_key_env)
        if not key:
            raise ConfigError(
                f"deployment {spec.name!r}: api_key_env names {spec.api_key_env}, which is not set "
                "(set it in the environment or in .env)"
            )
        return key, None

    return tuple(_deployment(spec, auth(spec), env, args) for spec in specs)


def _deployment(
    spec: DeploymentSpec, auth: tuple[str, TokenProvider | None], env: Mapping[str, str], args: argparse.Namespace
) -> Deployment:
    base_url = check_base_url(spec.endpoint, "azure", f"the endpoint of deployment {spec.name!r}")
    api_version = spec.api_version or args.api_version or env.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION
    if base_url.endswith("/openai/v1"):
        base_url, api_version = base_url.removesuffix("/openai/v1"), "v1"
    endpoint = Endpoint(
        kind="azure",
        base_url=base_url,
        api_key=auth[0],
        token_provider=auth[1],
        deployment=spec.deployment,
        api_version=api_version,
        headers=parse_headers(args.header),
    )
    return Deployment(name=spec.name, endpoint=endpoint, tpm=spec.tpm, rpm=spec.rpm, priority=spec.priority)


def azure_auth(env: Mapping[str, str], args: argparse.Namespace) -> tuple[str, TokenProvider | None]:
    """--token-command; else the API key; else Entra ID: ASYNCBATCH_TOKEN_COMMAND, else DefaultAzureCredential."""
    key = env.get("AZURE_OPENAI_API_KEY") or ""
    if args.auth == "key":
        _require({"AZURE_OPENAI_API_KEY": key})
        return key, None
    if args.token_command:
        return "", command_provider(args.token_command)
    if key and args.auth != "entra":
        return key, None
    if command := env.get("ASYNCBATCH_TOKEN_COMMAND"):
        return "", command_provider(command)
    return "", default_credential_provider()


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """``--header 'Name: value'`` options -> a dict (the value is a secret: it is never echoed)."""
    headers = {}
    for value in values:
        name, colon, content = value.partition(":")
        if not colon or not name.strip() or not content.strip():
            raise ConfigError(f"--header takes 'Name: value' (got a value without a name, or a name alone: {name!r})")
        headers[name.strip()] = content.strip()
    return headers


def _require(values: Mapping[str, str | None]) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"missing configuration: {', '.join(missing)}. "
            "HINT: set it in the environment or in .env (see .env.example), "
            "or try the tool with --simulate, which needs no credentials"
        )


def _text_option(value: str | None, path: Path | None, name: str) -> str | None:
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"give --{name} or --{name}-file, not both")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --{name}-file {path}: {exc.strerror}") from None


def request_defaults(args: argparse.Namespace) -> RequestDefaults:
    return RequestDefaults(
        tools=load_tools(args.tools) if args.tools else None,
        response_format=load_response_format(args.response_format) if args.response_format else None,
        strict=args.strict,
        feedback=not args.no_feedback,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        template=_text_option(args.template, args.template_file, "template"),
        system=_text_option(args.system, args.system_file, "system"),
        api=args.api,
    )


def build_config(
    args: argparse.Namespace, endpoint: Endpoint | None, deployments: tuple[Deployment, ...] = ()
) -> RunConfig:
    model = endpoint.deployment if endpoint is not None else deployments[0].endpoint.deployment
    return RunConfig(
        input_path=args.input,
        output_path=args.output,
        errors_path=args.errors,
        endpoint=endpoint,
        deployments=deployments,
        batch=batch_options(args),
        limits=Limits(concurrency=args.concurrency, tpm=args.tpm, rpm=args.rpm),
        retry=RetryPolicy(
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            backoff_initial=args.backoff,
            max_response_mb=args.max_response_mb,
        ),
        request=request_defaults(args),
        checkpoint_path=args.checkpoint,
        fsync=args.fsync,
        retry_failed=args.retry_failed,
        accept_changes=args.accept_changes,
        grace=args.grace,
        max_wait=args.max_wait,
        max_outage=args.max_outage,
        prices=resolve(model, args.price_in, args.price_out, args.price_cached),
        max_cost=args.max_cost,
    )


def batch_options(args: argparse.Namespace) -> BatchOptions | None:
    options = BatchOptions(
        max_lines_per_file=args.max_lines_per_file,
        poll_interval=args.poll_interval,
        live_fallback=not args.no_live_fallback,
        cancel=args.cancel,
    )
    if not args.batch_api:
        if args.cancel or args.no_live_fallback:
            raise ConfigError("--cancel and --no-live-fallback go with --batch-api")
        return None
    return options


def check_input(path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"input file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"input {path} is not a file")


def sim_config(args: argparse.Namespace) -> SimConfig:
    for name in ("sim_latency_ms", "sim_tpm", "sim_rpm"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {value:g})")
    return SimConfig(
        latency=args.sim_latency_ms / 1000,
        tpm=args.sim_tpm or None,
        rpm=args.sim_rpm or None,
        window=args.sim_window,
        deployment=None,
    )


async def execute(args: argparse.Namespace, env: Mapping[str, str], reporter: Reporter) -> int:
    specs: list[DeploymentSpec] = args.deployment_specs
    for option in ("deployment", "tpm", "rpm"):
        if specs and getattr(args, option) is not None:
            raise ConfigError(f"--{option} and --deployments do not mix: set {option} per deployment in the file")
    if specs and args.simulate:
        return await _simulate_pool(args, specs, reporter)
    if specs:
        return await _run(build_config(args, None, deployments_from_env(specs, env, args)), reporter, args.restart)
    if args.simulate:
        sim = sim_config(args)
        async with simulated(sim) as endpoint:
            endpoint = dataclasses.replace(
                endpoint, deployment=args.deployment or endpoint.deployment, headers=parse_headers(args.header)
            )
            reporter.info(f"SIMULATED run: local simulator at {endpoint.base_url}, nothing is sent to Azure")
            return await _run(build_config(args, endpoint), reporter, args.restart)
    return await _run(build_config(args, endpoint_from_env(env, args)), reporter, args.restart)


async def _simulate_pool(args: argparse.Namespace, specs: list[DeploymentSpec], reporter: Reporter) -> int:
    """--simulate --deployments: each entry gets a simulator of its own, with the entry's quota."""
    base = sim_config(args)
    async with contextlib.AsyncExitStack() as stack:
        pool = []
        for spec in specs:
            sim = dataclasses.replace(base, tpm=spec.tpm or base.tpm, rpm=spec.rpm or base.rpm)
            endpoint = await stack.enter_async_context(simulated(sim))
            endpoint = dataclasses.replace(endpoint, deployment=spec.deployment, headers=parse_headers(args.header))
            pool.append(
                Deployment(name=spec.name, endpoint=endpoint, tpm=spec.tpm, rpm=spec.rpm, priority=spec.priority)
            )
            reporter.info(f"SIMULATED deployment {spec.name}: local simulator at {endpoint.base_url}")
        return await _run(build_config(args, None, tuple(pool)), reporter, args.restart)


async def _run(config: RunConfig, reporter: Reporter, restart: bool) -> int:
    interrupt = Interrupt()

    def on_signal() -> None:
        interrupt.request()
        if interrupt.count == 1:
            reporter.info(
                f"stopping: no new requests; those in flight get {config.grace:g} s to finish "
                "(press Ctrl-C again to stop now)"
            )

    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, on_signal)
    try:
        # --restart happens inside run, under the lock, once the configuration is known to be good
        stats = await run(config, restart=restart, reporter=reporter, interrupt=interrupt)
    except FatalAPIError as exc:
        raise FatalAPIError(exc.kind, f"{exc} HINT: {fatal_hint(exc.kind, config.routes[0].endpoint)}") from None
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)  # asyncio puts the defaults back; the caller's are wanted (exit 130)
    reporter.summary(stats)
    reporter.info(f"results: {config.output_path}  errors: {config.errors_path}")
    again = f"run the same command again:\n  {resume_command(sys.argv[1:])}"
    if stats.stopped:  # warn: shown even with -q, since the user needs it
        reporter.warn(f"stopped early: {stats.stopped}. Nothing is lost; to resume, {again}")
        return EXIT_STOPPED
    if stats.interrupted:
        reporter.warn(f"interrupted. To resume, {again}")
        return EXIT_INTERRUPTED
    return EXIT_OK if stats.failed == 0 else EXIT_FAILURES


def fatal_hint(kind: str, endpoint: Endpoint) -> str:
    """What to check, in the words of the variables this mode reads."""
    azure = endpoint.kind == "azure"
    key, url = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT") if azure else ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    model = "AZURE_OPENAI_DEPLOYMENT_NAME / --deployment" if azure else "OPENAI_MODEL / --deployment"
    if kind == "authentication" and endpoint.token_provider is not None:
        return "check that the Entra ID identity has the 'Cognitive Services OpenAI User' role on this resource"
    if kind == "authentication":
        return f"check {key} and that it belongs to this endpoint"
    if kind == "not_found":
        return f"check {model} and {url}"
    if kind == "unreachable":
        return f"check {url} and the network (or raise --timeout, if the model is just slow)"
    return "the server refuses these requests; fix the cause it names, then run the same command again"


def _event_loop_run(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when it is installed (pip install "asyncbatch[fast]"): less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _dry_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    limits = Limits(concurrency=args.concurrency, tpm=args.tpm, rpm=args.rpm)
    model = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME") or env.get("OPENAI_MODEL") or "dry-run"
    if specs := args.deployment_specs:  # a pool: its quota is the sum of its deployments'
        tpm = sum(s.tpm or 0 for s in specs) if all(s.tpm for s in specs) else None
        rpm = sum(s.rpm or 0 for s in specs) if all(s.rpm for s in specs) else None
        limits, model = Limits(concurrency=args.concurrency, tpm=tpm, rpm=rpm), specs[0].deployment
    options = batch_options(args)
    report = dry_run(args.input, request_defaults(args), model, max_lines_per_file=args.max_lines_per_file)
    prices = resolve(model, args.price_in, args.price_out, args.price_cached)
    print(format_report(report, args.input, limits, prices, batch=options is not None))
    return EXIT_OK if report.bad_count == 0 else EXIT_FAILURES


def _prog() -> list[str]:
    """How this process was started, for the resume hint."""
    if sys.argv[0].endswith("__main__.py"):
        return ["python", "-m", "asyncbatch"]
    return ["asyncbatch"]


def resume_command(argv: Sequence[str]) -> str:
    """The command to run again, with every --header value left out (they are secrets): named, to pass again."""
    shown, names, value_next = [], [], False
    for arg in argv:
        option, eq, value = arg.partition("=")
        if value_next:
            value_next = False
            names.append(arg.partition(":")[0].strip())
            shown.append(f"{names[-1]}: <your value>")
        elif len(option) >= 5 and "--header".startswith(option):  # --header, or argparse's --head, --heade
            value_next = not eq
            if eq:
                names.append(value.partition(":")[0].strip())
                shown.append(f"{option}={names[-1]}: <your value>")
            else:
                shown.append(arg)
        else:
            shown.append(arg)
    command = shlex.join([*_prog(), *shown])
    if names:
        command += f"\n  (the values of the {', '.join(names)} header(s) are not repeated here: give them again)"
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Everything it prints passes through one Redactor: no secret reaches a terminal.

    Signals: ``python -m asyncbatch`` (``__main__``) handles them outside the run; during it, ``_run``.
    """
    redactor = Redactor([os.environ.get("AZURE_OPENAI_API_KEY"), os.environ.get("OPENAI_API_KEY")])
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(stdout, redactor)
    sys.stderr = RedactingStream(stderr, redactor)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), redactor)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str], redactor: Redactor) -> int:
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    redactor.extend(value.partition(":")[2].strip() for value in args.header)

    def fail(message: str) -> int:
        text = redactor.text(message)
        if args.log_format == "json":
            print(orjson.dumps({"event": "error", "message": text}).decode(), file=sys.stderr)
        else:
            print(f"asyncbatch: error: {text}", file=sys.stderr)
        return EXIT_FATAL

    try:
        env = load_env(args.env_file, os.environ)
        redactor.extend([env.values.get("AZURE_OPENAI_API_KEY"), env.values.get("OPENAI_API_KEY")])
        args.deployment_specs = load_deployments(args.deployments) if args.deployments else []
        redactor.extend(env.values.get(spec.api_key_env or "") for spec in args.deployment_specs)
        check_input(args.input)
        if args.input.stat().st_size == 0:
            print(f"asyncbatch: {args.input} is empty; nothing to do", file=sys.stderr)
            return EXIT_OK
        sniff(args.input)
        if args.dry_run:
            return _dry_run(args, env.values)
        reporter = make_reporter(
            quiet=args.quiet, progress=not args.no_progress, log_format=args.log_format, redactor=redactor
        )
        info, warnings = env.notes()
        for note in info:
            reporter.info(note)
        for warning in warnings:
            reporter.warn(warning)
        return _event_loop_run(execute(args, env.values, reporter))
    except (ConfigError, FatalAPIError, OutputError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("asyncbatch: interrupted. Nothing is lost; to resume, run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        return fail(f"{exc.filename or 'an I/O operation'}: {exc.strerror or exc}")
    except Exception:
        return fail("internal error\n" + traceback.format_exc())


EXPORT_EPILOG = """\
rows: line, status (succeeded or failed), custom_id, the input record's fields (with --input),
output, error_code, error_message, attempts, prompt_tokens, completion_tokens. In CSV and
Parquet an object output becomes one output.<key> column per key.

examples:
  asyncbatch export prompts.results.jsonl --ordered > ordered.jsonl
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o table.csv
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o table.parquet   # pip install "asyncbatch[parquet]"

exit codes: 0 written; 2 usage error or a file that cannot be read or written.
"""


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncbatch export",
        description="Write a run's results and failures as one table: in input order (on disk, in bounded "
        "memory, for any number of lines), joined with the input, as JSONL, CSV or Parquet.",
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
    return p


def export_main(argv: Sequence[str]) -> int:
    args = build_export_parser().parse_args(argv)
    try:
        for path in (args.results, args.errors, args.input):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} does not exist or is not a file")
        errors = args.errors or default_errors(args.results)
        sources = {path.resolve() for path in (args.results, errors, args.input) if path is not None}
        if args.output is not None and args.output.resolve() in sources:
            raise ConfigError(f"-o {args.output} would overwrite a file export reads; write to another file")
        rows = Rows(args.results, errors if errors.is_file() else None, args.input, args.ordered)
        report = export(rows, format_for(args.output, args.format), args.output, sys.stdout.buffer)
    except ConfigError as exc:
        print(f"asyncbatch export: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:
        print(f"asyncbatch export: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FATAL
    print(export_summary(report, args.output), file=sys.stderr)
    return EXIT_OK


def export_summary(report: ExportReport, out: Path | None) -> str:
    where = f" to {out}" if out else ""
    text = f"exported {report.rows:,} rows{where} ({report.succeeded:,} succeeded, {report.failed:,} failed)"
    if report.missing:
        text += f"; {report.missing:,} input lines have no result yet (run the same command again to finish)"
    if report.duplicates:
        text += f"; {report.duplicates:,} repeated line numbers left out (the outputs were edited or joined)"
    if report.unreadable:
        text += f"; {report.unreadable:,} unreadable output lines skipped"
    return text
