"""``asyncbatch cache stats|prune``: what a response cache holds, and dropping old answers."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..store.cache import ResponseCache
from .parser import EXIT_FATAL, EXIT_OK, build_cache_parser

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def cache_main(argv: Sequence[str]) -> int:
    args = build_cache_parser().parse_args(argv)
    try:
        if not os.path.lexists(args.path):
            raise ConfigError(f"{args.path} is not a cache: no such file")
        cache = ResponseCache(args.path, "read-write" if args.command == "prune" else "read")  # judged, or refused
        try:
            if args.command == "prune":
                removed = cache.prune(age(args.older_than))
                print(f"{args.path}: removed {removed:,} answers stored more than {args.older_than} ago")
            else:
                print(describe(args.path.name, cache.stats()))
        finally:
            cache.close()
    except ConfigError as exc:
        print(f"asyncbatch cache: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


def age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``600s`` -> seconds."""
    if not (match := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())):
        raise ConfigError(f"--older-than takes a number and a unit: 30d, 12h, 90m or 600s (got {text!r})")
    return float(match[1]) * UNITS[match[2]]


def describe(name: str, stats: dict[str, Any]) -> str:
    def when(value: float | None) -> str:
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds") if value else "-"

    return (
        f"{name}: {stats['entries']:,} answers, {stats['bytes'] / 1e6:.1f} MB on disk, "
        f"used {stats['hits']:,} times; oldest {when(stats['oldest'])}, newest {when(stats['newest'])}"
    )
