"""A local Azure-compatible chat-completions server (aiohttp.web) on 127.0.0.1.

Routes:
    POST /openai/deployments/{deployment}/chat/completions?api-version=...   (Azure; ``api-key`` header)
    POST /v1/chat/completions                                                 (OpenAI; ``Authorization: Bearer``)
    GET  /_stats                                                              counters, for tests and benchmarks

Faults are drawn per request from a seeded RNG, or forced per prompt with
``SimConfig.script`` (prompt text -> list of outcomes, consumed in order).
Besides the HTTP errors and the hostile answers of ``chaos.py``, two faults quote
the request's credentials back, as some servers and gateways do: ``401-echo``
(its headers as JSON in a 401) and ``echo-at:<status>:<offset>`` (a body that is
not JSON, with every credential from byte ``offset`` on: where a client may cut it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .answers import completion, embeddings, prompt_text, response
from .batches import BatchService
from .chaos import RATE_HEADERS, WAIT_HEADERS, absurd_headers, broken_answer
from .charge import charge
from .http import Books, bearer_ok, json_response
from .quota import Quota, Verdict
from .settings import FAULTS, REFUSALS, SimConfig
from .tokens import token_problem

# Azure's own documentation: the classic /openai/responses route exists from this api-version on
# (this server's own reading, not the client's: see AZURE_FACTS "Responses").
RESPONSES_FROM = "2025-04-01-preview"


BROKEN = ("malformed", "schema", "wrong-tool")  # faults whose 200 is no usable answer: a client asks again


@dataclass
class Asked:
    """One request, as the journal keeps it: when it came, for which input (its first user text), and the
    request id of the success it was given, if the answer went out to a client still listening."""

    at: float  # time.monotonic()
    key: str
    request_id: str | None = None
    broken: bool = False  # the success given was a fault's: malformed, off its schema or of the wrong shape


def line_key(body: dict[str, Any]) -> str:
    """What names the input a request is for, the same on a re-ask (which appends to the conversation)."""
    given = body.get("input")
    if isinstance(given, str) or (isinstance(given, list) and all(isinstance(i, str) for i in given)):
        return prompt_text(body)
    items = body.get("messages") or given or []
    first = next((m for m in items if isinstance(m, dict) and m.get("role", "user") == "user"), {})
    return prompt_text({"messages": [first]})


class Simulator(Books):
    def __init__(self, config: SimConfig) -> None:
        super().__init__()
        self.config = config
        self.quota = Quota(config.tpm, config.rpm, shape=config.window, window=config.window_seconds)
        self.charged = 0  # tokens charged to admitted requests
        self.rng = random.Random(config.seed)
        self.first_request_at: float | None = None  # time.monotonic() of the first chat request
        self.last_request_at: float | None = None  # ... and of the latest
        self.arrivals: deque[tuple[float, str]] = deque(maxlen=10_000)  # (time.monotonic(), prompt[:64]), the latest
        self.seen: set[bytes] = set()  # digests of the request bodies that have arrived (``first_try``)
        self.active = 0  # requests received and not yet answered
        self.bodies: deque[dict[str, Any]] = deque(maxlen=200)  # the latest request bodies, for inspection
        self.first_request = threading.Event()  # set at the first chat request (tests wait on it)
        self.down_until = 0.0  # time.monotonic() until which the endpoint is down
        self.tokens_seen: dict[str, float] = {}  # bearer tokens accepted (entra_only) -> first use
        self.batches = BatchService(self, config)
        self.journal: list[Asked] = []  # with ``config.journal``: every request, and the successes given
        self.tag = uuid.uuid4().hex[:6]  # request ids are unique across simulators (a pool's)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for route in ("chat/completions", "embeddings", "responses"):
            classic = "/openai/responses" if route == "responses" else f"/openai/deployments/{{deployment}}/{route}"
            app.router.add_post(classic, self.azure_chat)
            app.router.add_post(f"/v1/{route}", self.openai_chat)
            app.router.add_post(f"/openai/v1/{route}", self.azure_v1_chat)
        app.router.add_get("/_stats", self.stats)
        self.batches.routes(app)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(
            200,
            {
                "requests": self.requests,
                "statuses": dict(self.statuses),
                "billed_twice": self.billed_twice(),
                "charged": self.charged,
                "span": self.span(),  # seconds from the first request to the latest: how fast they came
            },
        )

    def span(self) -> float:
        """Seconds from the first request to the latest, by this server's clock."""
        return (self.last_request_at or 0.0) - (self.first_request_at or 0.0)

    def billed_twice(self) -> int:
        return sum(n - 1 for n in self.answered.values() if n > 1)

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        if (gateway := self.config.gateway_key) and request.headers.get("Ocp-Apim-Subscription-Key") != gateway:
            return self.error(401, "401", "Access denied due to missing subscription key.")  # like API Management
        if self.config.entra_only:
            bearer = request.headers.get("Authorization")
            if problem := token_problem(bearer) or self._revoked(str(bearer)):
                return self.error(401, "401", f"Access denied: {problem}.")
            self.tokens_seen.setdefault(str(bearer), time.monotonic())
        elif request.headers.get("api-key") != self.config.api_key and not bearer_ok(request, self.config.api_key):
            return self.error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        if "api-version" not in request.query:
            return self.error(404, "404", "Resource not found (missing api-version).")
        if request.path.endswith("/responses") and request.query["api-version"] < RESPONSES_FROM:
            return self.error(404, "404", "Resource not found.")  # no classic /responses route before it
        wanted = self.config.deployment
        if wanted is not None and request.match_info.get("deployment", wanted) != wanted:
            return self.error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        return await self.chat(request)

    async def azure_v1_chat(self, request: web.Request) -> web.StreamResponse:
        """Azure's v1 API: OpenAI's route, no api-version; the key as ``api-key`` or ``Authorization: Bearer``."""
        if request.headers.get("api-key") != self.config.api_key and not bearer_ok(request, self.config.api_key):
            return self.error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        if "api-version" in request.query:
            return self.error(400, "BadRequest", "api-version query parameter is not allowed with the v1 API.")
        return await self.chat(request)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, self.config.api_key):
            return self.error(401, "invalid_api_key", "Incorrect API key provided.")
        return await self.chat(request)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = time.monotonic()
            self.first_request.set()
        if self._down():
            self.statuses["down"] += 1
            if self.config.journal:  # asked, though it gets no answer: the journal keeps every ask
                self._journal_dropped(await request.read())
            assert request.transport is not None
            request.transport.abort()  # like a host that is gone: the connection drops, no answer
            return web.Response(status=503)
        if self.config.exhaust_after is not None and self.statuses["200"] >= self.config.exhaust_after:
            return self._throttled(86400.0, {})
        self.last_request_at = time.monotonic()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.error(400, "invalid_request_error", "We could not parse the JSON body of your request.")
        api = request.path.rsplit("/", 1)[-1]  # completions, embeddings or responses
        if not isinstance(body, dict) or (api == "completions" and not isinstance(body.get("messages"), list)):
            return self.error(400, "invalid_request_error", "'messages' is a required property.")
        if api != "completions" and not body.get("input"):
            return self.error(400, "invalid_request_error", "'input' is a required property.")
        self.bodies.append(body)
        asked = Asked(time.monotonic(), line_key(body))
        if self.config.journal:
            self.journal.append(asked)
        self.arrivals.append((self.last_request_at, prompt_text(body)[:64]))
        if self.config.first_try is not None and self._first_arrival(raw):  # refused in front of the quota
            return await self._answer(request, body, prompt_text(body), self.config.first_try, {}, api, asked)
        cost = charge(body, self.config.charging)
        verdict = self.quota.admit(cost)
        limit_headers = self._limit_headers(verdict)
        if not verdict.allowed:
            return self._throttled(verdict.retry_after, limit_headers)
        self.charged += cost
        text = prompt_text(body)
        fault = self._fault(text)
        self.active += 1
        try:
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
            return await self._answer(request, body, text, fault, limit_headers, api, asked)
        finally:
            self.active -= 1

    def _journal_dropped(self, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(body, dict):
            self.journal.append(Asked(time.monotonic(), line_key(body)))

    def _first_arrival(self, raw: bytes) -> bool:
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        first = digest not in self.seen
        self.seen.add(digest)
        return first

    def _limit_headers(self, verdict: Verdict) -> dict[str, str]:
        """The budget headers: what the quota has left, or what the server is set to say whatever is left."""
        says = {
            "x-ratelimit-remaining-requests": (verdict.remaining_requests, self.config.remaining_requests_says),
            "x-ratelimit-remaining-tokens": (verdict.remaining_tokens, self.config.remaining_tokens_says),
        }
        return {
            name: said if said is not None else str(left)
            for name, (left, said) in says.items()
            if said is not None or left is not None
        }

    def _revoked(self, bearer: str) -> str | None:
        first = self.tokens_seen.get(bearer)
        max_age = self.config.token_max_age
        if first is not None and max_age is not None and time.monotonic() - first > max_age:
            return "the access token has been revoked"
        return None

    def _down(self) -> bool:
        now = time.monotonic()
        if self.config.outage_after is not None and self.requests == self.config.outage_after:
            self.down_until = now + self.config.outage_seconds
        since = now - (self.first_request_at or now)
        return now < self.down_until or any(start <= since < start + span for start, span in self.config.outages)

    def _fault(self, text: str) -> str:
        script = self.config.script.get(text)
        if script:
            return script.pop(0)
        roll = self.rng.random()
        for name in FAULTS:
            rate = self.config.fault_rates.get(name, 0.0)
            if roll < rate:
                return name
            roll -= rate
        return "ok"

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        text: str,
        fault: str,
        headers: dict[str, str],
        api: str,
        asked: Asked,
    ) -> web.StreamResponse:
        if fault in ("400", "401", "403", "404", "500", "503"):
            retry = self.config.retry_after_503 if fault == "503" else None
            extra = {"retry-after": f"{retry:g}"} if retry is not None else {}
            return self.error(int(fault), fault, f"Simulated {fault}.", extra)
        if fault == "429":
            return self._throttled(self.config.retry_after_429, headers)
        if fault == "429-nohint":
            return self.error(429, "429", "Too many requests.")
        if fault in ("429-absurd", "503-absurd"):
            return self.error(int(fault[:3]), fault[:3], "Simulated.", absurd_headers(self.rng, WAIT_HEADERS, True))
        if fault in REFUSALS:
            return self.error(400, *REFUSALS[fault])
        if fault.startswith("echo-at:"):  # echo-at:<status>:<offset>: the credentials quoted at a chosen byte
            return _echo_at(request, fault)
        if fault == "401-echo":  # a gateway that answers 401 with the request's headers quoted as JSON
            sent = {name: request.headers.get(name, "") for name in ("api-key", "Ocp-Apim-Subscription-Key")}
            return self.error(401, "401", f"Access denied. Request headers: {json.dumps(sent)}")
        if fault == "echo-key":  # some servers quote the keys they were given back in the error
            key = request.headers.get("api-key", "")
            apim = request.headers.get("Ocp-Apim-Subscription-Key", "")
            quoted = f"Request with key {key} was rejected." + (f" Subscription key: {apim}." if apim else "")
            return self.error(400, "invalid_request_error", quoted)
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)
        if fault == "reset":
            return await self._reset(request)
        if fault == "garbage":
            self.statuses["200-garbage"] += 1
            return web.Response(
                status=200, body=b'{"id": "chatcmpl-trunc", "choices": [{"index', content_type="application/json"
            )
        if api == "embeddings":
            answer = embeddings(body)
        elif api == "responses":
            answer = response(body, number=self.requests, fault=fault)
        else:
            answer = completion(body, number=self.requests, fault=fault)
        self.statuses["200"] += 1
        self.answered[text] += 1
        headers = {**headers, "x-request-id": f"req-sim-{self.tag}-{self.requests}"}
        if request.transport is not None and not request.transport.is_closing():  # a client that gave up gets none
            asked.request_id = headers["x-request-id"]
            asked.broken = fault in BROKEN or fault.startswith("shape")
        if fault == "headers":
            headers.update(absurd_headers(self.rng, RATE_HEADERS))
        if fault.startswith("shape"):
            self.statuses["200-shape"] += 1
            kind = "chat" if api == "completions" else api
            broken = broken_answer(kind, answer, self.rng, fault.partition(":")[2] or None)
            raw = broken if isinstance(broken, bytes) else json.dumps(broken).encode()  # big ints too
            return web.Response(status=200, body=raw, content_type="application/json", headers=headers)
        if fault in ("huge", "slow"):
            return await self._stream(request, answer, headers, fault)
        return json_response(200, answer, headers)

    async def _stream(
        self, request: web.Request, answer: dict[str, Any], headers: dict[str, str], fault: str
    ) -> web.StreamResponse:
        """A valid answer sent in chunks, with no length: ``huge`` pads it to ``huge_bytes``, ``slow`` trickles it."""
        self.statuses[f"200-{fault}"] += 1
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        raw = orjson.dumps(answer)
        with contextlib.suppress(ConnectionError):  # a client that stops reading a huge answer drops it
            await self._trickle(response, raw, fault)
        return response

    async def _trickle(self, response: web.StreamResponse, raw: bytes, fault: str) -> None:
        if fault == "slow":
            for i in range(4):
                await response.write(raw[i * len(raw) // 4 : (i + 1) * len(raw) // 4])
                await asyncio.sleep(self.config.slow_seconds / 4)
        else:
            await response.write(raw[:-1] + b', "padding": "')
            chunk = b"x" * (1 << 20)
            for _ in range(self.config.huge_bytes // len(chunk)):
                await response.write(chunk)
            await response.write(b'"}')
        await response.write_eof()

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        """Start a 200 answer, then drop the connection mid-body."""
        self.statuses["reset"] += 1
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Content-Length": "4096"}
        )
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-reset", "choi')
        assert request.transport is not None
        request.transport.abort()
        return response

    def _throttled(self, retry_after: float | None, headers: dict[str, str]) -> web.Response:
        if retry_after is None:  # a gateway that gives no hint
            return self.error(429, "429", "Too many requests.", headers)
        seconds = max(1, round(retry_after + 0.4999))
        ms = str(int(retry_after * 1000))
        waits = {"retry-after-ms": ms, "x-ms-retry-after-ms": ms, "retry-after": str(seconds)}
        extra = {**headers, **{name: waits[name] for name in self.config.retry_after_headers}}
        message = (
            "Requests to the ChatCompletions_Create Operation have exceeded rate limit. "
            f"Please retry after {seconds} seconds."
        )
        return self.error(429, "429", message, extra)


def _echo_at(request: web.Request, fault: str) -> web.Response:
    """A body, not JSON, that quotes every credential of the request from byte ``offset`` on."""
    _, status, offset = fault.split(":")
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
    credentials = [request.headers.get("api-key", ""), bearer, request.headers.get("Ocp-Apim-Subscription-Key", "")]
    quoted = " ".join(c for c in credentials if c)
    body = b"x" * int(offset) + quoted.encode() + b" was rejected" + b"." * 3000
    return web.Response(status=int(status), body=body, content_type="text/plain")


@asynccontextmanager
async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[str, Simulator]]:
    """Run the simulator in this event loop; yields (base URL, simulator)."""
    simulator = Simulator(config)
    # A short shutdown: a handler still "hanging" must not hold up whoever stops the simulator.
    runner = web.AppRunner(simulator.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://{host}:{bound}", simulator
    finally:
        await runner.cleanup()


@contextmanager
def serve_in_thread(config: SimConfig, port: int = 0) -> Iterator[tuple[str, Simulator]]:
    """Run the simulator on its own event loop in a thread (for sync callers: tests, benchmarks)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"], box["loop"] = stop, asyncio.get_running_loop()
        async with serve(config, port=port) as (url, simulator):
            box["url"], box["sim"] = url, simulator
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the simulator did not start")
    try:
        yield box["url"], box["sim"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=30)
