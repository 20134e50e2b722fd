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

import asyncio
from typing import Any

__version__ = "0.1.0"

from .config import BatchOptions, Deployment, Endpoint, Limits, RequestDefaults, RetryPolicy, RunConfig
from .cost import Prices
from .errors import AsyncBatchError, AttemptError, ConfigError, FatalAPIError, OutputError
from .lock import AlreadyRunning
from .progress import Reporter
from .runner import Interrupt, restart, run
from .schemas import load_response_format, load_tools, strict_problems
from .simulator import SimConfig, simulated
from .stats import RunStats


def run_sync(config: RunConfig, **options: Any) -> RunStats:
    """``run`` for scripts without an event loop of their own (in a notebook, ``await run(...)`` instead)."""
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
    "Limits",
    "OutputError",
    "Prices",
    "Reporter",
    "RequestDefaults",
    "RetryPolicy",
    "RunConfig",
    "RunStats",
    "SimConfig",
    "__version__",
    "load_response_format",
    "load_tools",
    "restart",
    "run",
    "run_sync",
    "simulated",
    "strict_problems",
]
