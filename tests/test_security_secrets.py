"""Which values are secrets, and masking that never breaks what it masks.

- A gateway's credential is a secret in every form, and a credential after an auth scheme is one on its own.
- A harmless ``--header`` value (``X-Debug: null``, ``X-Timeout: 5000``) is no secret: masked, it made every
  null of every answer ``***``, so no line was JSON any more.
- A record or a cached answer is masked as data, never as structure: whatever the secrets, it stays JSON of
  the same shape.
- Every field written to the cache passes the redactor: the request id too.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.redact import MASK, Redactor, header_secrets
from tests.fuzz.secrets import leaked
from tests.helpers import read_jsonl, write_jsonl
from tests.scripted import Answer, Received, completion, serve

KEY = "sk-secrets-4b1d8e0c2a77f"
TOKEN = "gwtok-5e62a0d4b7c1"

# -- the rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "secrets"),
    [
        ("X-Debug: null", []),
        ("Ocp-Apim-Trace: true", []),
        ("X-Timeout: 5000", []),
        ("X-Ratio: -1.5e3", []),
        ("X-Env: prod", []),  # shorter than 8: a word, not a credential
        ("X-Client: my-client-0042", []),  # an id, not a key: shorter than 16
        ("X-Region: westeurope", []),  # masked, it rewrote every custom_id that held the region
        ("X-Gw: 3f9a1c2b4d5e6f708192a3b4c5d6e7f8", ["3f9a1c2b4d5e6f708192a3b4c5d6e7f8"]),  # a key, named as liked
        ("Ocp-Apim-Subscription-Key: 5000", ["5000"]),  # named as a credential: a secret whatever it is
        ("api-key: null", ["null"]),
        ("X-Functions-Key: abcd1234", ["abcd1234"]),
        ("Authorization: Bearer gwtok-5e62a0d4b7c1", ["Bearer gwtok-5e62a0d4b7c1", "gwtok-5e62a0d4b7c1"]),
        ("Authorization: Basic dXNlcjpodW50ZXIy", ["Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "user:hunter2"]),
        ("Cookie: session=abcdef", ["session=abcdef"]),
        ("x-gateway-token:  tok-1  ", ["tok-1"]),
        ("no-colon-secret-value", ["no-colon-secret-value"]),  # refused later; a secret until then
    ],
)
def test_which_header_values_are_secrets(header: str, secrets: list[str]) -> None:
    found = header_secrets(header)
    assert [s for s in found if s != "hunter2"] == secrets  # hunter2: the Basic pair's password, too short to seek


def test_a_credential_after_an_auth_scheme_is_masked_on_its_own_in_every_form() -> None:
    redactor = Redactor(header_secrets(f"Authorization: Bearer {TOKEN}"))
    for planted in (TOKEN, TOKEN.upper(), json.dumps(TOKEN)[1:-1].replace("-", "\\u002d"), TOKEN.replace("-", "%2D")):
        assert leaked([TOKEN, TOKEN.upper()], redactor.text(f"your token was {planted}")) == []


def test_a_key_is_masked_whatever_the_case_of_its_letters() -> None:
    redactor = Redactor([KEY])
    for planted in (KEY, KEY.upper(), KEY.title()):
        assert redactor.text(f"key={planted}!") == f"key={MASK}!"
        assert redactor.bytes(f'{{"m": "key {planted}"}}'.encode()) == f'{{"m": "key {MASK}"}}'.encode()


# -- masked as data, never as structure ---------------------------------------------------------------

WORDS = ["null", "true", "false", "none", "5000", "12.5", "12345678", "-0000"]
secret_values = st.one_of(
    st.sampled_from(WORDS), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=4, max_size=16)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([5000, 12.5, 12345678, 0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text("abc", max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


def _shape(value: Any) -> Any:
    """What masking may not change: true, false and null; every list's length; every object's keys (of a few
    letters, which no secret of 4 characters or more fits in). A string stays a string; a number may be masked."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, str):
        return "str"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return value


def _leaves(value: Any) -> list[str]:
    """Every string and number of ``value``, as text (true, false and null hold no secret: they stay)."""
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in [k, *_leaves(v)]]
    if isinstance(value, list):
        return [text for v in value for text in _leaves(v)]
    if isinstance(value, str):
        return [value]
    return [json.dumps(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@settings(max_examples=400, deadline=None)
@given(document=documents, secrets=st.lists(secret_values, min_size=1, max_size=3), plant=st.booleans())
@example(document={"a": None, "b": [True, 5000]}, secrets=["null", "true", "5000"], plant=False)
@example(document={"c": "it is NULL here"}, secrets=["null"], plant=False)
@example(document=[1.5, "x"], secrets=['", "'], plant=True)  # a secret made of JSON's own punctuation
def test_a_document_masked_is_json_of_the_same_shape_and_holds_no_secret_in_its_data(
    document: Any, secrets: list[str], plant: bool
) -> None:
    if plant:  # the secrets inside the data, in strings and as they are
        document = {"a": document, "b": " ".join(secrets), "c": [secrets[0].upper()]}
    raw = orjson.dumps(document) + b"\n"
    masked = Redactor(secrets).json(raw)
    assert masked.endswith(b"\n")
    value = json.loads(masked)  # still JSON
    shape = _shape(document)
    assert _shape(value) == shape or _masked_numbers(_shape(value), shape)
    lowered = [s.lower() for s in secrets]
    assert leaked(lowered, *[text.lower() for text in _leaves(value)]) == []
    if not leaked(lowered, *[text.lower() for text in _leaves(document)]) and not leaked(lowered, raw.lower()):
        assert masked == raw  # nothing to mask: the very bytes


def _masked_numbers(got: Any, wanted: Any) -> bool:
    """``got`` is ``wanted`` but for numbers masked (now the string ``***``)."""
    if isinstance(wanted, dict):
        return (
            isinstance(got, dict)
            and got.keys() == wanted.keys()
            and all(_masked_numbers(got[k], wanted[k]) for k in got)
        )
    if isinstance(wanted, list):
        return isinstance(got, list) and len(got) == len(wanted) and all(map(_masked_numbers, got, wanted))
    return got == wanted or (wanted == "number" and got == "str")


# -- end to end -------------------------------------------------------------------------------------------


def _script(request: Received) -> Answer:
    if request.prompt == "p0":  # the gateway's token, echoed
        return Answer(body=completion(f"your token was {TOKEN}"), request_id="r0")
    if request.prompt == "p1":
        body = orjson.dumps({"error": {"code": "bad", "message": f"token {TOKEN} is not valid here"}})
        return Answer(status=400, body=body, request_id="r1")
    if request.prompt == "p2":  # the key echoed as the request id
        return Answer(body=completion("ok"), request_id=KEY.upper())
    return Answer(body=completion(None, extra=b'"flags": [true, false, null], "timeout": 5000'), request_id="r3")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with serve(_script) as server:
        for name in [n for n in os.environ if n.startswith(("AZURE_", "OPENAI_"))]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        monkeypatch.chdir(tmp_path)
        yield server


def test_harmless_headers_leave_every_line_whole_and_credentials_are_masked_everywhere(
    tmp_path: Path, env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(
        tmp_path / "in.jsonl",
        [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"p{i}"}]} for i in range(4)],
    )
    headers = ["X-Debug: null", "Ocp-Apim-Trace: true", "X-Timeout: 5000", f"Authorization: Bearer {TOKEN}"]
    args = ["in.jsonl", "--no-progress", "--max-attempts", "1", "--cache", "c.sqlite"]
    args += [arg for header in headers for arg in ("--header", header)]
    assert main(args) == 1  # the 400 failed
    err = capsys.readouterr().err
    results, errors = read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert sorted(r["custom_id"] for r in results) == ["c0", "c2", "c3"] and [e["custom_id"] for e in errors] == ["c1"]
    body = next(r for r in results if r["custom_id"] == "c3")["response"]["body"]
    assert body["flags"] == [True, False, None] and body["timeout"] == 5000  # no header value masked in the data
    cached = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT body, request_id FROM answers").fetchall()
    assert len(cached) == 3
    stored = [tmp_path.joinpath(name).read_bytes() for name in ("in.results.jsonl", "in.results.errors.jsonl")]
    stored += [b for row in cached for b in (row[0], (row[1] or "").encode())]
    secrets = [TOKEN, KEY, KEY.upper()]
    assert leaked(secrets, err, *stored) == []
    assert MASK in next(r for r in results if r["custom_id"] == "c2")["response"]["request_id"]
    sent = len(env.received)
    assert main(args) == 1 and len(env.received) == sent  # every line counted done: nothing sent again
    assert main(["export", "in.results.jsonl", "-o", "out.jsonl"]) == 0
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4  # no line skipped as not JSON


# -- a .env file names an endpoint: the credentials must come from it too -----------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server a cloned folder's .env points at, and a clean environment holding only the user's key."""
    with serve(lambda request: Answer(body=completion("evil"), request_id="e")) as server:
        for name in [n for n in os.environ if n.startswith(("AZURE_", "OPENAI_", "ASYNCBATCH_"))]:
            monkeypatch.delenv(name)
        monkeypatch.chdir(tmp_path)
        write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "c", "messages": [{"role": "user", "content": "hi"}]}])
        yield server


@pytest.mark.parametrize(
    ("environment", "options", "named"),
    [
        ({"AZURE_OPENAI_API_KEY": KEY}, [], "AZURE_OPENAI_API_KEY from the environment"),
        ({}, ["--header", f"X-Gateway-Key: {TOKEN}"], "the --header values"),  # the key in the .env: the header
        ({}, ["--token-command", "echo tok"], "an Entra ID token"),
        ({"OPENAI_API_KEY": KEY}, [], "OPENAI_API_KEY from the environment"),
    ],
)
def test_the_users_credentials_never_go_to_an_endpoint_a_dotenv_file_alone_names(
    tmp_path: Path,
    elsewhere: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environment: dict[str, str],
    options: list[str],
    named: str,
) -> None:
    openai = "OPENAI_API_KEY" in environment
    url = "OPENAI_BASE_URL" if openai else "AZURE_OPENAI_ENDPOINT"
    model = "OPENAI_MODEL" if openai else "AZURE_OPENAI_DEPLOYMENT_NAME"
    key = f"AZURE_OPENAI_API_KEY={KEY}\n" if "--header" in options else ""
    (tmp_path / ".env").write_text(f"{url}={elsewhere.url}\n{model}=dep\n{key}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["in.jsonl", "--no-progress", *options]) == 2
    err = capsys.readouterr().err
    assert f"{url} comes from {tmp_path / '.env'} alone, and {named} would go to it" in err, err
    assert f"HINT: if that endpoint is yours, set {url} in the environment too" in err
    assert elsewhere.received == [] and leaked([KEY, TOKEN], err) == []


def test_an_endpoint_and_its_key_from_one_source_or_the_services_own_host_are_used(
    tmp_path: Path, elsewhere: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(
        f"AZURE_OPENAI_ENDPOINT={elsewhere.url}\nAZURE_OPENAI_API_KEY={KEY}\nAZURE_OPENAI_DEPLOYMENT_NAME=dep\n"
    )
    assert main(["in.jsonl", "--no-progress"]) == 0  # the .env names both: its own key goes to its endpoint
    assert [r.headers.get("api-key") for r in elsewhere.received] == [KEY]
    said = f"AZURE_OPENAI_ENDPOINT from {tmp_path / '.env'}: every request, with its credentials, goes to "
    assert said + elsewhere.url in capsys.readouterr().err  # said before anything was sent
    (tmp_path / ".env").write_text("AZURE_OPENAI_ENDPOINT=https://myresource.openai.azure.com\n")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
    built = []

    async def go(config: Any) -> int:
        built.append(config.routes[0].endpoint.base_url)
        return 0

    assert main(["in.jsonl", "--no-progress", "-q", "--restart"], go=go) == 0  # Azure's own host: a key sent to
    assert built == ["https://myresource.openai.azure.com"]  # someone else's resource there is refused by Azure


def test_the_hint_for_an_endpoint_a_dotenv_file_alone_names_runs(
    tmp_path: Path, elsewhere: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(f"AZURE_OPENAI_ENDPOINT={elsewhere.url}\nAZURE_OPENAI_DEPLOYMENT_NAME=dep\n")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    assert main(["in.jsonl", "--no-progress", "-q"]) == 2 and elsewhere.received == []
    assert "export AZURE_OPENAI_ENDPOINT=..." in capsys.readouterr().err
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", elsewhere.url)  # what the hint says: the user names it too
    assert main(["in.jsonl", "--no-progress", "-q"]) == 0
    assert [r.headers.get("api-key") for r in elsewhere.received] == [KEY]


# -- a credential header's name, in any case, after any text ------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(st.sampled_from('aZ \n\u0130\u00dfI\u212a{":'), max_size=8),
    name=st.sampled_from(["api-key", "Ocp-Apim-Subscription-Key", "authorization", "x-api-key"]),
    case=st.lists(st.booleans(), min_size=30, max_size=30),
)
@example(before="\u0130\u0130", name="api-key", case=[False, False, False, False, True, True, True] + [False] * 23)
def test_a_credential_after_a_header_name_in_any_case_is_masked_after_any_text(
    before: str, name: str, case: list[bool]
) -> None:
    """``str.lower`` makes some letters longer (U+0130 becomes two characters): the name is still found."""
    cased = "".join(c.upper() if up else c for c, up in zip(name, case, strict=False))
    value = "Bearer gw0123456789" if name == "authorization" else "k3y0123456789"
    text = f"{before} {cased}: {value}"
    assert "0123456789" not in Redactor().text(text)
    assert b"0123456789" not in Redactor().bytes(text.encode())
