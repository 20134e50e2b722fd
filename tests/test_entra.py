"""Entra ID: bearer tokens from a command, a provider or a credential, refreshed before expiry and after a 401."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import asyncbatch
from asyncbatch.auth import SCOPE, credential_provider, jwt_expiry
from asyncbatch.cli.main import main
from asyncbatch.live.tokens import RETRY_REFRESH, Tokens
from asyncbatch.simulator import SimConfig, Simulator, tokens
from asyncbatch.simulator.tokens import make_token
from tests.helpers import FakeClock, batch_line, read_jsonl, serve_app, simulator_env, write_jsonl


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Simulator]]:
    config = SimConfig(api_key="unused-key", entra_only=True, latency=0.05)
    with simulator_env(config, monkeypatch) as (env, simulator):
        monkeypatch.delenv("AZURE_OPENAI_API_KEY")  # key authentication is off on this resource
        yield env["AZURE_OPENAI_ENDPOINT"], simulator


def _exactly_once(tmp_path: Path, n: int) -> list[dict[str, Any]]:
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(r["line"] for r in results) == list(range(1, n + 1))
    assert read_jsonl(tmp_path / "in.results.errors.jsonl") == []
    return results


def test_tokens_are_refreshed_before_they_expire() -> None:
    clock = FakeClock(1000.0)
    issued: list[str] = []

    def provider() -> str:
        issued.append(make_token(8, now=clock.now))
        return issued[-1]

    tokens = Tokens(provider, clock=clock)
    first = asyncio.run(tokens.get())
    assert jwt_expiry(first) == 1008.0
    clock.now = 1005.9  # more than a quarter of its life left: kept
    assert asyncio.run(tokens.get()) == first
    clock.now = 1006.1  # a quarter left: a new one
    assert asyncio.run(tokens.get()) != first and len(issued) == 2


def test_a_token_due_when_it_comes_is_used_a_while_not_fetched_again_for_every_request() -> None:
    """This machine's clock ahead of the issuer's (or a provider's stale cache): every token's ``exp`` has passed
    by our clock. The provider was asked again for every request (a token command run per request)."""
    clock = FakeClock(5000.0)
    issued: list[str] = []

    def provider() -> str:
        issued.append(make_token(3600, now=clock.now - 4000))  # an hour's token, expired 400 s ago by our clock
        return issued[-1]

    tokens = Tokens(provider, clock=clock)

    async def requests(n: int) -> set[str]:
        return set(await asyncio.gather(*(tokens.get() for _ in range(n))))

    assert asyncio.run(requests(50)) == {issued[0]} and len(issued) == 1
    clock.now += RETRY_REFRESH - 0.1
    assert asyncio.run(requests(50)) == {issued[0]} and len(issued) == 1
    clock.now += 0.2  # then asked again, as a refresh that failed is
    assert asyncio.run(requests(50)) == {issued[1]} and len(issued) == 2


def test_a_token_command_keeps_a_run_going_across_token_lifetimes(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    n = 200
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(n)])
    # each token lives 0.6 s; the script alone (no package import) prints one in milliseconds, even when busy
    command = f"{sys.executable} {tokens.__file__} 0.6"
    code = main([str(tmp_path / "in.jsonl"), "--no-progress", "-c", "5", "--token-command", command])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    _exactly_once(tmp_path, n)
    assert len(simulator.tokens_seen) >= 3 and simulator.statuses["401"] == 0  # refreshed in time, every time
    files = [p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file()]
    for token in simulator.tokens_seen:
        for text in [captured.out, captured.err, *files]:
            assert token.removeprefix("Bearer ") not in text


def test_a_401_after_successes_refreshes_the_token_and_sends_again_without_using_an_attempt(
    tmp_path: Path, sim: tuple[str, Simulator]
) -> None:
    url, simulator = sim
    simulator.config.token_max_age = 0.3  # the server revokes tokens long before their claimed expiry
    n = 200
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(n)])
    endpoint = asyncbatch.Endpoint(
        kind="azure", base_url=url, deployment="dep", token_provider=lambda: make_token(3600)
    )
    retry = asyncbatch.RetryPolicy(max_attempts=1)  # a 401 that used an attempt would fail its line
    config = asyncbatch.RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint, retry=retry)
    stats = asyncbatch.run_sync(config)
    assert stats.succeeded == n and simulator.statuses["401"] > 0  # the server did refuse, and it was ridden out
    _exactly_once(tmp_path, n)
    assert len(simulator.tokens_seen) >= 2


def test_a_credential_is_asked_for_azure_openais_scope(tmp_path: Path, sim: tuple[str, Simulator]) -> None:
    url, _ = sim

    class FakeCredential:  # azure-identity's shape: get_token(scope) -> AccessToken(token, expires_on)
        def __init__(self) -> None:
            self.scopes: list[str] = []

        async def get_token(self, scope: str) -> Any:
            self.scopes.append(scope)
            return type("AccessToken", (), {"token": make_token(3600), "expires_on": 0})()

    credential = FakeCredential()
    endpoint = asyncbatch.Endpoint(
        kind="azure", base_url=url, deployment="dep", token_provider=credential_provider(credential)
    )
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(5)])
    stats = asyncbatch.run_sync(asyncbatch.RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint))
    assert stats.succeeded == 5 and credential.scopes == [SCOPE]


def test_with_no_key_the_cli_signs_in_with_default_azure_credential(
    tmp_path: Path, sim: tuple[str, Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncbatch import auth

    used: list[str] = []

    def default_credential() -> auth.TokenProvider:  # stands in for DefaultAzureCredential
        used.append("DefaultAzureCredential")
        return lambda: make_token(3600)

    monkeypatch.setattr("asyncbatch.cli.env.default_credential_provider", default_credential)
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 0
    assert used == ["DefaultAzureCredential"]


def test_without_azure_identity_the_message_says_what_to_install(
    tmp_path: Path, sim: tuple[str, Simulator], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)  # as if azure-identity were not installed
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 2
    assert 'pip install "asyncbatch[entra]"' in capsys.readouterr().err


def test_a_credential_that_cannot_sign_in_stops_the_run_with_its_message(
    tmp_path: Path, sim: tuple[str, Simulator]
) -> None:
    url, _ = sim

    def provider() -> str:
        raise RuntimeError("DefaultAzureCredential failed to retrieve a token from the included credentials.")

    endpoint = asyncbatch.Endpoint(kind="azure", base_url=url, deployment="dep", token_provider=provider)
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    with pytest.raises(
        asyncbatch.FatalAPIError, match="could not get an Entra ID token: DefaultAzureCredential failed"
    ):
        asyncbatch.run_sync(asyncbatch.RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint))


def test_a_machine_with_no_identity_is_told_so_before_anything_is_written_or_restarted(tmp_path: Path) -> None:
    """DefaultAzureCredential, for real, with every source failing here (a managed identity that answers 400 on
    127.0.0.1, no Azure CLI): said before --restart moved the outputs aside or the display started, one line of
    azure-identity's words, and no aiohttp warning about sessions left open."""
    asked: list[str] = []

    async def no_identity(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"error": "invalid_request", "error_description": "no identity here"}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", no_identity)
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    (tmp_path / "in.results.jsonl").write_text("")  # outputs a --restart would move aside
    with serve_app(app) as identity:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "IDENTITY_", "MSI_"))}
        env |= {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_DEPLOYMENT_NAME": "dep"}
        env |= {"IDENTITY_ENDPOINT": f"{identity}/msi/token", "IDENTITY_HEADER": "header", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", "asyncbatch", "in.jsonl", "--restart", "--no-progress"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2 and asked  # the managed identity was asked, on loopback
    assert (
        "Entra ID found no identity to sign in with" in done.stderr and "HINT: sign in with `az login`" in done.stderr
    )
    assert "Unclosed" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3
    assert (tmp_path / "in.results.jsonl").exists() and not list(tmp_path.glob("in.results.jsonl.*"))  # not moved


def test_default_azure_credential_for_real_signs_in_runs_and_leaves_nothing_open(
    tmp_path: Path, sim: tuple[str, Simulator]
) -> None:
    """The command line with no key: DefaultAzureCredential (azure-identity itself, not a stand-in) takes a token
    from a managed identity on 127.0.0.1, the run goes with it, and its HTTP sessions are closed at the end
    (aiohttp warned of them at exit: "Unclosed client session")."""
    url, simulator = sim
    issued: list[str] = []

    async def managed_identity(request: web.Request) -> web.Response:
        issued.append(make_token(3600))
        expires = str(int(time.time()) + 3600)
        answer = {"access_token": issued[-1], "expires_on": expires, "token_type": "Bearer", "resource": SCOPE[:-9]}
        return web.json_response(answer)  # App Service's managed identity: the scope's resource, without /.default

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", managed_identity)
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(5)])
    with serve_app(app) as identity:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "IDENTITY_", "MSI_"))}
        env |= {"AZURE_OPENAI_ENDPOINT": url, "AZURE_OPENAI_DEPLOYMENT_NAME": "dep", "PATH": "/usr/bin:/bin"}
        env |= {"IDENTITY_ENDPOINT": f"{identity}/msi/token", "IDENTITY_HEADER": "header"}
        done = subprocess.run(
            [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _exactly_once(tmp_path, 5)
    assert issued and set(simulator.tokens_seen) <= {f"Bearer {token}" for token in issued}
    assert "Unclosed" not in done.stderr and issued[0] not in done.stderr + done.stdout
