"""Endpoint URLs: refuse a mistyped or pasted URL before anything is sent, naming the value to use.

A URL shown in a message has its user and password masked (``shown``); one that holds a control
character is not shown at all (the password may be where it is).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import yarl

from ..errors import ConfigError
from ..protocol import ROUTES
from ..redact import MASK

_AZURE_FULL = re.compile(r"^(?P<base>.*?)/openai/deployments/(?P<deployment>[^/?]+)")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*:/*)?[^?#]*@")
_PRINTABLE = re.compile(r"[!-~]+")  # no space, no control character: a URL's characters, percent-encoded or not


def shown(url: str) -> str:
    """A URL as a message may show it: a user and password (anything before an ``@``) masked."""
    return _USERINFO.sub(lambda m: f"{m.group(1) or ''}{MASK}@", url)


def check_base_url(value: str, kind: Literal["azure", "openai"], name: str) -> str:
    """The URL to give the SDK, or ConfigError saying what is wrong and what to write instead.

    :param name: the variable or option the value came from, for the message.
    """
    value = value.strip()
    if not _PRINTABLE.fullmatch(value):
        raise ConfigError(
            f"{name} holds a space, a control character or a character outside ASCII. HINT: set it to the "
            "endpoint's URL alone (a name outside ASCII goes in its xn-- form)"
        )
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed [ of an IPv6 address
        raise ConfigError(f"{name} is not a URL that can be used ({shown(value)!r}): its host cannot be read") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        guess = f"https://{value.split('://', 1)[-1].lstrip('/')}"
        raise ConfigError(f"{name} must be an http(s) URL, got {shown(value)!r}. HINT: did you mean {shown(guess)!r}?")
    if problem := _unreadable(value):
        raise ConfigError(f"{name} is not a URL that can be used ({shown(value)!r}): {problem}")
    if kind == "azure" and (full := _AZURE_FULL.match(value)):
        raise ConfigError(
            f"{name} is a full request URL ({shown(value)!r}); it takes the resource endpoint alone. "
            f"HINT: set {name}={shown(full['base'])} and pass --deployment {full['deployment']}"
            + (f" --api-version {version[0]}" if (version := parse_qs(parts.query).get("api-version")) else "")
        )
    if kind == "openai" and (cut := value.find("/" + ROUTES["chat"])) >= 0:
        raise ConfigError(f"{name} is a full request URL ({shown(value)!r}). HINT: set {name}={shown(value[:cut])}")
    if parts.query or parts.fragment:
        bare = value.split("?", 1)[0].split("#", 1)[0]  # the query itself is not shown: it may hold a signature
        raise ConfigError(
            f"{name} must not carry a query string or a fragment ({shown(bare)!r} and more); "
            "api-version is set separately"
        )
    return value.rstrip("/")


def _unreadable(value: str) -> str | None:
    """Why the HTTP client could not read the URL's host and port, in words that quote neither."""
    try:
        port = urlsplit(value).port
        url = yarl.URL(value)
        host = url.raw_host
    except (ValueError, UnicodeError):
        return "its host or port cannot be read"
    if not host:
        return "it names no host"
    if port is not None and not 0 < port < 65536:
        return "its port is not 1 to 65535"
    return None
