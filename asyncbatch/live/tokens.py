"""Entra ID per request: the current bearer token, from a provider (``auth.py``), refreshed before it expires
and after a 401. A token is judged once, when it comes (``config.credential_problem``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from ..auth import TokenProvider, jwt_expiry, refresh_time
from ..config import credential_problem
from ..errors import ConfigError, FatalAPIError

UNKNOWN_LIFETIME = 300.0  # a token with no readable expiry is fetched again this often
RETRY_REFRESH = 30.0  # a refresh that failed while the current token still lives is tried again this much later,
# and a token due for refresh when it comes (by its ``exp`` and our clock) is used this long before the next


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
        self._expires = 0.0
        self._after_401 = False  # the current token was fetched because of a 401, and has not worked yet
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if self.token is None or self.clock() >= self._refresh_at:
            async with self._lock:  # one fetch, however many requests are waiting for it
                if self.token is None or self.clock() >= self._refresh_at:
                    await self._fetch(keep_current=True)
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

    async def _fetch(self, keep_current: bool = False) -> None:
        """A new token. If the provider fails while the current one still has a while to live
        (``keep_current``: a refresh ahead of time), it is kept and the provider asked again later."""
        try:
            token = await self._provided()
        except FatalAPIError:
            now = self.clock()
            if not (keep_current and self.token is not None and self._expires - now > RETRY_REFRESH):
                raise
            self._refresh_at = now + RETRY_REFRESH
            return
        now = self.clock()
        self._expires = jwt_expiry(token) or now + UNKNOWN_LIFETIME
        self.token, self.fetched_at = token, now
        # One its expiry says is due already (this machine's clock ahead of the issuer's, a provider's stale cache)
        # is used a while all the same, until a 401 says it is refused: not fetched again for every request.
        due = refresh_time(self._expires, now)
        self._refresh_at = due if due > now else now + RETRY_REFRESH
        self.refreshes += 1
        self.on_new(token)

    async def _provided(self) -> str:
        """The provider's token, judged. Raises FatalAPIError (``token``), which stops the run cleanly."""
        try:
            value: Any = self.provider()
            if inspect.isawaitable(value):
                value = await value
        except ConfigError as exc:  # a token command that failed: its own message
            raise FatalAPIError("token", str(exc)) from None
        except Exception as exc:  # azure-identity's CredentialUnavailableError and the like: a message to show
            raise FatalAPIError("authentication", f"could not get an Entra ID token: {exc}") from None
        if not isinstance(value, str) or not value.strip():
            raise FatalAPIError("token", "the token provider returned no token")
        token = value.strip()
        if problem := credential_problem(token):
            raise FatalAPIError("token", f"the token provider returned a token that {problem}")
        return token
