"""asyncbatch: run large batches of chat completions against Azure OpenAI at the quota's speed.

Library use::

    from asyncbatch import RunConfig, run
    stats = asyncio.run(run(config))
"""

__version__ = "0.1.0"

from .config import Endpoint, Limits, RequestDefaults, RetryPolicy, RunConfig  # noqa: E402
from .errors import AsyncBatchError, AttemptError, ConfigError, FatalAPIError  # noqa: E402
from .runner import run  # noqa: E402
from .stats import RunStats  # noqa: E402

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
