"""asyncbatch: run large batches of chat completions against Azure OpenAI at the quota's speed.

Library use::

    from asyncbatch import RunConfig, run
    stats = asyncio.run(run(config))
"""

__version__ = "0.1.0"

from .config import Endpoint, Limits, RequestDefaults, RetryPolicy, RunConfig
from .errors import AsyncBatchError, AttemptError, ConfigError, FatalAPIError
from .runner import run
from .stats import RunStats

__all__ = [
    "AsyncBatchError",
    "AttemptError",
    "ConfigError",
    "Endpoint",
    "FatalAPIError",
    "Limits",
    "RequestDefaults",
    "RetryPolicy",
    "RunConfig",
    "RunStats",
    "__version__",
    "run",
]
