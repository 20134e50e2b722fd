"""Behind a proxy: the live requests and the SDK's (the Batch API) go through the one the real environment names.

The endpoint's host below has no address (``.invalid``): only the proxy, which forwards it to the simulator,
can reach it, so an answer is proof the request went through the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import openai
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

import asyncbatch
from asyncbatch.cli.env import proxies_in, proxy_for
from asyncbatch.cli.main import main
from asyncbatch.config import TransportOptions
from asyncbatch.errors import AsyncBatchError, ProxyRefused
from asyncbatch.live.transport import AiohttpTransport
from asyncbatch.redact import Redactor
from asyncbatch.sdk import sdk_client
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread
from tests.helpers import read_jsonl, serve_app, simulator_env, write_jsonl

KEY = "proxy-test-key-0123456789"
PASSWORD = "pr0xy-pass-9876"
RESOURCE = "http://my-resource.openai.invalid"  # no address: the proxy alone knows where it is
HOP_BY_HOP = {"proxy-authorization", "host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 that sends every request for ``RESOURCE`` to ``upstream``, and keeps
    what it received (the method, the path and the Proxy-Authorization header) for the test."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.received: list[tuple[str, str, str | None]] = []
        self.url = ""
        self.wants: str | None = None  # the Proxy-Authorization it requires, if any
        self.tunnel = 502  # its answer to a CONNECT it lets through: it opens no tunnel

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.path, request.headers.get("Proxy-Authorization")))
        if self.wants is not None and request.headers.get("Proxy-Authorization") != self.wants:
            return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="corp"'}, text="who?")
        if request.method == "CONNECT":
            return web.Response(status=self.tunnel, text="no tunnel")
        if request.url.host != "my-resource.openai.invalid":
            return web.Response(status=502, text="unknown host")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=await request.read(), headers=headers
            ) as answer,
        ):
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, body=body, headers=kept)

    @property
    def requests(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.received]


@pytest.fixture
def proxy() -> Iterator[tuple[ForwardProxy, Simulator]]:
    with serve_in_thread(SimConfig(api_key=KEY, batch_seconds=0.2)) as (url, sim):
        forward = ForwardProxy(url)

        @web.middleware
        async def tunnel(request: web.Request, handler: Any) -> web.StreamResponse:
            """A CONNECT (``host:443``, no path) matches no route: answered here. This proxy opens no tunnel."""
            if request.method == "CONNECT":
                return await forward.handle(request)
            return await handler(request)

        app = web.Application(middlewares=[tunnel])
        app.router.add_route("*", "/{tail:.*}", forward.handle)
        with serve_app(app) as forward.url:
            yield forward, sim


def _chats(folder: Path, n: int) -> None:
    """``n`` chat lines, c0 to c<n-1>, in ``folder / "in.jsonl"``."""
    write_jsonl(folder / "in.jsonl", [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": "hi"}]}
                                      for i in range(n)])  # fmt: skip


def _with_password(url: str) -> str:
    return url.replace("http://", f"http://user:{PASSWORD}@")


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AZURE_OPENAI_ENDPOINT": RESOURCE,
        "AZURE_OPENAI_API_KEY": KEY,
        "AZURE_OPENAI_DEPLOYMENT_NAME": "dep",
    }.items():
        monkeypatch.setenv(name, value)


def test_every_request_goes_through_the_proxy_the_environment_names_and_its_password_is_never_shown(
    tmp_path: Path,
    proxy: tuple[ForwardProxy, Simulator],
    azure: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forward, sim = proxy
    monkeypatch.setenv("HTTP_PROXY", _with_password(forward.url))
    _chats(tmp_path, 20)
    assert main(["in.jsonl", "--no-progress", "--log-format", "json"]) == 0
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == sorted(
        f"c{i}" for i in range(20)
    )
    basic = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert len(forward.received) == sim.requests == 20
    assert {auth for _, _, auth in forward.received} == {basic}
    said = capsys.readouterr()
    assert PASSWORD not in said.out + said.err and basic.split()[1] not in said.out + said.err
    assert PASSWORD not in (tmp_path / "in.results.jsonl").read_text()


def test_the_batch_api_goes_through_the_same_proxy(
    tmp_path: Path, proxy: tuple[ForwardProxy, Simulator], azure: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward, sim = proxy
    monkeypatch.setenv("http_proxy", forward.url)
    write_jsonl(tmp_path / "in.jsonl", [{"company": f"Co{i}"} for i in range(6)])
    argv = ["in.jsonl", "--batch-api", "--template", "About {company}", "--poll-interval", "0.05", "-q"]
    assert main(argv) == 0
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 6 and sim.batches.created == 1
    assert {"POST /openai/files", "POST /openai/batches"} <= set(forward.requests)


def test_a_proxy_in_a_dotenv_file_is_ignored_and_said_so(
    tmp_path: Path, azure: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .env file that comes with a folder never routes the user's requests (and their key) through its host."""
    (tmp_path / ".env").write_text("HTTPS_PROXY=http://127.0.0.1:9\nhttp_proxy=http://127.0.0.1:9\n")
    proxies: list[str | None] = []

    async def go(config: Any) -> int:
        proxies.append(config.routes[0].endpoint.proxy)
        return 0

    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["in.jsonl", "--no-progress"], go=go) == 0 and proxies == [None]
    err = capsys.readouterr().err
    assert "sets HTTPS_PROXY, which is ignored" in err and "sets http_proxy, which is ignored" in err


def test_a_socks_proxy_is_refused_naming_the_variable_never_its_password(
    tmp_path: Path, azure: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALL_PROXY", f"socks5h://user:{PASSWORD}@127.0.0.1:1080")
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["in.jsonl", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "all_proxy (or ALL_PROXY) is a socks5h:// URL" in err and "HINT:" in err and PASSWORD not in err
    assert not (tmp_path / "in.results.jsonl").exists()


async def _batches(endpoint: asyncbatch.Endpoint) -> int:
    client = sdk_client(endpoint)
    try:
        return len((await client.batches.list()).data)
    finally:
        await client.close()


def test_the_sdk_goes_where_the_endpoint_says_never_where_the_environment_does(
    proxy: tuple[ForwardProxy, Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP client under the SDK reads proxies from the environment by itself: the library's decision holds."""
    forward, _ = proxy
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    direct = asyncbatch.Endpoint(kind="azure", base_url=sim_url(forward), api_key=KEY, deployment="dep")
    assert asyncio.run(_batches(direct)) == 0 and forward.received == []
    proxied = asyncbatch.Endpoint(kind="azure", base_url=RESOURCE, api_key=KEY, deployment="dep", proxy=forward.url)
    assert asyncio.run(_batches(proxied)) == 0 and forward.requests == ["GET /openai/batches"]


def sim_url(forward: ForwardProxy) -> str:
    return forward.upstream


NAMES = st.sampled_from(["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"])


@given(
    set_=st.dictionaries(NAMES, st.sampled_from(["http://p1:1", "http://p2:2", ""]), max_size=4),
    no_proxy=st.sampled_from(["", "*", ".example.com", "api.example.com", "other.org", "example.com:8443"]),
    url=st.sampled_from(
        [
            *("https://api.example.com", "http://api.example.com", "https://x.example.com:8443"),
            *("http://127.0.0.1:8000", "https://localhost", "https://res.openai.azure.com"),
            *("http://127.0.0.2:8000", "https://[::1]:8443", "https://127.example.com"),  # the last is a name
        ]
    ),
)
def test_the_proxy_for_a_url_follows_the_variables_as_curl_and_python_read_them(
    set_: dict[str, str], no_proxy: str, url: str
) -> None:
    proxies = proxies_in({**set_, "NO_PROXY": no_proxy})
    chosen = proxy_for(url, proxies)
    scheme, host = url.split("://")[0], url.split("://")[1]
    lower = {n.lower(): v for n, v in set_.items() if n.isupper() and v} | {n: v for n, v in set_.items() if v}
    wanted = lower.get(f"{scheme}_proxy") or lower.get("all_proxy")
    name, hostonly = no_proxy.lstrip("."), re.sub(r":\d+\Z", "", host)  # no_proxy: a host, a domain, with a port or not
    named = bool(name) and (name in (host, hostonly) or host.endswith(f".{name}") or hostonly.endswith(f".{name}"))
    loopback = hostonly == "localhost" or bool(re.fullmatch(r"127(\.\d+){3}|\[::1\]", hostonly))
    skipped = loopback or no_proxy == "*" or named
    assert chosen == (None if skipped else wanted)


def test_a_proxy_that_does_not_answer_stops_the_run_naming_the_proxy_variables(
    tmp_path: Path, azure: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PASSWORD}@127.0.0.1:{port}")
    _chats(tmp_path, 200)
    assert main(["in.jsonl", "-q", "--max-attempts", "2", "--max-outage", "1"]) == 2
    err = capsys.readouterr().err
    assert "ClientProxyConnectionError" in err and "the proxy the environment names (HTTPS_PROXY" in err
    assert PASSWORD not in err and read_jsonl(tmp_path / "in.results.errors.jsonl") == []


@pytest.mark.parametrize("scheme", ["http", "https"])  # the proxy refuses the request itself, or its tunnel
def test_a_proxy_that_refuses_its_credentials_stops_the_run_at_once_and_records_nothing(
    tmp_path: Path,
    proxy: tuple[ForwardProxy, Simulator],
    azure: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    scheme: str,
) -> None:
    forward, sim = proxy
    forward.wants = "Basic " + base64.b64encode(b"user:the-right-one").decode()
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", RESOURCE.replace("http:", f"{scheme}:"))
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", _with_password(forward.url))
    _chats(tmp_path, 200)
    assert main(["in.jsonl", "-q"]) == 2
    err = capsys.readouterr().err
    assert "the proxy refused its credentials" in err and "407" in err and PASSWORD not in err
    assert "HINT: check the user name and password in the proxy's URL (HTTPS_PROXY" in err and "***" not in err
    assert sim.requests == 0 and read_jsonl(tmp_path / "in.results.errors.jsonl") == []
    assert len(forward.received) < 50  # refused by the first answers: not every line asked
    assert {method for method, _, _ in forward.received} == ({"CONNECT"} if scheme == "https" else {"POST"})


class _Refuses(socketserver.StreamRequestHandler):
    """A proxy that answers every request and CONNECT with a 407, keeping the Proxy-Authorization it was sent."""

    def handle(self) -> None:
        head = []
        while (line := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
            head.append(line.decode("latin-1").rstrip("\r\n"))
        fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in head[1:])}
        self.rfile.read(int(fields.get("content-length", "0")))
        self.server.heard.append(fields.get("proxy-authorization"))  # type: ignore[attr-defined]
        refusal = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        self.wfile.write(refusal)


@pytest.fixture(scope="module")
def refuses() -> Iterator[tuple[int, list[str | None]]]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Refuses) as server:
        server.daemon_threads = True
        server.heard = heard = []  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.server_address[1], heard
        server.shutdown()


async def _both_clients(endpoint: asyncbatch.Endpoint) -> list[str]:
    """What a live request and the SDK's (the Batch API's) said when the proxy refused them."""
    transport = await AiohttpTransport.open(endpoint, TransportOptions(), redactor=Redactor())
    said = []
    try:
        with pytest.raises(ProxyRefused) as live:
            await transport.send(b"{}", "chat", {})
        said.append(str(live.value))
    finally:
        await transport.close()
    client = sdk_client(endpoint)
    try:
        with pytest.raises((openai.APIStatusError, openai.APIConnectionError)) as sdk:
            await client.batches.list()
        said.append(f"{sdk.value} {sdk.value.__cause__}")
    finally:
        await client.close()
    return said


NAMES_CHARACTERS = st.characters(codec="utf-8", exclude_characters="*")  # * : the mask's own


@settings(max_examples=30, deadline=None)
@example(user="user", password="p\u20acss-w0rd", scheme="http")  # aiohttp's Latin-1 cannot hold it: a traceback
@example(user="user", password="p\u00e4ss-w0rd", scheme="https")  # aiohttp sent Latin-1 where httpx sends UTF-8
@example(user="us:er", password="pw-1234", scheme="http")  # Basic cannot carry it: aiohttp raised ValueError
@example(user="user", password="p@ss:w%rd/?#", scheme="https")
@given(
    user=st.text(NAMES_CHARACTERS, min_size=1, max_size=6),
    password=st.text(NAMES_CHARACTERS, min_size=4, max_size=12),
    scheme=st.sampled_from(["http", "https"]),
)
def test_a_proxy_password_of_any_characters_goes_alike_from_both_clients_and_is_never_shown(
    refuses: tuple[int, list[str | None]], user: str, password: str, scheme: str
) -> None:
    """Both HTTP clients send the one Proxy-Authorization curl sends (UTF-8), to the request (http://) or the
    tunnel (https://); every form of it is a secret; a user name Basic cannot carry is refused when configured."""
    port, heard = refuses
    proxy = f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}"
    base = f"{scheme}://my-resource.openai.invalid"
    if ":" in user:
        with pytest.raises(asyncbatch.ConfigError, match="user name with a ':'") as refused:
            asyncbatch.Endpoint(kind="azure", base_url=base, api_key=KEY, deployment="dep", proxy=proxy)
        assert password not in str(refused.value) and quote(password, safe="") not in str(refused.value)
        return
    endpoint = asyncbatch.Endpoint(kind="azure", base_url=base, api_key=KEY, deployment="dep", proxy=proxy)
    before = len(heard)
    said = asyncio.run(_both_clients(endpoint))
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert heard[before:] == [basic, basic]
    redactor = Redactor(endpoint.secrets)
    for shown in (basic, basic.split()[1], password, f"{user}:{password}", quote(password, safe=""), proxy, *said):
        masked = redactor.text(f"[{shown}]")
        assert password not in masked and basic.split()[1] not in masked and quote(password, safe="") not in masked


@pytest.mark.parametrize("batch", [False, True])
def test_a_password_outside_latin_1_gets_through_live_and_to_the_batch_api(
    tmp_path: Path,
    proxy: tuple[ForwardProxy, Simulator],
    azure: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch: bool,
) -> None:
    """It stopped every live run with a traceback (aiohttp encodes a URL's password in Latin-1)."""
    forward, _ = proxy
    password = "\u20acuro-p\u00e4ss"
    forward.wants = "Basic " + base64.b64encode(f"user:{password}".encode()).decode()
    monkeypatch.setenv("HTTP_PROXY", forward.url.replace("http://", f"http://user:{quote(password)}@"))
    _chats(tmp_path, 4)
    argv = ["in.jsonl", "-q", *(["--batch-api", "--poll-interval", "0.05"] if batch else [])]
    assert main(argv) == 0
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == ["c0", "c1", "c2", "c3"]
    assert {auth for _, _, auth in forward.received} == {forward.wants}
    said = capsys.readouterr()
    assert "Traceback" not in said.err and password not in said.out + said.err


def test_a_proxy_that_will_not_tunnel_to_the_endpoints_host_stops_the_run_at_once(
    tmp_path: Path,
    proxy: tuple[ForwardProxy, Simulator],
    azure: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 403 to the CONNECT is the proxy's policy, whoever asks: it was retried as if nothing answered, for 15 s,
    with a hint that nothing answers through the proxy."""
    forward, sim = proxy
    forward.tunnel = 403
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", RESOURCE.replace("http:", "https:"))
    monkeypatch.setenv("HTTPS_PROXY", _with_password(forward.url))
    _chats(tmp_path, 200)
    assert main(["in.jsonl", "-q"]) == 2
    err = capsys.readouterr().err
    assert "the proxy does not let requests to https://my-resource.openai.invalid" in err and "403" in err
    assert "NO_PROXY" in err and PASSWORD not in err and "***" not in err
    assert sim.requests == 0 and read_jsonl(tmp_path / "in.results.errors.jsonl") == []
    assert len(forward.received) < 50


@pytest.mark.parametrize(("status", "kind"), [(407, "proxy_authentication"), (403, "proxy_forbidden")])
def test_the_batch_api_takes_a_refused_tunnel_as_the_live_requests_do(
    tmp_path: Path, proxy: tuple[ForwardProxy, Simulator], status: int, kind: str
) -> None:
    """The SDK's client says a refused CONNECT as a connection error: it was retried for two minutes, then
    'cannot reach the Batch API'."""
    forward, _ = proxy
    forward.tunnel = status
    endpoint = asyncbatch.Endpoint(
        kind="azure", base_url="https://my-resource.openai.invalid", api_key=KEY, deployment="dep", proxy=forward.url
    )
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    config = asyncbatch.RunConfig(
        input_path=str(tmp_path / "in.jsonl"), endpoint=endpoint, batch=asyncbatch.BatchOptions(poll_interval=0.05)
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    with pytest.raises(asyncbatch.FatalAPIError) as stopped:
        asyncio.run(asyncbatch.run(config, sleep=sleep))
    assert stopped.value.kind == kind and f"HTTP {status}" in str(stopped.value) and "CONNECT" in str(stopped.value)
    assert waits == [] and [method for method, _, _ in forward.received] == ["CONNECT"]


BAD_PROXIES = [
    "proxy.corp:3128",  # no scheme: it said "... not SOCKS"
    "s3cr3tuser:s3cr3tpass@proxy:3128",  # no scheme: it said "is a s3cr3tuser:// URL"
    "http://s3cr3t-user:s3cr3t pass@proxy:3128",  # a space
    "http://s3cr3t-host name:3128",
    "http://s3cr3t-user:p\u00e4ss-s3cr3t@proxy:3128",  # outside ASCII: to be percent-encoded
    "http://s3cr3t-host:0",
    "http://s3cr3t-host:port",
    "http://s3cr3t-host:99999",
    "http://s3cr3t%3Auser:s3cr3t-pass@proxy:3128",  # Basic cannot carry a ':' in the user name
    "http://s3cr3t-user:%FFs3cr3t-pass@proxy:3128",  # a %-escape that is not UTF-8
    "ftp://s3cr3t-user:s3cr3t-pass@proxy:3128",
    "socks5://s3cr3t-user:s3cr3t-pass@proxy:1080",
    "http://[::1:3128",
    "http://s3cr3t-user:s3cr3t-pass@",
]


@pytest.mark.parametrize("value", BAD_PROXIES)
def test_a_proxy_no_client_could_use_is_refused_before_anything_is_sent_naming_the_variable_never_the_value(
    tmp_path: Path, azure: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", value)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", RESOURCE.replace("http:", "https:"))
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["in.jsonl", "--no-progress", "--log-format", "json"]) == 2
    err = capsys.readouterr().err
    assert "https_proxy (or HTTPS_PROXY)" in err and "HINT:" in err
    assert "s3cr3t" not in err and "proxy.corp" not in err and "Traceback" not in err
    assert ("SOCKS" in err) == value.startswith("socks")
    assert not (tmp_path / "in.results.jsonl").exists() and not (tmp_path / "in.results.jsonl.state").exists()
    with pytest.raises(AsyncBatchError, match="the endpoint's proxy"):  # the library refuses it alike
        asyncbatch.Endpoint(kind="azure", base_url=RESOURCE, api_key=KEY, deployment="dep", proxy=value)


@pytest.mark.parametrize("batch", [False, True])
def test_a_proxy_variable_the_run_does_not_use_is_never_read_by_the_sdks_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], batch: bool
) -> None:
    """A loopback endpoint goes straight to it: the SOCKS proxy in ALL_PROXY is not its. The SDK's client still
    built a transport for it (ImportError: socksio), and every run, live or --batch-api, stopped with a traceback."""
    monkeypatch.setenv("ALL_PROXY", f"socks5h://user:{PASSWORD}@127.0.0.1:1080")
    monkeypatch.setenv("https_proxy", "ftp://nowhere")  # what the SDK's client cannot build either
    with simulator_env(SimConfig(api_key=KEY, batch_seconds=0.2), monkeypatch) as (_, sim):
        write_jsonl(tmp_path / "in.jsonl", [{"company": f"Co{i}"} for i in range(3)])
        argv = ["in.jsonl", "--template", "About {company}", "-q"]
        assert main([*argv, *(["--batch-api", "--poll-interval", "0.05"] if batch else [])]) == 0
    assert len(read_jsonl(tmp_path / "in.results.jsonl")) == 3 and sim.batches.created == int(batch)
    assert "Traceback" not in capsys.readouterr().err


def test_a_proxy_that_answers_every_request_with_its_own_page_stops_the_run_recording_nothing(
    tmp_path: Path, azure: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A login page (HTTP 200, HTML) for every request: every line was asked 6 times (100 s for 50 lines), then
    recorded failed (exit 1). The first lines agree, as for a 4xx: the run stops, and the same command runs all."""

    async def login_page(request: web.Request) -> web.Response:
        return web.Response(text="<html>Sign in to the corporate network</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", login_page)
    with serve_app(app) as url:
        monkeypatch.setenv("HTTP_PROXY", _with_password(url))
        _chats(tmp_path, 40)
        assert main(["in.jsonl", "-q", "--max-attempts", "1"]) == 2
    err = capsys.readouterr().err
    assert "none of them the API's" in err and "Sign in to the corporate network" in err and "a proxy's page?" in err
    assert PASSWORD not in err and read_jsonl(tmp_path / "in.results.errors.jsonl") == []


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("res.example.com:443", "https://res.example.com", True),  # the default port, named: it went through
        ("res.example.com:80", "http://res.example.com", True),
        ("res.example.com:8443", "https://res.example.com", False),
        ("res.example.com", "https://res.example.com:8443", True),
        (" .Example.COM , other.org", "https://RES.example.com", True),
        ("fd00::1", "https://[fd00::1]", True),
        ("", "https://127.example.com", False),  # a name, not a loopback address: it went straight there
        ("", "http://127.0.0.2:8000", True),
        ("", "https://[::1]:8443", True),
    ],
)
def test_the_hosts_that_go_straight_to_the_endpoint(no_proxy: str, url: str, direct: bool) -> None:
    proxies = proxies_in({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1", "NO_PROXY": no_proxy})
    assert proxy_for(url, proxies) == (None if direct else "http://p:1")
