"""The connection to the endpoint: one attempt -> Reply or AttemptError.

The openai SDK client is the source of truth for *where* and *how* to call:
the base URL, the api-version query, the auth header and the SDK's standard
headers all come from an ``AsyncAzureOpenAI`` / ``AsyncOpenAI`` built with
``max_retries=0``. The request itself goes out through one aiohttp session
(pool sized to the concurrency): the SDK's per-request path (parameter
transformation, httpx URL handling, pydantic parsing) costs several times the
CPU of the HTTP exchange, and at 1000+ requests/s that is the ceiling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import orjson

from ..config import Endpoint, RetryPolicy
from ..errors import AttemptError, EndpointRefused, LineRefused, Malformed, Outage, RateLimited, Redirected, Refused
from ..protocol import (
    ACCEPT_ENCODING,
    ANSWERS,
    APIS,
    CONTENT_ENCODING,
    LOCATION,
    MAX_DEPTH,
    THROTTLED,
    Api,
    BodyDecoder,
    TooDeep,
    Unreadable,
    answer_problem,
    api_path,
    clean_usage,
    is_redirect,
    is_retryable_status,
    parse_retry_after,
    read_json,
    redirect_message,
    refused_by,
    request_id,
)
from ..redact import Redactor
from .auth import Tokens

if TYPE_CHECKING:
    from openai import AsyncOpenAI

HINTS = {  # codes Azure sends with a 400 that no retry will fix
    "context_length_exceeded": "HINT: this input plus max_tokens is longer than the model's context window; "
    "shorten it or lower --max-tokens",
    "content_filter": "The prompt was refused by the content filter; asking again will not help.",
}


@dataclass(frozen=True, slots=True)
class Reply:
    body: dict[str, Any]
    raw: bytes
    request_id: str | None
    headers: Mapping[str, str]


def sdk_client(endpoint: Endpoint) -> AsyncOpenAI:
    """The SDK client that defines URL, auth and headers; its own retries are off, and so are redirects.

    The SDK's default HTTP client follows redirects (``follow_redirects=True`` in openai's
    ``_base_client``), carrying the key and every header along: ours never does (a 3xx is an error).
    """
    # Imported here: the SDK takes over a second to import, and --help or --dry-run never need it.
    from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAsyncHttpxClient

    common: dict[str, Any] = {
        "default_headers": dict(endpoint.headers),
        "max_retries": 0,
        "http_client": DefaultAsyncHttpxClient(follow_redirects=False),
    }
    if endpoint.is_azure_v1:  # the v1 API: OpenAI's routes under /openai/v1, no api-version, model in the body
        return AsyncOpenAI(base_url=f"{endpoint.base_url}/openai/v1/", api_key=endpoint.api_key, **common)
    if endpoint.kind == "azure" and endpoint.token_provider is not None:
        return AsyncAzureOpenAI(  # the token itself is set per request, as the SDK does (Connection.send)
            azure_endpoint=endpoint.base_url,
            azure_ad_token_provider=endpoint.token_provider,
            api_version=endpoint.api_version,
            **common,
        )
    if endpoint.kind == "azure":
        return AsyncAzureOpenAI(
            azure_endpoint=endpoint.base_url, api_key=endpoint.api_key, api_version=endpoint.api_version, **common
        )
    return AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, **common)


def request_target(sdk: AsyncOpenAI, endpoint: Endpoint, api: Api = "chat") -> tuple[str, dict[str, str]]:
    """The URL and headers of ``api``'s requests, exactly as the SDK would send them."""
    url = f"{str(sdk.base_url).rstrip('/')}/{api_path(endpoint.kind, endpoint.api_version, endpoint.deployment, api)}"
    if query := {k: str(v) for k, v in sdk.default_query.items()}:
        url += "?" + urlencode(query)
    headers = {k: v for k, v in sdk.default_headers.items() if isinstance(v, str)}
    headers.update(sdk.auth_headers)
    headers["Content-Type"] = "application/json"
    return url, headers


MiB = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024  # an error's body is read this far: enough for any message, never a flood


class Connection:
    """One pooled aiohttp session posting pre-serialised requests. Build with ``open`` in the event loop.

    ``answered`` turns True at the first HTTP answer of any status: from then on the endpoint is
    known to be reachable, whatever it answers (see ``attempts.fatal_error``).
    """

    def __init__(
        self,
        urls: dict[Api, str],
        headers: dict[str, str],
        *,
        concurrency: int,
        timeout: float,
        tokens: Tokens | None = None,
        max_response_bytes: int = 16 * MiB,
        redactor: Redactor | None = None,
    ) -> None:
        self.urls, self.headers, self.tokens = urls, headers, tokens
        self.redactor = redactor or Redactor()
        self.timeout, self.max_response_bytes = timeout, max_response_bytes
        self.answered = False
        self.headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}  # what ``protocol.BodyDecoder`` reads
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0)),
            auto_decompress=False,  # decoded by ``_body``, where the status and headers are known and sizes bounded
        )

    def where(self, api: Api = "chat") -> str:
        """``api``'s URL without its query: the route a request tried, for messages."""
        return self.urls[api].split("?")[0]

    @classmethod
    async def open(cls, endpoint: Endpoint, retry: RetryPolicy, *, concurrency: int, redactor: Redactor) -> Connection:
        """Ask the SDK where and how to call, then close it: only the aiohttp session is kept.

        The endpoint's secrets join ``redactor`` first, and so does every Entra ID token it
        hands out later: an error's body passes through it before any of it is kept or cut.
        ``retry`` gives the timeout per attempt and the largest answer read (``response_too_large``).
        """
        redactor.extend(endpoint.secrets)
        provider = endpoint.token_provider
        tokens = Tokens(provider, on_new=redactor.add) if provider is not None else None
        sdk = sdk_client(endpoint)
        try:
            urls = {api: request_target(sdk, endpoint, api)[0] for api in APIS}
            headers = request_target(sdk, endpoint)[1]
        finally:
            await sdk.close()
        return cls(
            urls,
            headers,
            concurrency=concurrency,
            timeout=retry.timeout,
            tokens=tokens,
            max_response_bytes=retry.max_response_bytes,
            redactor=redactor,
        )

    async def send(self, payload: bytes, api: Api = "chat", request: Mapping[str, Any] | None = None) -> Reply:
        """One attempt with a hard deadline. Raises AttemptError, never an aiohttp exception.

        A redirect is not followed (``Redirected``). Once the status and headers are in, a failure
        still names the answer's request id: the server may count it as answered.

        :param request: the body sent, which the answer is checked against (``protocol.answer_problem``).
        """
        head: tuple[int, Mapping[str, str]] | None = None
        try:
            async with asyncio.timeout(self.timeout):
                sent, token = self.headers, None
                if self.tokens is not None:
                    token = await self.tokens.get()
                    sent = {**sent, "Authorization": f"Bearer {token}"}
                async with self.session.post(
                    self.urls[api], data=payload, headers=sent, allow_redirects=False
                ) as response:
                    self.answered = True
                    head = response.status, response.headers
                    raw = b"" if is_redirect(response.status) else await self._body(response)
        except TimeoutError:
            waited = f"no response within {self.timeout:g} s" if head is None else "the body did not arrive in time"
            raise Outage("timeout", f"{waited} (--timeout {self.timeout:g})", request_id=_id(head)) from None
        except aiohttp.ClientError as exc:
            failed = "connection failed" if head is None else f"the HTTP {head[0]} answer's body could not be read"
            raise Outage("connection_error", f"{failed}: {_describe(exc)}", request_id=_id(head)) from None
        except Unreadable as exc:  # only an answer's (so after its head): an error's keeps what could be decoded
            status = head[0] if head is not None else None
            message = f"HTTP {status} whose body cannot be read: {exc}"
            raise Malformed("malformed_response", message, status=status, request_id=_id(head)) from None
        status, headers = head
        if is_redirect(status):
            where = f"the endpoint ({api} route)"
            raise Redirected("redirect", redirect_message(status, headers.get(LOCATION), where), status=status)
        if status >= 400:  # read only so far: a secret cut at the end is masked too
            error = status_error(status, headers, self.redactor.cut_short(raw or b""))
            raise error if token is None else error.but(token=token)
        if raw is None:
            raise too_large(status, headers, self.max_response_bytes)
        if self.tokens is not None:
            self.tokens.worked()
        return decode_reply(status, headers, raw, api, request, self.redactor)

    async def _body(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The body, decoded (``protocol.BodyDecoder``) and counted while it streams, never past its limit.

        An error's is cut at ``ERROR_BODY_BYTES`` (and what could be decoded of it is kept); an answer
        past ``--max-response-mb`` is None, and the connection is dropped. A Content-Length bounds
        nothing: it may lie, and it counts encoded bytes.

        :raises Unreadable: an answer (not an error) whose body cannot be decoded.
        """
        error = response.status >= 400
        limit = ERROR_BODY_BYTES if error else self.max_response_bytes
        body = bytearray()
        try:
            decoder = BodyDecoder(response.headers.get(CONTENT_ENCODING))
            async for chunk in response.content.iter_chunked(1 << 16):
                body += decoder.feed(chunk, limit + 1 - len(body))
                if len(body) > limit:
                    break
            else:
                body += decoder.finish(limit + 1 - len(body))
        except Unreadable:
            if not error:
                raise
        if len(body) > limit:
            response.close()
            return bytes(body[:limit]) if error else None
        return bytes(body)

    async def close(self) -> None:
        await self.session.close()


def _describe(exc: BaseException) -> str:
    """An exception as text a record can hold: bounded, and any undecodable byte it quotes replaced."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _clip(text.encode("utf-8", "replace").decode("utf-8"))


def _id(head: tuple[int, Mapping[str, str]] | None) -> str | None:
    return request_id(head[1]) if head is not None else None


def decode_reply(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    api: Api = "chat",
    request: Mapping[str, Any] | None = None,
    redactor: Redactor | None = None,
) -> Reply:
    """A 200 body -> Reply; any body that is not an answer of ``api`` to ``request`` is a retryable
    ``malformed_response`` carrying the answer's request id (see ``protocol.answer_problem``); an
    answer nested too deep to write is ``response_too_deep``, recorded with its usage and not asked again."""
    try:
        body = read_json(raw)
    except orjson.JSONDecodeError:
        body = _NOT_JSON
    except TooDeep as deep:
        raise too_deep(status, headers, deep.value) from None
    problem = "the body is not JSON" if body is _NOT_JSON else answer_problem(api, body, request or {})
    if problem is not None:
        raise Malformed(
            "malformed_response",
            f"HTTP {status} that is not {ANSWERS[api]}: {problem}; body: {(redactor or Redactor()).clip(raw, 200)!r}",
            status=status,
            request_id=request_id(headers),
        )
    return Reply(body, raw, request_id(headers), headers)


_NOT_JSON = object()
MESSAGE_CHARS = 2000  # a server's error message is kept this far: enough to act on, never a flood


def too_large(status: int, headers: Mapping[str, str], limit: int) -> AttemptError:
    """An answer past the size limit: not read, and not asked again (it would be as large)."""
    return Refused(
        "response_too_large",
        f"the answer is larger than --max-response-mb ({limit / MiB:g} MB) once decoded"
        + "; HINT: raise --max-response-mb, or ask for less per line (fewer embeddings inputs, a lower max_tokens)",
        status=status,
        request_id=request_id(headers),
    )


def too_deep(status: int, headers: Mapping[str, str], value: Any) -> AttemptError:
    """An answer nested past ``MAX_DEPTH``: paid for, so recorded (its usage, not its body), and not asked again."""
    usage = clean_usage(value)
    return Refused(
        "response_too_deep",
        f"the answer nests JSON deeper than {MAX_DEPTH} levels, too deep to keep as a record; only its usage is "
        "kept. HINT: run again with --retry-failed to ask again",
        status=status,
        body={"usage": usage} if usage else None,
        request_id=request_id(headers),
    )


def status_error(status: int, headers: Mapping[str, str], raw: bytes) -> AttemptError:
    """An HTTP error response (its body already redacted, and cut) -> AttemptError with the server's code and message.

    What is kept of the body is bounded: its JSON if that encodes within ``ERROR_BODY_BYTES``, else its first
    characters; the message is cut at ``MESSAGE_CHARS``.
    """
    read, body = _error_body(raw)
    err = _field(read, "error")
    given, named = err.get("message"), err.get("code")
    message = _clip(given if isinstance(given, str) and given else f"HTTP {status}")
    code = _clip(str(named), 100) if isinstance(named, str | int) and str(named) else f"http_{status}"
    if hint := HINTS.get(code):
        message = f"{message} {hint}"
    kind = _reaction(status, code, err)
    return kind(
        code,
        f"HTTP {status}: {message}",
        status=status,
        body=body,
        retry_after=parse_retry_after(headers) if kind.RETRYABLE else None,
        request_id=request_id(headers),
    )


def _reaction(status: int, code: str, err: dict[str, Any]) -> type[AttemptError]:
    """How the engine reacts to an error status; for a 4xx retrying cannot fix, by whose refusal it is."""
    if status == THROTTLED:
        return RateLimited
    if is_retryable_status(status):
        return Outage
    inner, param = _field(err, "innererror").get("code"), err.get("param")
    whose = refused_by(status, code, inner if isinstance(inner, str) else None, str(param) if param else None)
    return EndpointRefused if whose == "endpoint" else LineRefused if whose == "line" else Refused


def _field(value: Any, name: str) -> dict[str, Any]:
    """``value[name]`` if both are JSON objects, else an empty one: an error body may have any shape."""
    found = value.get(name) if isinstance(value, dict) else None
    return found if isinstance(found, dict) else {}


def _error_body(raw: bytes) -> tuple[Any, Any]:
    """(what the message and code are read from, what the record keeps) of an error body.

    The record keeps the JSON if it is nested and sized within bounds, else the body's first characters.
    """
    try:
        value = read_json(raw)
    except orjson.JSONDecodeError:
        return None, _excerpt(raw)
    except TooDeep as deep:
        return deep.value, _excerpt(raw)
    if len(orjson.dumps(value)) > ERROR_BODY_BYTES:  # numbers may grow when written again (1E9 -> 1000000000.0)
        return value, _excerpt(raw)
    return value, value


def _excerpt(raw: bytes) -> str:
    return raw[:MESSAGE_CHARS].decode("utf-8", "replace")


def _clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
