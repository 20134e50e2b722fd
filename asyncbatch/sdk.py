"""The openai SDK: the one truth for *where* and *how* to call, shared by the live transport and the Batch API.

The base URL, the api-version query, the auth header and the SDK's standard headers all come from an
``AsyncAzureOpenAI`` / ``AsyncOpenAI`` built with ``max_retries=0`` (ours is the only retry layer) and
redirects off. The live transport asks it once per deployment (``request_target``) and sends on its own;
the Batch API phase calls through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .config import Endpoint
from .protocol import Api, api_path

if TYPE_CHECKING:
    from openai import AsyncOpenAI


def sdk_client(endpoint: Endpoint) -> AsyncOpenAI:
    """The SDK client that defines URL, auth and headers; its own retries are off, and so are redirects.

    The SDK's default HTTP client follows redirects (``follow_redirects=True`` in openai's
    ``_base_client``), carrying the key and every header along: ours never does (a 3xx is an error).
    """
    # Imported here: the SDK takes over a second to import, and --help or --dry-run never need it.
    from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAsyncHttpxClient

    # The endpoint's proxy or none, as the live requests go: never the environment's, which the HTTP client
    # would read itself (``trust_env``, kept for its certificates) where no proxy is given; mounts say "direct".
    route = (
        {"proxy": endpoint.proxy} if endpoint.proxy else {"mounts": dict.fromkeys(("all://", "http://", "https://"))}
    )
    common: dict[str, Any] = {
        "default_headers": dict(endpoint.headers),
        "max_retries": 0,
        "http_client": DefaultAsyncHttpxClient(follow_redirects=False, **route),
    }
    if endpoint.is_azure_v1:  # the v1 API: OpenAI's routes under /openai/v1, no api-version, model in the body
        return AsyncOpenAI(base_url=f"{endpoint.base_url}/openai/v1/", api_key=endpoint.api_key, **common)
    if endpoint.kind == "azure" and endpoint.token_provider is not None:
        return AsyncAzureOpenAI(  # the token itself is set per request, as the SDK does (``AiohttpTransport.send``)
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
