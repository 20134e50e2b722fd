"""Exceptions, grouped by how a caller (or the engine) reacts to them: the class says it all, no flag does.

    AsyncBatchError
    ├── ConfigError           bad options or environment: fix and re-run (exit 2)
    │   ├── AlreadyRunning    another run is writing the same outputs (exit 2; ``store/lock.py``)
    │   └── InputError        the input cannot be read on past a row: what was recorded stays; fix it, re-run (exit 2)
    ├── FatalAPIError         the endpoint refuses the run as a whole (the key, the deployment, unreachable, a
    │                         redirect, the same refusal of every first line): exit 2
    ├── StopRun               stop early but resumably (an outage past --max-outage, an exhausted quota, --max-cost):
    │                         caught by the run, which stops like an interrupt (exit 75); never reaches a caller
    ├── OutputError           an output file cannot be written (permissions, disk full): exit 2
    └── AttemptError          one HTTP attempt failed; how the engine reacts is its class:
        ├── RateLimited       429: admission closes the gate for everyone; the attempt uses up nothing
        ├── Transient         408, 409, ``x-should-retry: true``, a response failed or cancelled: asked again
        │   └── Outage        a 5xx, or an answer cut short: asked again; a run of them opens the breaker
        │       └── NoAnswer  no HTTP answer at all (refused, reset, DNS, TLS, a timeout): may mean unreachable
        ├── Malformed         a 200 that is not an answer of its API: asked again
        ├── InvalidOutput     output that breaks its schema: asked again at once, telling the model what was wrong
        ├── Refused           the same request would fail the same way (too large, cut at max_tokens): recorded
        │   ├── Unkept        a paid answer nested too deep to keep: recorded with its usage, which counts
        │   ├── Rejected      a 4xx of the request's own: may be every line's, so held until a first success
        │   └── LineRefused   this line's content (the content filter, the context window): never every line's
        ├── EndpointRefused   the endpoint's refusal, never a line's: the run stops (a pool sets it aside)
        │   ├── Unauthorized  401: Entra ID first fetches a fresh token
        │   ├── Forbidden     403: the key or the identity lacks the right
        │   ├── NotFound      404: no such deployment (or a wrong URL)
        │   ├── ProxyRefused  407: the proxy refuses its credentials (answering the request or its tunnel)
        │   └── ProxyForbidden  403 to the tunnel's CONNECT: the proxy does not let requests to that host through
        └── Redirected        a 3xx, never followed: the endpoint is wrong, and the run stops

A status becomes one of these in ``protocol.py`` alone (``protocol.error_class``). A bad input line is
not an exception: it becomes an error *line* and the run carries on (see ``input.reader.BadLine``).
Only a file that cannot be read on from some point is one (``InputError``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
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
RESTART = "run(config, restart=True) (or asyncbatch.restart(config))"  # restart is run's, not RunConfig's
ACCEPT_CHANGES = "accept_changes=True"
RETRY_FAILED = "retry_failed=True"
OUTPUT_PATH = "output_path="  # followed by a file name
TEMPLATE_GIVEN = 'template="'  # followed by an example template and its closing quote
TEMPLATE = "template="
PAST_MAX_WAIT = "longer than max_wait"
PAST_MAX_OUTAGE = "longer than max_outage"
_FLAGS = {
    RESTART: "--restart",
    ACCEPT_CHANGES: "--accept-changes",
    RETRY_FAILED: "--retry-failed",
    OUTPUT_PATH: "-o ",
    TEMPLATE_GIVEN: '--template "',  # before TEMPLATE, which it begins with
    TEMPLATE: "--template",
    PAST_MAX_WAIT: "longer than --max-wait",
    PAST_MAX_OUTAGE: "longer than --max-outage",
}


def option(field: str, flag: str | None = None) -> str:
    """A configuration option as an error names it: the library's field, then the command line's flag."""
    return f"{field} (--{flag or field.replace('_', '-')})"


def cli_words(text: str) -> str:
    """A library message as the command line says it: flags for the options it names."""
    for words, flag in _FLAGS.items():
        text = text.replace(words, flag)
    return text


def close_to(word: str, known: Sequence[str]) -> str | None:
    """The one of ``known`` that ``word`` most likely meant, misspelled (``--concurency``, ``exprot``); else None."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    return close[0] if close else None


class FatalAPIError(AsyncBatchError):
    """The endpoint rejects the run as a whole.

    :param kind: ``authentication`` (401/403), ``not_found`` (404: deployment or URL),
        ``proxy_authentication`` (407: the proxy refuses the credentials in its URL), ``proxy_forbidden`` (403 to
        an ``https://`` endpoint's tunnel: the proxy does not let requests to its host through), ``unreachable``
        (connection errors or timeouts on every attempt), ``redirect`` (a 3xx, never followed), ``rejected``
        (the same 4xx on every one of the first requests), or ``malformed`` (the Batch API answered with what
        is not a job object).
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
    """One attempt failed. Immutable: the same failure with more to say is a new one, made with ``but``.

    The base class is a failure of no particular kind (a Batch API line left unanswered, say).

    :param code: a short machine-readable reason (``http_429``, ``timeout``...).
    :param status: the HTTP status, when a response arrived.
    :param body: the decoded response body, when there was one.
    :param retry_after: seconds the server asked us to wait, if it said (0: go again at once).
    :param feedback: messages to append to the conversation on the next attempt.
    :param token: Entra ID: the bearer token the request was sent with.
    """

    _FIELDS: ClassVar[tuple[str, ...]] = ("status", "body", "retry_after", "request_id", "feedback", "token")

    code: str
    message: str
    status: int | None
    body: Any
    retry_after: float | None
    request_id: str | None
    feedback: list[dict[str, Any]] | None
    token: str | None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        feedback: list[dict[str, Any]] | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(message)
        given = {"code": code, "message": message, "status": status, "body": body, "retry_after": retry_after}
        given |= {"request_id": request_id, "feedback": feedback, "token": token}
        for name, value in given.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN:
            raise AttributeError(f"an AttemptError is immutable: make another with .but({name}=...)")
        super().__setattr__(name, value)

    def but(self, **changes: Any) -> AttemptError:
        """The same failure, of the same kind, with ``changes`` (``request_id=...``, ``token=...``)."""
        fields = {name: getattr(self, name) for name in self._FIELDS}
        return type(self)(self.code, self.message, **(fields | changes))


_FROZEN = frozenset(("code", "message", *AttemptError._FIELDS))


class RateLimited(AttemptError):
    """A 429: admission closes the gate for everyone, and the attempt uses up none of the line's."""


class Transient(AttemptError):
    """The server could not answer this time (a 408, a 409, ``x-should-retry: true``, a response that failed or was
    cancelled): asked again, after what the server asked for or a backoff."""


class Outage(Transient):
    """A 5xx, or an answer whose body never came whole: the endpoint is failing; a run of them opens the breaker."""


class NoAnswer(Outage):
    """No HTTP answer at all (refused, reset, DNS, TLS, a timeout): the only failure that can mean "unreachable"."""


class Malformed(AttemptError):
    """A 200 whose body is not an answer of its API (a stream chunk, a broken shape): asked again."""


class InvalidOutput(AttemptError):
    """An answer whose output breaks its schema: asked again at once, telling the model what was wrong
    (``feedback``). Before the first success it may be every line's (``live/verdict.py``)."""


class Refused(AttemptError):
    """The same request would fail the same way (an answer too large or too deep, cut at max_tokens): recorded."""


class Unkept(Refused):
    """A 2xx answer, paid for, nested too deep to keep as a record: recorded with its usage (``body``), which
    counts in the run's tokens, its cost and the --max-cost budget like any answer's; never asked again."""


class Rejected(Refused):
    """A 4xx of the request's own (a parameter, a schema the server refuses): recorded; but before the first
    success it may be every line's, so it is held until a verdict (``live/verdict.py``)."""


class LineRefused(Refused):
    """This line's content refused (the content filter, a prompt past the context window, the model's own
    refusal): a failure of that line alone, never a sign that every line would fail."""


class EndpointRefused(AttemptError):
    """The endpoint refuses the credentials or has no such deployment: no line's fault.

    Never recorded as a line's failure: once a few answers in a row agree (at once, before any success),
    the run stops and the line waits for the resume; a pool sets that deployment aside. ``KIND`` is the
    ``FatalAPIError.kind`` it ends in.
    """

    KIND: ClassVar[str] = "authentication"


class Unauthorized(EndpointRefused):
    """A 401: the key or the token is not accepted. With Entra ID a fresh token is fetched first."""


class Forbidden(EndpointRefused):
    """A 403: the key or the identity has no right to the deployment."""


class NotFound(EndpointRefused):
    """A 404: no such deployment, or a wrong endpoint URL."""

    KIND = "not_found"


class ProxyRefused(EndpointRefused):
    """A 407: the proxy between us and the endpoint wants credentials, or refuses those in its URL."""

    KIND = "proxy_authentication"


class ProxyForbidden(EndpointRefused):
    """A 403 to an ``https://`` endpoint's tunnel (its CONNECT): the proxy does not let requests to that host through,
    whoever asks. (A 403 answering a request is the endpoint's, ``Forbidden``: a proxy's cannot be told apart.)"""

    KIND = "proxy_forbidden"


class Redirected(AttemptError):
    """A 3xx. Never followed, since the key and headers would go with it: the endpoint is wrong, and the run
    stops (a pool sets that deployment aside). ``message`` names the Location, without its userinfo."""


# The failures another attempt may fix: asked again (up to --max-attempts), live or after a Batch API job.
ASKED_AGAIN: tuple[type[AttemptError], ...] = (Transient, Malformed, InvalidOutput)
