"""Entra ID for the simulator: bearer JWTs that expire, as Azure OpenAI checks them (unsigned here).

python -m asyncbatch.simulator.tokens 8     # print a token that lives 8 seconds (a --token-command)
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid


def _part(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def make_token(lifetime: float, now: float | None = None) -> str:
    """A JWT for Azure OpenAI's audience that expires ``lifetime`` seconds from now."""
    issued = time.time() if now is None else now
    claims = {"aud": "https://cognitiveservices.azure.com", "exp": issued + lifetime, "jti": uuid.uuid4().hex}
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims)}.sig"


def token_problem(header: str | None, now: float | None = None) -> str | None:
    """Why an ``Authorization`` header is refused, or None if it carries a live token."""
    if not header or not header.startswith("Bearer "):
        return "a bearer token is required (key authentication is disabled for this resource)"
    parts = header.removeprefix("Bearer ").split(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (IndexError, ValueError):
        return "the bearer token is not a JWT"
    if float(claims.get("exp", 0)) <= (time.time() if now is None else now):
        return "the access token has expired"
    return None


if __name__ == "__main__":
    print(make_token(float(sys.argv[1]) if len(sys.argv) > 1 else 3600.0))
