"""A Batch API job's answers are judged as live answers are: bounded, decoded, never a traceback.

A scripted Batch API (tests.scripted: any bytes, not the simulator's model) finishes one job at once and serves
its output file as the test says: HTML, ``null``, lines that are not JSON, nested too deep, past
``--max-response-mb``, gzip-encoded. Every input line still ends in exactly one record (a line the job did
not answer runs live, on the same server), and nothing is a traceback. A job object that is not one stops the
run with exit 2 and a hint, never a traceback or a poll that never ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from tests.helpers import read_jsonl, write_jsonl
from tests.scripted import Answer, Received, completion, gzipped, nested, serve

KEY = "batch-answers-key-0042"
N = 3
MB = 1 << 20


def ok_line(n: int, text: str = "batch") -> bytes:
    response = {"status_code": 200, "request_id": f"req-{n}", "body": orjson.loads(completion(f"{text} {n}"))}
    return orjson.dumps({"id": f"b{n}", "custom_id": f"line-{n}", "response": response, "error": None})


def _file(id_: str) -> bytes:
    fields = {"object": "file", "bytes": 1, "created_at": 1, "filename": "p", "purpose": "batch"}
    return orjson.dumps({"id": id_, **fields, "status": "processed"})


class BatchApi:
    """One job, done when first looked at; ``output`` is its output file, ``batch`` writes its job object."""

    def __init__(
        self, output: bytes, batch: Callable[[dict[str, Any]], bytes] = orjson.dumps, encoding: str | None = None
    ) -> None:
        self.output, self.batch, self.encoding = output, batch, encoding

    def __call__(self, request: Received) -> Answer:
        path = request.path.split("?")[0]
        if path.endswith("/files"):
            return Answer(body=_file("file-in"))
        if path.endswith("/content"):
            headers = [("Content-Type", "application/octet-stream")]
            if self.encoding:
                headers.append(("Content-Encoding", self.encoding))
            return Answer(body=gzipped(self.output) if self.encoding else self.output, headers=tuple(headers))
        if re.search(r"/batches(/batch_1)?$", path):
            done = request.method == "GET"
            batch = {
                "id": "batch_1",
                "object": "batch",
                "endpoint": "/chat/completions",
                "input_file_id": "file-in",
                "completion_window": "24h",
                "status": "completed" if done else "validating",
                "created_at": 1,
                "output_file_id": "file-out" if done else None,
                "error_file_id": None,
                "request_counts": {"total": N, "completed": N, "failed": 0},
            }
            return Answer(body=self.batch(batch))
        if path.endswith("/chat/completions"):  # the live phase
            return Answer(body=completion(f"live {request.prompt[1:]}"), request_id="live")
        return Answer(status=404, body=b'{"error": {"code": "404", "message": "not here"}}')


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in [n for n in os.environ if n.startswith(("AZURE_", "OPENAI_", "ASYNCBATCH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
    monkeypatch.chdir(tmp_path)
    lines = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"p{i}"}]} for i in range(1, N + 1)]
    write_jsonl(tmp_path / "in.jsonl", lines)
    yield tmp_path


def run(folder: Path, monkeypatch: pytest.MonkeyPatch, api: BatchApi) -> tuple[int, dict[int, str]]:
    """The run's exit code, and each line's outcome: the answer's text, or the error's code."""
    with serve(api) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        argv = ["in.jsonl", "--batch-api", "--poll-interval", "0.01", "--no-progress", "-q", "--restart"]
        code = main([*argv, "--max-response-mb", "1", "--max-attempts", "1"])
    results = read_jsonl(folder / "in.results.jsonl") if (folder / "in.results.jsonl").exists() else []
    errors = read_jsonl(folder / "in.results.errors.jsonl") if (folder / "in.results.errors.jsonl").exists() else []
    lines = [r["line"] for r in results + errors]
    assert len(lines) == len(set(lines))  # never twice
    outcome = {r["line"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in results}
    return code, outcome | {e["line"]: e["error"]["code"] for e in errors}


EVERY_LINE_LIVE = {1: "live 1", 2: "live 2", 3: "live 3"}
BIG = b'{"custom_id": "line-2", "response": {"status_code": 200, "body": "' + b"x" * (2 * MB) + b'"}}'


@pytest.mark.parametrize(
    ("output", "outcome"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", EVERY_LINE_LIVE),
        (b"null", EVERY_LINE_LIVE),
        (b"\n".join([b"null", b"[1,2]", b'"x"', ok_line(1)]), {1: "batch 1", 2: "live 2", 3: "live 3"}),
        (
            b'{"custom_id": "line-2", "r": ' + nested(200) + b"}\r\n" + ok_line(1),
            {1: "batch 1", 2: "response_too_deep", 3: "live 3"},  # recorded with its usage, not asked again
        ),
        (
            b'{"custom_id": "line-2", "r": ' + nested(2000) + b"}\n" + ok_line(1),
            {1: "batch 1", 2: "live 2", 3: "live 3"},
        ),
        (b'{"custom_id": "line-' + b"9" * 5000 + b'"}\n' + ok_line(1), {1: "batch 1", 2: "live 2", 3: "live 3"}),
        (BIG + b"\n" + ok_line(1) + b"\n" + ok_line(3), {1: "batch 1", 2: "response_too_large", 3: "batch 3"}),
        (b'{"custom_id": "line-2", "response": null} junk\n' + ok_line(1), {1: "batch 1", 2: "live 2", 3: "live 3"}),
        (b"\xff\xfe" + ok_line(1) + b"\n" + ok_line(2), {1: "live 1", 2: "batch 2", 3: "live 3"}),
    ],
    ids=["html", "null", "not-objects", "too-deep", "past-orjson", "huge-id", "too-large", "junk-after", "not-utf8"],
)
def test_each_odd_answer_line_is_judged_as_a_live_answer_would_be(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], output: bytes, outcome: dict
) -> None:
    code, got = run(folder, monkeypatch, BatchApi(output))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert got == outcome
    assert code == (1 if any(v.startswith("response_") for v in got.values()) else 0)


def test_a_gzip_output_file_is_decoded_as_a_live_answer_is(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = b"\n".join(ok_line(n) for n in range(1, N + 1)) + b"\n"
    assert run(folder, monkeypatch, BatchApi(output, encoding="gzip")) == (
        0,
        {1: "batch 1", 2: "batch 2", 3: "batch 3"},
    )


@pytest.mark.parametrize(
    "batch",
    [
        lambda b: b"<html>hi</html>",
        lambda b: b"null",
        lambda b: b"[]",
        lambda b: orjson.dumps({**b, "status": None}),
        lambda b: orjson.dumps({**b, "status": "sleeping"}),
        lambda b: orjson.dumps({**b, "request_counts": 5}),
        lambda b: orjson.dumps({**b, "output_file_id": 7}),
    ],
    ids=["html", "null", "list", "no-status", "odd-status", "odd-counts", "odd-file-id"],
)
def test_a_job_object_that_is_not_one_stops_the_run_with_a_hint(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], batch: Any
) -> None:
    code, got = run(folder, monkeypatch, BatchApi(ok_line(1), batch))
    err = capsys.readouterr().err
    assert code == 2 and got == {} and "Traceback" not in err
    assert "the Batch API answered with" in err and "HINT: something other than the API answers at" in err


pieces = st.one_of(
    st.sampled_from([ok_line(1), ok_line(2), ok_line(3), b"null", b"<html>", nested(300), b""]),
    st.binary(max_size=60),
    st.builds(lambda n, junk: b'{"custom_id": "line-%d", "response": %b}' % (n, junk), st.integers(0, 4), st.binary()),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(pieces, max_size=6), gzip=st.booleans())
@example(lines=[b'{"custom_id": "line-1", "response": {"status_code": 200, "body": null}}'], gzip=False)
def test_any_output_file_ends_each_line_exactly_once_without_a_traceback(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: list[bytes], gzip: bool
) -> None:
    code, got = run(folder, monkeypatch, BatchApi(b"\n".join(lines), encoding="gzip" if gzip else None))
    err = capsys.readouterr().err
    assert "Traceback" not in err and code in (0, 1), err
    assert sorted(got) == [1, 2, 3]


# -- a damaged state file ---------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)  # what orjson writes
GOOD_PART = {"index": 0, "api": "chat", "ranges": [[1, 3]], "lines": 3, "batch_id": "batch_1", "status": "completed"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damaged=st.one_of(
        st.binary(max_size=80),
        st.sampled_from(
            [b"[]", b"{}", b"null", b'{"run": 5, "parts": []}', b'{"run": "r", "parts": [{"index": "x"}]}']
        ),
        st.builds(
            lambda field, value: orjson.dumps({"run": "r", "parts": [{**GOOD_PART, field: value}]}),
            st.sampled_from(sorted(GOOD_PART)),
            st.one_of(st.none(), st.text(max_size=3), INT64, st.lists(INT64, max_size=3)),
        ),
    )
)
@example(damaged=b"garbage\x00")
@example(damaged=orjson.dumps({"run": "r", "parts": [{**GOOD_PART, "batch_id": ""}]}))  # no job id: damaged
@example(damaged=orjson.dumps({"run": "r", "parts": [{**GOOD_PART, "batch_id": "0"}]}))  # a job of no one's
def test_a_damaged_batches_file_is_named_with_what_to_do_never_a_traceback(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damaged: bytes
) -> None:
    state = folder / "in.results.jsonl.state"
    state.mkdir(exist_ok=True)
    (state / "batches").write_bytes(damaged)
    with serve(BatchApi(b"\n".join(ok_line(n) for n in range(1, N + 1)))) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        code = main(["in.jsonl", "--batch-api", "--poll-interval", "0.01", "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 2), err
    if code == 2 and "named in in.results.jsonl.state/batches: was it made on another endpoint" in err:
        # a job id that is one, of a job the endpoint does not know: the file keeps it
        kept = orjson.loads((state / "batches").read_bytes())["parts"][0]["batch_id"]
        assert kept == orjson.loads(damaged)["parts"][0]["batch_id"]
    elif code == 2:
        assert "the Batch API state file in.results.jsonl.state/batches is damaged" in err
        assert (state / "batches").read_bytes() == damaged  # left as it is
    for name in ("in.results.jsonl", "in.results.errors.jsonl"):
        (folder / name).unlink(missing_ok=True)


def test_the_hint_for_a_damaged_batches_file_runs(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = folder / "in.results.jsonl.state"
    state.mkdir()
    (state / "batches").write_bytes(b"{}")
    with serve(BatchApi(b"\n".join(ok_line(n) for n in range(1, N + 1)))) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        argv = ["in.jsonl", "--batch-api", "--poll-interval", "0.01", "--no-progress", "-q"]
        assert main(argv) == 2
        assert "HINT: restore it from a backup" in capsys.readouterr().err
        assert main([*argv, "--restart"]) == 0  # what the hint says: started over
    assert len(read_jsonl(folder / "in.results.jsonl")) == N


def test_a_job_answer_that_echoes_the_key_is_kept_in_the_cache_without_it(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = orjson.loads(completion(f"your key is {KEY}"))
    lines = [
        orjson.dumps(
            {"custom_id": f"line-{n}", "response": {"status_code": 200, "request_id": KEY.upper(), "body": body}}
        )
        for n in range(1, N + 1)
    ]
    with serve(BatchApi(b"\n".join(lines))) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        argv = ["in.jsonl", "--batch-api", "--poll-interval", "0.01", "--no-progress", "-q", "--cache", "c.sqlite"]
        assert main(argv) == 0
    with contextlib.closing(sqlite3.connect(folder / "c.sqlite")) as db:
        rows = db.execute("SELECT body, request_id FROM answers").fetchall()
    assert len(rows) == N
    kept = b"".join(row[0] + (row[1] or "").encode() for row in rows) + (folder / "in.results.jsonl").read_bytes()
    assert KEY.encode() not in kept and KEY.upper().encode() not in kept and b"***" in kept
