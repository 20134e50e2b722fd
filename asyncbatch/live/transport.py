"""The transport: send one request, get a ``Reply`` or a typed failure (``errors.py``), never a library's exception.

``Transport`` is what the engine sends through (httpx's transport idea): ``AiohttpTransport`` on the wire,
and ``MemoryTransport``, an endpoint in memory for tests (httpx's ``MockTransport``). Both hand what they
read to the same boundary, ``protocol.reply_or_error``.

Where and how to call is the openai SDK's word (``sdk.py``); the request itself goes out through one aiohttp
session (its pool sized by ``TransportOptions.pool_size``): the SDK's per-request path (parameter
transformation, httpx URL handling, pydantic parsing) costs several times the CPU of the HTTP exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from ..config import Endpoint, TransportOptions, proxy_credentials
from ..errors import AttemptError, Malformed, NoAnswer, Outage
from ..protocol import (
    ACCEPT_ENCODING,
    APIS,
    CONTENT_ENCODING,
    ERROR_BODY_BYTES,
    ROUTES,
    Api,
    BodyDecoder,
    Reply,
    Unreadable,
    clip,
    is_error,
    is_redirect,
    is_success,
    reply_or_error,
    request_id,
    tunnel_refusal,
    untrusted_certificate,
)
from ..redact import Redactor
from ..sdk import request_target, sdk_client
from .tokens import Tokens


class Transport(Protocol):
    """Sends one request with a hard deadline: a ``Reply``, or an ``AttemptError`` of the class the engine reacts to.

    ``tokens`` is the Entra ID token source the requests carry, if any (a 401 asks it for a fresh one).
    """

    tokens: Tokens | None

    def where(self, api: Api = "chat") -> str:
        """``api``'s URL without its query: the route a request tried, for messages."""
        ...

    async def send(self, payload: bytes, api: Api, request: Mapping[str, Any]) -> Reply:
        """:param request: the body sent, which the answer is checked against (``protocol.answer_problem``)."""
        ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """One pooled aiohttp session posting pre-serialised requests. Build with ``open`` in the event loop."""

    def __init__(
        self,
        urls: dict[Api, str],
        headers: dict[str, str],
        options: TransportOptions,
        *,
        tokens: Tokens | None = None,
        redactor: Redactor | None = None,
        proxy: str | None = None,
    ) -> None:
        self.urls, self.tokens, self.options = urls, tokens, options
        self.redactor = redactor or Redactor()
        self.proxy, to_proxy, self.proxy_headers = _through(proxy, next(iter(urls.values()), ""))
        self.headers = {**headers, **to_proxy, "Accept-Encoding": ACCEPT_ENCODING}  # what ``BodyDecoder`` reads
        pool = options.pool_size or 100  # None: aiohttp's own default (a run sets it to its concurrency)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, limit_per_host=pool),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(options.timeout, 10.0)),
            auto_decompress=False,  # decoded by ``_body``, where the status and headers are known and sizes bounded
        )

    def where(self, api: Api = "chat") -> str:
        return self.urls[api].split("?")[0]

    @classmethod
    async def open(cls, endpoint: Endpoint, options: TransportOptions, *, redactor: Redactor) -> AiohttpTransport:
        """Ask the SDK where and how to call, then close it: only the aiohttp session is kept.

        The endpoint's secrets join ``redactor`` first, and so does every Entra ID token it
        hands out later: an error's body passes through it before any of it is kept or cut.
        """
        redactor.extend(endpoint.secrets)
        provider = endpoint.token_provider
        tokens = (
            Tokens(provider, on_new=lambda token: redactor.add(token, id(endpoint))) if provider is not None else None
        )
        sdk = sdk_client(endpoint)
        try:
            urls = {api: request_target(sdk, endpoint, api)[0] for api in APIS}
            headers = request_target(sdk, endpoint)[1]
        finally:
            await sdk.close()
        return cls(urls, headers, options, tokens=tokens, redactor=redactor, proxy=endpoint.proxy)

    async def send(self, payload: bytes, api: Api, request: Mapping[str, Any]) -> Reply:
        """A redirect is not followed (``Redirected``). Once the status and headers are in, a failure
        still names the answer's request id: the server may count it as answered."""
        head: tuple[int, Mapping[str, str]] | None = None
        timeout, token = self.options.timeout, None
        try:
            async with asyncio.timeout(timeout):
                sent = self.headers
                if self.tokens is not None:
                    token = await self.tokens.get()
                    sent = {**sent, "Authorization": f"Bearer {token}"}
                async with self.session.post(
                    self.urls[api],
                    data=payload,
                    headers=sent,
                    allow_redirects=False,
                    proxy=self.proxy,
                    proxy_headers=self.proxy_headers,
                ) as response:
                    head = response.status, response.headers
                    raw = b"" if is_redirect(response.status) else await self._body(response)
        except TimeoutError:
            waited = f"no response within {timeout:g} s" if head is None else "the body did not arrive in time"
            raise _broken(head)("timeout", f"{waited} (--timeout {timeout:g})", request_id=_id(head)) from None
        except aiohttp.ClientError as exc:
            if head is None and _head_too_large(exc):
                raise NoAnswer("header_too_large", HEADER_TOO_LARGE) from None
            if (
                head is None
                and isinstance(exc, aiohttp.ClientHttpProxyError)
                and (refusal := tunnel_refusal(exc.status))
            ):
                said = f"the proxy answered HTTP {exc.status} {exc.message} to the tunnel's CONNECT"
                raise refusal(refusal.KIND, said, status=exc.status) from None
            if head is None and (why := untrusted_certificate(exc)):
                said = f"the server's TLS certificate is not trusted here ({why})"
                raise NoAnswer("certificate", said) from None
            failed = "connection failed" if head is None else f"the HTTP {head[0]} answer's body could not be read"
            raise _broken(head)("connection_error", f"{failed}: {_describe(exc)}", request_id=_id(head)) from None
        except Unreadable as exc:  # only an answer's (so after its head): an error's keeps what could be decoded
            status = head[0] if head is not None else None
            message = f"HTTP {status} whose body cannot be read: {exc}"
            raise Malformed("malformed_response", message, status=status, request_id=_id(head)) from None
        status, headers = head
        if self.tokens is not None and is_success(status):
            self.tokens.worked()  # the token was taken, whatever the body
        try:
            return _read(self, status, headers, raw, api, request)
        except AttemptError as error:
            if token is None:
                raise
            raise error.but(token=token) from None  # which token was refused: a 401 asks for a fresher one

    async def _body(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The body, decoded (``protocol.BodyDecoder``) and counted while it streams, never past its limit.

        An error's is cut at ``ERROR_BODY_BYTES`` (and what could be decoded of it is kept); an answer
        past ``--max-response-mb`` is None, and the connection is dropped. A Content-Length bounds
        nothing: it may lie, and it counts encoded bytes.

        :raises Unreadable: an answer (not an error) whose body cannot be decoded.
        """
        error = is_error(response.status)
        limit = ERROR_BODY_BYTES if error else self.options.max_response_bytes
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


Answer = tuple[int, Mapping[str, str], bytes]  # what a server sends: the status, headers and body bytes


class MemoryTransport:
    """An endpoint in memory, for tests (httpx's ``MockTransport``): ``handler`` answers each request body with
    what a server would send, and that is read by the same boundary as an answer off the wire.

    ``sent`` keeps every request body, in order.
    """

    def __init__(
        self,
        handler: Callable[[dict[str, Any]], Answer],
        *,
        url: str = "http://memory.test",
        options: TransportOptions | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self.handler, self.url, self.tokens = handler, url, tokens
        self.options, self.redactor = options or TransportOptions(), Redactor()
        self.sent: list[dict[str, Any]] = []

    def where(self, api: Api = "chat") -> str:
        return f"{self.url}/{ROUTES[api]}"

    async def send(self, payload: bytes, api: Api, request: Mapping[str, Any]) -> Reply:
        self.sent.append(orjson.loads(payload))
        status, headers, raw = self.handler(self.sent[-1])
        limit = ERROR_BODY_BYTES if is_error(status) else self.options.max_response_bytes
        return _read(self, status, headers, raw if len(raw) <= limit else None, api, request)

    async def close(self) -> None:
        return None


def _read(
    transport: AiohttpTransport | MemoryTransport,
    status: int,
    headers: Mapping[str, str],
    raw: bytes | None,
    api: Api,
    request: Mapping[str, Any],
) -> Reply:
    limit, where = transport.options.max_response_bytes, f"the endpoint ({api} route)"
    return reply_or_error(status, headers, raw, api, request, redactor=transport.redactor, limit=limit, where=where)


HEADER_TOO_LARGE = (
    "the answer's status line or one of its headers is longer than aiohttp reads (max_line_size and "
    "max_field_size, 8190 bytes), so it cannot be read. HINT: something between you and the model (a gateway, a "
    "proxy) adds a header that large, often a cookie: ask its owner to trim it, or point the endpoint past it"
)


def _through(proxy: str | None, url: str) -> tuple[str | None, dict[str, str], dict[str, str] | None]:
    """The proxy's URL for aiohttp (without its user name and password), and its ``Proxy-Authorization``: in the
    headers of a plain ``http://`` request, which the proxy reads itself; for an ``https://`` one, on the tunnel's
    CONNECT alone, never through the tunnel to the endpoint. (``proxy_credentials``: the SDK's client sends the
    same header; aiohttp's own, from the URL, is Latin-1 and fails on what that cannot hold.)"""
    if proxy is None:
        return None, {}, None
    bare, _, authorization = proxy_credentials(proxy)
    if authorization is None:
        return bare, {}, None
    header = {"Proxy-Authorization": authorization}
    return (bare, header, None) if url.startswith("http:") else (bare, {}, header)


def _head_too_large(exc: aiohttp.ClientError) -> bool:
    """aiohttp's words for a head past its limits (``http_exceptions.LineTooLong``, raised as a 400 of its own)."""
    return isinstance(exc, aiohttp.ClientResponseError) and "Got more than" in str(exc.message)


def _broken(head: tuple[int, Mapping[str, str]] | None) -> type[Outage]:
    """No answer at all, or an answer whose body never came whole: only the first may mean "unreachable"."""
    return NoAnswer if head is None else Outage


def _describe(exc: BaseException) -> str:
    """An exception as text a record can hold: bounded, and any undecodable byte it quotes replaced."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return clip(text.encode("utf-8", "replace").decode("utf-8"))


def _id(head: tuple[int, Mapping[str, str]] | None) -> str | None:
    return request_id(head[1]) if head is not None else None
