"""Parsed arguments -> RunConfig and its sections: request defaults, Batch API options, the simulator's config."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import (
    BatchOptions,
    Deployment,
    Endpoint,
    Limits,
    RequestDefaults,
    RetryPolicy,
    RunConfig,
    TransportOptions,
)
from ..cost import resolve
from ..errors import ConfigError
from ..simulator import SimConfig
from ..structured.schemas import load_model, load_response_format, load_tools


def _text_option(value: str | None, path: Path | None, name: str) -> str | None:
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"give --{name} or --{name}-file, not both")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --{name}-file {path}: {exc.strerror}") from None


def _schema(value: Path | None, load: Callable[[Path], Any]) -> Any:
    """A JSON file, or ``module:Model`` (a Pydantic model importable from here)."""
    if value is None:
        return None
    if ":" in str(value) and not value.exists():
        return load_model(str(value))
    return load(value)


def request_defaults(args: argparse.Namespace) -> RequestDefaults:
    return RequestDefaults(
        tools=_schema(args.tools, load_tools),
        response_format=_schema(args.response_format, load_response_format),
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
        retry=RetryPolicy(max_attempts=args.max_attempts, backoff_initial=args.backoff),
        transport=TransportOptions(timeout=args.timeout, max_response_mb=args.max_response_mb),
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
        cache=args.cache,
        cache_mode=args.cache_mode,
        metrics_port=args.metrics_port,
        metrics_linger=args.metrics_linger,
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
        fault_rates=args.sim_faults or {},
        deployment=None,
    )
