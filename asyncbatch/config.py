"""Frozen run configuration, validated when built. The defaults are defined here once; the CLI reads them.

The CLI is the only code that reads the environment; it builds these objects
and everything below it takes them as plain arguments. A library caller builds
them the same way::

    RunConfig(input_path="prompts.jsonl", endpoint=Endpoint(...), limits=Limits(tpm=1_200_000))
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import re
import string
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
import yarl

from .cost import Budget, Prices, lookup
from .errors import ConfigError, close_to, option
from .protocol import APIS, Api, unsupported
from .redact import header_secrets, url_secrets
from .structured.schemas import check_request_schemas, from_models, mark_strict

CacheMode = Literal["read-write", "read", "write", "off"]
MODES: tuple[str, ...] = get_args(CacheMode)
STATE_FILES = ("lock", "checkpoint", "ids", "sent", "batches", "metrics", "summary")
DEFAULT_API_VERSION = "2024-10-21"  # latest Azure OpenAI GA data-plane version
FSYNC_INTERVALS: dict[str, float | None] = {"always": 0.0, "periodic": 1.0, "never": None}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)
_CREDENTIAL = re.compile(r"[ -~]+")  # printable ASCII: what a key, a token or a header's value may hold


def credential_problem(value: str) -> str | None:
    """What is wrong with a key's, a token's or a header value's characters, in words that never quote it.

    The rule: printable ASCII only (the CLI first removes one line feed at the end: see ``cli/env.py``).
    A control character there would break the request, or let it carry a header of its own.
    """
    if not value:
        return "is empty"
    if _CREDENTIAL.fullmatch(value):
        return None
    if value.endswith("\r\n") and _CREDENTIAL.fullmatch(value[:-2]):
        return "ends with a carriage return and a line feed (\\r\\n, a Windows line ending)"
    bad = next(c for c in value if not " " <= c <= "~")
    named = {"\r": "a carriage return (\\r)", "\n": "a line feed (\\n)", "\t": "a tab"}.get(bad)
    words = named or ("a control character" if unicodedata.category(bad) == "Cc" else "a character outside ASCII")
    alone_at_end = len(value) > 1 and _CREDENTIAL.fullmatch(value[:-1])
    return f"holds {words}" + (" at its end" if alone_at_end else "")


def fingerprint(options: Mapping[str, Any]) -> dict[str, str]:
    """A short hash of each request-shaping option, so that a resume can name the one that changed."""
    return {
        name: hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()
        for name, value in sorted(options.items())
    }


@dataclass(frozen=True)
class StatePaths:
    """The names of a run's state files. ``checkpoint`` is in the directory unless given elsewhere."""

    dir: Path
    checkpoint: Path

    @classmethod
    def beside(cls, results: Path, checkpoint: Path | None = None) -> StatePaths:
        directory = results.with_name(results.name + ".state")
        return cls(directory, checkpoint or directory / "checkpoint")

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def ids(self) -> Path:
        return self.dir / "ids"

    @property
    def sent(self) -> Path:
        return self.dir / "sent"

    @property
    def batches(self) -> Path:
        return self.dir / "batches"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics"

    @property
    def summary(self) -> Path:
        return self.dir / "summary"

    def part(self, index: int) -> Path:
        return self.dir / f"part-{index}.jsonl"

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.jsonl")) if self.dir.is_dir() else []

    def files(self) -> list[Path]:
        return [self.dir / name for name in STATE_FILES] + [self.checkpoint, *self.parts()]


@dataclass(frozen=True, kw_only=True)
class Outputs:
    """A run's files: the store's section of the configuration (``RunConfig.outputs``; ``store/``).

    :param checkpoint: ``--checkpoint``, when the checkpoint is not in the state directory.
    :param fsync_interval: seconds between fsyncs of the outputs (0: every batch; None: only at exit).
    :param cache: the response cache the run opens (``--cache``), judged with the outputs before anything
        is written; ``cache_mode`` is how it is opened (``store/cache.py``).
    """

    results: Path
    errors: Path
    checkpoint: Path | None = None
    fsync_interval: float | None = 1.0
    cache: Path | None = None
    cache_mode: str = "read-write"

    @property
    def state(self) -> StatePaths:
        return StatePaths.beside(self.results, self.checkpoint)

    @property
    def files(self) -> list[Path]:
        return [self.results, self.errors]

    def identity(self) -> list[str]:
        """The outputs a checkpoint describes, as resolved paths."""
        return [str(path.resolve()) for path in self.files]


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where requests go and how they authenticate.

    :param kind: ``azure`` (AsyncAzureOpenAI: ``base_url`` is the resource endpoint) or
        ``openai`` (AsyncOpenAI: ``base_url`` ends in ``/v1`` for OpenAI itself).
    :param deployment: the Azure deployment, or the model for OpenAI-compatible servers.
    """

    kind: Literal["azure", "openai"]
    base_url: str
    deployment: str
    api_key: str = field(default="", repr=False)
    # Entra ID instead of a key: a callable returning a bearer token, sync or async (see ``auth.py``)
    token_provider: Callable[[], str | Awaitable[str]] | None = field(default=None, repr=False, compare=False)
    api_version: str = DEFAULT_API_VERSION
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # sent with every request (a gateway's key)
    # The HTTP proxy every request to this endpoint goes through (``http://[user:password@]host:port``), or None:
    # straight to it. The live requests and the SDK's (the Batch API) alike; the environment's is the CLI's to read.
    proxy: str | None = field(default=None, repr=False)
    simulated: bool = False

    @property
    def is_azure_v1(self) -> bool:
        """Azure's v1 API (``--api-version v1``): ``{endpoint}/openai/v1/...`` routes, no api-version."""
        return self.kind == "azure" and self.api_version == "v1"

    @property
    def identity(self) -> str:
        """What the response cache keys answers by: where requests go, never with what key.

        A simulator's address changes with every run, but it answers alike: it is named, not addressed.
        """
        where = "simulator" if self.simulated else self.base_url
        return f"{self.kind} {where} {self.deployment}"

    @property
    def secrets(self) -> list[str]:
        """Everything that must never appear in an output, a message or a traceback."""
        headers = [secret for name, value in self.headers.items() for secret in header_secrets(f"{name}: {value}")]
        return [self.api_key, *headers, *url_secrets(self.base_url), *url_secrets(self.proxy or "")]

    def __post_init__(self) -> None:
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(f"--header name {name!r} is not a valid HTTP header name")
            if problem := credential_problem(value):
                raise ConfigError(f"the value of --header {name!r} {problem}")
        if not self.base_url:
            raise ConfigError("the endpoint URL is empty")
        if not self.deployment:
            raise ConfigError("the deployment (model) name is empty")
        if bool(self.api_key) == (self.token_provider is not None):
            raise ConfigError("give the endpoint an api_key or a token_provider (Entra ID), exactly one")
        if self.api_key and (problem := credential_problem(self.api_key)):
            raise ConfigError(f"the endpoint's api_key {problem}")
        if self.proxy is not None and (problem := proxy_problem(self.proxy)):
            raise ConfigError(f"the endpoint's proxy {problem}")
        self._check_userinfo()

    def _check_userinfo(self) -> None:
        """A ``user:password@`` in the URL is sent as ``Authorization: Basic``: only where nothing else uses it."""
        if not url_secrets(self.base_url):
            return
        taken = (
            "Entra ID's bearer token" if self.token_provider is not None
            else "the API key (sent as a bearer token)" if self.kind == "openai" or self.is_azure_v1
            else "--header Authorization" if any(n.lower() == "authorization" for n in self.headers)
            else None
        )  # fmt: skip
        if taken:
            raise ConfigError(
                f"the endpoint URL carries a user name and password (user:***@), which are sent as an Authorization "
                f"header, and {taken} already takes that header. HINT: remove the user:password@ part of the URL"
            )


_URL_CHARACTERS = re.compile(r"[!-~]+")  # no space, no control character, ASCII: a URL's, percent-encoded or not
SOCKS = ("socks4", "socks4a", "socks5", "socks5h")


def proxy_problem(url: str) -> str | None:
    """What is wrong with a proxy's URL, if anything, in words that quote none of it (it may hold a password):
    what the HTTP clients could not send through, refused before anything is sent."""
    if not url:
        return "is empty"
    if not _URL_CHARACTERS.fullmatch(url):
        return (
            "holds a space, a control character or a character outside ASCII (in a user name or password, "
            "write those percent-encoded: %20 for a space, %C3%A9 for an e acute)"
        )
    if "://" not in url:
        return "has no scheme: write it http://host:port"
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number, or past 65535, raises
        yarl.URL(url)  # the live requests' reading: a host aiohttp could not read raises
        user = proxy_credentials(url)[1]
    except ValueError:  # UnicodeDecodeError too: a %-escape that is not UTF-8
        return "is not a URL that can be read (its host, its port, or a %-escape in its user name or password)"
    if parts.scheme in SOCKS:
        return f"is a {parts.scheme}:// URL: asyncbatch goes through HTTP proxies (http:// or https://), not SOCKS"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    if port == 0:
        return "names port 0: give the proxy's port, 1 to 65535"
    if ":" in user:
        return "has a user name with a ':' in it (%3A), which Basic authentication cannot carry"
    return None


def proxy_credentials(url: str) -> tuple[str, str, str | None]:
    """A proxy's URL without its user name and password; the user name; and the ``Proxy-Authorization`` value
    they make (``Basic``, of the percent-decoded ``user:password`` in UTF-8, as curl and httpx send it), or None.

    Both HTTP clients send this one header (aiohttp would encode a URL's in Latin-1, and fail on what that cannot
    hold). :raises ValueError: a %-escape that is not UTF-8.
    """
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    bare = urlunsplit(parts._replace(netloc=host))
    if not userinfo:
        return bare, "", None
    user, _, password = (unquote(part, errors="strict") for part in userinfo.partition(":"))
    pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return bare, user, f"Basic {pair}"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Client-side quota; None means "learn it from the server" (adaptive).

    :param shared_by: how many runs draw on the same quota at once (a distributed job's workers): until the
        server's headers show what the others send, each paces requests at its part of the RPM.
    """

    concurrency: int = 20
    tpm: int | None = None
    rpm: int | None = None
    shared_by: int = 1

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"{option('concurrency')} must be at least 1")
        if self.shared_by < 1:
            raise ConfigError(f"shared_by must be at least 1 (got {self.shared_by})")
        for name, value in (("--tpm", self.tpm), ("--rpm", self.rpm)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1")


@dataclass(frozen=True, kw_only=True)
class Patience:
    """How long admission waits (see ``RunConfig``'s ``max_wait`` and ``max_outage``)."""

    max_wait: float = 300.0
    max_outage: float = 1800.0


@dataclass(frozen=True, kw_only=True)
class TransportOptions:
    """How each request goes out (``live/transport.py``).

    :param timeout: seconds per attempt, a hard deadline (the answer's body included).
    :param max_response_mb: a larger answer (once decoded, gzip too) is not read: ``response_too_large``.
    :param pool_size: connections per deployment at most; None: the run's concurrency.
    """

    timeout: float = 60.0
    max_response_mb: float = 16.0
    pool_size: int | None = None

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1024 * 1024)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError(f"{option('timeout')} must be positive")
        if not self.max_response_mb > 0:
            raise ConfigError(f"{option('max_response_mb')} must be more than 0")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError(f"the transport's pool_size must be at least 1 (got {self.pool_size})")


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """One deployment of a pool (``--deployments``): its endpoint, its own quota, and its priority.

    :param name: its label in the display and in each result's ``deployment`` field.
    :param tpm: tokens per minute, and ``rpm`` requests per minute; with neither, its rate is learned.
    :param priority: lower is used first (provisioned before standard); equal priorities share the load.
    """

    name: str
    endpoint: Endpoint
    tpm: int | None = None
    rpm: int | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a deployment needs a name")
        Limits(tpm=self.tpm, rpm=self.rpm)  # the same checks as --tpm / --rpm


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """--batch-api: run the inputs as Azure Batch API jobs (half price; see ``batch/jobs.py``).

    :param live_fallback: run live the lines a job did not answer well (failed server-side, expired,
        cancelled, invalid output); False records them as failed.
    :param cancel: cancel this run's open jobs and stop.
    """

    max_lines_per_file: int = 100_000
    poll_interval: float = 60.0  # seconds between looks at the jobs; Azure asks for no more than once a minute
    live_fallback: bool = True
    cancel: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_lines_per_file <= 100_000:
            raise ConfigError(f"{option('max_lines_per_file')} must be 1 to 100000 (got {self.max_lines_per_file})")
        if not self.poll_interval > 0:
            raise ConfigError(f"{option('poll_interval')} must be more than 0 seconds (got {self.poll_interval:g})")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Per-input retries (``live/retry.py``). 429s never use up ``max_attempts`` (see ``admission/admission.py``)."""

    max_attempts: int = 6
    backoff_initial: float = 1.0  # exponential backoff with jitter, when the server says nothing
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"{option('max_attempts')} must be at least 1")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ConfigError(
                f"{option('backoff_initial', 'backoff')} must be between 0 and {self.backoff_max:g} seconds"
            )


@dataclass(frozen=True, kw_only=True)
class RequestDefaults:
    """How an input line becomes a request body. Checked when built: nothing invalid is ever sent.

    :param tools: tools in the chat-completions shape (``asyncbatch.load_tools`` reads a file).
    :param response_format: a ``json_schema`` response format (``asyncbatch.load_response_format``).
    :param strict: send ``strict: true``; the schemas must qualify, or ConfigError lists why not.

    ``tools`` (one or a list) and ``response_format`` may be Pydantic model classes: their JSON schemas
    are sent (strict-ready), and each answer is validated by the model itself too (``models``).
    """

    tools: list[dict[str, Any]] | Any | None = None
    response_format: dict[str, Any] | Any | None = None
    strict: bool = False
    feedback: bool = True  # on invalid output, tell the model what was wrong when asking again
    max_tokens: int | None = None
    temperature: float | None = None
    template: str | None = None
    system: str | None = None
    api: Api = "chat"  # what record lines become
    models: dict[str | None, Any] = field(default_factory=dict, repr=False, compare=False)  # filled in: see above

    def __post_init__(self) -> None:
        tools, response_format, models = from_models(self.tools, self.response_format)
        object.__setattr__(self, "tools", tools)
        object.__setattr__(self, "response_format", response_format)
        object.__setattr__(self, "models", {**self.models, **models})
        if self.api not in APIS:
            raise ConfigError(f"{option('api')} must be one of {', '.join(APIS)} (got {self.api!r})")
        if self.tools and self.response_format:
            raise ConfigError("give --tools or --response-format, not both")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"{option('max_tokens')} must be at least 1 (got {self.max_tokens})")
        if self.temperature is not None and not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise ConfigError(f"{option('temperature')} must be between 0 and 2 (got {self.temperature:g})")
        if self.template is not None and (problem := template_problem(self.template)):
            raise ConfigError(
                f"{option('template')} {self.template[:200]!r} cannot be used: {problem}. HINT: a field is written "
                "{name}, with the name of a field of the records; write {{ or }} for a brace itself"
            )
        check_request_schemas(self.tools, self.response_format, self.strict)
        if self.strict:
            tools, response_format = mark_strict(self.tools, self.response_format)
            object.__setattr__(self, "tools", tools)
            object.__setattr__(self, "response_format", response_format)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot render any record (``str.format_map`` over its fields), or None.

    Parsed once, here: a mistake in the template itself is every line's, so it is said before anything is sent.
    """
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return str(exc)
    for _, name, spec, conversion in fields:
        if name is not None and (not name or name[0].isdigit()):
            return f"{{{name}}} names no field (a record's fields are named, not numbered)"
        if conversion not in (None, "r", "s", "a"):
            return f"!{conversion} in {{{name}!{conversion}}} is not a conversion (!r, !s or !a)"
        if name and "." in re.sub(r"\[[^\]]*\]", "", name):
            # str.format would read a Python attribute (a method, or ``__class__``) and send its repr
            head, *parts = name.split(".")
            fix = head + "".join(f"[{part}]" for part in parts)
            return f"{{{name}}} reads an attribute: write {{{fix}}} for a nested field"
        if spec and "{" not in spec and not _any_formats(spec):
            return f"{{{name}:{spec}}}: {spec!r} is a format that fits no value (text or number)"
    return None


def _any_formats(spec: str) -> bool:
    """Whether ``spec`` formats some value a record can hold: text or a number."""
    for value in ("", 0, 0.5):
        try:
            format(value, spec)
        except (ValueError, TypeError):
            continue
        return True
    return False


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run. Paths may be str or Path; the outputs default to names beside the input, as on the CLI.

    :param output_path: results (default ``<input stem>.results.jsonl`` beside the input; for a table,
        ``<input name>.results.jsonl``, e.g. ``items.csv.results.jsonl``).
    :param errors_path: failures (default ``<output stem>.errors.jsonl``).
    :param checkpoint_path: the resume checkpoint (default ``<output>.state/checkpoint``; every other
        state file is in ``<output>.state/`` whatever this says).
    :param fsync: ``always``, ``periodic`` (at least once a second) or ``never`` (only at exit).
    :param retry_failed: run again the inputs recorded as failed (bad input lines are looked at again).
    :param accept_changes: resume although request options changed since results were written;
        the remaining lines run with the new options.
    :param grace: seconds in-flight requests get to finish after an interrupt.
    :param max_wait: seconds; a 429 asking to wait longer (Azure's answer when a quota is used up
        for the day), or 429s with no success for that long, stop the run (``stats.stopped``).
    :param max_outage: seconds the endpoint may be unreachable before the run stops (``stats.stopped``).
    :param prices: USD per 1M tokens (``asyncbatch.Prices``); default: the price table's for the deployment
        name, if it names a model there (``asyncbatch.cost.lookup``), else no cost is counted.
    :param max_cost: USD; stop (resumably, ``stats.stopped``) before this run's spend, plus what the
        requests in flight may cost, would pass it. Needs prices.
    :param transport: how each request goes out: its timeout, the largest answer read, the connection pool.
    :param batch: run the inputs as Batch API jobs (``BatchOptions``), then live what they left.
    :param deployments: a pool instead of ``endpoint``: each ``Deployment`` with its own quota; requests go
        to whichever can take them soonest, and fail over. ``limits.tpm``/``rpm`` must then be None.
    :param cache: a response cache (an SQLite file, shared by runs and processes): an answer it holds
        for the same request to the same endpoint is recorded without sending it (``store/cache.py``).
        Identical requests in one run are then sent once. ``cache_mode``: ``read-write``, ``read``,
        ``write`` (refresh: send, and replace what it holds) or ``off``.
    :param metrics_port: serve the run's counters as Prometheus text on 127.0.0.1 at this port (0: any
        free one, said in a message) for the run's life (``report/prometheus.py``); None: no endpoint.
    :param given_rows: the input holds rows given to ``asyncbatch.map`` (which sets it), in a file the caller
        never saw: messages name a row by its number (``row 8``), not by that file's path and line.
    :param metrics_linger: seconds; once the run has ended, the endpoint serves the final figures until a
        scrape has read them, or this long at most (0: it closes with the run).
    """

    input_path: Path
    endpoint: Endpoint | None = None
    output_path: Path = None  # type: ignore[assignment]  # filled in by __post_init__
    errors_path: Path = None  # type: ignore[assignment]
    checkpoint_path: Path | None = None
    limits: Limits = Limits()
    retry: RetryPolicy = RetryPolicy()
    transport: TransportOptions = TransportOptions()
    request: RequestDefaults = RequestDefaults()
    fsync: Literal["always", "periodic", "never"] = "periodic"
    retry_failed: bool = False
    accept_changes: bool = False
    grace: float = 5.0
    max_wait: float = Patience.max_wait  # a 429 asking to wait longer (an exhausted quota) stops the run, resumably
    max_outage: float = Patience.max_outage  # an outage longer than this stops the run, resumably
    prices: Prices | None = None
    max_cost: float | None = None
    deployments: tuple[Deployment, ...] = ()
    batch: BatchOptions | None = None
    cache: Path | None = None
    cache_mode: CacheMode = "read-write"
    metrics_port: int | None = None
    metrics_linger: float = 0.0
    given_rows: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.cache_mode not in MODES:
            raise ConfigError(f"{option('cache_mode')} must be one of {', '.join(MODES)} (got {self.cache_mode!r})")
        if self.cache is not None:
            set_(self, "cache", Path(self.cache))
        set_(self, "deployments", tuple(self.deployments))
        if self.transport.pool_size is None:  # a connection for each request in flight
            set_(self, "transport", dataclasses.replace(self.transport, pool_size=self.limits.concurrency))
        self._check_routes()
        if self.prices is None:
            set_(self, "prices", lookup(self.routes[0].endpoint.deployment))
        Budget(self.max_cost)  # checks the value
        if self.max_cost is not None and self.prices is None:
            raise ConfigError(
                f"--max-cost needs prices: the deployment name {self.routes[0].endpoint.deployment!r} is not in the "
                "price table, so give --price-in and --price-out (USD per 1M tokens)"
            )
        set_(self, "input_path", _file_path(self.input_path, "input_path", "input"))
        output = _file_path(self.output_path, "output_path", "output") if self.output_path is not None else None
        set_(self, "output_path", output or default_output(self.input_path))
        errors = _file_path(self.errors_path, "errors_path", "errors") if self.errors_path is not None else None
        set_(self, "errors_path", errors or default_errors(self.output_path))
        if self.checkpoint_path is not None:
            set_(self, "checkpoint_path", _file_path(self.checkpoint_path, "checkpoint_path", "checkpoint"))
        if self.fsync not in FSYNC_INTERVALS:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_INTERVALS)} (got {self.fsync!r})")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"{option('metrics_port')} must be a port number, 0 to 65535 (got {self.metrics_port})")
        for name in ("grace", "max_wait", "max_outage", "metrics_linger"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{option(name)} must be 0 or more seconds (got {getattr(self, name):g})")
        paths = {self.input_path.resolve(), self.output_path.resolve(), self.errors_path.resolve()}
        if len(paths) != 3:
            raise ConfigError("the input, output and errors files must be three different files")

    def _check_routes(self) -> None:
        if (self.endpoint is None) == (not self.deployments):
            raise ConfigError("give a RunConfig an endpoint or deployments (a pool), exactly one")
        if self.deployments and (self.limits.tpm or self.limits.rpm):
            raise ConfigError("with --deployments, give tpm and rpm per deployment in the file, not --tpm/--rpm")
        if self.deployments and self.batch is not None:
            raise ConfigError("--batch-api runs on one Global Batch deployment: give it, not --deployments")
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ConfigError(f"each deployment needs its own name (got {names})")
        for route in self.routes:  # --api responses on a classic api-version without the route
            if problem := unsupported(self.request.api, {}, route.endpoint.kind, route.endpoint.api_version):
                raise ConfigError(f"--api {self.request.api}: {problem}")

    @property
    def routes(self) -> tuple[Deployment, ...]:
        """The deployments requests go to: the pool, or the one endpoint with --tpm/--rpm."""
        if self.deployments:
            return self.deployments
        assert self.endpoint is not None
        endpoint = self.endpoint
        return (Deployment(name=endpoint.deployment, endpoint=endpoint, tpm=self.limits.tpm, rpm=self.limits.rpm),)

    @property
    def pooled(self) -> bool:
        return bool(self.deployments)

    @property
    def simulated(self) -> bool:
        return any(d.endpoint.simulated for d in self.routes)

    @property
    def quota(self) -> tuple[int | None, int | None]:
        """The run's tokens and requests per minute in all: a pool's sums, where every deployment gives one."""
        return pooled_quota([d.tpm for d in self.routes]), pooled_quota([d.rpm for d in self.routes])

    @property
    def fingerprint(self) -> dict[str, str]:
        """The request options a resume must keep. A pool's routing is not one: deployments may come and go."""
        routing = {} if self.pooled else {"deployment": self.routes[0].endpoint.deployment}
        options = {f.name: getattr(self.request, f.name) for f in dataclasses.fields(self.request) if f.compare}
        return fingerprint({**routing, **options})  # a model is its schema, already among them

    @property
    def outputs(self) -> Outputs:
        """The files this run writes: its section for the store (``store/``)."""
        return Outputs(
            results=self.output_path,
            errors=self.errors_path,
            checkpoint=self.checkpoint_path,
            fsync_interval=FSYNC_INTERVALS[self.fsync],
            cache=self.cache if self.cache_mode != "off" else None,
            cache_mode=self.cache_mode,
        )

    @property
    def patience(self) -> Patience:
        """How long admission waits out 429s and outages: its section (``admission/``)."""
        return Patience(max_wait=self.max_wait, max_outage=self.max_outage)

    @property
    def state(self) -> StatePaths:
        """The run's state directory, ``<output>.state/``, and the checkpoint's place."""
        return self.outputs.state


def pooled_quota(quotas: Sequence[int | None]) -> int | None:
    """A pool's quota: its deployments' together, when each gives one (else it is learned)."""
    return sum(q for q in quotas if q) if quotas and all(quotas) else None


def _file_path(value: str | Path, field: str, flag: str) -> Path:
    """A path that names a file: not empty, not a directory's name alone (``.``, ``/``), no NUL."""
    path = Path(value)
    if "\x00" in str(value) or not path.name or str(value).endswith(("/", "\\")):
        raise ConfigError(f"{option(field, flag)} must name a file (got {str(value)!r})")
    return path


def default_output(input_path: Path) -> Path:
    """``prompts.jsonl`` -> ``prompts.results.jsonl``; any other file keeps its suffix in the name
    (``items.csv`` -> ``items.csv.results.jsonl``), so ``items.csv`` and ``items.jsonl`` never share outputs."""
    name = input_path.stem if input_path.suffix.lower() == ".jsonl" else input_path.name
    return input_path.with_name(f"{name}.results.jsonl")


def default_errors(output_path: Path) -> Path:
    return output_path.with_name(f"{output_path.stem}.errors.jsonl")


_NESTED = {  # the option classes whose fields a caller may give by mistake among RunConfig's
    Limits: "limits=asyncbatch.Limits",
    RequestDefaults: "request=asyncbatch.RequestDefaults",
    RetryPolicy: "retry=asyncbatch.RetryPolicy",
    TransportOptions: "transport=asyncbatch.TransportOptions",
}


def check_options(options: Mapping[str, Any], *, call: str, own: Sequence[str], refused: Mapping[str, str]) -> None:
    """The ``RunConfig`` options a library call (``asyncbatch.map``...) was given by keyword, checked before
    anything runs: a misspelt one (``concurency=5``) is a ConfigError naming the closest keyword, not a
    TypeError from deep inside.

    :param own: the call's own keywords; ``refused``: RunConfig's it decides itself, with why.
    """
    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in refused]
    nested = {f.name: where for kind, where in _NESTED.items() for f in dataclasses.fields(kind)}
    for name in options:
        if name in refused:
            raise ConfigError(f"{name} is not an option of {call}(): {refused[name]}")
        if name in fields:
            continue
        meant = name if name in nested else close_to(name, [*own, *fields, *nested])
        if meant is None:
            hint = f"{call}() takes {', '.join(own)}, and RunConfig's options (help(asyncbatch.RunConfig))"
        elif meant in nested:
            kind = nested[meant].rpartition(".")[2]
            hint = f"{meant} is an option of {kind}, not of RunConfig: give {nested[meant]}({meant}=...)"
        else:
            hint = f"did you mean {meant}=?"
        raise ConfigError(f"{call}() got an unknown keyword {name!r}. HINT: {hint}")
