"""Command line: arguments + environment (.env) -> RunConfig -> run -> exit code.

This is the only module that reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
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
from .checkpoint import move_aside
from .config import DEFAULT_API_VERSION, Endpoint, Limits, RequestDefaults, RetryPolicy, RunConfig
from .dryrun import dry_run, format_report
from .errors import ConfigError, FatalAPIError, OutputError
from .progress import Reporter, make_reporter
from .redact import Redactor
from .runner import Interrupt, run
from .simulator import SimConfig, serve
from .validate import OutputCheck, strict_problems

EXIT_OK, EXIT_FAILURES, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 130
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
FSYNC: dict[str, float | None] = {"always": 0.0, "periodic": 1.0, "never": None}

EPILOG = """\
input formats (detected line by line):
  Batch API lines  {"custom_id": "a1", "method": "POST", "url": "/chat/completions", "body": {...}}
  chat lines       {"custom_id": "a1", "messages": [...], "temperature": 0}
  records          {"id": 7, "company": "Acme"}   rendered with --template "Tell me about {company}"

configuration (environment or .env; real environment variables win):
  AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, AZURE_OPENAI_DEPLOYMENT_NAME,
  AZURE_OPENAI_API_VERSION (default @API_VERSION@)
  or, for OpenAI and OpenAI-compatible servers: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL

exit codes:
  0 every input succeeded; 1 some inputs failed (see the errors file);
  2 usage, configuration or fatal error (e.g. wrong key); 130 interrupted

examples:
  asyncbatch examples/companies.jsonl --simulate --template "Tell me about {company}" \\
      --tools examples/get_company_info.json
  asyncbatch prompts.jsonl --concurrency 50 --tpm 1200000 --rpm 7200 --max-tokens 200
  asyncbatch prompts.jsonl --dry-run --tpm 1200000 --price-in 2.5 --price-out 10
  asyncbatch prompts.jsonl ...     # the same command again resumes an interrupted run
""".replace("@API_VERSION@", DEFAULT_API_VERSION)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncbatch",
        description="Run a JSONL file of chat-completion requests against Azure OpenAI (or any "
        "OpenAI-compatible endpoint) as fast as the quota allows. Results stream to JSONL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="JSONL file, one request or record per line")
    p.add_argument("--version", action="version", version=f"asyncbatch {__version__}")
    out = p.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="results file (default: <input stem>.results.jsonl beside the input)",
    )
    out.add_argument("--errors", type=Path, metavar="PATH", help="failures file (default: <output stem>.errors.jsonl)")
    out.add_argument("--checkpoint", type=Path, metavar="PATH", help="resume checkpoint (default: <output>.checkpoint)")
    out.add_argument(
        "--fsync",
        choices=("always", "periodic", "never"),
        default="periodic",
        help="when outputs reach the disk: after every write batch, at least once a second (default), "
        "or only at exit; see README 'Durability'",
    )
    resume = p.add_argument_group("resume (re-run the same command to resume an interrupted run)")
    resume.add_argument(
        "--restart", action="store_true", help="start over; the old outputs are moved aside, not deleted"
    )
    resume.add_argument("--retry-failed", action="store_true", help="run again the inputs whose requests failed")
    resume.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds in-flight requests get to finish after Ctrl-C (default 5)",
    )
    rate = p.add_argument_group("speed and quota")
    rate.add_argument(
        "-c", "--concurrency", type=int, default=20, metavar="N", help="requests in flight at most (default 20)"
    )
    rate.add_argument(
        "--tpm", type=int, metavar="N", help="tokens per minute the deployment allows (client-side limit)"
    )
    rate.add_argument(
        "--rpm", type=int, metavar="N", help="requests per minute the deployment allows (client-side limit)"
    )
    rate.add_argument(
        "--max-attempts",
        type=int,
        default=6,
        metavar="N",
        help="attempts per input, first included (default 6); 429s do not count: they have a budget of 30",
    )
    rate.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="seconds per attempt (default 60)")
    req = p.add_argument_group("requests")
    req.add_argument(
        "--deployment", metavar="NAME", help="deployment (model) name; overrides AZURE_OPENAI_DEPLOYMENT_NAME"
    )
    req.add_argument(
        "--api-version",
        metavar="VERSION",
        help=f"Azure API version; overrides AZURE_OPENAI_API_VERSION (default {DEFAULT_API_VERSION})",
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
    req.add_argument("--max-tokens", type=int, metavar="N", help="max_tokens for lines that do not set it")
    req.add_argument("--temperature", type=float, metavar="X", help="temperature for lines that do not set it")
    req.add_argument(
        "--template",
        metavar="STR",
        help='for record lines: Python str.format template over the record, e.g. "Summarise {text}"',
    )
    req.add_argument("--template-file", type=Path, metavar="FILE", help="read --template from a file")
    req.add_argument("--system", metavar="STR", help="for record lines: the system message")
    req.add_argument("--system-file", type=Path, metavar="FILE", help="read --system from a file")
    dry = p.add_argument_group("planning")
    dry.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check the whole input; print counts, the token estimate, the time the quota implies "
        "and (with prices) the cost; send nothing, need no credentials",
    )
    dry.add_argument("--price-in", type=float, metavar="PRICE", help="with --dry-run: price per 1M prompt tokens")
    dry.add_argument("--price-out", type=float, metavar="PRICE", help="with --dry-run: price per 1M completion tokens")
    env = p.add_argument_group("environment")
    env.add_argument(
        "--env-file", type=Path, default=Path(".env"), metavar="PATH", help="dotenv file to read (default ./.env)"
    )
    sim = p.add_argument_group("simulator (no credentials needed)")
    sim.add_argument(
        "--simulate", action="store_true", help="run against the built-in local simulator instead of Azure"
    )
    sim.add_argument(
        "--sim-latency-ms", type=float, default=200.0, metavar="MS", help="simulated latency per request (default 200)"
    )
    sim.add_argument("--sim-tpm", type=int, metavar="N", help="simulated server TPM quota (default: none)")
    sim.add_argument("--sim-rpm", type=int, metavar="N", help="simulated server RPM quota (default: none)")
    show = p.add_argument_group("display")
    show.add_argument("--no-progress", action="store_true", help="no progress display (the summary still prints)")
    show.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    return p


def load_env(env_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The .env file's values under the real environment's (real variables win)."""
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}
    return {**values, **environ}


def endpoint_from_env(env: Mapping[str, str], args: argparse.Namespace) -> Endpoint:
    azure_vars = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
    use_azure = any(env.get(v) for v in azure_vars) or not env.get("OPENAI_API_KEY")
    if use_azure:
        deployment = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME")
        needed = {**{v: env.get(v) for v in azure_vars}, "AZURE_OPENAI_DEPLOYMENT_NAME (or --deployment)": deployment}
        _require(needed)
        return Endpoint(
            kind="azure",
            base_url=env["AZURE_OPENAI_ENDPOINT"],
            api_key=env["AZURE_OPENAI_API_KEY"],
            deployment=str(deployment),
            api_version=args.api_version or env.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION,
        )
    model = args.deployment or env.get("OPENAI_MODEL") or env.get("AZURE_OPENAI_DEPLOYMENT_NAME")
    _require({"OPENAI_MODEL (or --deployment)": model})
    return Endpoint(
        kind="openai",
        base_url=env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL,
        api_key=env["OPENAI_API_KEY"],
        deployment=str(model),
    )


def _require(values: Mapping[str, str | None]) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"missing configuration: {', '.join(missing)}. "
            "HINT: set it in the environment or in .env (see .env.example), "
            "or try the tool with --simulate, which needs no credentials"
        )


def _read_json(path: Path, option: str) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {option} file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{option} file {path} is not valid JSON: {exc}") from None


def load_tools(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """A function schema, a tool, or a list of either -> a list of tools (strict if asked)."""
    data = _read_json(path, "--tools")
    items = data if isinstance(data, list) else [data]
    tools = []
    for i, item in enumerate(items):
        function = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConfigError(
                f"--tools file {path}: item {i} needs a function with a 'name' ({{name, description, parameters}})"
            )
        if strict:
            _require_strict(function.get("parameters") or {}, f"tool {function['name']!r} in {path}")
            function = {**function, "strict": True}
        tools.append({"type": "function", "function": function})
    return tools


def load_response_format(path: Path, strict: bool = False) -> dict[str, Any]:
    """{name, schema, strict?}, a full response_format, or a bare JSON Schema -> a json_schema response_format."""
    data = _read_json(path, "--response-format")
    if not isinstance(data, dict):
        raise ConfigError(f"--response-format file {path} must hold a JSON object")
    if data.get("type") == "json_schema":
        data = data.get("json_schema") or {}
    spec = dict(data) if "schema" in data else {"name": path.stem, "schema": data}
    spec.setdefault("name", path.stem)
    if strict:
        _require_strict(spec["schema"], f"the --response-format schema in {path}")
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}


def _require_strict(schema: Any, what: str) -> None:
    if problems := strict_problems(schema):
        listed = "\n  ".join(problems)
        raise ConfigError(f"--strict: {what} does not qualify for strict structured outputs:\n  {listed}")


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
    if args.strict and not (args.tools or args.response_format):
        raise ConfigError("--strict needs --tools or --response-format")
    tools = load_tools(args.tools, args.strict) if args.tools else None
    response_format = load_response_format(args.response_format, args.strict) if args.response_format else None
    OutputCheck(tools, response_format)  # every schema compiles, before anything is sent
    return RequestDefaults(
        tools=tools,
        response_format=response_format,
        strict=args.strict,
        feedback=not args.no_feedback,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        template=_text_option(args.template, args.template_file, "template"),
        system=_text_option(args.system, args.system_file, "system"),
    )


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    output = args.output or args.input.with_name(f"{args.input.stem}.results.jsonl")
    errors = args.errors or output.with_name(f"{output.stem}.errors.jsonl")
    return output, errors


def build_config(args: argparse.Namespace, endpoint: Endpoint) -> RunConfig:
    output, errors = output_paths(args)
    return RunConfig(
        input_path=args.input,
        output_path=output,
        errors_path=errors,
        endpoint=endpoint,
        limits=Limits(concurrency=args.concurrency, tpm=args.tpm, rpm=args.rpm),
        retry=RetryPolicy(max_attempts=args.max_attempts, timeout=args.timeout),
        request=request_defaults(args),
        checkpoint_path=args.checkpoint,
        fsync_interval=FSYNC[args.fsync],
        retry_failed=args.retry_failed,
        grace=args.grace,
    )


def check_input(path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"input file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"input {path} is not a file")


async def execute(args: argparse.Namespace, env: Mapping[str, str], reporter: Reporter) -> int:
    if args.simulate:
        key = "sim-" + os.urandom(8).hex()
        sim = SimConfig(api_key=key, latency=args.sim_latency_ms / 1000, tpm=args.sim_tpm, rpm=args.sim_rpm)
        async with serve(sim) as (url, _):
            deployment = args.deployment or "simulated-deployment"
            endpoint = Endpoint(kind="azure", base_url=url, api_key=key, deployment=deployment, simulated=True)
            reporter.info(f"SIMULATED run: local simulator at {url}, nothing is sent to Azure")
            return await _run(build_config(args, endpoint), reporter, args.restart)
    return await _run(build_config(args, endpoint_from_env(env, args)), reporter, args.restart)


async def _run(config: RunConfig, reporter: Reporter, restart: bool) -> int:
    if restart:  # only now that the configuration is known to be good
        for old, new in move_aside([config.output_path, config.errors_path, config.checkpoint]):
            reporter.warn(f"--restart: moved {old} to {new}")
    interrupt = Interrupt()

    def on_signal() -> None:
        interrupt.request()
        if interrupt.count == 1:
            reporter.info(
                f"stopping: no new requests; those in flight get {config.grace:g} s to finish "
                "(press Ctrl-C again to stop now)"
            )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        stats = await run(config, reporter=reporter, interrupt=interrupt)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    reporter.summary(stats)
    reporter.info(f"results: {config.output_path}  errors: {config.errors_path}")
    if stats.interrupted:  # warn: shown even with -q, since the user needs it
        reporter.warn(f"interrupted. To resume, run the same command again:\n  {shlex.join([*_prog(), *sys.argv[1:]])}")
        return EXIT_INTERRUPTED
    return EXIT_OK if stats.failed == 0 else EXIT_FAILURES


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
    report = dry_run(args.input, request_defaults(args), model)
    print(format_report(report, args.input, limits, args.price_in, args.price_out))
    return EXIT_OK if report.bad_count == 0 else EXIT_FAILURES


def _prog() -> list[str]:
    """How this process was started, for the resume hint."""
    if sys.argv[0].endswith("__main__.py"):
        return ["python", "-m", "asyncbatch"]
    return ["asyncbatch"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = load_env(args.env_file, os.environ)
    redactor = Redactor([env.get("AZURE_OPENAI_API_KEY"), env.get("OPENAI_API_KEY")])

    def fail(message: str) -> int:
        print(f"asyncbatch: error: {redactor.text(message)}", file=sys.stderr)
        return EXIT_FATAL

    try:
        check_input(args.input)
        if args.input.stat().st_size == 0:
            print(f"asyncbatch: {args.input} is empty; nothing to do", file=sys.stderr)
            return EXIT_OK
        if args.dry_run:
            return _dry_run(args, env)
        reporter = make_reporter(quiet=args.quiet, progress=not args.no_progress)
        return _event_loop_run(execute(args, env, reporter))
    except (ConfigError, FatalAPIError, OutputError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("asyncbatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        return fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    except Exception:
        return fail("internal error\n" + traceback.format_exc())
