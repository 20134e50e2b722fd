"""Exceptions, grouped by how a caller reacts to them.

    AsyncBatchError
    ├── ConfigError        bad options or environment: fix and re-run (exit 2)
    │   ├── AlreadyRunning another run is writing the same outputs (exit 2)
    │   └── InputError     the input file cannot be read (past a row): what was recorded stays; fix it, re-run (exit 2)
    ├── FatalAPIError      the endpoint refuses every request (auth, deployment, unreachable, a redirect): exit 2
    ├── OutputError        an output file cannot be written (permissions, disk full): exit 2
    └── AttemptError       one HTTP attempt failed; its subclass says how the engine reacts (below)

A bad input line is not an exception: it becomes an error *line* and the run
carries on (see ``input.reader.BadLine``). Only a file that cannot be read on
from some point is one (``InputError``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class AsyncBatchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AsyncBatchError):
    """The run cannot start as configured."""


class InputError(ConfigError):
    """The input file cannot be read, whole or past a row (a read error, a CSV quote that never closes).

    Before anything is sent it refuses the run; during one, the run stops cleanly once the answers in
    flight are recorded. Either way the message names the file and what to do: fix the file, then run
    the same command again, which resumes where it stopped.
    """


# How the library's hints name a run option; the command line puts its flag in their place (``cli_words``).
RESTART = "restart=True (or asyncbatch.restart(config))"
ACCEPT_CHANGES = "accept_changes=True"
RETRY_FAILED = "retry_failed=True"
OUTPUT_PATH = "output_path="  # followed by a file name
_FLAGS = {RESTART: "--restart", ACCEPT_CHANGES: "--accept-changes", RETRY_FAILED: "--retry-failed", OUTPUT_PATH: "-o "}


def option(field: str, flag: str | None = None) -> str:
    """A configuration option as an error names it: the library's field, then the command line's flag."""
    return f"{field} (--{flag or field.replace('_', '-')})"


def cli_words(text: str) -> str:
    """A library message as the command line says it: flags for the options it names."""
    for words, flag in _FLAGS.items():
        text = text.replace(words, flag)
    return text


class FatalAPIError(AsyncBatchError):
    """The endpoint rejects the run as a whole.

    :param kind: ``authentication`` (401/403), ``not_found`` (404: deployment or URL),
        ``unreachable`` (connection errors or timeouts on every attempt), ``redirect`` (a 3xx,
        never followed), or ``rejected`` (the same 4xx on every one of the first requests).
    """

    def __init__(self, kind: str, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.cause = cause  # ``unreachable``: the last attempt's code (``timeout``, ``connection_error``)


class StopRun(AsyncBatchError):
    """Raised inside a run when it must stop early but resumably (the endpoint has been down longer
    than --max-outage, the quota is exhausted). ``run`` catches it, stops like an interrupt and
    returns its stats with ``stopped`` set to this message; it never reaches the caller."""


class OutputError(AsyncBatchError):
    """An output file cannot be written; what was written before stays, and a re-run resumes."""


class AttemptError(AsyncBatchError):
    """One attempt failed. Immutable: a changed reaction is a new error, made with ``but``.

    The subclass says how the engine reacts: ``RateLimited`` (429: admission waits, no attempt is
    used up), ``Outage`` (no answer, a timeout, a 5xx: retried, and the breaker counts it),
    ``Refused`` (a 4xx retrying cannot fix: recorded at once), ``LineRefused`` (this line's content
    refused: recorded, and never taken as every line's), ``EndpointRefused`` (the key or the deployment
    refused: never recorded; the run stops), ``InvalidOutput`` (an answer that breaks the schema: asked
    again with ``feedback``), ``Malformed`` (a 200 that is not an answer: asked again), ``Redirected``
    (a 3xx: the run stops). The base class is a failure of no particular kind.

    :param code: a short machine-readable reason (``http_429``, ``timeout``...).
    :param status: the HTTP status, when a response arrived.
    :param body: the decoded response body, when there was one.
    :param retry_after: seconds the server asked us to wait, if it said (0: go again at once).
    :param retryable: whether another attempt may help (default: the subclass's).
    :param feedback: messages to append to the conversation on the next attempt.
    :param held: admission holds the next attempt (429, outage): this one uses up no attempt.
    :param token: Entra ID: the bearer token the request was sent with.
    """

    RETRYABLE: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "status", "body", "retry_after", "retryable", "request_id", "feedback", "held", "token"
    )  # fmt: skip

    code: str
    message: str
    status: int | None
    body: Any
    retry_after: float | None
    retryable: bool
    request_id: str | None
    feedback: list[dict[str, Any]] | None
    held: bool
    token: str | None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        feedback: list[dict[str, Any]] | None = None,
        held: bool = False,
        token: str | None = None,
    ) -> None:
        super().__init__(message)
        given = {"code": code, "message": message, "status": status, "body": body, "retry_after": retry_after}
        given |= {"retryable": self.RETRYABLE if retryable is None else retryable, "request_id": request_id}
        given |= {"feedback": feedback, "held": held, "token": token}
        for name, value in given.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN:
            raise AttributeError(f"an AttemptError is immutable: make another with .but({name}=...)")
        super().__setattr__(name, value)

    def but(self, **changes: Any) -> AttemptError:
        """The same failure, of the same kind, with ``changes`` (``held=True``, ``retry_after=0.0``...)."""
        fields = {name: getattr(self, name) for name in self._FIELDS}
        return type(self)(self.code, self.message, **(fields | changes))


_FROZEN = frozenset(("code", "message", *AttemptError._FIELDS))


class RateLimited(AttemptError):
    """A 429: admission closes the gate for everyone; the attempt is held, not counted."""

    RETRYABLE = True


class Outage(AttemptError):
    """No answer, a timeout, a 408/409 or a 5xx: worth another attempt; a run of them opens the breaker."""

    RETRYABLE = True


class Refused(AttemptError):
    """A 4xx (or an answer too large) that the same request would get again: recorded, not retried."""


class LineRefused(Refused):
    """This line's content refused (the content filter, a prompt past the context window, the model's own
    refusal): a failure of that line alone, never a sign that every line would fail (``attempts.settle``)."""


class EndpointRefused(AttemptError):
    """The endpoint refuses the credentials (401, 403) or has no such deployment (404): no line's fault.

    Never recorded as a line's failure: once a few answers in a row agree (at once, before any success),
    the run stops and the line waits for the resume; a pool sets that deployment aside.
    """


class InvalidOutput(AttemptError):
    """An answer whose output breaks its schema: asked again, telling the model what was wrong."""

    RETRYABLE = True


class Malformed(AttemptError):
    """A 200 whose body is not an answer of its API (a stream chunk, a broken shape): asked again."""

    RETRYABLE = True


class Redirected(AttemptError):
    """A 3xx. Never followed, since the key and headers would go with it: the endpoint is wrong, and the run
    stops (a pool sets that deployment aside). ``message`` names the Location, without its userinfo."""
