"""The first failures' verdict: are they every line's (a wrong schema, a parameter the server refuses), or a few lines'?

Before the run's first success, failures that may be every line's are held, not recorded: a ``Rejected``
(a 4xx of the request's own), ``InvalidOutput`` and ``Malformed`` (a 200 that is no answer: a proxy's login
page, a URL that is not the API's) that lasted every attempt. If the first ``SYSTEMATIC``
all fail the same way, the run stops with the server's message (or what the model answered instead) and
records none of them, as for a wrong key: after the fix, the same command runs everything. Until a verdict
only ``SYSTEMATIC`` lines ask the model again and no new line starts, so a schema the model never follows
costs that many lines' attempts. A refusal of one line's content (``LineRefused``) is never held: 40 prompts
the filter refuses say nothing of the 41st.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AttemptError, FatalAPIError, InvalidOutput, Malformed, Rejected
from ..protocol import Reply
from ..structured.validate import answered

SYSTEMATIC = 20  # the first this many lines failing the same way (a 4xx, or invalid output) stop the run
HELD = (Rejected, InvalidOutput, Malformed)  # failures that may be every line's


@dataclass(frozen=True, slots=True)
class Success:
    line_no: int
    record: dict[str, Any]
    reply: Reply | None = None  # the answer it was made of, when it was sent (the cache keeps it)


@dataclass(frozen=True, slots=True)
class Failure:
    line_no: int
    record: dict[str, Any]
    error: AttemptError


Outcome = Success | Failure


class Stopped(Exception):
    """The run is stopping: this job is abandoned before its next attempt, and runs again on resume."""


def _how(exc: AttemptError) -> tuple[object, ...]:
    """What makes two failures the same: the status and code, and for invalid output what was wrong."""
    return (exc.status, exc.code, exc.message if isinstance(exc, InvalidOutput) else None)


def _systematic(exc: AttemptError, lines: int) -> FatalAPIError:
    if isinstance(exc, InvalidOutput):
        return FatalAPIError(
            "invalid_output",
            f"the first {lines} lines all broke the schema the same way on every attempt, so every line "
            f"would: {exc.code}: {exc.message}. The model answered instead: {answered(exc.body)}. "
            "Nothing was recorded",
        )
    if isinstance(exc, Malformed):  # every line was answered so: what answers is not the API
        return FatalAPIError("malformed", f"the first {lines} answers were none of them the API's: {exc.message}")
    return FatalAPIError(
        "rejected",
        f"the first {lines} requests were all refused the same way, so every one would be: {exc.message}",
    )


class Verdict:
    """The run's first failures, held until a success (or ``SYSTEMATIC`` of them) says whose they are.

    :param stopping: asked when a line waiting for the verdict wakes: True abandons it (``Stopped``).
    """

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping
        self.any_success = False
        self.held: list[Failure] = []
        self.proven = asyncio.Event()  # set once the failures so far are known not to be every line's
        self.reasking = 0  # lines that asked the model again before ``proven``: at most SYSTEMATIC

    def succeeded(self) -> None:
        """A success: the endpoint and the schema work, whatever failed before."""
        self.any_success = True
        self.proven.set()

    def settle(self, outcome: Outcome) -> list[Outcome]:
        """The outcomes to record now.

        :raises FatalAPIError: the first ``SYSTEMATIC`` lines all failed the same way.
        """
        if self.any_success or not isinstance(outcome, Failure) or not isinstance(outcome.error, HELD):
            return [*self.release(), outcome]
        self.held.append(outcome)
        if len(self.held) < SYSTEMATIC:
            return []
        if len({_how(f.error) for f in self.held}) == 1:
            self.proven.set()  # the lines waiting to ask again wake, see the run stopping, and stop
            raise _systematic(outcome.error, len(self.held))
        return list(self.release())

    def release(self) -> list[Failure]:
        released, self.held = self.held, []
        self.proven.set()
        return released

    async def new_line(self) -> None:
        """Before a line's first attempt: while the first lines are all being asked again, wait for the verdict."""
        if self.reasking >= SYSTEMATIC:
            await self._verdict()

    async def reask(self) -> None:
        """Before a line asks the model again: only ``SYSTEMATIC`` may before the verdict, the others wait for it."""
        if self.proven.is_set():
            return
        if self.reasking < SYSTEMATIC:
            self.reasking += 1
            return
        await self._verdict()

    async def _verdict(self) -> None:
        await self.proven.wait()
        if self.stopping():
            raise Stopped  # the verdict: every line would fail the same way
