"""Keep secrets out of everything asyncbatch writes or prints.

One ``Redactor`` per run sees every byte before it reaches a file or a terminal:
the writers pass records through it, the reporters their stream, the client the
server's error bodies, the command line its messages and tracebacks, before any
of them is cut short. It masks with ``***``:

* each known secret (a key, a token, a header's value, an endpoint's password), in every
  form it may take on the way: raw; JSON-escaped (``\\u004b``, any hex case, any number of
  backslashes, so a JSON string inside a JSON string too; ``\\/``), URL-encoded (``%4B``, and
  ``%254B`` encoded twice), in any mix, character by character;
* the userinfo of any URL (``https://user:pass@host`` -> ``https://***@host``);
* the value of a credential header written out (``api-key: ...``, ``"Authorization": "Bearer ..."``),
  where it looks like one (see ``SENSITIVE_HEADERS``).

Every record passes through it, so the common case is a few substring tests: the
regular expressions run only when an escape, a ``@`` or a header's name is there.
Where text must be cut, ``clip`` redacts first and then masks a secret's beginning
left at the cut, in any of its forms.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import io
import json
import os
import re
import string
from collections import deque
from collections.abc import Iterable
from typing import TextIO
from urllib.parse import unquote, urlsplit

Bytes = bytes  # the method ``bytes`` below shadows the type in annotations

MASK = "***"
MIN_LENGTH = 4  # shorter values are not searched for: they would mask common words
PARTIAL = 4  # a secret's first characters left at a cut are masked from this many on

# An escape that may stand for one character of a secret: a JSON escape (\uXXXX in either case of hex, \/,
# \" ...), read left to right as a JSON parser does, so that \\ is one backslash; or a percent-encoded byte.
# A secret encoded twice (a JSON string inside a JSON string: \\u0041; %2541) is found by decoding twice.
# Each pattern starts with a literal character: the regular expression engine then skips to it at C speed.
_BACKSLASHED = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
# Loosely, as a careless encoder may leave them: \uXXXX and \/ after any run of backslashes.
_LOOSE = re.compile(r"\\\\*(?:u([0-9a-fA-F]{4})|(/))")
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PERCENT = re.compile(r"%([0-9a-fA-F]{2})")
_PERCENT_BYTES = re.compile(rb"%[0-9a-fA-F]{2}")
_ESCAPE_CUT = re.compile(r"(?:\\+(?:u[0-9a-fA-F]{0,3})?|%(?:25)*[0-9a-fA-F]?)\Z")  # one begun at a cut
# A URL's userinfo (``https://user:pw@host``, its slashes JSON-escaped or not), found from its ``@``.
_SCHEME_SLASHES = re.compile(r"[a-zA-Z0-9+.\-]:(?:\\*/){2}\Z")
_USERINFO = re.compile(r"""[^\s/?#"'<>\\\[\]]+""")
# Headers whose value is a credential, written as a header, a JSON member or a query parameter. Only a value
# that looks like one is masked, so that an answer's prose ("Authorization: required") is left alone: after
# an Authorization header's scheme, or a key of 8 characters or more with a digit in it.
SENSITIVE_HEADERS = ("api-key", "x-api-key", "ocp-apim-subscription-key", "authorization", "proxy-authorization")
_SEPARATOR = r"""(?:\\*["'])?\s*[:=]\s*(?:\\*["'])?\s*"""
_VALUE = r"""[^\s"'\\,;&<>]"""
_SCHEMES = r"(?:bearer|basic|token|digest|negotiate|sharedkey|apikey)\s+"
_AUTHORIZATION_VALUE = rf"({_SEPARATOR}{_SCHEMES})({_VALUE}{{4,}})"
_KEY_VALUE = rf"({_SEPARATOR})((?={_VALUE}*\d){_VALUE}{{8,}})"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_HEADER_CORES = ("-key", "authoriz")  # each sensitive name holds one: a first, cheap test


def url_secrets(url: str) -> list[str]:
    """The secrets a URL's userinfo holds (with or without a scheme): the password, as written and decoded,
    or the user name where it comes alone (a token, as some services take it); and the
    ``Authorization: Basic`` value a client builds from them. A user name beside a password is not one."""
    url = url.strip()
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError:
        return []
    if "@" not in parts.netloc:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    secret = (parts.password, password) if parts.password is not None else (parts.username, user)
    return [s for s in secret if s] + [basic]


# A header whose name says it carries a credential: its value is a secret, whatever it looks like.
_CREDENTIAL_NAME = re.compile(r"key|token|secret|auth|passw|signature|credential|session|cookie", re.IGNORECASE)
# A value of a header not named as a credential is a secret when it looks like a key: 16 characters or
# more, no space, letters and digits mixed (a hex or base64 key). ``X-Region: westeurope`` is not one:
# masked, it rewrote every custom_id that held the region.
_KEYLIKE = re.compile(r"(?=[^\s]*[A-Za-z])(?=[^\s]*\d)[^\s]{16,}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9-]*)\s+(\S+)\s*")  # ``Bearer <token>``, ``Basic <base64>``


def header_secrets(header: str) -> list[str]:
    """The secrets a ``--header 'Name: value'`` holds (the one rule, for every place that learns them).

    A header named as a credential (its name holds ``key``, ``token``, ``secret``, ``auth``, ``passw``,
    ``signature``, ``credential``, ``session`` or ``cookie``: ``api-key``, ``Ocp-Apim-Subscription-Key``,
    ``Authorization``...) holds a secret, whatever its value; after an auth scheme (``Bearer <token>``) the
    credential is one on its own too, and a ``Basic`` one's decoded ``user:password`` and password. Any
    other header's value is a secret when it looks like a key (``_KEYLIKE``: a gateway may name its key as
    it likes): ``X-Region: westeurope``, ``X-Debug: null``, ``X-Timeout: 5000`` are not. A value with no
    name (``--header VALUE``, refused later) is taken as a secret whole.
    """
    name, colon, value = header.partition(":")
    if not colon:
        return [header.strip()]
    value = value.strip(" \t")
    if not _CREDENTIAL_NAME.search(name):
        return [value] if _KEYLIKE.fullmatch(value) else []
    found = [value]
    if scheme := _SCHEME.fullmatch(value):
        found.append(scheme[2])
        if scheme[1].lower() == "basic":
            with contextlib.suppress(ValueError):
                pair = base64.b64decode(scheme[2], validate=True).decode("utf-8")
                found += [pair, pair.partition(":")[2]]
    return [secret for secret in found if secret]


class _Normalized:
    """``text`` with its escapes of ``kinds`` (``json``, ``percent``) decoded, and the way back from its
    offsets to ``text``'s."""

    def __init__(
        self, text: str, latin: bool, kinds: tuple[str, ...] = ("json", "percent"), quotes: bool = True
    ) -> None:
        """:param quotes: decode ``\\"`` too. Not in a decoding of a decoding: its quotes may be the outer
        text's own, once an escaped backslash before one was decoded."""
        out: list[str] = []
        self.norm: list[int] = []  # where each segment starts in the decoded text
        self.orig: list[int] = []  # ... and in ``text``
        self.size: list[int] = []  # its length in ``text``: a literal run's, or an escape's
        self.literal: list[bool] = []
        pos = at = 0
        for m in _escapes(text, kinds):
            if not quotes and m.re is _BACKSLASHED and m.group(2) == '"':
                continue
            if m.start() > pos:
                self._segment(at, pos, m.start() - pos, True)
                out.append(text[pos : m.start()])
                at += m.start() - pos
            char = _decoded(m, latin)
            self._segment(at, m.start(), m.end() - m.start(), False)
            out.append(char)
            at += len(char)
            pos = m.end()
        self.changed = bool(self.norm)
        if pos < len(text):
            self._segment(at, pos, len(text) - pos, True)
            out.append(text[pos:])
        self.text = "".join(out)

    def _segment(self, at: int, orig: int, size: int, literal: bool) -> None:
        self.norm.append(at)
        self.orig.append(orig)
        self.size.append(size)
        self.literal.append(literal)

    def start(self, n: int) -> int:
        i = bisect.bisect_right(self.norm, n) - 1
        return self.orig[i] + (n - self.norm[i] if self.literal[i] else 0)

    def end(self, n: int) -> int:
        """The end in ``text`` of a span that ends (exclusively) at ``n`` in the decoded text."""
        i = bisect.bisect_right(self.norm, n - 1) - 1
        return self.orig[i] + (n - self.norm[i] if self.literal[i] else self.size[i])


class _Chain:
    """A decoding of a decoding (a secret encoded twice or three times), with the way back through each."""

    def __init__(self, steps: list[_Normalized]) -> None:
        self.steps, self.text = steps, steps[-1].text

    def start(self, n: int) -> int:
        for step in reversed(self.steps):
            n = step.start(n)
        return n

    def end(self, n: int) -> int:
        for step in reversed(self.steps):
            n = step.end(n)
        return n


LEVELS = 3  # decodings of decodings tried: a JSON string in a JSON string, written in a JSON line
# Each way with percent-decoding and without: a secret's own ``%00`` is no escape (``b000/%00`` JSON-escaped twice
# with its / escaped is found only by the loose decoding alone, its %00 kept).
KINDS = (("json",), ("loose",), ("percent",), ("json", "percent"), ("loose", "percent"))
MAX_DECODINGS = 31  # a bound on the work for one text, however escaped: past the 5 + 25 of levels 1 and 2 only


def _decodings(text: str, latin: bool) -> list[_Chain]:
    """``text`` decoded every way a secret in it may need: its JSON escapes, its percent-escapes, or both,
    and each of those decoded again, up to ``LEVELS`` deep. Only the decodings that differ from ``text``."""
    found: list[_Chain] = []
    seen = {text}
    frontier: list[list[_Normalized]] = [[]]
    for _ in range(LEVELS):
        deeper = []
        for steps in frontier:
            last = steps[-1].text if steps else text
            for kinds in KINDS:
                if "percent" in kinds and "%" not in last:
                    continue  # the same as the kinds without percent, if any
                step = _Normalized(last, latin, kinds, quotes=not steps)
                if step.changed and step.text not in seen:
                    seen.add(step.text)
                    deeper.append([*steps, step])
        found += [_Chain(steps) for steps in deeper]
        frontier = deeper
        if len(found) >= MAX_DECODINGS:
            break
    return found


def _escapes(text: str, kinds: tuple[str, ...]) -> list[re.Match[str]]:
    """Every escape of ``kinds`` in ``text``, in order (the kinds never overlap: \\ and % begin them)."""
    backslashed = _LOOSE if "loose" in kinds else _BACKSLASHED
    found = list(backslashed.finditer(text)) if ("json" in kinds or "loose" in kinds) and "\\" in text else []
    if "percent" in kinds and "%" in text:
        found = sorted([*found, *_PERCENT.finditer(text)], key=lambda m: m.start())
    return found


def _decoded(m: re.Match[str], latin: bool) -> str:
    """The character an escape stands for; in ``latin`` text (bytes seen as Latin-1), its UTF-8 bytes."""
    if m.re is _PERCENT:
        byte = int(m.group(1), 16)
        return chr(byte) if latin or byte < 0x80 else m.group(0)  # text: a UTF-8 byte alone is no character
    if m.group(1) is None:
        return _JSON_ESCAPES[m.group(2)]  # a loose one's is /
    char = chr(int(m.group(1), 16))
    return char.encode("utf-8", "surrogatepass").decode("latin-1") if latin else char


def _variants(secret: str) -> list[str]:
    """The raw forms a decoder does not reach: a JSON ``\\\\`` or ``\\"``, a space written ``+``; and the
    key's bytes in hex or base64 on their own (an error page that prints what it was sent), or in UTF-16."""
    raw = secret.encode()
    forms = [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]
    if '"' in secret or "\\" in secret:
        forms.append(json.dumps(secret, ensure_ascii=False)[1:-1])
    if " " in secret:
        forms.append(secret.replace(" ", "+"))
    if secret.isascii():  # a body in UTF-16 quotes it with a NUL beside each character
        forms += [raw.decode("ascii").encode(codec).decode("latin-1") for codec in ("utf-16-le", "utf-16-be")]
    return forms


class Redactor:
    """Replaces each secret (4 characters or longer), in every form, with ``***`` in text and in bytes."""

    def __init__(self, secrets: Iterable[str | None] = (), headers: Iterable[str] = ()) -> None:
        """:param headers: more header names whose value is a credential (``--header`` names)."""
        self._fixed: list[str] = []  # keys and header values: kept for good
        self._learned: deque[str] = deque(maxlen=16)  # bearer tokens replaced: the latest few
        self._current: dict[object, str] = {}  # each deployment's bearer token now in use
        self._headers: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {}
        self._cores: list[str] = list(_HEADER_CORES)
        self.add_headers(SENSITIVE_HEADERS)
        self.add_headers(headers)
        self.extend(secrets)

    def extend(self, secrets: Iterable[str | None]) -> None:
        """Secrets known from the configuration."""
        self._fixed += [s for s in secrets if s and len(s) >= MIN_LENGTH and s not in self._fixed]
        self._index()

    def add(self, secret: str, owner: object = None) -> None:
        """A secret learned during the run (a new bearer token). Each ``owner``'s (a deployment's) latest is
        kept for as long as the run: a pool of many deployments must not push out tokens still in use;
        the ones they replaced are kept a while (the latest few), since answers may still quote them."""
        if len(secret) < MIN_LENGTH or secret in self._fixed:
            return
        replaced = self._current.get(owner)
        self._current[owner] = secret
        if replaced is not None and replaced != secret and replaced not in self._learned:
            self._learned.append(replaced)
        self._index()

    def add_headers(self, names: Iterable[str]) -> None:
        """Header names whose values are credentials, written out anywhere, known to us or not."""
        for name in {n.strip().lower() for n in names if n.strip()} - self._headers.keys():
            value = _AUTHORIZATION_VALUE if "authoriz" in name else _KEY_VALUE
            pattern = re.escape(name) + value  # a literal first: fast on lowered text
            self._headers[name] = (re.compile(pattern), re.compile(pattern, re.IGNORECASE))
            if not any(core in name for core in self._cores):
                self._cores.append(name)
        self._bcores = [core.encode() for core in self._cores]

    def _index(self) -> None:
        known = (*self._fixed, *self._current.values(), *self._learned)
        forms = {_fold(form) for s in known for form in _variants(s)}
        # Found whatever the case of their ASCII letters (a server that quotes a key upper-cased), so kept folded
        self._text = sorted(forms, key=len, reverse=True)
        self._suspects = [s.casefold() for s in self._text]  # what ``_suspect`` looks for
        self._latin = [s.encode().decode("latin-1") for s in self._text]  # bytes, one character per byte
        self._bytes = [s.encode() for s in self._text]
        # Escapes that may stand for a character of a secret: only those are worth decoding.
        ascii_only = all(s.isascii() for s in self._text)  # then a JSON escape of theirs is \u00XX
        quoted = [f"\\{c}" for c in '/"' if any(c in s for s in self._text)]
        self._triggers = ["\\u00" if ascii_only else "\\u", *quoted]
        self._btriggers = [t.encode() for t in self._triggers]

    def text(self, value: str) -> str:
        if not self._suspect(value):
            return value
        return self._redact(value, self._text, latin=False)

    def bytes(self, value: Bytes) -> Bytes:
        if not self._suspect_bytes(value):
            return value
        return self._redact(value.decode("latin-1"), self._latin, latin=True).encode("latin-1")

    def json(self, document: Bytes) -> Bytes:
        """A JSON document (a record's line, a cached answer) with every secret masked in its data, never in
        its structure: a secret that is also a JSON word or number (a key ``null``, a header value ``5000``)
        cannot make it something that is not JSON, nor a string something else. Where a mask would touch it
        (rare: only where a secret is there), each string, key and number is redacted on its own and the
        document written again; ``true``, ``false`` and ``null`` hold no secret and stay. Bytes that are not
        JSON are redacted as bytes."""
        masked = self.bytes(document)
        if masked == document:
            return document
        try:
            value = json.loads(document)
        except (ValueError, RecursionError):  # not JSON (or not UTF-8): bytes it is
            return masked
        end = b"\n" if document.endswith(b"\n") else b""
        try:
            return (
                json.dumps(self._data(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + end
            )
        except ValueError:  # NaN, which JSON has no word for: bytes it is
            return masked

    def _data(self, value: object) -> object:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self._data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._data(item) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            written = json.dumps(value)
            return MASK if self.text(written) != written else value
        return value  # true, false, null

    def _suspect(self, value: str) -> bool:
        """Whether ``value`` may hold anything to mask: substring tests only (every record passes here)."""
        # Folded as the secrets are here (``_index``), by a rule of one character at a time: a secret in ``value``
        # is in it. (``lower()`` is not: a password's À lowered to à, and was never looked for.) It may fold more
        # than ``_fold`` does: then only the slow path runs.
        lowered = value.casefold()
        for secret in self._suspects:
            if secret in lowered:
                return True
        if self._text and ("%" in value or any(t in value for t in self._triggers)):
            return True
        if "@" in value and ("//" in value or "\\/" in value):
            return True
        return any(core in lowered for core in self._cores)

    def _suspect_bytes(self, value: Bytes) -> bool:
        lowered = value.lower()  # bytes: ASCII letters only
        for secret in self._bytes:
            if secret in lowered:
                return True
        if self._bytes:
            for trigger in self._btriggers:
                if trigger in value:
                    return True
            if b"%" in value and _PERCENT_BYTES.search(value):
                return True
        if b"@" in value and (b"//" in value or b"\\/" in value) and _userinfo(value.decode("latin-1")):
            return True
        return any(core in lowered for core in self._bcores)

    def _redact(self, text: str, secrets: list[str], *, latin: bool) -> str:
        """Masked until nothing changes: a mask beside what is left can spell a secret again (``0000000*`` in
        ``00000000000000*`` leaves ``0000000***``). Each pass that masks shortens a secret (4 or more
        characters) to 3, so it ends."""
        while (masked := self._redact_once(text, secrets, latin=latin)) != text:
            text = masked
        return masked

    def _redact_once(self, text: str, secrets: list[str], *, latin: bool) -> str:
        folded = _fold(text)
        spans = [span for secret in secrets for span in _find(folded, secret)]
        if secrets and (any(t in text for t in self._triggers) or ("%" in text and _PERCENT.search(text))):
            for decoded in _decodings(text, latin):
                folded = _fold(decoded.text)
                for secret in secrets:
                    spans += [(decoded.start(a), decoded.end(b)) for a, b in _find(folded, secret)]
        if "@" in text:
            spans += _userinfo(text)
        return _masked(text, spans + self._header_values(text))

    def _header_values(self, text: str) -> list[tuple[int, int]]:
        """The values written after a credential header's name (case-insensitive, known or not)."""
        lowered = text.lower()
        if not any(core in lowered for core in self._cores):
            return []
        aligned = len(lowered) == len(text)  # lower() lengthens a few letters (İ); then case is ignored instead
        spans = []
        for name, (fast, caseless) in self._headers.items():
            if name not in lowered:
                continue
            searched = lowered if aligned else text  # the offsets below are searched's
            for m in fast.finditer(lowered) if aligned else caseless.finditer(text):
                if (not m.start() or searched[m.start() - 1].lower() not in _NAME_CHARS) and m.group(2) != MASK:
                    spans.append(m.span(2))
        return spans

    def clip(self, value: Bytes, limit: int) -> Bytes:
        """Redact, then keep at most ``limit`` bytes; a secret's beginning left at the end is masked too."""
        value = self.bytes(value)
        return self.cut_short(value[:limit]) if len(value) > limit else value

    def cut_short(self, value: Bytes) -> Bytes:
        """``value`` was cut before it was redacted (read only so far): mask a secret begun at its end,
        in any form, an escape cut in its middle included."""
        text = self.bytes(value).decode("latin-1")
        begun = _ESCAPE_CUT.search(text)
        # What looks like an escape begun at the end (``%0``, ``\\u00``) may be one, or a raw secret's own characters
        readings = [(text[: begun.start()], True), (text, False)] if begun else [(text, False)]
        starts = [  # where each form's beginning found at the end starts: the mask takes the earliest
            _before_backslashes(text, decoded.start(len(decoded.text) - size))
            for whole, cut in readings
            for decoded in [_Chain([_Normalized(whole, latin=True, kinds=())]), *_decodings(whole, latin=True)]
            for folded in [_fold(decoded.text)]  # once for every secret
            for secret in self._latin
            if (size := _begun(folded, secret, PARTIAL - cut))
        ]
        return (text[: min(starts)] + MASK if starts else text).encode("latin-1")


def _begun(text: str, secret: str, least: int) -> int:
    """How much of ``secret``'s beginning ``text`` ends with (``least`` characters or more; the whole secret is
    masked already), or 0."""
    for size in range(min(len(secret) - 1, len(text)), least - 1, -1):
        if text.endswith(secret[:size]):
            return size
    return 0


def _userinfo(text: str) -> list[tuple[int, int]]:
    """The userinfo of every URL in ``text``: from each ``@`` back to the ``//`` after a scheme's name."""
    spans = []
    at = text.find("@")
    while at >= 0:
        slash = text.rfind("/", 0, at)
        after_scheme = slash > 1 and text[slash - 1] in "/\\" and _SCHEME_SLASHES.search(text, slash - 40, slash + 1)
        if after_scheme and _USERINFO.fullmatch(text, slash + 1, at) and text[slash + 1 : at] != MASK:
            spans.append((slash + 1, at))
        at = text.find("@", at + 1)
    return spans


_ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _fold(text: str) -> str:
    """``text`` with its ASCII letters lower-cased, and nothing else changed: every offset stays where it was."""
    return text.translate(_ASCII_FOLD)


def _find(text: str, secret: str) -> list[tuple[int, int]]:
    spans, at = [], text.find(secret)
    while at >= 0:
        spans.append((at, at + len(secret)))
        at = text.find(secret, at + len(secret))
    return spans


_TOKEN = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)|%[0-9a-fA-F]{2}", re.DOTALL)  # an escape of JSON or of a URL


def _widened(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans that begin or end inside an escape (``\\u00|41``) take all of it: a mask never breaks one."""
    tokens = [m.span() for m in _TOKEN.finditer(text)] if "\\" in text or "%" in text else []
    if not tokens:
        return spans
    starts = [start for start, _ in tokens]
    widened = []
    for start, end in spans:
        i = bisect.bisect_right(starts, start) - 1
        if i >= 0 and tokens[i][0] < start < tokens[i][1]:
            start = tokens[i][0]
        j = bisect.bisect_right(starts, end - 1) - 1
        if j >= 0 and tokens[j][0] < end < tokens[j][1]:
            end = tokens[j][1]
        widened.append((start, end))
    return widened


def _before_backslashes(text: str, start: int) -> int:
    """A span begun just after backslashes takes them too: ``\\n`` + ``***`` would be a broken JSON escape."""
    while start > 0 and text[start - 1] == "\\":
        start -= 1
    return start


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span (overlapping or not) masked; one mask for spans that touch."""
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end in sorted(_widened(text, spans)):
        start = _before_backslashes(text, start)
        if start > pos or not out:
            out += [text[pos:start], MASK]
        pos = max(pos, end)
    return "".join(out) + text[pos:]


class RedactingStream:
    """A text stream that passes every write through a Redactor (a terminal's stdout or stderr).

    A stream that fails (a terminal that hung up when its SSH session closed: EIO; a pipe whose reader
    went away, as ``2>&1 | head`` does: EPIPE; a full disk: any OSError) gets nothing more, and its file
    descriptor is pointed at /dev/null, so that what is left in its buffer cannot fail again at exit. The
    run it shows carries on, records every answer, and ends as it would have, with no one left to read it.
    """

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self.stream, self.redactor = stream, redactor
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(self.redactor.text(text))
            except OSError:
                self._went_away()
        return len(text)

    def flush(self) -> None:
        if self.gone:
            return
        try:
            self.stream.flush()
        except OSError:
            self._went_away()

    def _went_away(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # no descriptor: a test's buffer
            fd = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> object:  # encoding, errors, buffer...: those of the stream
        return getattr(self.stream, name)
