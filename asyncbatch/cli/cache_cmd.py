"""``asyncbatch cache stats|prune``: what a response cache holds, and dropping old answers."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..errors import ConfigError
from ..store.cache import ResponseCache
from .parser import EXIT_FATAL, EXIT_OK, build_cache_parser

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def cache_main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """:param out: where the figures go: only counts, dates and the path the user gave, so never through the
    redactor (a short key in the environment, ``1234``, would mask a count that happens to hold it)."""
    args = build_cache_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if not os.path.lexists(args.path):
            raise ConfigError(f"{args.path} is not a cache: no such file")
        cache = ResponseCache(args.path, "read-write" if args.command == "prune" else "read")  # judged, or refused
        try:
            if args.command == "prune":
                removed = cache.prune(age(args.older_than))
                print(f"{args.path}: removed {removed:,} answers stored more than {args.older_than} ago", file=out)
            else:
                print(describe(str(args.path), cache.stats()), file=out)
        finally:
            cache.close()
    except ConfigError as exc:
        print(f"asyncbatch cache: error: {as_argument(str(exc), str(args.path))}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


def as_argument(message: str, path: str) -> str:
    """A cache's message in this command's words: here its path is an argument, not ``--cache``'s value."""
    message = message.replace(f"--cache {path}", path)
    message = message.replace(", or run without --cache", "")
    message = message.replace("give --cache a path of its own (a new file is created)", "give the path of a cache")
    message = message.replace(", and --cache-mode read adds nothing to it", ": no cache yet")
    return message.replace("give --cache another path", "give the path of another cache")


def age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``600s`` -> seconds."""
    if not (match := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())):
        raise ConfigError(f"--older-than takes a number and a unit: 30d, 12h, 90m or 600s (got {text!r})")
    return float(match[1]) * UNITS[match[2]]


def describe(name: str, stats: dict[str, Any]) -> str:
    def when(value: float | None) -> str:
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds") if value else "-"

    facts = {
        "cache": name,
        "answers": f"{stats['entries']:,}",
        "on disk": f"{stats['bytes'] / 1e6:.1f} MB",
        "used": f"{stats['hits']:,} times",
        "oldest": when(stats["oldest"]),
        "newest": when(stats["newest"]),
    }
    return "\n".join(f"{label + ':':<9} {value}" for label, value in facts.items())
