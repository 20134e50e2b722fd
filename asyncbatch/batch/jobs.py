"""--batch-api: the inputs as Azure Batch API jobs (half price), under the same exactly-once record.

The life of a run:

1. **Plan.** Lines neither recorded nor already in a part are built into requests
   exactly as a live run builds them (``requests.prepare``), and written to part
   files in the state directory (``part-N.jsonl``): one API per file, at most ``max_lines_per_file``
   lines and 190 MB, no BOM. Each line's ``custom_id`` is ``line-<N>``, its input
   line number, so answers map back to inputs whatever their order.
2. **Submit.** Each part is uploaded and a job created through the SDK, with
   metadata naming the run, the part and the try. The job id is saved in
   the state directory's ``batches`` the moment it exists; a job created just before a
   crash is found again by listing the jobs and matching that metadata.
3. **Poll** every ``poll_interval`` seconds; the display shows ``request_counts``.
4. **Merge** each finished job: answers are parsed and validated like live ones
   and written to the results; refusals no retry will fix go to the errors. Lines
   that failed server-side with a retryable error, lines of expired, cancelled or
   failed jobs, and lines whose output is invalid are left unrecorded: the live
   phase that follows runs them (or, with ``live_fallback`` off, they are recorded
   as failures). A job refused for the queued-token limit (``token_limit_exceeded``)
   is created again after a backoff.

A part is marked merged only once its records are on disk, so a line answered by a
batch is never sent live: a crash before that re-merges the part, skipping lines
already recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ..clock import Sleep
from ..config import RunConfig
from ..errors import ASKED_AGAIN, AttemptError, ConfigError, FatalAPIError, RateLimited, Unkept
from ..input.reader import BadLine, ParsedLine, line_offsets, lines_from, read_lines
from ..input.requests import Job, prepare
from ..protocol import (
    ACCEPT_ENCODING,
    CONTENT_ENCODING,
    LOCATION,
    MAX_DEPTH,
    RETRYABLE_BATCH_CODES,
    Api,
    BodyDecoder,
    TooDeep,
    Unreadable,
    answer_problem,
    batch_error_codes,
    batch_problem,
    batch_url,
    batchable,
    clean_usage,
    error_class,
    fatal_kind,
    is_redirect,
    is_success,
    read_json,
    redirect_message,
    should_retry,
    too_large,
    tunnel_refusal,
    under_v1,
    untrusted_certificate,
)
from ..records import failure_record, result_record
from ..sdk import sdk_client, tunnel_status
from ..stats import RunStats
from ..store.files import create_private, naming
from ..store.recorder import Recorder
from ..structured.validate import OutputCheck

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from ..store.checkpoint import DoneSet
from .parts import BatchState, Part, Splitter, batch_line

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIVE_AGAIN: tuple[type[AttemptError], ...] = (
    RateLimited,
    *ASKED_AGAIN,
)  # a line's failure that the live phase may answer (with feedback, if invalid)
CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"line-(\d{1,18})"')  # found without parsing the whole answer
ID_WITHIN = 1 << 16  # bytes: where a line's custom_id is looked for when the line is too large to keep
ENVELOPE = 1 << 16  # bytes an answer line may hold beside its body (its ids, status, error)
STEP = 1 << 16  # decoded bytes taken at a time from a downloaded file


def _transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return should_retry(exc.status_code, exc.response.headers)
    if not isinstance(exc, openai.APIConnectionError):
        return False
    return tunnel_refusal(tunnel_status(exc)) is None and untrusted_certificate(exc) is None  # neither heals


@dataclass
class Merge:
    """What merging one finished job produced."""

    results: int = 0
    errors: int = 0
    fallback: int = 0  # lines left for the live phase (or recorded as failed, without live fallback)


class BatchRunner:
    """One run's Batch API phase. Every outcome goes to the run's ``recorder``, as the live phase's do."""

    def __init__(
        self,
        config: RunConfig,
        *,
        stats: RunStats,
        recorder: Recorder,
        written: Callable[[], Awaitable[None]],
        done: DoneSet,
        info: Callable[[str], None],
        warn: Callable[[str], None] | None = None,
        sleep: Sleep = asyncio.sleep,
        wall: Callable[[], float] = time.time,
        cached: Callable[[Job], dict[str, Any] | None] = lambda job: None,
        keep: Callable[[Job, bytes, str | None], None] = lambda job, body, request_id: None,
        check: OutputCheck | None = None,
    ) -> None:
        """:param warn: what the user must hear even with -q (lines that cannot go in a job); default ``info``.
        :param cached: a line's result record from the response cache, if it holds a fitting answer.
        :param keep: an answer for the response cache (a job's answers are not paid for twice either).
        """
        assert config.batch is not None
        self.options, self.endpoint, self.request = config.batch, config.routes[0].endpoint, config.request
        self.input_path, self.paths, self.stats = config.input_path, config.state, stats
        self.transport = config.transport
        self.recorder, self.written, self.done = recorder, written, done
        self.info, self.sleep, self.wall, self.cached, self.keep = info, sleep, wall, cached, keep
        self.warn = warn or info
        self.path = self.paths.batches
        saved = BatchState.load(self.path)
        self.resumed = saved is not None  # only a resumed run can have jobs the state file does not name
        self.state = saved or BatchState(run=uuid.uuid4().hex)
        self.check = check or OutputCheck(self.request.tools, self.request.response_format, self.request.models)
        self.sdk: AsyncOpenAI | None = None
        self.remote: dict[int, int] = {}  # part -> lines the server has finished (request_counts)
        self.prices = stats.prices.batch() if stats.prices is not None else None

    # -- the phase ---------------------------------------------------------------------------

    async def run(self, reject: Callable[[BadLine], None]) -> None:
        """Plan, submit, poll and merge until every part is merged (or stopped by cancellation)."""
        async with self._connected():
            await self.plan(reject)
            self.state.save(self.path)
            await self._adopt_orphans()
            while parts := self.state.open_parts():
                await self._step(parts)
                if self.state.open_parts():
                    await self.sleep(self.options.poll_interval)
        await self.written()  # what was recorded without a job (bad lines, cached answers) too, before the live phase

    async def cancel(self) -> int:
        """--cancel: cancel every open job of this run; return how many."""
        cancelled = 0
        async with self._connected() as sdk:
            for part in self.state.open_parts():
                if part.batch_id is not None and part.status not in TERMINAL:
                    batch = _judged(await self._call(sdk.batches.cancel, part.batch_id))
                    part.status = batch.status
                    cancelled += 1
            self.state.save(self.path)
        return cancelled

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[AsyncOpenAI]:
        """The SDK client (URL, api-version, auth and headers as for live requests; its retries off)."""
        self.sdk = sdk_client(self.endpoint)
        try:
            yield self.sdk
        finally:
            await self.sdk.close()

    async def plan(self, reject: Callable[[BadLine], None]) -> None:
        """Write part files for the lines no part covers and no output holds yet.

        A line recorded here (a bad line, a cached answer) waits for room at its writer: a file of a million
        bad lines holds no more memory than a few, and signals are heard meanwhile.
        """
        covered = list(self.state.parts)
        splitter = Splitter(self.options.max_lines_per_file, first_index=len(self.state.parts))
        files: dict[int, Any] = {}
        model = self.endpoint.deployment
        offsets = line_offsets(self.input_path)  # read in step with the lines, for each part's first offset
        live = Counter[str]()  # lines of an API this endpoint's jobs do not take: left for the live phase
        try:
            for line in read_lines(self.input_path, done=self.done):
                if any(line.line_no in p for p in covered):
                    continue
                item = prepare(line, self.request, model, self.endpoint) if isinstance(line, ParsedLine) else line
                if isinstance(item, BadLine):
                    reject(item)
                    await self.recorder.errors.room()
                    continue
                if not batchable(self.endpoint.kind, item.api):
                    live[item.api] += 1
                    continue
                if (hit := self.cached(item)) is not None:  # answered from the response cache: not uploaded
                    self.recorder.success(item.line_no, hit)
                    await self.recorder.results.room()
                    continue
                raw = batch_line(item, self._v1)
                part = splitter.place(item.api, item.line_no, len(raw))
                if part.index not in files:
                    part.offset = next(offset for number, offset in offsets if number == item.line_no)
                    files[part.index] = create_private(self.part_file(part))
                with naming(self.part_file(part)):
                    files[part.index].write(raw)
                self.stats.estimated_tokens += item.estimate
        finally:
            for f in files.values():
                f.close()
        self.state.parts.extend(splitter.parts)
        for api, count in live.items():
            self.warn(
                f"Batch API: {count:,} {api} lines run live, at the live price: Azure's Global Batch does not "
                f"take {api} (OpenAI's Batch API does)"
            )
        if splitter.parts:
            self.info(f"Batch API: {len(splitter.parts)} new job(s) for {sum(p.lines for p in splitter.parts):,} lines")

    def part_file(self, part: Part) -> Path:
        return self.paths.part(part.index)

    async def _adopt_orphans(self) -> None:
        """A job created just before a crash is not in the state file: find it by its metadata."""
        waiting = {(p.index, p.tries): p for p in self.state.open_parts() if p.batch_id is None}
        if not waiting or not self.resumed:
            return
        assert self.sdk is not None
        after: str | None = None
        while waiting:
            page = await self._call(self.sdk.batches.list, limit=100, **({"after": after} if after else {}))
            data = page.data if isinstance(page.data, list) else []
            for batch in data:
                meta = getattr(batch, "metadata", None)
                if not isinstance(meta, dict) or meta.get("asyncbatch_run") != self.state.run or batch_problem(batch):
                    continue  # not a job of this run's (or not a job): left alone
                key = (_number(meta.get("asyncbatch_part")), _number(meta.get("asyncbatch_try")))
                if (part := waiting.pop(key, None)) is not None:
                    part.batch_id, part.status = batch.id, batch.status
                    self.info(f"Batch API: found job {batch.id} of part {part.index}, created before the last stop")
            if not page.has_more or not data or batch_problem(data[-1]):
                break
            after = data[-1].id
        self.state.save(self.path)

    async def _step(self, parts: list[Part]) -> None:
        for part in parts:
            if part.batch_id is None:
                if self.wall() >= part.retry_at:
                    await self._submit(part)
                continue
            assert self.sdk is not None
            try:
                batch = _judged(await self._call(self.sdk.batches.retrieve, part.batch_id))
            except FatalAPIError as exc:
                if exc.kind != "not_found":
                    raise
                raise ConfigError(
                    f"the Batch API does not know job {part.batch_id}, named in {self.path}: was it made on another "
                    "endpoint, or deleted? The file is left as it is. HINT: point AZURE_OPENAI_ENDPOINT at the "
                    "resource that made it; or, to start over, run again with --restart (its lines are then paid "
                    "for again)"
                ) from None
            part.status = batch.status
            counts = batch.request_counts
            self.remote[part.index] = (counts.completed + counts.failed) if counts is not None else 0
            if batch.status in TERMINAL:
                await self._finished(part, batch)
        self._show()

    async def _submit(self, part: Part) -> None:
        assert self.sdk is not None
        path = self.part_file(part)
        if not path.exists() or any(n in self.done for n in part.line_numbers()):
            self._rebuild(part)  # lost, or some of its lines were recorded since: never pay for a line twice
        if part.lines == 0:
            part.merged = True
            self.state.save(self.path)
            return
        upload = await self._call(self.sdk.files.create, file=(path.name, path.read_bytes()), purpose="batch")
        if not isinstance(getattr(upload, "id", None), str):
            raise _malformed("the answer to a file upload has no file id")
        metadata = {
            "asyncbatch_run": self.state.run,
            "asyncbatch_part": str(part.index),
            "asyncbatch_try": str(part.tries),
            "asyncbatch_input": self.input_path.name[:500],
        }
        batch = await self._call(
            self.sdk.batches.create,
            input_file_id=upload.id,
            endpoint=self._endpoint_url(part.api),
            completion_window="24h",
            metadata=metadata,
        )
        batch = _judged(batch)
        part.batch_id, part.status = batch.id, batch.status
        self.state.save(self.path)  # at once: a crash from here on finds the job in the state file

    @property
    def _v1(self) -> bool:
        return under_v1(self.endpoint.kind, self.endpoint.api_version)

    def _endpoint_url(self, api: Api) -> str:
        return batch_url(api, self._v1)

    def _rebuild(self, part: Part) -> None:
        """Write the part's file again from the input, for its lines not recorded yet."""
        covered = Part(index=part.index, api=part.api)
        with naming(self.part_file(part)), create_private(self.part_file(part)) as f:
            for job in self._jobs(part):
                raw = batch_line(job, self._v1)
                f.write(raw)
                covered.add(job.line_no, len(raw))
        part.ranges, part.lines, part.size = covered.ranges, covered.lines, covered.size

    def _jobs(self, part: Part) -> Iterator[Job]:
        """The part's requests not recorded yet, built again from the input, read from the part's first line."""
        if not part.ranges:
            return
        model, last = self.endpoint.deployment, part.ranges[-1][1]
        for line in lines_from(self.input_path, part.offset, part.ranges[0][0]):
            if line.line_no > last:
                return
            if line.line_no in part and line.line_no not in self.done and isinstance(line, ParsedLine):
                job = prepare(line, self.request, model, self.endpoint)
                if isinstance(job, Job):
                    yield job

    async def _finished(self, part: Part, batch: Any) -> None:
        codes = batch_error_codes(batch.errors)
        if batch.status == "failed" and "token_limit_exceeded" in codes:
            part.tries += 1
            backoff = min(3600.0, self.options.poll_interval * 2**part.tries)
            part.batch_id, part.status, part.retry_at = None, None, self.wall() + backoff
            self.info(
                f"Batch API: part {part.index} was refused for the queued-token limit (token_limit_exceeded); "
                f"creating it again in {backoff:g} s"
            )
            self.state.save(self.path)
            return
        if batch.status == "failed":
            self.info(f"Batch API: job {batch.id} failed ({', '.join(codes) or 'no reason given'})")
        merge = await self._merge(part, batch)
        self.stats.batch_jobs += 1
        await self.written()  # the records are on disk: only now may the part count as merged
        part.merged = True
        self.state.save(self.path)
        self.part_file(part).unlink(missing_ok=True)
        rest = "left to run live" if self.options.live_fallback else "recorded as failed (--no-live-fallback)"
        self.info(
            f"Batch API: job {batch.id} {batch.status}: {merge.results:,} results, {merge.errors:,} errors, "
            f"{merge.fallback:,} lines {rest}"
        )

    def _show(self) -> None:
        counts: dict[str, int] = {}
        for part in self.state.open_parts():
            counts[part.status or "waiting"] = counts.get(part.status or "waiting", 0) + 1
        self.stats.remote_done = sum(self.remote.get(p.index, 0) for p in self.state.open_parts())
        jobs = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.stats.notice = f"Batch API jobs: {jobs or 'all merged'}; next look in {self.options.poll_interval:g} s"

    # -- merging -----------------------------------------------------------------------------

    async def _merge(self, part: Part, batch: Any) -> Merge:
        limit = self.max_response_bytes
        merge = Merge()
        with Answers(part, limit + ENVELOPE, self.paths.dir) as answers:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    answers.begin()
                    await self._call(self._download, file_id, answers)
            for job in self._jobs(part):
                raw = answers.pop(job.line_no)
                if isinstance(raw, TooLarge):  # answered and paid for, but larger than a live answer may be: not kept
                    self._record_failure(job, too_large(200, {}, limit), merge)
                    continue
                try:
                    answer = _answer_line(raw)
                except TooDeep as deep:  # answered and paid for, but too deep to keep: recorded with its usage
                    unkept = _too_deep(deep.value)
                    self.stats.count_usage(unkept.body or {}, self.prices)
                    self._record_failure(job, unkept, merge)
                    continue
                if answer is None and raw is not None:
                    clip = raw[:200].decode("utf-8", "replace")
                    self._fallback(job, "malformed_response", f"the answer line is not a JSON object: {clip!r}", merge)
                    continue
                self._settle(job, answer, batch, merge)
        return merge

    async def _download(self, file_id: str, answers: Answers) -> None:
        """A job's output or error file into ``answers``, streamed and decoded as a live answer is
        (``protocol.BodyDecoder``): memory holds one line at most. Read from its start again on each try.
        A file whose compressed data breaks keeps the lines before the break (the rest run live)."""
        import httpx2  # the openai SDK's HTTP client (openai>=3.0)
        import openai

        assert self.sdk is not None
        answers.start_over()
        content = self.sdk.files.with_streaming_response.content
        async with content(file_id, extra_headers={"Accept-Encoding": ACCEPT_ENCODING}) as response:
            try:
                decoder = BodyDecoder(response.headers.get(CONTENT_ENCODING))
                async for chunk in response.http_response.aiter_raw():
                    data = decoder.feed(chunk, STEP)
                    while data:
                        answers.feed(data)
                        data = decoder.feed(b"", STEP)
                while data := decoder.finish(STEP):
                    answers.feed(data)
            except Unreadable as exc:
                self.warn(f"Batch API: file {file_id} cannot be read to its end ({exc}); its other lines run live")
            except httpx2.TransportError as exc:  # the body broke off: the whole file is asked for again
                raise openai.APIConnectionError(request=response.http_response.request) from exc
        answers.end()

    def _settle(self, job: Job, answer: dict[str, Any] | None, batch: Any, merge: Merge) -> None:
        given = (answer or {}).get("response")
        response: dict[str, Any] = given if isinstance(given, dict) else {}
        status = response.get("status_code")
        given = response.get("body")
        body: dict[str, Any] = given if isinstance(given, dict) else {}
        if answer is None or type(status) is not int:
            return self._fallback(job, f"batch_{batch.status}", f"no answer: the job was {batch.status}", merge)
        if not is_success(status):
            found = body.get("error") if isinstance(body.get("error"), dict) else answer.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            code, message = str(error.get("code") or status), str(error.get("message") or f"HTTP {status}")
            kind = error_class(status, {}, code, None, None)
            if issubclass(kind, LIVE_AGAIN) or code in RETRYABLE_BATCH_CODES:
                return self._fallback(job, code, message, merge)
            exc = kind(code, message, status=status, body=body, request_id=response.get("request_id"))
            return self._record_failure(job, exc, merge)
        if problem := answer_problem(job.api, body, job.body):
            return self._fallback(job, "malformed_response", f"the answer is not one: {problem}", merge)
        self.stats.count_usage(body, self.prices)
        try:
            output = self.check.extract_for(job.api, body, job.body)
        except AttemptError as exc:
            if isinstance(exc, LIVE_AGAIN):  # invalid output: asked again live, with feedback, unless told not to
                return self._fallback(job, exc.code, exc.message, merge)
            return self._record_failure(job, exc, merge)
        record = result_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            request_id=response.get("request_id"),
            raw_body=orjson.dumps(body),
            output=output,
            attempts=1,
            latency_ms=0.0,
            deployment=self.endpoint.deployment,
            line_hash=job.line_hash,
        )
        record["batch_id"] = batch.id
        self.keep(job, orjson.dumps(body), response.get("request_id"))  # into the response cache, if there is one
        self.recorder.success(job.line_no, record, batch=True)
        merge.results += 1
        return None

    def _fallback(self, job: Job, code: str, message: str, merge: Merge) -> None:
        merge.fallback += 1
        if not self.options.live_fallback:
            self._record_failure(job, AttemptError(code, f"Batch API: {message}"), merge, counted=False)

    def _record_failure(self, job: Job, exc: AttemptError, merge: Merge, counted: bool = True) -> None:
        record = failure_record(
            custom_id=job.custom_id,
            line_no=job.line_no,
            exc=exc,
            attempts=1,
            deployment=self.endpoint.deployment,
            line_hash=job.line_hash,
        )
        self.recorder.failure(job.line_no, record, exc.code)
        merge.errors += int(counted)

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One SDK call, retried on connection failures, 429s and 5xx (the SDK's own retries are off)."""
        import openai

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_transient),
                stop=stop_after_attempt(8),
                wait=wait_exponential_jitter(initial=1, max=60),
                sleep=self.sleep,
                reraise=True,
            ):
                with attempt:
                    return await method(*args, **kwargs)
        except openai.APIStatusError as exc:
            if is_redirect(exc.status_code):  # not followed (see ``sdk_client``): the endpoint is wrong
                where = "the Batch API endpoint"
                message = redirect_message(exc.status_code, exc.response.headers.get(LOCATION), where)
                raise FatalAPIError("redirect", message) from None
            raise FatalAPIError(
                fatal_kind(exc.status_code), f"the Batch API refused: HTTP {exc.status_code}: {exc.message}"
            ) from None
        except openai.APIConnectionError as exc:
            if refusal := tunnel_refusal(status := tunnel_status(exc)):  # the proxy's, as the live requests say it
                said = f"the proxy refused the Batch API's tunnel: it answered HTTP {status} to the CONNECT"
                raise FatalAPIError(refusal.KIND, said) from None
            if why := untrusted_certificate(exc):
                said = f"cannot reach the Batch API: the server's TLS certificate is not trusted here ({why})"
                raise FatalAPIError("unreachable", said, cause="certificate") from None
            raise FatalAPIError("unreachable", f"cannot reach the Batch API: {exc}") from None
        except ValueError as exc:  # the SDK's JSON parse of a 200 that is not JSON (a proxy's page, say)
            raise _malformed(f"a body that is not JSON ({str(exc)[:80]})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def max_response_bytes(self) -> int:
        return self.transport.max_response_bytes


class TooLarge:
    """An answer line past the bound: only its custom_id was read."""


TOO_LARGE = TooLarge()


class Answers:
    """A job's answer lines by input line number, spooled to an unnamed file in the state directory as they
    stream in: memory holds one line (at most ``limit`` bytes), whatever the file's size. A line past
    ``limit`` is kept as ``TOO_LARGE``; a line that names no line of ``part`` is dropped."""

    def __init__(self, part: Part, limit: int, directory: Path) -> None:
        self.part, self.limit = part, limit
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by __exit__)
        self.at: dict[int, tuple[int, int] | None] = {}
        self._line, self._over = bytearray(), False
        self._mark: tuple[int, dict[int, tuple[int, int] | None]] = (0, {})

    def __enter__(self) -> Answers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def begin(self) -> None:
        """A file begins: what ``start_over`` goes back to."""
        self._mark = (self.file.seek(0, 2), dict(self.at))

    def start_over(self) -> None:
        """The file begun is read again from its start (a try after a connection failure)."""
        self.file.truncate(self._mark[0])
        self.at = dict(self._mark[1])
        self._line, self._over = bytearray(), False

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            cut = data.find(b"\n", start)
            end = len(data) if cut < 0 else cut
            if not self._over:
                self._line += data[start:end]
                if len(self._line) > self.limit:  # its id is near its start: the rest is not kept
                    self._over, self._line = True, self._line[:ID_WITHIN]
            if cut < 0:
                return
            self.end()
            start = cut + 1

    def end(self) -> None:
        """The line read so far is whole (a line feed, or the file's end)."""
        line, over = bytes(self._line).rstrip(b"\r"), self._over
        self._line, self._over = bytearray(), False
        found = CUSTOM_ID.search(line[:ID_WITHIN] if over else line)
        if found is None or int(found[1]) not in self.part:
            return
        if over:
            self.at[int(found[1])] = None
            return
        offset = self.file.seek(0, 2)
        self.file.write(line)
        self.at[int(found[1])] = (offset, len(line))

    def pop(self, line_no: int) -> bytes | TooLarge | None:
        """The line's answer; ``TOO_LARGE``; or None (none came)."""
        if line_no not in self.at:
            return None
        where = self.at.pop(line_no)
        if where is None:
            return TOO_LARGE
        self.file.seek(where[0])
        return self.file.read(where[1])


def _judged(batch: Any) -> Any:
    """A job object from the SDK, once it holds what a run reads. :raises FatalAPIError: it does not."""
    if problem := batch_problem(batch):
        raise _malformed(f"an answer that is not a job object: {problem}")
    return batch


def _malformed(what: str) -> FatalAPIError:
    return FatalAPIError("malformed", f"the Batch API answered with {what}")


def _number(value: Any) -> int:
    try:
        return int(str(value)[:18])
    except ValueError:
        return -1


def _answer_line(raw: bytes | None) -> dict[str, Any] | None:
    """One line of a job's output or error file; a line that is not a JSON object counts as no answer.

    :raises TooDeep: a line nested deeper than a record can hold.
    """
    try:
        answer = read_json(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _too_deep(line: Any) -> AttemptError:
    """A job's answer line nested too deep to write: its status, request id and usage, and not asked again."""
    given = line.get("response") if isinstance(line, dict) else None
    response: dict[str, Any] = given if isinstance(given, dict) else {}
    status, request_id = response.get("status_code"), response.get("request_id")
    usage = clean_usage(response.get("body"))
    return Unkept(
        "response_too_deep",
        f"Batch API: the answer nests JSON deeper than {MAX_DEPTH} levels, too deep to keep as a record; only its "
        "usage is kept. HINT: run again with --retry-failed to ask again",
        status=status if type(status) is int else None,
        body={"usage": usage} if usage else None,
        request_id=request_id if isinstance(request_id, str) else None,
    )
