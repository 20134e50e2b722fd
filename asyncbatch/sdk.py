"""The openai SDK: the one truth for *where* and *how* to call, shared by the live transport and the Batch API.

The base URL, the api-version query, the auth header and the SDK's standard headers all come from an
``AsyncAzureOpenAI`` / ``AsyncOpenAI`` built with ``max_retries=0`` (ours is the only retry layer) and
redirects off. The live transport asks it once per deployment (``request_target``) and sends on its own;
the Batch API phase calls through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .config import Endpoint, proxy_credentials
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

    common: dict[str, Any] = {
        "default_headers": dict(endpoint.headers),
        "max_retries": 0,
        "http_client": DefaultAsyncHttpxClient(follow_redirects=False, **_route(endpoint.proxy)),
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


def _route(proxy: str | None) -> dict[str, Any]:
    """The endpoint's proxy or none, as the live requests go: never the environment's. Given its transport, the
    HTTP client reads no proxy variable (``trust_env``, kept for its certificates, made it build one for each,
    even where it then went direct: a SOCKS one in ALL_PROXY raised ImportError, a malformed one ValueError).
    The proxy's credentials go as the live requests send them (``proxy_credentials``)."""
    import httpx2
    from openai import DEFAULT_CONNECTION_LIMITS

    route = None
    if proxy is not None:
        bare, _, authorization = proxy_credentials(proxy)
        route = httpx2.Proxy(bare, headers={"Proxy-Authorization": authorization} if authorization else None)
    return {"transport": httpx2.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS, proxy=route)}


def tunnel_status(exc: BaseException) -> int | None:
    """The status a proxy answered an ``https://`` tunnel's CONNECT with, where that is why the SDK's request failed
    (its ``APIConnectionError``, caused by httpx's ``ProxyError``, whose message alone says it: "407 Proxy ...")."""
    import httpx2

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, httpx2.ProxyError):
        seen = seen.__cause__ or seen.__context__
    status = str(seen).partition(" ")[0] if seen is not None else ""
    return int(status) if len(status) == 3 and status.isdigit() else None


def request_target(sdk: AsyncOpenAI, endpoint: Endpoint, api: Api = "chat") -> tuple[str, dict[str, str]]:
    """The URL and headers of ``api``'s requests, exactly as the SDK would send them."""
    url = f"{str(sdk.base_url).rstrip('/')}/{api_path(endpoint.kind, endpoint.api_version, endpoint.deployment, api)}"
    if query := {k: str(v) for k, v in sdk.default_query.items()}:
        url += "?" + urlencode(query)
    headers = {k: v for k, v in sdk.default_headers.items() if isinstance(v, str)}
    headers.update(sdk.auth_headers)
    headers["Content-Type"] = "application/json"
    return url, headers
