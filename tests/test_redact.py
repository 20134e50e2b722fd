from __future__ import annotations

import base64

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.redact import Redactor


def test_keys_stay_masked_however_many_tokens_the_run_learns() -> None:
    redactor = Redactor(["api-key-0123", "apim-value-456"])
    for n in range(40):  # a long run with short-lived tokens
        redactor.add(f"token-{n:04d}")
    text = "api-key-0123 apim-value-456 token-0039 token-0000"
    assert redactor.text(text) == "*** *** *** token-0000"  # the oldest tokens have long expired
    assert redactor.bytes(text.encode()) == b"*** *** *** token-0000"


def test_every_deployment_s_token_in_use_stays_masked_however_many_deployments_a_pool_has() -> None:
    """Regression: in a pool of 18 token-command deployments, the first ones' live tokens were written as they
    are (only the latest 16 tokens learned were kept)."""
    redactor = Redactor()
    for n in range(40):
        redactor.add(f"live-token-{n:02d}", owner=f"deployment-{n}")
    redactor.add("renewed-token-00", owner="deployment-0")  # its first token is replaced, and kept a while
    masked = redactor.text(" ".join(f"live-token-{n:02d}" for n in range(40)) + " renewed-token-00")
    assert set(masked.split()) == {"***"}


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=40),
    form=st.sampled_from(["hex", "HEX", "base64", "urlsafe"]),
    before=st.text(" :=", max_size=3),
)
def test_a_key_in_hex_or_base64_on_its_own_is_masked(secret: str, form: str, before: str) -> None:
    """An error page that prints what it was sent: the key's bytes in hex (either case) or base64."""
    raw = secret.encode()
    written = {
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "base64": base64.b64encode(raw).decode(),
        "urlsafe": base64.urlsafe_b64encode(raw).decode(),
    }[form]
    masked = Redactor([secret]).text(f"sent{before}{written}.")
    assert written.rstrip("=") not in masked and "***" in masked


@settings(max_examples=100, deadline=None)
@given(
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40),
    codec=st.sampled_from(["utf-16-le", "utf-16-be"]),
)
def test_a_key_quoted_by_a_body_in_utf_16_is_masked_in_the_body_and_in_the_record_that_keeps_it(
    secret: str, codec: str
) -> None:
    """An error body in UTF-16 quotes the key with a NUL beside each character; a record keeps that body as a
    JSON string of \\u0000 escapes."""
    body = f"error: your key {secret}".encode(codec)
    redactor = Redactor([secret])
    assert secret.encode(codec) not in redactor.bytes(body)
    record = orjson.dumps({"body": body.decode("latin-1")})
    kept = orjson.loads(redactor.json(record))["body"].encode("latin-1")
    assert secret.encode(codec) not in kept


@settings(max_examples=200, deadline=None)
@example(secret="000\u00c0", around="")  # a proxy's password: lowered, its À became à, and it was never looked for
@example(secret="p\u03a3ss-word", around="")  # a capital sigma: lowered by its place in the word
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="*"), min_size=4),
    around=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=4),
)
def test_a_secret_with_capitals_outside_ascii_is_masked(secret: str, around: str) -> None:
    """A URL's password, decoded, may hold any letter (a key holds printable ASCII alone)."""
    masked = Redactor([secret]).text(f"{around}[{secret}]{around}")
    assert secret not in masked and "***" in masked
