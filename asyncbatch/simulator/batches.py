"""The Batch API as Azure documents it: files, batch jobs, their statuses, output and error files.

Written from Azure's documentation (see AZURE_FACTS.md), not from the client:

* ``POST /openai/files`` (multipart, ``purpose=batch``); ``GET /openai/files/{id}/content``;
* ``POST /openai/batches``, ``GET /openai/batches/{id}``, ``GET /openai/batches`` (newest first,
  paged with ``after`` and ``has_more``), ``POST /openai/batches/{id}/cancel``;
* the same under ``/openai/v1/`` (no api-version) and OpenAI's ``/v1/``.

A job is checked when it is created: a UTF-8 BOM, a line that is not JSON or lacks a field
(``invalid_json_line``), a ``url`` other than the job's endpoint (``url_mismatch``), two
models (``model_mismatch``), a repeated ``custom_id`` (``duplicate_custom_id``), more than
100,000 lines (``too_many_tasks``) or none (``empty_batch``) fail it at once; so does a
job whose tokens, with those of the jobs still running, pass the queued-token limit
(``token_limit_exceeded``).

Time runs fast: a job is ``validating`` for the first tenth of ``batch_seconds``, then
``in_progress`` (``request_counts`` rising), then ``completed``. Output order is shuffled.
Lines can fail server-side (500 in the error file) or come back with output that breaks
their schema; a chosen job can expire half done.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .answers import completion, embeddings, prompt_text, response
from .charge import Charging, charge
from .http import Books, bearer_ok, json_response
from .settings import SimConfig

MAX_LINES = 100_000
ENDPOINTS = {"/chat/completions": "chat", "/embeddings": "embeddings", "/responses": "responses"}


@dataclass
class Job:
    id: str
    number: int  # 1 for the first job created
    endpoint: str
    input_file_id: str
    metadata: dict[str, str]
    created: float
    lines: list[dict[str, Any]]
    tokens: int
    status: str = "validating"
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    done: int = 0  # lines processed, at the end
    failed: int = 0
    cancel_at: float | None = None
    finished: bool = False

    errors_shape: str = "list"  # or "object": 2024-10-21's spec gives errors.data as one object, not a list

    def _errors(self) -> dict[str, Any] | None:
        if not self.errors:
            return None
        return {"object": "list", "data": self.errors[0] if self.errors_shape == "object" else self.errors}

    def public(self) -> dict[str, Any]:
        total = len(self.lines)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "created_at": int(self.created),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": self._errors(),
            "request_counts": {"total": total, "completed": self.done - self.failed, "failed": self.failed},
            "metadata": self.metadata,
        }


class BatchService:
    """The files and batches of one simulated resource. Mounted by ``Simulator.app``."""

    def __init__(self, books: Books, config: SimConfig) -> None:
        self.sim = books
        self.config = config
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (purpose, content)
        self.jobs: dict[str, Job] = {}
        self.rng = random.Random(self.config.seed + 1)
        self.created = 0
        self.polled_signal = threading.Semaphore(0)  # released once per look at a job (tests wait on it)

    def routes(self, app: web.Application) -> None:
        for prefix in ("/openai", "/openai/v1", "/v1"):
            app.router.add_post(f"{prefix}/files", self.upload)
            app.router.add_get(f"{prefix}/files/{{id}}/content", self.content)
            app.router.add_post(f"{prefix}/batches", self.create)
            app.router.add_get(f"{prefix}/batches", self.list)
            app.router.add_get(f"{prefix}/batches/{{id}}", self.retrieve)
            app.router.add_post(f"{prefix}/batches/{{id}}/cancel", self.cancel)

    def _refused(self, request: web.Request) -> web.Response | None:
        classic = request.path.startswith("/openai/") and not request.path.startswith("/openai/v1/")
        if classic and "api-version" not in request.query:
            return self.sim.error(404, "404", "Resource not found (missing api-version).")
        if request.headers.get("api-key") != self.config.api_key and not bearer_ok(request, self.config.api_key):
            return self.sim.error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        return None

    async def upload(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch" or not isinstance(upload, web.FileField):
            return self.sim.error(400, "invalid_request_error", "Upload a file with purpose=batch.")
        content = upload.file.read()
        file_id = f"file-{uuid.uuid4().hex}"
        self.files[file_id] = ("batch", content)
        self.sim.statuses["file-upload"] += 1
        body = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time())}
        body |= {"filename": upload.filename, "purpose": "batch", "status": "processed"}
        return json_response(200, body)

    async def content(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return self.sim.error(404, "404", "File not found.")
        return web.Response(status=200, body=stored[1], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.sim.error(400, "invalid_request_error", "We could not parse the JSON body of your request.")
        stored = self.files.get(str(body.get("input_file_id")))
        if stored is None:
            return self.sim.error(404, "invalid_request_error", "The input file was not found.")
        endpoint = str(body.get("endpoint", "")).removeprefix("/v1")
        if endpoint not in ENDPOINTS:
            return self.sim.error(400, "invalid_request_error", f"Unsupported endpoint {body.get('endpoint')!r}.")
        if request.path.startswith("/openai/") and endpoint == "/embeddings":  # Azure's Global Batch (docs, 2026)
            return self.sim.error(
                400, "invalid_request_error", "The endpoint '/embeddings' is not supported by Global Batch deployments."
            )
        self.created += 1
        job = Job(
            id=f"batch_{uuid.uuid4().hex}",
            number=self.created,
            endpoint=str(body["endpoint"]),
            input_file_id=str(body["input_file_id"]),
            metadata=dict(body.get("metadata") or {}),
            created=time.monotonic(),
            lines=[],
            tokens=0,
            errors_shape=self.config.batch_errors_shape,
        )
        self._validate(job, stored[1], endpoint)
        self.jobs[job.id] = job
        self.sim.statuses["batch-create"] += 1
        return json_response(200, job.public())

    def _validate(self, job: Job, content: bytes, endpoint: str) -> None:
        def fail(code: str, message: str, line: int | None = None) -> None:
            job.status, job.finished = "failed", True
            job.errors.append({"code": code, "message": message, "line": line, "param": None})

        if content.startswith(b"\xef\xbb\xbf"):
            return fail("invalid_json_line", "The file starts with a byte-order mark.", 1)
        ids, models = set(), set()
        for number, raw in enumerate(content.splitlines(), start=1):
            try:
                line = orjson.loads(raw)
                cid, url, line_body = line["custom_id"], line["url"], line["body"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return fail("invalid_json_line", f"Line {number} is not a valid request line.", number)
            if url != job.endpoint:  # each line's url must be the job's endpoint, as given
                return fail("url_mismatch", f"Line {number}: url {url} is not the job's endpoint.", number)
            if cid in ids:
                return fail("duplicate_custom_id", f"Line {number}: custom_id {cid} is repeated.", number)
            ids.add(cid)
            models.add(line_body.get("model"))
            if (wanted := self.config.deployment) is not None and line_body.get("model") != wanted:
                return fail("model_not_found", f"Line {number}: deployment {line_body.get('model')} not found.", number)
            job.lines.append(line)
            job.tokens += charge(line_body, Charging())
        if len(models) > 1:
            return fail("model_mismatch", "Every line must name the same deployment.")
        if not job.lines:
            return fail("empty_batch", "The file has no requests.")
        if len(job.lines) > MAX_LINES:
            return fail("too_many_tasks", f"At most {MAX_LINES} requests per file.")
        limit = self.config.batch_queue_tokens
        queued = sum(j.tokens for j in self.jobs.values() if not j.finished)
        if limit is not None and queued + job.tokens > limit:
            return fail("token_limit_exceeded", "Enqueued token limit reached for this deployment. Try again later.")
        return None

    def _look(self, job: Job) -> None:
        """Move a job along the fast clock; finish it (write its files) once its time is up."""
        if job.finished:
            return
        elapsed = time.monotonic() - job.created
        length = self.config.batch_seconds
        if job.cancel_at is not None:
            return self._finish(job, "cancelled", share=min(1.0, (job.cancel_at - job.created) / length))
        if elapsed < length / 10:
            job.status = "validating"
        elif elapsed < length:
            job.status = "in_progress"
            job.done = int(len(job.lines) * (elapsed - length / 10) / (length * 0.9))
        elif job.number in self.config.batch_expire_jobs:
            self._finish(job, "expired", share=0.5)
        else:
            self._finish(job, "completed", share=1.0)
        return None

    def _finish(self, job: Job, status: str, share: float) -> None:
        processed = job.lines[: int(len(job.lines) * share)]
        self.rng.shuffle(processed)  # the Batch API does not keep the input's order
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for line in processed:
            record = self._answer(job, line)
            (outputs if record["response"]["status_code"] == 200 else errors).append(record)
        job.done, job.failed = len(processed), len(errors)
        job.output_file_id = self._store(outputs) if outputs or status == "completed" else None
        job.error_file_id = self._store(errors) if errors else None
        job.status, job.finished = status, True

    def _answer(self, job: Job, line: dict[str, Any]) -> dict[str, Any]:
        body, request_id = line["body"], f"req-batch-{uuid.uuid4().hex[:12]}"
        roll = self.rng.random()
        if roll < self.config.batch_fail_rate:
            error = {"error": {"code": "server_error", "message": "The server had an error processing the request."}}
            return _line(line, 500, request_id, error)
        fault = "schema" if roll < self.config.batch_fail_rate + self.config.batch_bad_output_rate else "ok"
        api = ENDPOINTS[job.endpoint.removeprefix("/v1")]
        self.sim.requests += 1
        if api == "embeddings":
            answer = embeddings(body)
        elif api == "responses":
            answer = response(body, number=self.sim.requests, fault=fault)
        else:
            answer = completion(body, number=self.sim.requests, fault=fault)
        self.sim.statuses["batch-200"] += 1
        self.sim.statuses["batch-200-broken"] += fault == "schema"
        self.sim.answered[prompt_text(body)] += 1  # billed: a live answer to the same prompt is billed twice
        return _line(line, 200, request_id, answer)

    def _store(self, records: list[dict[str, Any]]) -> str:
        file_id = f"file-{uuid.uuid4().hex}"
        self.files[file_id] = ("batch_output", b"".join(orjson.dumps(r) + b"\n" for r in records))
        return file_id

    def _job(self, request: web.Request) -> Job | web.Response:
        """The job a request names, moved along the clock; or the answer refusing the request."""
        if refused := self._refused(request):
            return refused
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.sim.error(404, "404", "Batch not found.")
        self._look(job)
        return job

    async def retrieve(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        self.sim.statuses["batch-poll"] += 1
        self.polled_signal.release()
        return json_response(200, job.public())

    async def list(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        jobs = sorted(self.jobs.values(), key=lambda j: -j.number)
        if after := request.query.get("after"):
            numbers = [j.number for j in jobs if j.id == after]
            jobs = [j for j in jobs if numbers and j.number < numbers[0]]
        limit = min(100, int(request.query.get("limit", "20")))
        page = jobs[:limit]
        for job in page:
            self._look(job)
        data = [j.public() for j in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return json_response(
            200, {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": len(jobs) > limit}
        )

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        if not job.finished:
            job.cancel_at, job.status = time.monotonic(), "cancelling"
        self.sim.statuses["batch-cancel"] += 1
        return json_response(200, job.public())


def _line(line: dict[str, Any], status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    record_id = f"batch_req_{uuid.uuid4().hex}"
    response_part = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": record_id, "custom_id": line["custom_id"], "response": response_part, "error": None}
