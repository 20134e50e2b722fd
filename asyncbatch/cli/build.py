"""Parsed arguments -> RunConfig and its sections: request defaults, Batch API options, the simulator's config."""

from __future__ import annotations

import argparse
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
from .parser import sections


def request_defaults(args: argparse.Namespace) -> RequestDefaults:
    return RequestDefaults(**sections(args)["request"])


def build_config(
    args: argparse.Namespace, endpoint: Endpoint | None, deployments: tuple[Deployment, ...] = ()
) -> RunConfig:
    """Every section from the options' table (``parser.OPTIONS``); the prices from the deployment's name."""
    made = sections(args)
    model = endpoint.deployment if endpoint is not None else deployments[0].endpoint.deployment
    return RunConfig(
        input_path=args.input,
        endpoint=endpoint,
        deployments=deployments,
        batch=batch_options(args, made["batch"]),
        limits=Limits(**made["limits"]),
        retry=RetryPolicy(**made["retry"]),
        transport=TransportOptions(**made["transport"]),
        request=RequestDefaults(**made["request"]),
        prices=resolve(model, args.price_in, args.price_out, args.price_cached),
        **made[""],
    )


def batch_options(args: argparse.Namespace, given: dict[str, Any] | None = None) -> BatchOptions | None:
    options = BatchOptions(**(sections(args)["batch"] if given is None else given))
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
