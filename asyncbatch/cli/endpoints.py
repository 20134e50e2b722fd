"""Endpoint URLs: refuse a mistyped or pasted URL before anything is sent, naming the value to use."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from ..protocol import ROUTES

_AZURE_FULL = re.compile(r"^(?P<base>.*?)/openai/deployments/(?P<deployment>[^/?]+)")


def check_base_url(value: str, kind: Literal["azure", "openai"], name: str) -> str:
    """The URL to give the SDK, or ConfigError saying what is wrong and what to write instead.

    :param name: the variable or option the value came from, for the message.
    """
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        guess = f"https://{value.split('://', 1)[-1].lstrip('/')}"
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}. HINT: did you mean {guess!r}?")
    if kind == "azure" and (full := _AZURE_FULL.match(value)):
        raise ConfigError(
            f"{name} is a full request URL ({value!r}); it takes the resource endpoint alone. "
            f"HINT: set {name}={full['base']} and pass --deployment {full['deployment']}"
            + (f" --api-version {version[0]}" if (version := parse_qs(parts.query).get("api-version")) else "")
        )
    if kind == "openai" and (cut := value.find("/" + ROUTES["chat"])) >= 0:
        raise ConfigError(f"{name} is a full request URL ({value!r}). HINT: set {name}={value[:cut]}")
    if parts.query:
        raise ConfigError(f"{name} must not carry a query string ({value!r}); api-version is set separately")
    return value.rstrip("/")
