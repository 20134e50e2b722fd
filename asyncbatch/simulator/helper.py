"""The simulator for library callers: an async context manager that yields an ``Endpoint``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from ..config import Endpoint
from .server import serve
from .settings import SimConfig


@asynccontextmanager
async def simulated(config: SimConfig | None = None, **options: Any) -> AsyncIterator[Endpoint]:
    """Serve the simulator on 127.0.0.1 in this event loop for as long as the block runs.

    ``options`` are ``SimConfig`` fields (``latency=0.05``, ``tpm=...``, ``fault_rates=...``)::

        async with asyncbatch.simulated(latency=0.05) as endpoint:
            await asyncbatch.run(asyncbatch.RunConfig(input_path="in.jsonl", endpoint=endpoint))
    """
    config = replace(config or SimConfig(), **options)
    if config.api_key == SimConfig().api_key:
        config = replace(config, api_key="sim-" + os.urandom(8).hex())
    async with serve(config) as (url, _):
        yield Endpoint(
            kind="azure",
            base_url=url,
            api_key=config.api_key,
            deployment=config.deployment or "simulated-deployment",
            simulated=True,
        )
