"""Whether a secret is in a text in any form: a check of its own, independent of ``asyncbatch.redact``.

The text is decoded every way a secret may have been encoded on its way out (JSON escapes after any
number of backslashes, ``\\/``, percent-encoding once or twice), in every order up to three steps, and
the raw secret is looked for in each decoding.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import unquote

_JSON_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")
# \/ after any run of backslashes (a careless encoder's); a quote only after an odd run: an escaped quote at any
# depth (\", \\\"), where an even one is escaped backslashes, then a quote of the text's own (a record's closing one)
_JSON_QUOTED = re.compile(r'\\+(/)|(?<!\\)(?:\\\\)*\\(")')


def json_unescaped(text: str) -> str:
    return _JSON_QUOTED.sub(
        lambda m: m.group(1) or m.group(2), _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    )


def decodings(text: str) -> set[str]:
    forms = {text}
    for _ in range(3):
        forms |= {json_unescaped(f) for f in forms} | {unquote(f) for f in forms}
    return forms


def leaked(secrets: Iterable[str], *texts: str | bytes) -> list[str]:
    """The secrets found in any of ``texts`` (bytes are read as UTF-8), in any form."""
    secrets = list(secrets)
    found: set[str] = set()
    for text in texts:
        decoded = decodings(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
        found |= {secret for secret in secrets for form in decoded if secret in form}
    return sorted(found)


def basic(user: str, password: str) -> str:
    """The ``Authorization: Basic`` value a client builds from a URL's userinfo: a form of its password."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()
