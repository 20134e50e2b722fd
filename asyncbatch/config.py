"""Frozen run configuration, validated when built.

The CLI is the only code that reads the environment; it builds these objects
and everything below it takes them as plain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

DEFAULT_API_VERSION = "2024-10-21"  # latest Azure OpenAI GA data-plane version


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where requests go and how they authenticate."""

    kind: Literal["azure", "openai"]
    base_url: str
    api_key: str = field(repr=False)
    deployment: str
    api_version: str = DEFAULT_API_VERSION
    simulated: bool = False

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError("the endpoint URL is empty")
        if not self.deployment:
            raise ConfigError("the deployment (model) name is empty")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Client-side quota; None means unlimited."""

    concurrency: int = 20
    tpm: int | None = None
    rpm: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        for name, value in (("--tpm", self.tpm), ("--rpm", self.rpm)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 6
    max_throttled: int = 30  # 429s do not use up max_attempts; this many end an input
    timeout: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")


@dataclass(frozen=True, kw_only=True)
class RequestDefaults:
    """How an input line becomes a request body."""

    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None  # {"type": "json_schema", "json_schema": {...}}
    strict: bool = False
    feedback: bool = True  # on invalid output, tell the model what was wrong when asking again
    max_tokens: int | None = None
    temperature: float | None = None
    template: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        if self.tools and self.response_format:
            raise ConfigError("give --tools or --response-format, not both")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    input_path: Path
    output_path: Path
    errors_path: Path
    endpoint: Endpoint
    limits: Limits = Limits()
    retry: RetryPolicy = RetryPolicy()
    request: RequestDefaults = RequestDefaults()
    checkpoint_path: Path | None = None  # default: <output>.checkpoint
    fsync_interval: float | None = 1.0  # 0: every batch; None: never (only at exit)
    retry_failed: bool = False
    grace: float = 5.0  # seconds in-flight requests get to finish after an interrupt

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_path or self.output_path.with_name(self.output_path.name + ".checkpoint")

    def __post_init__(self) -> None:
        paths = {self.input_path.resolve(), self.output_path.resolve(), self.errors_path.resolve()}
        if len(paths) != 3:
            raise ConfigError("the input, output and errors files must be three different files")
