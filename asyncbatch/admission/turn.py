"""Whose turn it is to be admitted: one request at a time, retries before new ones, else first come first served."""

from __future__ import annotations

import asyncio
import heapq
import itertools

RETRY, NEW = 0, 1  # priorities: a request the server has already refused once goes before a new one


class Turn:
    """A fair lock with two priorities.

    Admission looks at its gate and meters for one request at a time, in arrival order, so that
    nothing overtakes a request already waiting. A retry goes before new requests; and a new
    request that holds the turn while the server refuses (a round of 429s with no hint) steps
    aside for a waiting retry (``step_aside``), so that the probe the round sends is a request
    the server has refused once already, not a new one it may refuse for being new.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._holder: int | None = None  # the arrival number of whoever holds the turn
        self._seq = itertools.count()

    def ticket(self) -> int:
        """A place in the arrival order, kept when stepping aside."""
        return next(self._seq)

    async def wait(self, priority: int, seq: int) -> None:
        """Until it is this caller's turn. Cancelled meanwhile, it holds nothing (the turn passes on)."""
        if self._holder is None and not self._queue:
            self._holder = seq
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, seq, future))
        try:
            await future
        except asyncio.CancelledError:
            self.release(seq)  # if it was granted just as it was cancelled, pass it on
            raise

    def release(self, seq: int) -> None:
        """``seq`` is done with the turn (if it holds it): the next waiter, retries first, then by arrival."""
        if self._holder != seq:
            return
        self._holder = None
        while self._queue:
            _, waiter, future = heapq.heappop(self._queue)
            if not future.done():
                self._holder = waiter
                future.set_result(None)
                return

    def retry_waiting(self) -> bool:
        return any(priority == RETRY and not future.done() for priority, _, future in self._queue)
