"""The OpenAI SDK client, and one HTTP attempt -> Reply or AttemptError.

We keep the SDK for what it is good at (auth, base URL, api-version, headers)
and skip what costs CPU on a hot path: the request is pre-serialised bytes and
the response comes back as a raw ``httpx2.Response`` that we decode with orjson.
The SDK's own retries are off; ours (retry.py) are the only layer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
import orjson
from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncAzureOpenAI,
    AsyncOpenAI,
    DefaultAioHttpClient,
)

from .config import Endpoint
from .errors import AttemptError
from .retry import is_retryable_status, parse_retry_after

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Reply:
    body: dict[str, Any]
    raw: bytes
    request_id: str | None
    headers: httpx2.Headers


def build_client(endpoint: Endpoint, *, concurrency: int, timeout: float) -> AsyncOpenAI:
    """One shared client: aiohttp transport, pool sized to the concurrency, no SDK retries."""
    pool = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http = DefaultAioHttpClient(limits=pool, timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)))
    if endpoint.kind == "azure":
        return AsyncAzureOpenAI(
            azure_endpoint=endpoint.base_url,
            api_key=endpoint.api_key,
            api_version=endpoint.api_version,
            max_retries=0,
            http_client=http,
        )
    return AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, http_client=http)


def chat_path(endpoint: Endpoint) -> str:
    if endpoint.kind == "azure":
        return f"/deployments/{quote(endpoint.deployment, safe='')}/chat/completions"
    return "/chat/completions"


async def send(client: AsyncOpenAI, path: str, payload: bytes, timeout: float) -> Reply:
    """One attempt with a hard deadline. Raises AttemptError, never an SDK exception."""
    try:
        async with asyncio.timeout(timeout):
            response = await client.post(
                path,
                cast_to=httpx2.Response,
                content=payload,
                options={"headers": JSON_HEADERS, "timeout": timeout},
            )
    except APIStatusError as exc:
        raise status_error(exc.response) from None
    except (APITimeoutError, TimeoutError):
        raise AttemptError("timeout", f"no response within {timeout:g} s", retryable=True) from None
    except APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise AttemptError("connection_error", f"connection failed: {cause}", retryable=True) from None
    return decode_reply(response)


def _request_id(headers: httpx2.Headers) -> str | None:
    return headers.get("x-request-id") or headers.get("apim-request-id")


def decode_reply(response: httpx2.Response) -> Reply:
    raw = response.content
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise AttemptError(
            "malformed_response",
            f"HTTP {response.status_code} with a body that is not a chat completion: {raw[:200]!r}",
            status=response.status_code,
            retryable=True,
            request_id=_request_id(response.headers),
        )
    return Reply(body, raw, _request_id(response.headers), response.headers)


def status_error(response: httpx2.Response) -> AttemptError:
    """An HTTP error response -> AttemptError with the server's code and message."""
    status = response.status_code
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = response.text[:2000]
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    message = str(err.get("message") or f"HTTP {status}")
    code = str(err.get("code") or f"http_{status}")
    retryable = is_retryable_status(status)
    return AttemptError(
        code,
        f"HTTP {status}: {message}",
        status=status,
        body=body,
        retry_after=parse_retry_after(response.headers) if retryable else None,
        retryable=retryable,
        request_id=_request_id(response.headers),
    )


def extract_output(body: dict[str, Any], tools: bool) -> Any:
    """The useful part of a completion: tool-call arguments (parsed) or the message text."""
    message = body["choices"][0].get("message") or {}
    if not tools:
        return message.get("content")
    calls = message.get("tool_calls") or []
    if not calls:
        raise AttemptError("no_tool_call", "the model answered without calling the tool", status=200, body=body)
    raw_args = (calls[0].get("function") or {}).get("arguments", "")
    try:
        return orjson.loads(raw_args)
    except orjson.JSONDecodeError as exc:
        raise AttemptError(
            "invalid_tool_arguments",
            f"tool arguments are not valid JSON ({exc}); raw arguments: {raw_args!r}",
            status=200,
            body=body,
        ) from None
