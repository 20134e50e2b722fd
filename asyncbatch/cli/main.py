"""Command line: arguments + environment (.env) -> RunConfig -> run -> exit code.

The ``cli`` package is the only reader of the environment (``env.py``) and the only
place that knows exit codes (``parser.py``) and environment-variable hints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..auth import DefaultCredential, TokenCommand
from ..config import (
    Deployment,
    Endpoint,
    Limits,
    RunConfig,
    pooled_quota,
)
from ..cost import Prices, resolve
from ..display.reporters import Reporter, make_reporter
from ..errors import ConfigError, FatalAPIError, OutputError, cli_words
from ..input.reader import first_lines, sniff
from ..input.requests import lines_prices
from ..protocol import read_usage
from ..redact import RedactingStream, Redactor, header_secrets, url_secrets
from ..runner import Interrupt, run
from ..simulator import simulated
from ..stats import RunStats
from .build import batch_options, build_config, check_input, request_defaults, sim_config
from .cache_cmd import cache_main
from .deployments import DeploymentSpec, load_deployments
from .dryrun import Sample, dry_run, format_report, pick_sample
from .env import Env, deployments_from_env, endpoint_from_env, endpoint_kind, load_env, parse_headers, secrets_in
from .export_cmd import export_main
from .parser import EXIT_FAILURES, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, ONE_TIME, build_parser
from .report_cmd import report_main
from .signals import Stop, StopRequests, handled

Go = Callable[[RunConfig], Awaitable[int]]


async def execute(args: argparse.Namespace, env: Env, reporter: Reporter, go: Go | None = None) -> int:
    """Build the run's config from ``args`` and ``env`` (a simulator's, with --simulate), run its token
    commands once (``_prime``), and ``go`` run it."""
    run_it = go or (lambda config: _run(config, reporter, args))

    async def go_when_ready(config: RunConfig) -> int:
        try:
            await _prime(config)
            return await run_it(config)
        finally:
            for route in config.routes:  # the credentials this command line made: theirs to close, on this loop
                if isinstance(credential := route.endpoint.token_provider, DefaultCredential):
                    await credential.close()

    return await _execute(args, env, reporter, go_when_ready)


async def _prime(config: RunConfig) -> None:
    """Each token command runs once now, and DefaultAzureCredential signs in: one that fails is a configuration
    error (exit 2) before anything is sent or written, and its token is the first used. A signal meanwhile
    stops it (and its children)."""
    for route in config.routes:
        if isinstance(command := route.endpoint.token_provider, TokenCommand | DefaultCredential):
            await _interruptible(command.prime())


async def _interruptible(work: Coroutine[Any, Any, None]) -> None:
    """``work``, cancelled by SIGINT, SIGTERM or SIGHUP (then KeyboardInterrupt: exit 130)."""
    task = asyncio.ensure_future(work)
    with handled(lambda _: task.cancel()):
        try:
            await task
        except asyncio.CancelledError:
            if task.cancelled():  # by a signal
                raise KeyboardInterrupt from None
            raise


async def _execute(args: argparse.Namespace, env: Env, reporter: Reporter, go: Go) -> int:
    specs: list[DeploymentSpec] = args.deployment_specs
    for option in ("deployment", "tpm", "rpm"):
        if specs and getattr(args, option) is not None:
            raise ConfigError(f"--{option} and --deployments do not mix: set {option} per deployment in the file")
    if specs and args.simulate:
        return await _simulate_pool(args, specs, go)
    told = len(env.notices)  # those until now are shown; what reading the endpoint adds is shown below
    if specs:
        deployments = deployments_from_env(specs, env, args)
        _tell(reporter, env.notices[told:])
        return await go(build_config(args, None, deployments))
    if args.simulate:
        sim = sim_config(args)
        async with simulated(sim) as endpoint:
            endpoint = dataclasses.replace(
                endpoint,
                deployment=args.deployment or endpoint.deployment,
                headers=parse_headers(args.header),
                api_version=args.api_version or endpoint.api_version,  # the simulator serves every version's routes
            )
            return await go(build_config(args, endpoint))  # the run says SIMULATED once it accepts the config
    endpoint = endpoint_from_env(env, args)
    _tell(reporter, env.notices[told:])  # before anything is sent: where the credentials go, say
    return await go(build_config(args, endpoint))


def _tell(reporter: Reporter, notes: list[str]) -> None:
    for note in notes:
        reporter.info(note)


async def _simulate_pool(args: argparse.Namespace, specs: list[DeploymentSpec], go: Go) -> int:
    """--simulate --deployments: each entry gets a simulator of its own. Its quota is --sim-tpm/--sim-rpm when
    given (the server's, whatever the client is told: a demo of 429s), else the entry's own tpm/rpm."""
    base = sim_config(args)
    async with contextlib.AsyncExitStack() as stack:
        pool = []
        for index, spec in enumerate(specs):  # a seed each: the same faults at the same requests otherwise
            sim = dataclasses.replace(base, tpm=base.tpm or spec.tpm, rpm=base.rpm or spec.rpm, seed=base.seed + index)
            endpoint = await stack.enter_async_context(simulated(sim))
            endpoint = dataclasses.replace(
                endpoint,
                deployment=spec.deployment,
                headers=parse_headers(args.header),
                api_version=args.api_version or endpoint.api_version,
            )
            pool.append(
                Deployment(name=spec.name, endpoint=endpoint, tpm=spec.tpm, rpm=spec.rpm, priority=spec.priority)
            )
        return await go(build_config(args, None, tuple(pool)))


async def _run(config: RunConfig, reporter: Reporter, args: argparse.Namespace) -> int:
    interrupt = Interrupt()
    stops = StopRequests()

    def on_signal(signum: int) -> None:
        stop = stops.on(signum)
        if stop is not Stop.IGNORED:
            interrupt.request()
        if stop is Stop.GRACEFUL:
            reporter.info(
                f"stopping: no new requests; those in flight get {config.grace:g} s to finish "
                "(press Ctrl-C again to stop now)"
            )

    try:
        with handled(on_signal):
            # --restart happens inside run, under the lock, once the configuration is known to be good
            stats = await run(config, restart=args.restart, reporter=reporter, interrupt=interrupt)
    except FatalAPIError as exc:
        if (hint := fatal_hint(exc.kind, config.routes[0].endpoint, exc.cause, str(exc))) is None:
            raise
        raise FatalAPIError(exc.kind, f"{exc} HINT: {hint}", cause=exc.cause) from None
    reporter.summary(stats)
    reporter.info(f"results: {config.output_path}  errors: {config.errors_path}")
    again = resume_hint(args.argv)
    if stats.stopped:  # warn: shown even with -q, since the user needs it
        reporter.warn(f"stopped early: {stats.stopped}. Nothing is lost; {again}")
        return EXIT_STOPPED
    if stats.interrupted:
        reporter.warn(f"interrupted. Nothing is lost; {again}")
        return EXIT_INTERRUPTED
    if stats.failed:
        command, _, headers = _resume(args.argv)  # --retry-failed acts once: never in a resume hint, so added here
        secret = f" (give the value of the {', '.join(headers)} header(s) again: it is not printed)" if headers else ""
        reporter.info(
            f"{stats.failed:,} lines failed: why, in {config.errors_path}. To ask them again (once what made them "
            f"fail is fixed), run{secret}:\n  {command} --retry-failed"
        )
        return EXIT_FAILURES
    return EXIT_OK


def _gateway_key(said: str, endpoint: Endpoint) -> str | None:
    """API Management's 401 (its own words: "missing subscription key", or "invalid subscription key" without
    Azure OpenAI's "or wrong API endpoint", which is the service refusing its api-key): what to do, or None."""
    given = any(name.lower() == "ocp-apim-subscription-key" for name in endpoint.headers)
    if "missing subscription key" in said:
        return "give it with" if not given else "check the name and value given with"
    if given and "invalid subscription key" in said and "wrong api endpoint" not in said:
        return "check the value given with"
    return None


def fatal_hint(kind: str, endpoint: Endpoint, cause: str | None = None, said: str = "") -> str | None:
    """What to check, in the words of the variables this mode reads; None where the message says it.

    :param said: the error's own words: API Management's 401 names its subscription key, not the service's.
    """
    if kind in (
        "token",
        "redirect",
        "header_too_large",
    ):  # a token command that failed mid-run, a redirect: their message has the hint
        return None
    azure = endpoint.kind == "azure"
    key, url = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT") if azure else ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    model = "AZURE_OPENAI_DEPLOYMENT_NAME / --deployment" if azure else "OPENAI_MODEL / --deployment"
    proxy = "the proxy the environment names (HTTPS_PROXY, HTTP_PROXY...)"
    if kind == "proxy_authentication":  # the URL's form in words: one written out would be masked as a password
        where = "the proxy's URL (HTTPS_PROXY, HTTP_PROXY...)"
        return f"check the user name and password in {where}, written before an @ after http://"
    if kind == "proxy_forbidden":
        return f"ask the owner of {proxy} to let requests to {url}'s host through, or name that host in NO_PROXY"
    if kind == "authentication" and (gateway := _gateway_key(said.lower(), endpoint)):
        return f"API Management wants its subscription key: {gateway} --header 'Ocp-Apim-Subscription-Key: <key>'"
    if kind == "authentication" and endpoint.token_provider is not None:
        return "check that the Entra ID identity has the 'Cognitive Services OpenAI User' role on this resource"
    if kind == "authentication":
        return f"check {key} and that it belongs to this endpoint"
    if kind == "not_found":
        return f"check {model} and {url}"
    if kind == "unreachable" and cause == "certificate":
        return (
            "if a proxy or firewall inspects TLS, point SSL_CERT_FILE at your organisation's CA bundle (a PEM file "
            "with its root certificate): export SSL_CERT_FILE=/path/to/ca-bundle.pem, then run the same command again"
        )
    if kind == "unreachable" and cause == "timeout":
        return f"check {url} and the network, or raise --timeout if the model is just slow"
    if kind == "unreachable" and endpoint.proxy:
        return f"nothing answers through {proxy}: check it, {url}, and NO_PROXY"
    if kind == "unreachable":
        return f"nothing answers at {endpoint.base_url}: check the host and port in {url}, and the network"
    if kind == "malformed":
        return (
            f"something other than the API answers at {url} (a proxy's page?): check it, then run the same "
            "command again (what was answered is kept, and Batch API jobs already created are resumed)"
        )
    if kind == "invalid_output":
        return (
            "fix --tools / --response-format, or the prompt, so the model can follow it, then run the same "
            "command again (nothing was recorded: every line runs)"
        )
    return "the server refuses these requests; fix the cause it names, then run the same command again"


def _event_loop_run(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (a dependency except on Windows): less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _dry_run(args: argparse.Namespace, environment: Env) -> int:
    env = environment.values
    limits = Limits(concurrency=args.concurrency, tpm=args.tpm, rpm=args.rpm)
    variable = "AZURE_OPENAI_DEPLOYMENT_NAME" if endpoint_kind(env) == "azure" else "OPENAI_MODEL"
    named = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME") or env.get("OPENAI_MODEL")
    model = named or f"no deployment named: set {variable} or --deployment"  # what its limits and prices would be
    if specs := args.deployment_specs:  # a pool: its quota is the sum of its deployments'
        tpm, rpm = pooled_quota([s.tpm for s in specs]), pooled_quota([s.rpm for s in specs])
        limits, model = Limits(concurrency=args.concurrency, tpm=tpm, rpm=rpm), specs[0].deployment
    options = batch_options(args)
    defaults = request_defaults(args)
    kind = endpoint_kind(env)
    report = dry_run(args.input, defaults, model, max_lines_per_file=args.max_lines_per_file, kind=kind)
    prices = resolve(model, args.price_in, args.price_out, args.price_cached) or lines_prices(first_lines(args.input))
    sample = (
        _sample(args, environment, pick_sample(args.input, report, args.sample, defaults, model), prices)
        if args.sample
        else None
    )
    print(format_report(report, args.input, limits, prices, model=model, batch=options is not None, sample=sample))
    return EXIT_OK if report.bad_count == 0 else EXIT_FAILURES


def _sample(args: argparse.Namespace, env: Env, lines: list[bytes], prices: Prices | None) -> Sample:
    """--dry-run --sample N: run N lines, spread over the file, live, into a scratch directory; what they cost."""
    with tempfile.TemporaryDirectory(prefix="asyncbatch-sample-") as scratch:
        path = Path(scratch) / "sample.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        sampled = argparse.Namespace(**{**vars(args), "input": path, "output": None, "errors": None})
        sampled.checkpoint, sampled.restart, sampled.batch_api, sampled.dry_run = None, False, False, False
        stats: list[RunStats] = []

        async def go(config: RunConfig) -> int:
            config = dataclasses.replace(config, prices=prices)
            stats.append(await run(config, reporter=Reporter()))
            return EXIT_OK

        _event_loop_run(execute(sampled, env, Reporter(), go))
        costs = tuple(_line_cost(record, prices) for record in _records(path.with_suffix(".results.jsonl")))
    done = stats[0]
    return Sample(len(lines), done.succeeded, done.prompt_tokens, done.completion_tokens, done.cost, costs)


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


def _line_cost(record: dict[str, Any], prices: Prices | None) -> float:
    body = (record.get("response") or {}).get("body") or {}
    return prices.cost(*read_usage(body)) if prices is not None else 0.0


def _prog() -> list[str]:
    """How this process was started, as typed, for the resume hint: ``.venv/bin/asyncbatch``, ``python3 -m ...``."""
    if sys.argv[0].endswith("__main__.py"):  # -m: the interpreter as typed, and its options up to -m
        typed = sys.orig_argv
        cut = typed.index("-m") if "-m" in typed else 0
        return [*typed[:cut], "-m", "asyncbatch"] if cut else ["python", "-m", "asyncbatch"]
    script = sys.argv[0]
    if os.path.basename(script) != "asyncbatch":  # called as a library, from another program
        return ["asyncbatch"]
    found = shutil.which("asyncbatch")
    with contextlib.suppress(OSError):
        if found is not None and os.path.samefile(found, script):
            return ["asyncbatch"]  # found on PATH: the name alone, as typed
    return [script]


def resume_command(argv: Sequence[str]) -> str:
    """The command to run again, on one line: without the options that act once (``parser.ONE_TIME``), and
    with every --header value left out (they are secrets)."""
    return _resume(argv)[0]


def resume_hint(argv: Sequence[str]) -> str:
    """How to resume, in words that agree with the command: "the same command" only when it is; what was
    left out and why; then the command, alone on an indented line that is never folded (``display.fold``)."""
    command, dropped, headers = _resume(argv)
    notes = []
    if dropped:
        notes.append(f"without {' and '.join(dropped)}, which {'act' if len(dropped) > 1 else 'acts'} once")
    if headers:
        notes.append(f"give the value of the {', '.join(headers)} header(s) again: it is not printed")
    what = f"this command ({'; '.join(notes)})" if notes else "the same command again"
    return f"to resume, run {what}:\n  {command}"


def _resume(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """The resume command, the one-time options it leaves out, and the headers whose values it leaves out."""
    parser = build_parser()
    shown: list[str] = []
    dropped: list[str] = []
    names: list[str] = []
    value_next = False
    for arg in argv:
        option, eq, value = arg.partition("=")
        if value_next:
            value_next = False
            names.append(arg.partition(":")[0].strip())
            shown.append(f"{names[-1]}: <your value>")
        elif (name := parser.long_option(arg)) in ONE_TIME:
            dropped.extend([name] if name is not None and name not in dropped else [])
        elif name == "--header":
            value_next = not eq
            if eq:
                names.append(value.partition(":")[0].strip())
                shown.append(f"{option}={names[-1]}: <your value>")
            else:
                shown.append(arg)
        else:
            shown.append(arg)
    return shlex.join([*_prog(), *shown]), dropped, names


def main(argv: Sequence[str] | None = None, *, go: Go | None = None) -> int:
    """The command line. Everything it prints passes through one Redactor: no secret reaches a terminal.

    Signals: ``python -m asyncbatch`` (``__main__``) handles them outside the run; during it, ``_run``.

    :param go: given the configuration built, instead of running it (a test's, or a caller's that wants
        the configuration the command line would build); its result is the exit code.
    """
    redactor = Redactor(secrets_in(os.environ))
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(stdout, redactor)
    sys.stderr = RedactingStream(stderr, redactor)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), redactor, go)
    except Exception:  # past every handler (the export and cache commands'): still redacted, still exit 2
        print(error_text("internal error\n" + traceback.format_exc(), redactor), file=sys.stderr)
        return EXIT_FATAL
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def error_text(message: str, redactor: Redactor, log_format: str = "text") -> str:
    """An error as the command line prints it: in its words, with no secret in any form."""
    text = redactor.text(cli_words(message))
    if log_format == "json":
        return orjson.dumps({"event": "error", "message": text}).decode()
    return f"asyncbatch: error: {text}"


def _header_values(argv: Sequence[str]) -> list[str]:
    """The secrets of the ``--header`` options in ``argv`` (or an abbreviation, as argparse takes), as given."""
    given = []
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if len(option) >= 5 and "--header".startswith(option):
            given.append(value if eq else argv[i + 1] if i + 1 < len(argv) else "")
    return [secret for header in given for secret in header_secrets(header)]


def configure(args: argparse.Namespace, environ: Mapping[str, str], redactor: Redactor) -> Env:
    """What the command line reads before it runs: the environment (and .env), whose secrets join
    ``redactor`` first, the deployments file, the input's name. :raises ConfigError: naming what to fix."""
    redactor.extend(secret for header in args.header for secret in header_secrets(header))
    env = load_env(args.env_file, environ)
    redactor.extend(secrets_in(env.values))
    args.deployment_specs = load_deployments(args.deployments) if args.deployments else []
    for spec in args.deployment_specs:
        redactor.extend([env.values.get(spec.api_key_env or ""), *url_secrets(spec.endpoint)])
    check_input(args.input)
    return env


def _main(argv: list[str], redactor: Redactor, go: Go | None = None) -> int:
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    if argv[:1] == ["cache"]:
        out = sys.stdout.stream if isinstance(sys.stdout, RedactingStream) else sys.stdout
        return cache_main(argv[1:], out)  # figures only: see cache_main
    if argv[:1] == ["report"]:
        return report_main(argv[1:], redactor)
    redactor.extend(_header_values(argv))  # before parsing: argparse may quote an argument in an error
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the resume hint: the command as given, whoever called main

    def fail(message: str) -> int:
        print(error_text(message, redactor, args.log_format), file=sys.stderr)
        return EXIT_FATAL

    try:
        env = configure(args, os.environ, redactor)
        if args.input.stat().st_size == 0:
            print(f"asyncbatch: {args.input} is empty; nothing to do", file=sys.stderr)
            return EXIT_OK
        sniff(args.input)
        if args.sample is not None and (not args.dry_run or args.sample < 1):
            raise ConfigError(f"--sample takes a number of lines, 1 or more, with --dry-run (got {args.sample})")
        if args.dry_run:
            return _dry_run(args, env)
        reporter = make_reporter(
            quiet=args.quiet, progress=not args.no_progress, log_format=args.log_format, redactor=redactor
        )
        reporter.words, reporter.resume = cli_words, "resume with the command printed below"
        info, warnings = env.notes()
        for note in info:
            reporter.info(note)
        for warning in warnings:
            reporter.warn(warning)
        return _event_loop_run(execute(args, env, reporter, go))
    except (ConfigError, FatalAPIError, OutputError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("asyncbatch: interrupted. Nothing is lost; to resume, run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        return fail(f"{exc.filename or 'an I/O operation'}: {exc.strerror or exc}")
    except Exception:
        return fail("internal error\n" + traceback.format_exc())
