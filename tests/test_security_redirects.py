"""Redirects never carry credentials: a 3xx is never followed; it stops the run (exit 2), naming its Location.

Two real servers on 127.0.0.1: the endpoint, which redirects, and the address it redirects to, which
answers like an API would and writes down every byte that reaches it. The key and every ``--header``
value must never get there, whether the redirect comes first or mid-run, to a live request, to the
Batch API's SDK calls, or to an Entra ID token request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbatch.auth import credential_provider
from asyncbatch.cli.main import main
from asyncbatch.errors import FatalAPIError
from asyncbatch.live.tokens import Tokens
from tests.helpers import read_jsonl, write_jsonl
from tests.scripted import Answer, Received, Server, completion, serve

KEY = "redirect-key-4b1d8e0c2a"
APIM = "apim-subscription-9c3f71"
GATEWAY = "gateway-token-5e62a0d4"
SECRETS = (KEY, APIM, GATEWAY)
HEADERS = ["--header", f"Ocp-Apim-Subscription-Key: {APIM}", "--header", f"X-Gateway-Token: {GATEWAY}"]
PATH = "/openai/deployments/dep/chat/completions?api-version=2024-10-21"


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    """Where the redirects point: a real server on another port, answering like the API, recording what arrives."""
    with serve(lambda request: Answer(body=completion("from elsewhere"), request_id="elsewhere")) as server:
        yield server


def _target(elsewhere: Server) -> str:
    """The Location: another port, with userinfo that must never be printed."""
    return elsewhere.url.replace("http://", "http://admin:hunter2@") + PATH


def _redirect(status: int, location: str) -> Answer:
    return Answer(status=status, body=b"moved", headers=(("Location", location),), request_id="moving")


def _nothing_reached(elsewhere: Server) -> None:
    """Not one request reached the other server: so neither the key nor any header value did."""
    assert elsewhere.received == [], [r.headers for r in elsewhere.received]


def _env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")


def _input(tmp_path: Path, lines: int = 6) -> None:
    rows = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"p{i}"}]} for i in range(lines)]
    write_jsonl(tmp_path / "in.jsonl", rows)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_carries_neither_the_key_nor_any_header_and_stops_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    elsewhere: Server,
    status: int,
) -> None:
    _input(tmp_path)
    with serve(lambda request: _redirect(status, _target(elsewhere))) as endpoint:
        _env(monkeypatch, endpoint.url)
        code = main(["in.jsonl", "--no-progress", *HEADERS])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"HTTP {status}, redirecting to {elsewhere.url}{PATH}" in err and "never follows a redirect" in err
    assert "hunter2" not in err and "admin" not in err  # the Location's userinfo is not printed
    assert "Traceback" not in err
    _nothing_reached(elsewhere)
    sent = endpoint.received[0].headers  # the credentials went where the user sent them, and only there
    assert (sent["api-key"], sent["ocp-apim-subscription-key"], sent["x-gateway-token"]) == SECRETS
    assert read_jsonl(tmp_path / "in.results.jsonl") == [] and read_jsonl(tmp_path / "in.results.errors.jsonl") == []


def test_a_redirect_mid_run_stops_it_and_what_was_answered_before_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], elsewhere: Server
) -> None:
    numbers = itertools.count(1)

    def script(request: Received) -> Answer:
        n = next(numbers)
        return Answer(body=completion("ok"), request_id=f"r{n}") if n <= 3 else _redirect(308, _target(elsewhere))

    _input(tmp_path, 12)
    with serve(script) as endpoint:
        _env(monkeypatch, endpoint.url)
        code = main(["in.jsonl", "--no-progress", "-c", "1", *HEADERS])
        assert len(endpoint.received) == 4  # the first redirect stopped it
    assert code == 2 and "HTTP 308, redirecting to" in capsys.readouterr().err
    _nothing_reached(elsewhere)
    assert [r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")] == [1, 2, 3]
    assert read_jsonl(tmp_path / "in.results.errors.jsonl") == []  # the redirected line runs again on resume


def test_a_pool_sets_a_redirecting_deployment_aside_and_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], elsewhere: Server
) -> None:
    _input(tmp_path, 8)
    good = serve(lambda request: Answer(body=completion("ok"), request_id="good"))
    with serve(lambda request: _redirect(302, _target(elsewhere))) as moved, good as working:
        monkeypatch.setenv("POOL_KEY", KEY)
        (tmp_path / "pool.toml").write_text(
            "".join(
                f'[[deployments]]\nname = "{name}"\nendpoint = "{url}"\ndeployment = "dep"\n'
                'api_key_env = "POOL_KEY"\n\n'
                for name, url in (("moved", moved.url), ("working", working.url))
            )
        )
        assert main(["in.jsonl", "--no-progress", "--deployments", "pool.toml", *HEADERS]) == 0
    assert "deployment moved set aside" in capsys.readouterr().err
    _nothing_reached(elsewhere)
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 8


@pytest.mark.parametrize("status", [302, 307])
def test_the_batch_apis_sdk_calls_follow_no_redirect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    elsewhere: Server,
    status: int,
) -> None:
    """The openai SDK's own HTTP client follows redirects by default; the one asyncbatch gives it does not."""
    _input(tmp_path)
    with serve(lambda request: _redirect(status, _target(elsewhere))) as endpoint:
        _env(monkeypatch, endpoint.url)
        code = main(["in.jsonl", "--no-progress", "--batch-api", *HEADERS])
        assert endpoint.received and endpoint.received[0].path.startswith("/openai/files")
    err = capsys.readouterr().err
    assert code == 2 and f"the Batch API endpoint answered HTTP {status}, redirecting to {elsewhere.url}" in err
    assert "hunter2" not in err and "Traceback" not in err
    _nothing_reached(elsewhere)


def test_an_entra_token_request_follows_no_redirect(monkeypatch: pytest.MonkeyPatch, elsewhere: Server) -> None:
    """azure-identity builds its pipelines with no RedirectPolicy, and azure-core's transports send with
    ``allow_redirects=False``: a token endpoint that redirects fails the sign-in, and the identity's secret
    header stays where it was sent. (``--token-command`` runs a program: no HTTP of ours.)"""
    pytest.importorskip("azure.identity")
    from azure.identity.aio import ManagedIdentityCredential

    identity_secret = "identity-header-secret-77"
    with serve(lambda request: _redirect(307, elsewhere.url + "/token")) as token_endpoint:
        monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url + "/token")  # App Service's managed identity
        monkeypatch.setenv("IDENTITY_HEADER", identity_secret)

        async def sign_in() -> None:
            async with ManagedIdentityCredential() as credential:
                await Tokens(credential_provider(credential)).get()

        with pytest.raises(FatalAPIError) as failed:
            asyncio.run(sign_in())
        assert token_endpoint.received[0].headers["x-identity-header"] == identity_secret
    assert failed.value.kind == "authentication"
    _nothing_reached(elsewhere)
