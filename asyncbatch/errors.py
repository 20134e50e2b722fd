"""Exceptions, grouped by how a caller reacts to them.

    AsyncBatchError
    ├── ConfigError        bad options or environment: fix and re-run (exit 2)
    │   └── AlreadyRunning another run is writing the same outputs (exit 2)
    ├── FatalAPIError      the endpoint refuses every request (auth, deployment, unreachable): exit 2
    ├── OutputError        an output file cannot be written (permissions, disk full): exit 2
    └── AttemptError       one HTTP attempt failed; ``retryable`` says whether to try again

Input problems are not exceptions: a bad line becomes an error *line* and the
run carries on (see ``inputs.BadLine``).
"""

from __future__ import annotations

from typing import Any


class AsyncBatchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AsyncBatchError):
    """The run cannot start as configured."""


class FatalAPIError(AsyncBatchError):
    """The endpoint rejects the run as a whole.

    :param kind: ``authentication`` (401/403), ``not_found`` (404: deployment or URL),
        ``unreachable`` (connection errors or timeouts on every attempt), or
        ``rejected`` (the same 4xx on every one of the first requests).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StopRun(AsyncBatchError):
    """Raised inside a run when it must stop early but resumably (the endpoint has been down longer
    than --max-outage, the quota is exhausted). ``run`` catches it, stops like an interrupt and
    returns its stats with ``stopped`` set to this message; it never reaches the caller."""


class OutputError(AsyncBatchError):
    """An output file cannot be written; what was written before stays, and a re-run resumes."""


class AttemptError(AsyncBatchError):
    """One attempt failed.

    :param code: a short machine-readable reason (``http_429``, ``timeout``...).
    :param status: the HTTP status, when a response arrived.
    :param body: the decoded response body, when there was one.
    :param retry_after: seconds the server asked us to wait, if it said.

    ``feedback`` holds messages to append to the conversation on the next
    attempt (the model's invalid answer and what was wrong with it).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
        retryable: bool = False,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.retryable = retryable
        self.request_id = request_id
        self.feedback: list[dict[str, Any]] | None = None
        self.held = False  # admission holds the next attempt (429, outage): this one does not count
        self.token: str | None = None  # Entra ID: the bearer token the request was sent with
