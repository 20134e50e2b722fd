from __future__ import annotations

from asyncbatch.redact import Redactor


def test_keys_stay_masked_however_many_tokens_the_run_learns() -> None:
    redactor = Redactor(["api-key-0123", "apim-value-456"])
    for n in range(40):  # a long run with short-lived tokens
        redactor.add(f"token-{n:04d}")
    text = "api-key-0123 apim-value-456 token-0039 token-0000"
    assert redactor.text(text) == "*** *** *** token-0000"  # the oldest tokens have long expired
    assert redactor.bytes(text.encode()) == b"*** *** *** token-0000"
