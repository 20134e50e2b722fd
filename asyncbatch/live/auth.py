"""Entra ID: bearer tokens from a provider, refreshed before they expire and after a 401.

A provider is what the openai SDK calls ``azure_ad_token_provider``: a callable
returning a token, sync or async. ``Tokens`` calls it once, reads the token's
expiry from its JWT ``exp`` claim, and calls it again before then. Three
providers are built in: a shell command (``--token-command``), any azure-identity
credential, and ``DefaultAzureCredential`` (``pip install "asyncbatch[entra]"``).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..errors import ConfigError, FatalAPIError

TokenProvider = Callable[[], "str | Awaitable[str]"]
SCOPE = "https://cognitiveservices.azure.com/.default"
UNKNOWN_LIFETIME = 300.0  # a token with no readable expiry is fetched again this often


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


class Tokens:
    """The current bearer token. Refreshed when a quarter of its life (at most 5 minutes) is left.

    :param on_new: told each new token (the run adds it to what is redacted).
    :param clock: wall-clock seconds, to compare with ``exp``; injected for tests.
    """

    def __init__(
        self,
        provider: TokenProvider,
        *,
        on_new: Callable[[str], None] = lambda token: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider, self.on_new, self.clock = provider, on_new, clock
        self.token: str | None = None
        self.fetched_at = 0.0
        self.refreshes = 0
        self._refresh_at = 0.0
        self._after_401 = False  # the current token was fetched because of a 401, and has not worked yet
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if self.token is None or self.clock() >= self._refresh_at:
            async with self._lock:  # one fetch, however many requests are waiting for it
                if self.token is None or self.clock() >= self._refresh_at:
                    await self._fetch()
        assert self.token is not None
        return self.token

    async def refresh_after_401(self, used: str | None) -> bool:
        """A 401 for a request sent with ``used``: True if sending it again with a newer token may work.

        A token already replaced needs no new fetch. A token fetched because of an
        earlier 401 that has not worked since is refused for real: False.
        """
        async with self._lock:
            if used != self.token:
                return True
            if self._after_401:
                return False
            await self._fetch()
            self._after_401 = True
            return True

    def worked(self) -> None:
        """A request succeeded: the current token is good."""
        self._after_401 = False

    async def _fetch(self) -> None:
        try:
            value: Any = self.provider()
            if inspect.isawaitable(value):
                value = await value
        except ConfigError:
            raise
        except Exception as exc:  # azure-identity's CredentialUnavailableError and the like: a message to show
            raise FatalAPIError("authentication", f"could not get an Entra ID token: {exc}") from None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("the token provider returned no token")
        token = value.strip()
        now = self.clock()
        expires = jwt_expiry(token) or now + UNKNOWN_LIFETIME
        self.token, self.fetched_at = token, now
        self._refresh_at = expires - min(300.0, max(0.0, expires - now) / 4)
        self.refreshes += 1
        self.on_new(token)


def command_provider(command: str) -> TokenProvider:
    """A provider that runs ``command`` in a shell and uses what it prints (e.g. ``az account get-access-token``)."""

    async def provide() -> str:
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise ConfigError(
                f"--token-command exited with {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
            )
        return out.decode().strip()

    return provide


def credential_provider(credential: Any, scope: str = SCOPE) -> TokenProvider:
    """A provider over an azure-identity credential (sync or ``.aio``): ``credential.get_token(scope).token``."""

    async def provide() -> str:
        result = credential.get_token(scope)
        if inspect.isawaitable(result):
            result = await result
        return str(result.token)

    return provide


def default_credential_provider() -> TokenProvider:
    """``DefaultAzureCredential`` (environment, managed identity, Azure CLI, ...) for Azure OpenAI's scope."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            'no API key is set, and Entra ID sign-in needs azure-identity. HINT: pip install "asyncbatch[entra]", '
            "or set AZURE_OPENAI_API_KEY, or pass --token-command"
        ) from None
    return credential_provider(DefaultAzureCredential())
