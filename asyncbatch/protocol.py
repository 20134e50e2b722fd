"""The wire, once: routes, status rules, header names, and what a server sends, read defensively.

Every fact about the wire that the engine relies on is written here and only
here: the APIs and their routes (classic Azure, v1), the statuses worth
retrying and those that end a run, the header names, and the Batch API's
retryable line codes.

Nothing a server sends is trusted to have the documented shape. Every header
value is parsed with bounds (``inf``, ``nan``, negative, 400 digits and
unparseable dates mean "no hint"), and every 200 body is checked here, once,
before anything reads it: ``answer_problem`` says what makes a body not an
answer of its API (a stream chunk, ``choices: [null]``, a ``message`` that is a
string, usage that is not a count, embeddings that do not match the inputs),
and the engine turns that into a retried ``malformed_response``. The readers
below it (``read_usage``, ``embedding_vectors``) may then assume the shape.

JSON from outside is parsed by ``read_json`` alone, which refuses nesting deeper
than ``MAX_DEPTH``: whatever it accepts, a record can hold and the writer can encode.
A body is decoded by ``BodyDecoder`` alone, never producing more bytes than asked for
(a compressed bomb stops at the limit). A redirect is never followed (``is_redirect``,
``redirect_message``).
"""

from __future__ import annotations

import math
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Literal, get_args
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from .errors import (
    AttemptError,
    EndpointRefused,
    Forbidden,
    LineRefused,
    Malformed,
    NotFound,
    Outage,
    ProxyForbidden,
    ProxyRefused,
    RateLimited,
    Redirected,
    Refused,
    Rejected,
    Transient,
    Unauthorized,
    Unkept,
)
from .redact import Redactor

MAX_COUNT = 10**12  # a header or usage count beyond this is not a count: "unknown"
MAX_HINT_CHARS = 64  # a header value longer than this is not a number or a date anyone sends

# -- APIs and routes ---------------------------------------------------------------------------

Api = Literal["chat", "embeddings", "responses"]
APIS: tuple[Api, ...] = get_args(Api)
ROUTES: dict[Api, str] = {"chat": "chat/completions", "embeddings": "embeddings", "responses": "responses"}
ANSWERS: dict[Api, str] = {"chat": "a chat completion", "embeddings": "an embeddings list", "responses": "a response"}
V1 = "/v1"
# A Batch API line's url, with or without /v1, and the API it names
BATCH_URLS: dict[str, Api] = {f"{prefix}/{route}": api for api, route in ROUTES.items() for prefix in ("", V1)}


def under_v1(kind: str, api_version: str) -> bool:
    """OpenAI and Azure's v1 API: routes under /v1, no deployment in the path, the model named in the body."""
    return kind == "openai" or api_version == "v1"


def api_path(kind: str, api_version: str, deployment: str, api: Api = "chat") -> str:
    """The route as the SDK builds it: Azure's classic API puts chat and embeddings under the deployment."""
    if not under_v1(kind, api_version) and api != "responses":
        return f"deployments/{quote(deployment, safe='')}/{ROUTES[api]}"
    return ROUTES[api]


RESPONSES_SINCE = "2025-04-01-preview"  # the first classic api-version with a /responses route
STRINGS_ONLY_UNTIL = "2024-10-21"  # embeddings: token-array inputs are in no api-version up to this one


def unsupported(api: Api, body: Mapping[str, Any], kind: str, api_version: str) -> str | None:
    """What this endpoint's api-version has no place for in this request; None if nothing.

    Dated api-versions compare as text (``2024-10-21`` < ``2025-04-01-preview``); the v1 API and
    OpenAI have every route.
    """
    if under_v1(kind, api_version):
        return None
    v1 = "HINT: use the v1 API (--api-version v1, or an endpoint ending in /openai/v1)"
    if api == "responses" and api_version < RESPONSES_SINCE:
        return (
            f"the Responses API has no route in api-version {api_version} (it has one from {RESPONSES_SINCE}). "
            f"{v1}, or --api-version {RESPONSES_SINCE} or later"
        )
    inputs = body.get("input")
    tokens = isinstance(inputs, list) and any(isinstance(i, int) or (isinstance(i, list) and i) for i in inputs)
    if api == "embeddings" and api_version <= STRINGS_ONLY_UNTIL and tokens:
        return (
            f"'input' holds token arrays, which api-version {api_version} does not take (only text). "
            f"{v1}, or an api-version after {STRINGS_ONLY_UNTIL}"
        )
    return None


# Azure's Global Batch takes no embeddings (Microsoft's docs, 2026); OpenAI's Batch API does.
NOT_IN_AZURE_BATCH: frozenset[Api] = frozenset({"embeddings"})


def batchable(kind: str, api: Api) -> bool:
    """Whether a Batch API job of this endpoint may carry ``api``'s lines; the others run live."""
    return not (kind == "azure" and api in NOT_IN_AZURE_BATCH)


def batch_url(api: Api, v1: bool) -> str:
    """A Batch API line's (and job's) endpoint: the job's endpoint and its lines' urls must agree."""
    return f"{V1 if v1 else ''}/{ROUTES[api]}"


# -- statuses ---------------------------------------------------------------------------------
# Every status number the engine reacts to is read here, and only here: past this point a failure is its class
# (``errors.py``), and no other module compares a status.

RETRYABLE_STATUSES = frozenset({408, 409, 429})
SHOULD_RETRY = "x-should-retry"  # the server's own word on whether to ask again, as openai-python honours it
# The endpoint's refusals, not a line's: the credentials (401, 403), the deployment (404) or the proxy's
# credentials (407, whether the proxy answers the request or its CONNECT). They end the run.
ENDPOINT_REFUSALS: dict[int, type[EndpointRefused]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    407: ProxyRefused,
}
# A proxy's refusal of an ``https://`` endpoint's tunnel (its CONNECT), whichever HTTP client asked: its credentials
# (407), or the host (403: the proxy's policy). The path's, never a line's: they end the run too.
TUNNEL_REFUSALS: dict[int, type[EndpointRefused]] = {403: ProxyForbidden, 407: ProxyRefused}
# Error codes (or Azure's ``innererror.code``) that judge one line's content, whatever the status: the
# content filter, a prompt past the context window, a prompt or image refused. Never the endpoint's.
LINE_CODES = frozenset(
    {
        "content_filter",
        "ResponsibleAIPolicyViolation",
        "content_policy_violation",
        "context_length_exceeded",
        "string_above_max_length",
        "invalid_prompt",
        "invalid_image",
        "invalid_image_format",
        "image_too_large",
    }
)
# A 404's codes that say the deployment or its model is gone, whatever field the error names
GONE_CODES = frozenset({"DeploymentNotFound", "model_not_found", "ModelNotFound"})
# A Batch API line's error codes worth sending again live
RETRYABLE_BATCH_CODES = frozenset(
    {"server_error", "internal_error", "rate_limit_exceeded", "timeout", "429", "500", "503"}
)


def should_retry(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """Whether another attempt may get another answer (openai-python's ``_should_retry``): the server's
    ``x-should-retry`` if it says ``true`` or ``false``, else 408, 409, 429 and every 5xx."""
    said = (headers or {}).get(SHOULD_RETRY, "").strip().lower()
    if said in ("true", "false"):
        return said == "true"
    return status in RETRYABLE_STATUSES or status >= 500


def is_success(status: int) -> bool:
    return 200 <= status < 300


def is_error(status: int) -> bool:
    """A status whose body is an error's: read only so far (``ERROR_BODY_BYTES``), and never an answer."""
    return status >= 400


def fatal_kind(status: int) -> str:
    """The ``FatalAPIError.kind`` of a refusal that ends a run (the Batch API's calls): by whose refusal it is."""
    refusal = ENDPOINT_REFUSALS.get(status)
    return refusal.KIND if refusal is not None else "rejected"


def error_class(
    status: int, headers: Mapping[str, str], code: str, inner: str | None, param: str | None
) -> type[AttemptError]:
    """How the engine reacts to an error status (``errors.py``): the one place a status becomes a class.

    A line's code wins over the status (some gateways answer a flagged prompt with a 403). A 404 that names a
    field of the request (``param``) is about that line, not the deployment, unless its code says the model or
    deployment itself is gone (``"param": "model"`` names the deployment).
    """
    if code in LINE_CODES or inner in LINE_CODES:
        return LineRefused
    retried = should_retry(status, headers)
    if status == 429 and retried:
        return RateLimited
    if retried:
        return Outage if status >= 500 else Transient
    line_field = status == 404 and param and code not in GONE_CODES and inner not in GONE_CODES
    if status in ENDPOINT_REFUSALS and not line_field:
        return ENDPOINT_REFUSALS[status]
    return Rejected if status < 500 else Refused


def tunnel_refusal(status: int | None) -> type[EndpointRefused] | None:
    """What a proxy's answer to a tunnel's CONNECT (an ``https://`` endpoint's) refuses, if the path: or None (a
    502, a 503: the proxy could not reach the endpoint, as a connection that failed)."""
    return TUNNEL_REFUSALS.get(status) if status is not None else None


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the server's TLS certificate was not trusted, if that is what ``exc`` (aiohttp's or the SDK's connection
    failure) comes from: retrying never fixes it, and the fix is this machine's (a proxy inspecting TLS signs with a
    CA only the organisation's bundle holds)."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain of causes; a loop in it ends here
        if seen is None:
            return None
        found = getattr(seen, "certificate_error", None)  # aiohttp keeps it beside, not as the cause
        if isinstance(found, BaseException):
            seen = found
        elif isinstance(seen, ssl.SSLCertVerificationError):
            return getattr(seen, "verify_message", None) or str(seen)
        else:
            seen = seen.__cause__ or seen.__context__
    return None


def is_redirect(status: int) -> bool:
    """A 3xx: never followed, since the request would carry the key and every header to wherever it points."""
    return 300 <= status < 400


LOCATION = "location"
MAX_LOCATION_CHARS = 300


def redirect_target(location: str | None) -> str:
    """A redirect's Location as a message may show it: no userinfo, printable, bounded."""
    if not location:
        return "no Location given"
    try:
        parts = urlsplit(location.strip())
        host = parts.netloc.rpartition("@")[2]
        shown = urlunsplit(parts._replace(netloc=host))
    except ValueError:
        shown = location.rpartition("@")[2]
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= MAX_LOCATION_CHARS else shown[: MAX_LOCATION_CHARS - 3] + "..."


def redirect_message(status: int, location: str | None, where: str) -> str:
    """Why a redirect stops the run, and what to fix: the endpoint, not the redirect."""
    return (
        f"{where} answered HTTP {status}, redirecting to {redirect_target(location)}. asyncbatch never follows "
        "a redirect: the request would carry the key and every --header value to another address. Set the "
        "endpoint to the address the service answers at (AZURE_OPENAI_ENDPOINT, OPENAI_BASE_URL, or the "
        "deployment's endpoint); nothing was recorded for the lines that got it"
    )


# -- headers -----------------------------------------------------------------------------------

RETRY_AFTER, RETRY_AFTER_MS = "retry-after", "retry-after-ms"
MS_RETRY_AFTER_MS = "x-ms-retry-after-ms"  # honoured by Azure's own SDKs, after retry-after-ms
REMAINING_TOKENS, REMAINING_REQUESTS = "x-ratelimit-remaining-tokens", "x-ratelimit-remaining-requests"
REQUEST_IDS = ("x-request-id", "apim-request-id")  # the service's, then API Management's


MAX_REQUEST_ID_CHARS = 200


def request_id(headers: Mapping[str, str]) -> str | None:
    """The answer's id, as text a record can hold: bytes that are not UTF-8 replaced, and bounded."""
    value = next((value for name in REQUEST_IDS if (value := headers.get(name))), None)
    if value is None:
        return None
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # aiohttp keeps bad bytes escaped
    return text if len(text) <= MAX_REQUEST_ID_CHARS else text[: MAX_REQUEST_ID_CHARS - 3] + "..."


def seconds(value: str | None, scale: float = 1.0) -> float | None:
    """A non-negative, finite number of seconds from a header value (``scale``: 0.001 for ms); else None."""
    if value is None or len(value) > MAX_HINT_CHARS:
        return None
    try:
        number = float(value) * scale
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``retry-after`` (seconds or an HTTP
    date), the first usable; None: no usable hint."""
    for name in (RETRY_AFTER_MS, MS_RETRY_AFTER_MS):
        if (ms := seconds(headers.get(name), 0.001)) is not None:
            return ms
    value = headers.get(RETRY_AFTER)
    if value is None or len(value) > MAX_HINT_CHARS:
        return None
    if (wait := seconds(value)) is not None:
        return wait
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def int_header(headers: Mapping[str, str], name: str) -> int | None:
    """A rate-limit header as an int; missing, unreadable, negative (``-1`` is reported) or absurd is unknown."""
    value = headers.get(name)
    if value is None or not value.isascii() or not value.strip().isdigit() or len(value.strip()) > 13:
        return None
    number = int(value)
    return number if number <= MAX_COUNT else None


# -- bodies ------------------------------------------------------------------------------------

CONTENT_ENCODING = "content-encoding"
ACCEPT_ENCODING = "gzip, deflate"  # sent with every request: what ``BodyDecoder`` reads


class Unreadable(ValueError):
    """A body that cannot be decoded: an encoding not asked for, broken compressed data, or a stream cut short."""


class BodyDecoder:
    """A body's bytes as they stream in, decoded (gzip, deflate, identity), never more at once than asked for.

    Decoded here rather than by aiohttp: aiohttp decodes inside its HTTP parser, where a broken or
    unknown encoding fails before the status and headers reach the caller, so a paid answer could
    not even be named by its request id. zlib's ``max_length`` bounds every call, whatever the ratio.
    """

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "identity").strip().lower()
        if self.encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise Unreadable(f"Content-Encoding {_short(encoding)}, which was not asked for (only {ACCEPT_ENCODING})")
        self._zlib: Any = None
        self._tail = b""  # compressed bytes read and not decoded yet

    def feed(self, chunk: bytes, room: int) -> bytes:
        """Up to ``room`` decoded bytes from what came so far; what is left waits for the next call.

        :raises Unreadable: the compressed data is broken.
        """
        data, self._tail = self._tail + chunk, b""
        if self.encoding == "identity":
            self._tail = data[max(room, 0) :]
            return data[: max(room, 0)]
        out = bytearray()
        try:
            while data and len(out) < room:
                if self._zlib is not None and self._zlib.eof and self.encoding != "deflate":
                    data = data.lstrip(b"\0")  # zeros padding the end of a gzip file: ignored, as gzip -d does
                    if not data:
                        break
                if self._zlib is None or self._zlib.eof:  # the first member, or the next of concatenated gzip members
                    self._zlib = zlib.decompressobj(self._wbits(data))
                out += self._zlib.decompress(data, room - len(out))
                data = self._zlib.unconsumed_tail or self._zlib.unused_data
        except zlib.error as exc:
            raise Unreadable(f"the {self.encoding} data is broken ({exc})") from None
        self._tail = data
        return bytes(out)

    def finish(self, room: int) -> bytes:
        """What is left, up to ``room`` bytes, at the end of the body.

        :raises Unreadable: the compressed stream stopped before its end (the body was cut short).
        """
        out = self.feed(b"", room)
        if self.encoding != "identity" and len(out) < room and (self._zlib is None or not self._zlib.eof):
            raise Unreadable(f"the {self.encoding} stream was cut short")
        return out

    def _wbits(self, data: bytes) -> int:
        if self.encoding != "deflate":
            return 16 + zlib.MAX_WBITS
        # "deflate" should be zlib-wrapped (RFC 9110), but many servers send raw deflate: told by the first byte
        return zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS


# -- JSON from outside -------------------------------------------------------------------------

# How deep JSON from a server may nest. A record holds a body 3 levels down (record, response, body)
# and orjson writes at most 254 levels, so anything accepted here can always be written.
MAX_DEPTH = 128
_KEEP = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _KEEP)
_SQUARE = bytes.maketrans(b"{}", b"[]")


class TooDeep(ValueError):
    """JSON nested deeper than ``MAX_DEPTH``. ``value`` is orjson's parse: read scalars from it, never keep it."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")
        self.value = value


def read_json(raw: bytes | str) -> Any:
    """JSON from outside, parsed once; nesting deeper than ``MAX_DEPTH`` is refused.

    :raises orjson.JSONDecodeError: not JSON (invalid UTF-8, cut short, nested past orjson's own 1024).
    :raises TooDeep: valid JSON nested deeper than ``MAX_DEPTH``.
    """
    value = orjson.loads(raw)
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if nests_deeper(data, MAX_DEPTH):
        raise TooDeep(value)
    return value


def nests_deeper(data: bytes, limit: int) -> bool:
    """Whether valid JSON text ``data`` nests arrays and objects more than ``limit`` deep (strings do not count).

    All at C speed, with no recursion: escapes are cut out, then everything but quotes and brackets
    (one pass over a large body), then the strings; fewer brackets than ``limit`` stop there. Otherwise
    each pass removes every empty pair: the passes needed to empty it are the depth.
    """
    if len(data) < 1 << 16 and data.count(b"[") + data.count(b"{") <= limit:  # most answers: two quick counts
        return False
    if b"\\" in data:  # escapes first: an escaped quote or backslash must not end a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(None, _NOT_STRUCTURE)
    if len(skeleton) - skeleton.count(b'"') <= limit:
        return False
    skeleton = b"".join(skeleton.split(b'"')[::2]).translate(_SQUARE)
    for _ in range(limit + 1):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return True


def clean_usage(body: Any) -> dict[str, int] | None:
    """The token counts of a body that is not kept (too deep to write): only counts, nothing else of it."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {key: usage[key] for key in USAGE_COUNTS if _is_count(usage.get(key))}
    return counts or None


# -- answers -----------------------------------------------------------------------------------


def answer_problem(api: str, body: Any, request: Mapping[str, Any]) -> str | None:
    """Why ``body`` is not an answer of ``api`` to ``request``; None when it is one."""
    if not isinstance(body, dict):
        return f"the body is {type(body).__name__}, not a JSON object"
    problem = {"chat": _chat_problem, "embeddings": _embeddings_problem, "responses": _responses_problem}[api](
        body, request
    )
    return problem or _usage_problem(body.get("usage"))


def _chat_problem(body: dict[str, Any], request: Mapping[str, Any]) -> str | None:
    if body.get("object") == "chat.completion.chunk":
        return "a stream chunk (chat.completion.chunk), not a chat completion"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no 'choices' list: not a chat completion"
    choice = choices[0]
    if not isinstance(choice, dict):
        return f"choices[0] is {_kind(choice)}, not an object"
    message = choice.get("message")
    if not isinstance(message, dict):
        if "delta" in choice:
            return "choices[0] has a 'delta' and no 'message': a stream chunk, not a chat completion"
        return f"choices[0].message is {_kind(message)}, not an object"
    if not _optional(message.get("content"), str) or not _optional(choice.get("finish_reason"), str):
        return "choices[0]: 'content' and 'finish_reason' must be strings or null"
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        return f"choices[0].message.tool_calls is {_kind(calls)}, not a list"
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return f"tool_calls[{i}] has no 'function' object"
        if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments", ""), str):
            return f"tool_calls[{i}].function: 'name' and 'arguments' must be strings"
    return None


def embedding_inputs(request: Mapping[str, Any]) -> int:
    """How many vectors a request asks for: one per string (or token list) of a list input, else one."""
    given = request.get("input")
    if isinstance(given, list) and given and not all(isinstance(t, int) for t in given):
        return len(given)
    return 1


def _embeddings_problem(body: dict[str, Any], request: Mapping[str, Any]) -> str | None:
    data = body.get("data")
    if not isinstance(data, list) or not data:
        return "no 'data' list: not an embeddings list"
    indices = []
    for item in data:
        vector = item.get("embedding") if isinstance(item, dict) else None
        index = item.get("index", 0 if len(data) == 1 else None) if isinstance(item, dict) else None
        if type(index) is not int:
            return "an embedding without an integer 'index'"
        if not (isinstance(vector, str) or (isinstance(vector, list) and all(_is_number(x) for x in vector))):
            return f"embedding {index} is not a list of numbers (or a base64 string)"
        indices.append(index)
    expected = embedding_inputs(request)
    if sorted(indices) != list(range(expected)):
        return f"{len(data)} embeddings (indices {_span(indices)}) for {expected} input(s)"
    return None


def embedding_vectors(body: dict[str, Any]) -> list[Any]:
    """The vectors of a checked embeddings answer, in input order (by ``index``, not by position)."""
    data = body["data"]
    return [item["embedding"] for item in sorted(data, key=lambda item: item.get("index", 0))]


def _responses_problem(body: dict[str, Any], request: Mapping[str, Any]) -> str | None:
    if not _optional(body.get("status"), str):
        return "'status' must be a string"
    for key in ("error", "incomplete_details"):
        if not _optional(body.get(key), dict):
            return f"'{key}' must be an object or null"
    output = body.get("output")
    if not isinstance(output, list) or (not output and body.get("status", "completed") == "completed"):
        return "no 'output' items: not a response"
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            return f"output[{i}] is {_kind(item)}, not an object"
        kind = item.get("type")
        if kind == "message" and not all(isinstance(p, dict) for p in _list(item.get("content"))):
            return f"output[{i}].content must be a list of objects"
        if kind == "message" and not all(
            isinstance(p.get("text", ""), str) for p in item.get("content") or () if isinstance(p, dict)
        ):
            return f"output[{i}]: a text part that is not a string"
        if kind == "function_call" and not (
            isinstance(item.get("name"), str) and isinstance(item.get("arguments"), str)
        ):
            return f"output[{i}]: a function call's 'name' and 'arguments' must be strings"
    return None


USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")


def _usage_problem(usage: Any) -> str | None:
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return f"'usage' is {_kind(usage)}, not an object"
    for key in USAGE_COUNTS:
        if key in usage and usage[key] is not None and not _is_count(usage[key]):
            return f"usage.{key} is {_short(usage[key])}, not a count of tokens"
    for key in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(key)
        if details is not None and not (isinstance(details, dict) and _is_count(details.get("cached_tokens") or 0)):
            return f"usage.{key} is not an object with a count of cached tokens"
    return None


def read_usage(body: Mapping[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of a checked answer: chat and embeddings, or the Responses API's names."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return prompt, completion, cached


# Every status a Batch API job may have (OpenAI's and Azure's docs); any other word is no batch object of theirs.
BATCH_STATUSES = frozenset(
    {"validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"}
)


def batch_problem(batch: Any) -> str | None:
    """What makes an answer to a Batch API call not a job object a run can read, or None.

    The SDK builds its objects without checking them: ``null``, a list or ``"status": null`` arrive as they are.
    """
    if _get(batch, "id") is None or not isinstance(_get(batch, "id"), str):
        return "no job id"
    if _get(batch, "status") not in BATCH_STATUSES:
        return f"the status {str(_get(batch, 'status'))[:40]!r}, which is none of a job's"
    if not all(_optional(_get(batch, name), str) for name in ("output_file_id", "error_file_id")):
        return "a file id that is not text"
    counts = _get(batch, "request_counts")
    if counts is not None and not all(type(_get(counts, name)) is int for name in ("completed", "failed")):
        return "request_counts that are not counts"
    return None


def batch_error_codes(errors: Any) -> list[str]:
    """The codes of a Batch API job's ``errors``: OpenAI's list in ``data``, or 2024-10-21's single object."""
    data = _get(errors, "data")
    items = data if isinstance(data, list) else [data] if data is not None else []
    return [str(code) for item in items if (code := _get(item, "code"))]


def _get(obj: Any, key: str) -> Any:
    """A field of a dict or of an SDK object (whose extra fields may be plain dicts)."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _optional(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [None] if value is not None else []


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _span(indices: list[int]) -> str:
    return ", ".join(map(str, sorted(indices)[:5])) + (", ..." if len(indices) > 5 else "")


# -- an HTTP exchange, typed: a Reply, or a failure of the class the engine reacts to ------------

MiB = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024  # an error's body is read this far: enough for any message, never a flood
MESSAGE_CHARS = 2000  # a server's error message is kept this far: enough to act on, never a flood
HINTS = {  # codes Azure sends with a 400 that no retry will fix
    "context_length_exceeded": "HINT: this input plus max_tokens is longer than the model's context window; "
    "shorten it or lower --max-tokens",
    "content_filter": "The prompt was refused by the content filter; asking again will not help.",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer, checked against its API (``answer_problem``): past here, its shape is trusted."""

    body: dict[str, Any]
    raw: bytes
    request_id: str | None
    headers: Mapping[str, str]


def reply_or_error(
    status: int,
    headers: Mapping[str, str],
    raw: bytes | None,
    api: Api,
    request: Mapping[str, Any],
    *,
    redactor: Redactor,
    limit: int,
    where: str,
) -> Reply:
    """What a transport read (a status, headers and the decoded body, bounded: None past ``limit``) as a Reply.

    :raises AttemptError: of the class the engine reacts to (``errors.py``); never a library's exception.
    """
    if is_redirect(status):
        raise Redirected("redirect", redirect_message(status, headers.get(LOCATION), where), status=status)
    if is_error(status):  # read only so far: a secret cut at the end is masked too
        raise status_error(status, headers, redactor.cut_short(raw or b""))
    if raw is None:
        raise too_large(status, headers, limit)
    return decode_reply(status, headers, raw, api, request, redactor)


def decode_reply(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    api: Api = "chat",
    request: Mapping[str, Any] | None = None,
    redactor: Redactor | None = None,
) -> Reply:
    """A 200 body -> Reply; any body that is not an answer of ``api`` to ``request`` is ``Malformed``
    (``malformed_response``, asked again) with the answer's request id; an answer nested too deep to write
    is ``response_too_deep``, recorded with its usage and not asked again."""
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
    return Unkept(
        "response_too_deep",
        f"the answer nests JSON deeper than {MAX_DEPTH} levels, too deep to keep as a record; only its usage is "
        "kept. HINT: run again with --retry-failed to ask again",
        status=status,
        body={"usage": usage} if usage else None,
        request_id=request_id(headers),
    )


def status_error(status: int, headers: Mapping[str, str], raw: bytes) -> AttemptError:
    """An HTTP error response (its body already redacted, and cut) -> the failure, with the server's code and message.

    What is kept of the body is bounded: its JSON if that encodes within ``ERROR_BODY_BYTES``, else its first
    characters; the message is cut at ``MESSAGE_CHARS``.
    """
    read, body = _error_body(raw)
    err = _field(read, "error")
    given, named = err.get("message"), err.get("code")
    message = clip(given if isinstance(given, str) and given else _phrase(status))
    code = clip(str(named), 100) if isinstance(named, str | int) and str(named) else f"http_{status}"
    if hint := HINTS.get(code):
        message = f"{message} {hint}"
    inner, param = _field(err, "innererror").get("code"), err.get("param")
    kind = error_class(status, headers, code, inner if isinstance(inner, str) else None, str(param) if param else None)
    waits = issubclass(kind, RateLimited | Transient)  # only a "not yet" says when: a refusal's hint means nothing
    return kind(
        code,
        f"HTTP {status}: {message}",
        status=status,
        body=body,
        retry_after=parse_retry_after(headers) if waits else None,
        request_id=request_id(headers),
    )


def _phrase(status: int) -> str:
    """What a status means, where the body says nothing ("HTTP 407: Proxy Authentication Required")."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "no message"


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


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
