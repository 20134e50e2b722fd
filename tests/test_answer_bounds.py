"""Answers are bounded where they are decoded, and a paid answer always ends in exactly one line.

Against ``tests/scripted.py``'s hostile server on 127.0.0.1: JSON nested past what a record can hold
(in a 200 body, in tool-call arguments, in a 4xx body), gzip and deflate bombs, error bodies that
decode to megabytes, Content-Lengths that lie. Each paid answer is recorded once, with its request
id, and a second run of the same command sends nothing more.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.protocol import (
    ERROR_BODY_BYTES,
    MAX_DEPTH,
    BodyDecoder,
    TooDeep,
    Unreadable,
    nests_deeper,
    read_json,
    request_id,
    status_error,
)
from asyncbatch.simulator.invariants import run_cli
from tests.helpers import read_jsonl, write_jsonl
from tests.scripted import Answer, Received, Server, bomb, completion, deflated, gzipped, nested, serve

KEY = "bounds-key-0123456789abcdef"
TOOL = {"type": "function", "function": {"name": "label", "parameters": {"type": "object"}}}
GZIP = (("Content-Type", "application/json"), ("Content-Encoding", "gzip"))
DEFLATE = (("Content-Type", "application/json"), ("Content-Encoding", "deflate"))


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(child) for child in children), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(alphabet='[]{}"\\ab\n\u00e9'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=3), inner),
    max_leaves=30,
)


@given(value=json_values, limit=st.integers(0, 8), indent=st.booleans())
@example(value=["\\", ['\\\\"[[']], limit=1, indent=False)
@example(value={'a"[': [[]]}, limit=2, indent=False)
def test_the_depth_bound_counts_what_a_parser_counts(value: Any, limit: int, indent: bool) -> None:
    raw = json.dumps(value, indent=2 if indent else None, ensure_ascii=indent).encode()
    assert nests_deeper(raw, limit) == (_depth(value) > limit)


def test_what_read_json_accepts_a_record_can_always_hold() -> None:
    deepest = nested(MAX_DEPTH)
    record = {"response": {"body": read_json(deepest)}, "output": read_json(deepest.decode())}
    assert orjson.loads(orjson.dumps({"wrapped": [record]}))  # room to spare under orjson's 254 levels
    for raw in (nested(MAX_DEPTH + 1), nested(300).decode(), b'{"a": ' + nested(1000) + b"}"):
        with pytest.raises(TooDeep):
            read_json(raw)
    with pytest.raises(orjson.JSONDecodeError):
        read_json(nested(1100))  # past orjson's own limit: not JSON we can read at all


def test_an_error_body_is_kept_within_its_bound_whatever_it_holds() -> None:
    numbers = b"[" + b",".join([b"1E9"] * 16_000) + b"]"  # 64 KB that grows threefold when written again
    for raw in (numbers, b'{"error": {"message": "' + b"m" * 60_000 + b'"}}', nested(300)):
        error = status_error(500, {}, raw[:ERROR_BODY_BYTES])
        assert len(orjson.dumps({"body": error.body, "message": error.message})) < 70 * 1024
    deep = b'{"error": {"message": "quota", "code": "q"}, "x": ' + nested(300) + b"}"
    error = status_error(400, {"x-request-id": "r1"}, deep)
    assert (error.code, error.message, error.request_id) == ("q", "HTTP 400: quota", "r1")
    assert isinstance(error.body, str)  # too deep to keep as JSON: its first characters


def test_a_request_id_is_text_a_record_can_hold() -> None:
    assert request_id({"x-request-id": "r\udce9\udcff-1"}) == "r\ufffd\ufffd-1"  # bytes that are not UTF-8
    assert request_id({"apim-request-id": '"\\\u00e9'}) == '"\\\u00e9'
    assert len(request_id({"x-request-id": "x" * 10_000}) or "") == 200


# -- through the CLI, against a hostile server ---------------------------------------------------------------


@pytest.fixture
def hostile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[Received, str], Answer], list[str]], Any]:
    """``hostile(script, prompts)``: the scripted server answering ``script(request, request_id)`` for the
    ``with`` block, one input line per prompt, and the Azure variables pointing at it."""

    @contextmanager
    def start(script: Callable[[Received, str], Answer], prompts: list[str]) -> Iterator[Server]:
        numbers = itertools.count(1)
        lines = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
        write_jsonl(tmp_path / "in.jsonl", lines)
        with serve(lambda request: script(request, f"req-{next(numbers)}")) as server:
            monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
            monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
            monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
            yield server

    return start


def _outputs(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")


def _recorded_ids(tmp_path: Path) -> set[str]:
    return {r["response"]["request_id"] for r in [*_outputs(tmp_path)[0], *_outputs(tmp_path)[1]] if r["response"]}


def deep_answers(request: Received, request_id: str) -> Answer:
    kind = request.prompt.split()[0]
    if kind == "args":  # valid JSON arguments, nested 300 deep
        return Answer(body=completion(tool_arguments='{"label": ' + nested(300).decode() + "}"), request_id=request_id)
    if kind == "field":  # a 200 body with a field nested 300 deep
        return Answer(body=completion(tool_arguments="{}", extra=b'"deep": ' + nested(300)), request_id=request_id)
    if kind == "refused":  # a 4xx body with such a field
        body = b'{"error": {"message": "no", "code": "bad_thing"}, "deep": ' + nested(300) + b"}"
        return Answer(status=400, body=body, request_id=request_id)
    return Answer(body=completion(tool_arguments='{"label": "fine"}'), request_id=request_id)


@pytest.mark.parametrize("kinds", [["args"] * 20, ["field"] * 20, ["args", "field", "refused", "ok"] * 5])
def test_json_nested_300_deep_is_recorded_once_and_never_paid_for_again(
    tmp_path: Path, hostile: Any, kinds: list[str]
) -> None:
    (tmp_path / "tool.json").write_text(json.dumps(TOOL))
    args = ["in.jsonl", "-q", "--tools", "tool.json", "--backoff", "0"]
    with hostile(deep_answers, [f"{kind} {i}" for i, kind in enumerate(kinds)]) as server:
        assert main(args) in (0, 1)
        sent = len(server.received)
        assert main(args) in (0, 1)
        assert len(server.received) == sent  # the second run of the same command sends nothing more
        paid = {s.request_id for s in server.sent}
    results, errors = _outputs(tmp_path)
    assert sorted(r["line"] for r in [*results, *errors]) == list(range(1, len(kinds) + 1))
    assert paid <= _recorded_ids(tmp_path)  # every 200 the server sent is in the outputs
    for error in errors:
        kind = kinds[error["line"] - 1]
        assert error["error"]["code"] == {"refused": "bad_thing"}.get(kind, "response_too_deep"), error
        if kind != "refused":
            assert error["response"]["body"]["usage"]["total_tokens"] == 12  # what was paid, kept
    assert all(kinds[r["line"] - 1] == "ok" for r in results)


@pytest.mark.parametrize("kinds", [["field"] * 6, ["field", "ok"] * 3])
def test_a_paid_answer_too_deep_to_keep_counts_its_usage_in_the_summary_and_the_cost(
    tmp_path: Path, hostile: Any, capsys: pytest.CaptureFixture[str], kinds: list[str]
) -> None:
    """The error line keeps the usage of an answer nested too deep: the run's tokens and cost count it too."""
    (tmp_path / "tool.json").write_text(json.dumps(TOOL))
    args = ["in.jsonl", "--no-progress", "--log-format", "json", "--tools", "tool.json"]
    with hostile(deep_answers, [f"{kind} {i}" for i, kind in enumerate(kinds)]):
        assert main([*args, "--price-in", "2", "--price-out", "10"]) == 1
    (summary,) = [e for e in map(orjson.loads, capsys.readouterr().err.splitlines()) if e["event"] == "summary"]
    errors = _outputs(tmp_path)[1]
    assert {e["error"]["code"] for e in errors} == {"response_too_deep"}
    kept = [e["response"]["body"]["usage"] for e in errors]
    assert len(kept) == kinds.count("field")
    n = len(kinds)  # every answer, kept whole or not, was billed 5 prompt and 7 completion tokens
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (5 * n, 7 * n)
    assert summary["cost_usd"] == pytest.approx(n * (5 * 2 + 7 * 10) / 1e6)


def test_answers_too_deep_to_keep_are_charged_to_the_max_cost_budget(tmp_path: Path, hostile: Any) -> None:
    """At 1 USD a token, each answer costs 12 USD: a budget of 60 USD stops after 5, whether kept or not."""
    args = ["in.jsonl", "-q", "-c", "1", "--max-tokens", "5", "--max-cost", "60"]
    with hostile(deep_answers, [f"field {i}" for i in range(20)]) as server:
        assert main([*args, "--price-in", "1000000", "--price-out", "1000000"]) == 75  # stopped early, resumably
        assert len(server.sent) == 5  # each estimated at less than 12 tokens: the budget lets a 5th go, not a 6th
    assert len(_outputs(tmp_path)[1]) == 5


def test_three_gzip_bombs_of_a_gigabyte_each_are_too_large_and_memory_stays_bounded(
    tmp_path: Path, hostile: Any
) -> None:
    wire = bomb(1 << 30)  # 1 GB of JSON whitespace, about 1 MB on the wire
    assert len(wire) < 1.1 * 2**20

    def script(request: Received, request_id: str) -> Answer:
        return Answer(body=wire, headers=GZIP, request_id=request_id)

    with hostile(script, ["a", "b", "c"]) as server:
        env = dict(os.environ)
        run = run_cli(["in.jsonl", "--no-progress", "-c", "3"], tmp_path, env, bound=120)
        paid = {s.request_id for s in server.sent}
    assert run.code == 1, run.stderr
    assert run.peak_rss_mb < 500, run.peak_rss_mb  # the child's own peak, read by wait4
    results, errors = _outputs(tmp_path)
    assert results == [] and sorted(e["line"] for e in errors) == [1, 2, 3]
    assert {e["error"]["code"] for e in errors} == {"response_too_large"}
    assert paid == _recorded_ids(tmp_path) and len(paid) == 3  # refused as too large, not asked again


@pytest.mark.parametrize(("encode", "headers"), [(gzipped, GZIP), (deflated, DEFLATE)])
def test_a_compressed_error_body_of_63_mb_leaves_an_errors_line_under_70_kb(
    tmp_path: Path, hostile: Any, encode: Callable[[bytes], bytes], headers: tuple[tuple[str, str], ...]
) -> None:
    wire = encode(b'{"error": {"message": "' + b"x" * (63 << 20) + b'", "code": "boom"}}')
    assert len(wire) < 100 * 1024

    def script(request: Received, request_id: str) -> Answer:
        return Answer(status=500, body=wire, headers=headers, request_id=request_id)

    with hostile(script, ["only"]):
        assert main(["in.jsonl", "-q", "--max-attempts", "2", "--backoff", "0"]) == 1
    (line,) = (tmp_path / "in.results.errors.jsonl").read_bytes().splitlines()
    assert len(line) < 70 * 1024
    assert json.loads(line)["error"]["code"] == "http_500"


def test_compressed_answers_within_bounds_are_read_and_lying_lengths_are_asked_again(
    tmp_path: Path, hostile: Any
) -> None:
    """gzip and deflate answers are answers; a Content-Length shorter or longer than the body is asked again."""
    served: dict[str, int] = {}

    def script(request: Received, request_id: str) -> Answer:
        kind = request.prompt.split()[0]
        served[kind] = served.get(kind, 0) + 1
        body = completion(f"answer {request.prompt}")
        if kind == "gzip":
            return Answer(body=gzipped(body), headers=GZIP, request_id=request_id)
        if kind == "deflate":
            return Answer(body=deflated(body), headers=DEFLATE, request_id=request_id)
        if kind == "short" and served[kind] == 1:  # claims less than it sends: the JSON is cut
            return Answer(body=body, length=len(body) // 2, request_id=request_id)
        if kind == "long" and served[kind] == 1:  # claims more than it sends, then closes
            return Answer(body=body, length=len(body) * 2, request_id=request_id)
        return Answer(body=body, request_id=request_id)

    with hostile(script, ["gzip 1", "deflate 2", "short 3", "long 4"]):
        assert main(["in.jsonl", "-q", "--backoff", "0"]) == 0
    results, errors = _outputs(tmp_path)
    assert errors == [] and sorted(r["output"] for r in results) == [
        f"answer {p}" for p in ("deflate 2", "gzip 1", "long 4", "short 3")
    ]
    assert {r["custom_id"]: r["attempts"] for r in results} == {"c0": 1, "c1": 1, "c2": 2, "c3": 2}


# -- the one decoder ------------------------------------------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda data: data,
    "gzip": gzipped,
    "deflate": deflated,
    "raw deflate": _raw_deflate,
}


@given(
    data=st.binary(max_size=5000) | st.integers(0, 300_000).map(lambda n: b"a" * n),
    encoding=st.sampled_from(sorted(ENCODERS)),
    cuts=st.lists(st.integers(1, 4000), max_size=8),
    room=st.integers(1, 400_000),
    padding=st.integers(0, 3000),
)
@example(data=b"x", encoding="gzip", cuts=[1], room=10, padding=1)  # a zero padding gzip's end: refused once
def test_the_decoder_gives_the_bytes_sent_and_never_more_than_room(
    data: bytes, encoding: str, cuts: list[int], room: int, padding: int
) -> None:
    """gzip's end may be padded with zeros (a tape block, a file written in sectors): gzip -d ignores them."""
    wire = ENCODERS[encoding](data) + (b"\0" * padding if encoding == "gzip" else b"")
    decoder = BodyDecoder({"raw deflate": "deflate"}.get(encoding, encoding))
    out, at = bytearray(), 0
    for size in [*cuts, len(wire)]:  # the wire in chunks of any size
        chunk, at = wire[at : at + size], at + size
        got = decoder.feed(chunk, room + 1 - len(out))
        assert len(got) <= room + 1 - len(out)
        out += got
    out += decoder.finish(room + 1 - len(out))
    assert bytes(out) == data[: room + 1]


def test_the_decoder_refuses_what_it_cannot_read_and_streams_cut_short() -> None:
    for encoding in ("br", "zstd", "compress", "gzip, br"):
        with pytest.raises(Unreadable, match="not asked for"):
            BodyDecoder(encoding)
    with pytest.raises(Unreadable, match="broken"):
        BodyDecoder("gzip").feed(b"not gzip at all", 100)
    decoder = BodyDecoder("gzip")
    decoder.feed(gzipped(b"x" * 10_000)[:-20], 1 << 20)
    with pytest.raises(Unreadable, match="cut short"):
        decoder.finish(1 << 20)
    assert len(BodyDecoder("gzip").feed(bomb(64 << 20), 1 << 20)) == 1 << 20  # a bomb stops at the room given


def test_an_answer_whose_request_id_is_not_utf8_is_still_a_result(tmp_path: Path, hostile: Any) -> None:
    """aiohttp keeps a header's undecodable bytes as lone surrogates, which no JSON encoder writes."""
    ids = iter(["r\udce9\udcff-1", 'r"\\-2', "r\u00e9\U0001f600-3"])

    def script(request: Received, number: str) -> Answer:
        return Answer(body=completion("ok"), request_id=next(ids))

    with hostile(script, ["a", "b", "c"]):
        assert main(["in.jsonl", "-q", "-c", "1"]) == 0
    results, errors = _outputs(tmp_path)
    assert errors == []
    assert sorted(r["response"]["request_id"] for r in results) == sorted(
        ["r\ufffd\ufffd-1", 'r"\\-2', "r\u00e9\U0001f600-3"]
    )


def test_a_gzip_answer_padded_with_zeros_is_an_answer(tmp_path: Path, hostile: Any) -> None:
    def script(request: Received, request_id: str) -> Answer:
        body = gzipped(completion(f"answer {request.prompt}")) + b"\0" * int(request.prompt)
        return Answer(body=body, headers=GZIP, request_id=request_id)

    with hostile(script, ["1", "512", "70000"]):
        assert main(["in.jsonl", "-q", "--max-attempts", "1"]) == 0
    results, errors = _outputs(tmp_path)
    assert errors == [] and sorted(r["output"] for r in results) == ["answer 1", "answer 512", "answer 70000"]
