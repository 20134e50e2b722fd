"""Where Entra ID bearer tokens come from: a shell command, or an azure-identity credential.

A provider is what the openai SDK calls ``azure_ad_token_provider``: a callable returning a token, sync or
async (``live/tokens.py`` calls it, refreshing before each token expires). Three are built in: a shell
command (``--token-command``, a ``TokenCommand``), any azure-identity credential (``credential_provider``),
and ``DefaultAzureCredential`` (``pip install "asyncbatch[entra]"``).

A token is a credential from outside: it is judged once (printable ASCII, see ``config.credential_problem``).
A token command is a child process this package owns: bounded in time and output, its process group killed
when it overruns or the run is interrupted, its error output never shown (it may hold secrets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import os
import re
import shlex
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .config import credential_problem
from .errors import ConfigError

TokenProvider = Callable[[], "str | Awaitable[str]"]
SCOPE = "https://cognitiveservices.azure.com/.default"
TOKEN_TIMEOUT = 60.0  # seconds a token command may take (--token-timeout)
MAX_TOKEN_BYTES = 64 * 1024  # a token command's output is read this far: a token is a few kB


def refresh_time(expires: float, fetched: float) -> float:
    """When a token fetched at ``fetched`` that expires at ``expires`` is fetched again: a quarter of its
    life before it expires, at most 5 minutes before."""
    return expires - min(300.0, max(0.0, expires - fetched) / 4)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), or None if the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def _program(command: str) -> str:
    """The program a shell command runs, by name alone: what a message may show of a command that may hold secrets."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]  # VAR=value first
    if not words:
        return "an empty command"
    return f"`{os.path.basename(words[0])}{' ...' if len(words) > 1 else ''}`"  # its arguments may hold secrets


class TokenCommand:
    """A shell command that prints a bearer token (``az account get-access-token ...``): a child we own.

    It runs in a session of its own, with no input, its error output thrown away (it may hold
    secrets), and at most ``timeout`` seconds: its whole process group is killed when it overruns,
    when the run is interrupted, and when it is done (nothing it started outlives it). Its output,
    read up to 64 KiB, must be UTF-8 printable ASCII; one line feed at its end is removed.
    Any failure is a ConfigError naming the command by its program alone.

    :param source: where the command came from, for messages (``--token-command``, ...).
    """

    def __init__(
        self,
        command: str,
        *,
        source: str = "--token-command",
        timeout: float = TOKEN_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < timeout < float("inf"):
            raise ConfigError(f"--token-timeout must be more than 0 seconds (got {timeout:g})")
        if not command.strip():
            raise ConfigError(f"{source} is empty")
        self.command, self.source, self.timeout, self.clock = command, source, timeout, clock
        self.runs = 0
        self._primed: tuple[str, float] | None = None  # the token printed at ``prime``, and when

    @property
    def name(self) -> str:
        return f"{self.source} {_program(self.command)}"

    async def prime(self) -> None:
        """Run it now, before the run starts: a command that fails is a configuration error before
        anything is sent or written. The token it printed is the first one handed out, if still fresh."""
        self._primed = (await self._run(), self.clock())

    async def __call__(self) -> str:
        primed, self._primed = self._primed, None
        if primed is not None and self._fresh(*primed):
            return primed[0]
        return await self._run()

    def _fresh(self, token: str, at: float) -> bool:
        """Whether a token printed at ``at`` would not be refreshed yet (``Tokens``' rule: a quarter of its life)."""
        expires = jwt_expiry(token)
        return expires is None or self.clock() < refresh_time(expires, at)

    async def _run(self) -> str:
        self.runs += 1
        proc = await _spawned(self.command)
        assert proc.stdout is not None
        reading = asyncio.ensure_future(_read_most(proc.stdout, MAX_TOKEN_BYTES + 1))
        exiting = asyncio.ensure_future(proc.wait())
        try:
            async with asyncio.timeout(self.timeout):
                # What it printed once it has exited: a helper it left in the background (``cmd &``) may keep
                # its output open, and is killed with its group, which ends the output.
                await asyncio.wait([reading, exiting], return_when=asyncio.FIRST_COMPLETED)
                if reading.done() and len(reading.result()) > MAX_TOKEN_BYTES:
                    code = None
                else:
                    code = await exiting
                    _kill_group(proc.pid)
                out = await reading
        except TimeoutError:
            raise ConfigError(
                f"{self.name} did not finish within {self.timeout:g} s, and was stopped. "
                "HINT: run it yourself to see where it waits (a sign-in prompt?), or raise --token-timeout"
            ) from None
        finally:
            _kill_group(proc.pid)
            reading.cancel()
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(exiting)
        return self._token(code, out)

    def _token(self, code: int | None, out: bytes) -> str:
        if code is None:
            raise ConfigError(
                f"{self.name} printed more than {MAX_TOKEN_BYTES // 1024} KiB: it must print the token alone"
            )
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            raise ConfigError(
                f"{self.name} {how}; what it wrote to stderr is not shown (it may hold secrets). "
                "HINT: run it yourself to see what it says"
            )
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{self.name} printed bytes that are not UTF-8 text: it must print the token alone"
            ) from None
        token = text[:-1] if text.endswith("\n") and not text.endswith("\r\n") else text
        if not token:
            raise ConfigError(f"{self.name} printed nothing: it must print the token (exit 0 and no token)")
        if problem := credential_problem(token):
            raise ConfigError(
                f"{self.name} printed a token that {problem}. HINT: it must print the token alone, "
                "ending with at most one line feed (\\n)"
            )
        return token


async def _read_most(stream: asyncio.StreamReader, most: int) -> bytes:
    """The stream's bytes to its end, or the first ``most`` of them."""
    out = b""
    while len(out) < most and (more := await stream.read(most - len(out))):
        out += more
    return out


async def _spawned(command: str) -> asyncio.subprocess.Process:
    """``command`` started in a shell of its own process group. Cancelled while it starts (a Ctrl-C), asyncio
    kills the shell alone once it has been spawned: whatever the shell has started (``helper &``) would stay,
    so its group is killed here too."""
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed whole, and Ctrl-C at the terminal is ours
        )
    )
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await spawning
            _kill_group(proc.pid)
            await proc.wait()
        raise


def _kill_group(pid: int) -> None:
    """Kill a token command's process group: the shell, and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def command_provider(command: str, *, source: str = "--token-command", timeout: float = TOKEN_TIMEOUT) -> TokenCommand:
    """A provider that runs ``command`` in a shell and uses what it prints (e.g. ``az account get-access-token``)."""
    return TokenCommand(command, source=source, timeout=timeout)


def credential_provider(credential: Any, scope: str = SCOPE) -> Callable[[], Awaitable[str]]:
    """A provider over an azure-identity credential (sync or ``.aio``): ``credential.get_token(scope).token``."""

    async def provide() -> str:
        result = credential.get_token(scope)
        if inspect.isawaitable(result):
            result = await result
        return str(result.token)

    return provide


def default_credential_provider() -> DefaultCredential:
    """``DefaultAzureCredential`` (environment, managed identity, Azure CLI, ...) for Azure OpenAI's scope."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            'no API key is set, and Entra ID sign-in needs azure-identity. HINT: pip install "asyncbatch[entra]", '
            "or set AZURE_OPENAI_API_KEY, or pass --token-command"
        ) from None
    return DefaultCredential(DefaultAzureCredential())


class DefaultCredential:
    """The command line's Entra ID sign-in when no key is set: an azure-identity credential, asked once before
    anything is sent or written (``prime``), as a token command is, so that a machine with no identity at all is a
    configuration error (exit 2) before a run restarts or shows anything."""

    def __init__(self, credential: Any) -> None:
        self.credential = credential
        self._provide = credential_provider(credential)
        self._primed: str | None = None

    async def prime(self) -> None:
        try:
            self._primed = await self._provide()
        except Exception as exc:
            await self.close()
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"no API key is set, and Entra ID found no identity to sign in with ({said[:300]}). HINT: sign in "
                "with `az login` (or run where a managed identity is), set AZURE_OPENAI_API_KEY, or pass "
                "--token-command"
            ) from None

    async def __call__(self) -> str:
        primed, self._primed = self._primed, None
        return primed if primed is not None else await self._provide()

    async def close(self) -> None:
        """Its HTTP sessions, closed once the run is over (else aiohttp warns of them at exit)."""
        with contextlib.suppress(Exception):
            await self.credential.close()
