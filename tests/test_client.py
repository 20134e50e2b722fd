"""The transport's URL and headers are the SDK's own, and answers are typed right (``protocol.reply_or_error``)."""

from __future__ import annotations

import pytest
from openai._models import FinalRequestOptions

from asyncbatch.config import Endpoint
from asyncbatch.errors import LineRefused, Malformed, RateLimited, Rejected
from asyncbatch.protocol import decode_reply, status_error
from asyncbatch.sdk import request_target, sdk_client

# Each SDK-generated header we send, and the ones the SDK adds per request that we do not.
PER_REQUEST = {
    "host",
    "accept-encoding",
    "connection",
    "content-length",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
}


@pytest.mark.parametrize(
    ("endpoint", "sdk_path"),
    [
        (
            Endpoint(kind="azure", base_url="https://res.openai.azure.com/", api_key="K1", deployment="my dep"),
            "/chat/completions",
        ),
        (Endpoint(kind="openai", base_url="http://127.0.0.1:9/v1", api_key="K2", deployment="m"), "/chat/completions"),
        (
            Endpoint(
                kind="azure", base_url="https://res.openai.azure.com", api_key="K4", deployment="d", api_version="v1"
            ),
            "/chat/completions",
        ),
        (
            Endpoint(
                kind="azure",
                base_url="https://apim.example/",
                api_key="K3",
                deployment="d",
                headers={"Ocp-Apim-Subscription-Key": "S3"},
            ),
            "/chat/completions",
        ),
    ],
)
def test_request_target_matches_what_the_sdk_itself_sends(endpoint: Endpoint, sdk_path: str) -> None:
    """A drift guard: if a new SDK changes URL, auth or headers, this fails."""
    sdk = sdk_client(endpoint)
    built = sdk._build_request(
        FinalRequestOptions.construct(method="post", url=sdk_path, json_data={"model": endpoint.deployment})
    )
    url, headers = request_target(sdk, endpoint)
    assert url == str(built.url)
    expected = {k: v for k, v in built.headers.items() if k not in PER_REQUEST}
    assert {k.lower(): v for k, v in headers.items()} == expected
    assert sdk.max_retries == 0


def test_status_error_reads_the_server_code_and_retry_after() -> None:
    raw = b'{"error": {"code": "429", "message": "slow down"}}'
    err = status_error(429, {"retry-after-ms": "250", "x-request-id": "rid"}, raw)
    assert isinstance(err, RateLimited)
    assert (err.code, err.status, err.retry_after, err.request_id) == ("429", 429, 0.25, "rid")
    assert err.message == "HTTP 429: slow down" and err.body == {"error": {"code": "429", "message": "slow down"}}


def test_status_error_with_a_non_json_body_and_no_retry() -> None:
    err = status_error(400, {"retry-after": "9"}, b"<html>bad</html>")
    assert isinstance(err, Rejected) and (err.code, err.retry_after, err.body) == ("http_400", None, "<html>bad</html>")


@pytest.mark.parametrize("raw", [b'{"id": "x", "choi', b"[]", b'{"choices": []}', b'{"object": "chat.completion"}'])
def test_a_body_that_is_not_a_completion_is_a_retryable_malformed_response(raw: bytes) -> None:
    with pytest.raises(Malformed) as caught:
        decode_reply(200, {}, raw, "chat", {})
    assert caught.value.code == "malformed_response"


def test_unfixable_400s_carry_a_hint() -> None:
    raw = b'{"error": {"code": "context_length_exceeded", "message": "too long."}}'
    err = status_error(400, {}, raw)
    assert err.code == "context_length_exceeded" and isinstance(err, LineRefused) and "--max-tokens" in err.message


def test_entra_requests_carry_the_bearer_token_exactly_as_the_sdk_sends_it() -> None:
    """The drift guard for Entra ID: the SDK's own provider path against our per-request header."""
    import asyncio

    endpoint = Endpoint(
        kind="azure", base_url="https://res.openai.azure.com", deployment="d", token_provider=lambda: "tok-123"
    )
    sdk = sdk_client(endpoint)

    async def both() -> tuple[str, dict[str, str], tuple[str, dict[str, str]]]:  # in a loop, as a run is
        options = FinalRequestOptions.construct(method="post", url="/chat/completions", json_data={"model": "d"})
        built = sdk._build_request(await sdk._prepare_options(options))
        theirs = {k: v for k, v in built.headers.items() if k not in PER_REQUEST}
        return str(built.url), theirs, request_target(sdk, endpoint)

    url, expected, (ours_url, ours) = asyncio.run(both())
    ours = {k.lower(): v for k, v in {**ours, "Authorization": "Bearer tok-123"}.items()}  # what the transport adds
    assert ours_url == url and ours == expected
