"""Generated values at the environment boundary: variables, a .env file, a deployments file and options,
built into a configuration the way the command line builds it (``main``, in this process, up to the
configuration: ``go`` receives it instead of running it, so nothing is sent).

Invariants, per case:

* ``exit``: the command line ends with 0 (a configuration was built) or 2 (refused), and nothing else;
* ``no traceback``: no "internal error", no traceback, and a refusal says why on ``asyncbatch: error:``;
* ``usable``: a configuration built is one the connection can open: the SDK builds its URLs and headers,
  aiohttp's URL parser finds a host, every header value is printable ASCII (the credential rule);
* ``no secret``: no planted secret (keys, header values, URL passwords, tokens) in any form (raw, JSON-escaped,
  URL-encoded, in any mix) in any byte printed. The check decodes on its own: it does not trust ``redact.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import yarl
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.config import Endpoint, RunConfig
from asyncbatch.sdk import request_target, sdk_client
from tests.fuzz.report import FuzzReport
from tests.fuzz.secrets import leaked

MARK = "Zq7"  # every planted secret starts with it: nothing else generated does
PRINTABLE = re.compile(r"[ -~]*")

# -- what is generated -------------------------------------------------------------------------------
# Each case is a sound configuration with flaws drawn into it: a flaw in some cases only, so that as many
# configurations are built (and checked as usable) as are refused.

secrets = st.text(string.ascii_letters + string.digits + "-_.~+/=", min_size=8, max_size=30).map(lambda s: MARK + s)
junk = st.sampled_from(["\n", "\r\n", "\r", "\t", " ", "\x00", "\x1b", "\x7f", "\x85", "é", "\u2028", "\ufeff"])
good_hosts = st.sampled_from(["res.openai.azure.com", "127.0.0.1:8080", "gw.example.com", "[::1]:443", "h:1"])
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "", "exa mple.com", "a..b", "[::1", "h:99999", "h:-1", "h:x"]),
    st.text(min_size=0, max_size=12),
    st.text(string.ascii_lowercase + "-.:[]%", min_size=1, max_size=20),
)
paths = st.one_of(
    st.sampled_from(["", "/", "/openai/v1", "/openai/v1/", "/v1", "/openai/deployments/d/chat/completions"]),
    st.text(max_size=15).map(lambda s: "/" + s),
)
good_numbers = st.one_of(st.integers(1, 1000).map(str), st.sampled_from(["2", "60"]))
bad_numbers = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "1e309", "0x10", "1_000", " 5", "\u0665", "-0", "0", "0.5"]),
    st.text(max_size=6),
)
NUMERIC = (
    "--tpm", "--rpm", "--concurrency", "--timeout", "--max-attempts", "--backoff", "--max-response-mb", "--grace",
    "--max-wait", "--max-outage", "--max-cost", "--temperature", "--max-tokens", "--token-timeout", "--price-in",
    "--price-out", "--max-lines-per-file", "--poll-interval",
)  # fmt: skip
good_names = st.sampled_from(["gpt-4o-mini", "dep", "my-deployment"])
bad_names = st.one_of(st.text(max_size=20), st.sampled_from(["a/b", "..", "d?x=1", " ", "", "a b", "é"]))
good_versions = st.sampled_from(["2024-10-21", "v1", "2025-04-01-preview"])
bad_versions = st.one_of(st.sampled_from(["", "latest", "V1", "2024-10-21 "]), st.text(max_size=12))
good_files = st.sampled_from(["out.jsonl", "sub/x.jsonl", "o.jsonl"])
bad_files = st.one_of(st.sampled_from(["", ".", "/", "in.jsonl", "~/x", "a\x00b", "-o", "x" * 300]), st.text())
PROXY_NAMES = st.sampled_from(["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
NO_PROXY = st.one_of(
    st.sampled_from(["*", ".openai.azure.com", "res.openai.azure.com", "gw.example.com:443", "h,127.0.0.1", ""]),
    st.text(max_size=20),
)
good_header_names = st.sampled_from(["Ocp-Apim-Subscription-Key", "X-Api-Key", "X-Gateway"])
bad_header_names = st.one_of(
    st.sampled_from(["X Y", "", "é", "(x)", "Authorization", "api-key", "Content-Type"]), st.text(max_size=10)
)


class Drawer:
    """Draws one case's values: sound ones, or (at the case's rate of flaws) flawed ones; plants secrets."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.flaws = draw(st.sampled_from([0, 0, 1, 3, 10]))  # out of 10: how often a value is flawed
        self.planted: list[str] = []

    def flawed(self) -> bool:
        return self.draw(st.integers(0, 9)) < self.flaws

    def pick(self, good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
        return self.draw(bad if self.flawed() else good)

    def secret(self) -> str:
        """A planted secret, as it may arrive: clean, or with a line ending or a character where none belongs."""
        core = self.draw(secrets)
        self.planted.append(core)
        if not self.flawed():
            return core
        extra, where = self.draw(junk), self.draw(st.sampled_from(["end", "end", "inside", "start"]))
        if where == "inside":
            cut = self.draw(st.integers(1, len(core) - 1))
            return core[:cut] + extra + core[cut:]
        return core + extra if where == "end" else extra + core

    def url(self) -> str:
        """An endpoint URL: odd schemes, userinfo (a planted password, plain or percent-encoded), odd hosts."""
        userinfo = ""
        if self.draw(st.integers(0, 3)) == 0:
            password = self.secret()
            shown = quote(password, safe="") if self.draw(st.booleans()) else password
            user = self.draw(st.sampled_from(["admin", "", "user.name", "a%40b"]))
            userinfo = f"{user}:{shown}@" if self.draw(st.integers(0, 4)) else f"{shown}@"
        if not self.flawed():
            scheme = self.draw(st.sampled_from(["https://", "http://"]))
            return f"{scheme}{userinfo}{self.draw(good_hosts)}{self.draw(st.sampled_from(['', '/', '/openai/v1']))}"
        if self.draw(st.integers(0, 5)) == 0:
            return self.draw(st.text(max_size=40))
        scheme = self.draw(st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "", "https:/", "javascript:"]))
        query = self.draw(st.sampled_from(["", "", "?api-version=2024-10-21", "#frag", "?"]))
        return f"{scheme}{userinfo}{self.draw(hosts)}{self.draw(paths)}{query}"

    def token_command(self) -> str:
        """A token command that prints a planted token (clean or not), nothing, or fails quoting it on stderr."""
        token = self.secret()
        if not self.flawed():
            return _printf(token + self.draw(st.sampled_from(["\n", ""])))
        kind = self.draw(st.sampled_from(["prints", "nothing", "fails", "prints twice"]))
        if kind == "nothing":
            return "true"
        if kind == "fails":
            return f"{_printf(token)} >&2; exit {self.draw(st.integers(1, 255))}"
        printed = token + self.draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))
        return _printf(printed if kind == "prints" else printed + printed)


def _printf(output: str) -> str:
    """A shell command printing ``output`` exactly (control characters too), by octal escapes."""
    escaped = "".join(
        c if c.isalnum() or c in "-_.~+/=:" else "".join(f"\\{b:03o}" for b in c.encode()) for c in output
    )
    return f"printf '{escaped}'"


def _toml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


@dataclass
class Case:
    """One generated command line, with its environment and files. ``planted``: the secrets in it."""

    argv: list[str]
    environ: dict[str, str]
    dotenv: str | None = None
    deployments: str | None = None
    planted: list[str] = field(default_factory=list)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    d = Drawer(draw)
    environ: dict[str, str] = {}
    argv = ["in.jsonl"]
    mode = draw(st.sampled_from(["azure", "azure", "azure", "openai", "pool"]))
    if mode in ("azure", "pool") and not (mode == "pool" and d.flawed()):
        environ["AZURE_OPENAI_ENDPOINT"] = d.url()
        if not d.flawed():
            environ["AZURE_OPENAI_API_KEY"] = d.secret()
        if not d.flawed():
            environ["AZURE_OPENAI_DEPLOYMENT_NAME"] = d.pick(good_names, bad_names)
        if draw(st.booleans()):
            environ["AZURE_OPENAI_API_VERSION"] = d.pick(good_versions, bad_versions)
    if mode == "openai":
        environ["OPENAI_API_KEY"] = d.secret()
        if draw(st.booleans()):
            environ["OPENAI_BASE_URL"] = d.url()
        environ["OPENAI_MODEL"] = d.pick(good_names, bad_names)
    for _ in range(draw(st.integers(0, 2))):
        separator = ": " if not d.flawed() else draw(st.sampled_from([":", " : ", "", " "]))
        argv += ["--header", f"{d.pick(good_header_names, bad_header_names)}{separator}{d.secret()}"]
    for option in draw(st.lists(st.sampled_from(NUMERIC), max_size=3, unique=True)):
        argv += [f"{option}={d.pick(good_numbers, bad_numbers)}"]
    if mode != "pool" and draw(st.booleans()):
        argv += ["--deployment", d.pick(good_names, bad_names)]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--api-version", d.pick(good_versions, bad_versions)]
    for option in draw(st.lists(st.sampled_from(["-o", "--errors", "--checkpoint", "--cache"]), max_size=2)):
        argv += [f"{option}={d.pick(good_files, bad_files)}"]
    if d.flawed():
        argv += ["--auth", draw(st.sampled_from(["key", "entra"]))]
    if draw(st.integers(0, 7)) == 0:  # a child process per case: a few cases only
        command = d.token_command()
        if draw(st.booleans()):
            argv += ["--token-command", command]
        else:
            environ["ASYNCBATCH_TOKEN_COMMAND"] = command
        argv += ["--token-timeout", "5"]
    if draw(st.integers(0, 3)) == 0:  # a proxy (its URL drawn as an endpoint's: passwords, odd schemes and hosts)
        environ[draw(PROXY_NAMES)] = (
            d.url() if not d.flawed() else draw(st.sampled_from(["socks5://h:1", "h:3128", ""]))
        )
        if draw(st.booleans()):
            environ[draw(st.sampled_from(["NO_PROXY", "no_proxy"]))] = draw(NO_PROXY)
    dotenv = None
    if draw(st.integers(0, 5)) == 0:
        name = draw(
            st.sampled_from(["AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "ASYNCBATCH_TOKEN_COMMAND", "HTTPS_PROXY"])
        )
        environ.pop(name, None)
        dotenv = f"{name}={_toml(d.secret())}\n" + (draw(st.text(max_size=30)) if d.flawed() else "")
    deployments = _deployments(d, environ) if mode == "pool" else None
    if deployments is not None:
        argv += ["--deployments", "pool.toml"]
    # NUL cannot be in a variable or an argument (the operating system refuses it): the next control character
    environ = {k: v.replace("\x00", "\x01") for k, v in environ.items()}
    return Case([a.replace("\x00", "\x01") for a in argv], environ, dotenv, deployments, d.planted)


def _deployments(d: Drawer, environ: dict[str, str]) -> str:
    entries = []
    for i in range(d.draw(st.integers(1, 2))):
        entry: dict[str, Any] = {
            "name": d.pick(st.just(f"d{i}"), bad_names),
            "endpoint": d.url(),
            "deployment": d.pick(good_names, bad_names),
        }
        auth = d.draw(st.sampled_from(["api_key_env", "api_key_env", "api_key_env", "token_command", "auth"]))
        if auth == "api_key_env":
            entry["api_key_env"] = f"KEY_{i}"
            environ[f"KEY_{i}"] = d.secret()
        elif auth == "auth":
            entry["auth"] = d.draw(st.sampled_from(["entra", "key", ""]))
        elif auth == "token_command":
            entry["token_command"] = d.token_command()
        for name in d.draw(st.lists(st.sampled_from(["tpm", "rpm", "priority"]), max_size=2, unique=True)):
            good = st.integers(1, 10**7)
            entry[name] = d.draw(st.integers(-(2**63), 2**63 - 1) if d.flawed() else good)
        if d.draw(st.integers(0, 3)) == 0:
            entry["api_version"] = d.pick(good_versions, bad_versions)
        entries.append("[[deployments]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in entry.items()))
    return "\n".join(entries)


# -- the checks ---------------------------------------------------------------------------------------


def usable(config: RunConfig) -> str | None:
    """What would stop the connection from opening with this configuration (``live/client.py``), or None."""
    for route in config.routes:
        e = route.endpoint
        if problem := _opens(e.kind, e.base_url, e.deployment, e.api_version, tuple(e.headers.items()), e.api_key):
            return problem
        if e.proxy is not None and (problem := _proxy_opens(e.proxy)):
            return problem
    return None


@functools.lru_cache(maxsize=4096)  # an SDK client costs tens of milliseconds (its TLS context); endpoints repeat
def _opens(
    kind: str, base_url: str, deployment: str, version: str, headers: tuple[tuple[str, str], ...], key: str
) -> str | None:
    endpoint = Endpoint(
        kind=kind,  # type: ignore[arg-type]
        base_url=base_url,
        deployment=deployment,
        api_version=version,
        headers=dict(headers),
        api_key=key or "entra",
    )
    try:
        sdk = sdk_client(endpoint)
        for api in ("chat", "embeddings", "responses"):
            url, sent = request_target(sdk, endpoint, api)  # type: ignore[arg-type]
            parsed = yarl.URL(url)
            if not parsed.raw_host:
                return f"no host in {url!r}"
            if parsed.user is not None and any(name.lower() == "authorization" for name in sent):
                return "credentials in the URL beside an Authorization header (aiohttp refuses to send that)"
            if bad := [name for name, value in sent.items() if not PRINTABLE.fullmatch(value)]:
                return f"headers {bad} are not printable ASCII"
    except Exception as exc:  # the next step of the run would raise this
        return f"{type(exc).__name__} while opening the connection"
    return None


def _proxy_opens(proxy: str) -> str | None:
    """What would stop aiohttp (the live requests) or the SDK's HTTP client (the Batch API) using ``proxy``."""
    try:
        parsed = yarl.URL(proxy)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            return f"aiohttp cannot go through {parsed.scheme}:// or a proxy with no host"
        endpoint = Endpoint(kind="azure", base_url="https://res.openai.azure.com", deployment="d", api_key="k" * 8)
        sdk_client(dataclasses.replace(endpoint, proxy=proxy))
    except Exception as exc:
        return f"{type(exc).__name__} with the proxy"
    return None


def run_case(case: Case, workdir: Path) -> tuple[int, str, str, list[RunConfig]]:
    """The command line on ``case``, in ``workdir``: (exit code, stdout, stderr, configurations built)."""
    for name, text in ((".env", case.dotenv), ("pool.toml", case.deployments)):
        (workdir / name).unlink(missing_ok=True)
        if text is not None:
            (workdir / name).write_text(text, encoding="utf-8", errors="surrogatepass")
    built: list[RunConfig] = []

    async def go(config: RunConfig) -> int:
        built.append(config)
        return 0

    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **case.environ}
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, environ, clear=True),
        contextlib.chdir(workdir),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(case.argv, go=go)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue(), built


def check(case: Case, workdir: Path, report: FuzzReport) -> list[str]:
    """Every invariant on one case: counted in ``report``; the broken ones returned."""
    code, out, err, built = run_case(case, workdir)
    leaks = leaked(case.planted, out, err)
    problems: list[tuple[str, str | None]] = [
        ("exit", None if code in (0, 2) else f"exit code {code}"),
        ("no traceback", "a traceback" if "Traceback" in err or "internal error" in err else None),
        ("no secret", f"leaked {leaks}" if leaks else None),
    ]
    if code == 2:
        problems.append(("message", None if "asyncbatch: error:" in err else "refused with no message"))
    if code == 0:
        problems.append(("usable", usable(built[0]) if built else "exit 0 with no configuration"))
    report.cases += 1
    for invariant, _ in problems:
        report.saw(invariant, None, case)
    return [f"{invariant}: {problem} (stderr: {err[-300:]!r})" for invariant, problem in problems if problem]


def fuzz(cases_wanted: int, seed_value: int = 0) -> FuzzReport:
    """``cases_wanted`` generated cases through the command line's configuration; every invariant checked.

    A broken invariant stops the search; the case hypothesis shrank it to is the one reported.
    """
    report = FuzzReport("environment")
    last: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="asyncbatch-fuzz-env-") as scratch:
        workdir = Path(scratch)
        (workdir / "in.jsonl").write_text('{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')

        @seed(seed_value)
        @settings(
            max_examples=cases_wanted,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @given(cases())
        def each(case: Case) -> None:
            last[:] = [case]
            broken = check(case, workdir, report)
            assert not broken, "; ".join(broken)

        try:
            each()
        except AssertionError as exc:  # hypothesis replays the shrunk case last
            report.violations.append(f"{exc} (case: {last[0]!r})")
    return report
