"""asyncbatch: run large batches of chat completions against Azure OpenAI at the quota's speed, exactly once.

Library use (from a script; in a notebook, ``await asyncbatch.run(config)`` directly)::

    import asyncio, asyncbatch

    async def main() -> None:
        async with asyncbatch.simulated(latency=0.05) as endpoint:
            stats = await asyncbatch.run(asyncbatch.RunConfig(input_path="in.jsonl", endpoint=endpoint))

    asyncio.run(main())

Exceptions ``run`` raises (see ``errors``): ConfigError (AlreadyRunning: another run holds
the outputs), FatalAPIError, OutputError, all AsyncBatchError. A run that stops early but
resumably (an outage past max_outage, an exhausted quota) returns its stats with ``stopped`` set.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported when first used, so ``python -m asyncbatch`` catches Ctrl-C and SIGTERM from its first instant.
_EXPORTS = {
    "BatchOptions": "config",
    "Deployment": "config",
    "Endpoint": "config",
    "Limits": "config",
    "RequestDefaults": "config",
    "RetryPolicy": "config",
    "RunConfig": "config",
    "TransportOptions": "config",
    "Prices": "cost",
    "AsyncBatchError": "errors",
    "AttemptError": "errors",
    "ConfigError": "errors",
    "FatalAPIError": "errors",
    "OutputError": "errors",
    "AlreadyRunning": "store.lock",
    "Reporter": "display.reporters",
    "RichReporter": "display.reporters",
    "PlainReporter": "display.reporters",
    "JsonReporter": "display.reporters",
    "NotebookReporter": "display.reporters",
    "map": "frames",
    "map_sync": "frames",
    "Interrupt": "runner",
    "restart": "runner",
    "run": "runner",
    "load_response_format": "structured.schemas",
    "load_tools": "structured.schemas",
    "strict_problems": "structured.schemas",
    "SimConfig": "simulator",
    "simulated": "simulator",
    "RunStats": "stats",
}

if TYPE_CHECKING:
    from .config import (
        BatchOptions,
        Deployment,
        Endpoint,
        Limits,
        RequestDefaults,
        RetryPolicy,
        RunConfig,
        TransportOptions,
    )
    from .cost import Prices
    from .display.reporters import JsonReporter, NotebookReporter, PlainReporter, Reporter, RichReporter
    from .errors import AsyncBatchError, AttemptError, ConfigError, FatalAPIError, OutputError
    from .frames import map, map_sync
    from .runner import Interrupt, restart, run
    from .simulator import SimConfig, simulated
    from .stats import RunStats
    from .store.lock import AlreadyRunning
    from .structured.schemas import load_response_format, load_tools, strict_problems


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asyncbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def run_sync(config: RunConfig, **options: Any) -> RunStats:
    """``run`` for scripts without an event loop of their own (in a notebook, ``await run(...)`` instead)."""
    import asyncio

    from .runner import run

    return asyncio.run(run(config, **options))


__all__ = [
    "AlreadyRunning",
    "AsyncBatchError",
    "AttemptError",
    "BatchOptions",
    "ConfigError",
    "Deployment",
    "Endpoint",
    "FatalAPIError",
    "Interrupt",
    "JsonReporter",
    "Limits",
    "NotebookReporter",
    "OutputError",
    "PlainReporter",
    "Prices",
    "Reporter",
    "RequestDefaults",
    "RetryPolicy",
    "RichReporter",
    "RunConfig",
    "RunStats",
    "SimConfig",
    "TransportOptions",
    "__version__",
    "load_response_format",
    "load_tools",
    "map",
    "map_sync",
    "restart",
    "run",
    "run_sync",
    "simulated",
    "strict_problems",
]
