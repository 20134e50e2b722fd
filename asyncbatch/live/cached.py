"""The response cache in front of each job, and the single flight: identical requests in one run are sent once.

A stored answer for the same key that the current schema takes becomes the line's result: no admission,
budget or request is involved. Otherwise the first job with a key is sent, and the others with the same key
await its answer (one future per key); a success is stored. The Batch API phase asks the same two questions
(``result`` and ``keep``). Exactly-once is the store's, as always: the cache only supplies answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from ..cost import Prices
from ..errors import AttemptError
from ..input.requests import Job
from ..protocol import TooDeep, read_json
from ..records import result_record
from ..stats import RunStats
from ..store.cache import Entry, ResponseCache, cache_key
from ..structured.validate import OutputCheck
from .verdict import Outcome, Success


class Cached:
    """One run's way to the response cache.

    :param identity: each deployment's ``Endpoint.identity``: what an answer is keyed by, besides the request.
    """

    def __init__(
        self, cache: ResponseCache, identity: Sequence[str], check: OutputCheck, stats: RunStats, prices: Prices | None
    ) -> None:
        self.cache, self.identity, self.check, self.stats, self.prices = cache, list(identity), check, stats, prices
        self.asked: dict[bytes, asyncio.Future[Entry | None]] = {}  # cache keys on the wire: identical lines wait

    async def carry(self, job: Job, send: Callable[[Job], Awaitable[Outcome]]) -> Outcome:
        """The line's outcome: from the cache, from an identical request on the wire, or ``send``'s (kept)."""
        key = self._key(job)
        stored = self.cache.get(key)
        if (hit := self._answered(job, key, stored)) is not None:
            return hit
        if (first := self.asked.get(key)) is not None:  # the same request is on the wire: its answer serves this line
            if (hit := self._answered(job, key, await asyncio.shield(first), shared=True)) is not None:
                return hit
            return await send(job)
        self.asked[key] = future = asyncio.get_running_loop().create_future()
        try:
            outcome = await send(job)
            if isinstance(outcome, Success) and outcome.reply is not None:
                entry = Entry(outcome.reply.raw, outcome.reply.request_id)
                if not self.cache.put(key, entry.body, entry.request_id, replace=stored is not None):
                    self.stats.cache_raced += 1  # another run stored it meanwhile: sent by both at once
                future.set_result(entry)
            return outcome
        finally:
            del self.asked[key]
            if not future.done():
                future.set_result(None)  # no answer to share: the lines waiting send their own

    def result(self, job: Job) -> dict[str, Any] | None:
        """The line's result record from the cache, if it holds an answer that fits (the Batch API's question)."""
        key = self._key(job)
        hit = self._answered(job, key, self.cache.get(key))
        return hit.record if hit is not None else None

    def keep(self, job: Job, body: bytes, request_id: str | None) -> None:
        """Store an answer got another way (a Batch API job's)."""
        self.cache.put(self._key(job), body, request_id)

    def _key(self, job: Job) -> bytes:
        return cache_key(job.api, self.identity, job.body)

    def _answered(self, job: Job, key: bytes, entry: Entry | None, *, shared: bool = False) -> Success | None:
        """The line's result from a stored (or shared) answer, if it is one and fits the current schema."""
        if entry is None:
            return None
        try:
            body = read_json(entry.body)
            output = self.check.extract_for(job.api, body, job.body)
        except (orjson.JSONDecodeError, TooDeep, AttemptError, KeyError, TypeError, IndexError):
            return None  # not an answer, or not one the schema takes now: asked again
        if not shared:
            self.cache.hit(key)
        sampled = bool(job.body.get("temperature") or 0) or int(job.body.get("n") or 1) > 1
        self.stats.count_cached(body, self.prices, shared=shared, sampled=sampled)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=entry.request_id,
            raw_body=entry.body,
            output=output,
            attempts=0,
            latency_ms=0.0,
            line_hash=job.line_hash,
        )
        record["cached"] = True
        return Success(job.line_no, record)
