"""Endpoints that answer in ways a run must name rightly: a head too large to read, HTTP 500 to everything.

Through the CLI against tests.scripted's server on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from tests.helpers import read_jsonl, write_jsonl
from tests.scripted import Answer, Received, completion, serve

KEY = "odd-endpoints-key-0042"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith(("AZURE_", "OPENAI_", "ASYNCBATCH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
    monkeypatch.chdir(tmp_path)
    lines = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"p{i}"}]} for i in range(20)]
    write_jsonl(tmp_path / "in.jsonl", lines)
    return tmp_path


@pytest.mark.parametrize("header", [("X-Big", "a" * 9000), ("Set-Cookie", "s=" + "b" * 20_000)])
def test_an_answer_whose_header_is_too_large_is_named_so_with_a_hint_not_unreachable(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], header: tuple[str, str]
) -> None:
    def script(request: Received) -> Answer:
        return Answer(body=completion("ok"), headers=(("Content-Type", "application/json"), header), request_id="r")

    with serve(script) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        code = main(["in.jsonl", "-q", "--no-progress", "--max-outage", "1", "--backoff", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "answers, but the answer's status line or one of its headers is longer than aiohttp reads" in err
    assert "max_field_size, 8190 bytes" in err and "HINT: something between you and the model" in err
    assert "unreachable" not in err and "nothing answers at" not in err and "cannot reach" not in err
    assert header[1][:50] not in err


def test_an_endpoint_that_answers_500_to_everything_is_said_so_not_unreachable(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = itertools.count()

    def script(request: Received) -> Answer:
        if next(served) == 0:  # it worked once: then it fails
            return Answer(body=completion("ok"), request_id="r0")
        return Answer(status=500, body=b'{"error": {"code": "InternalServerError", "message": "boom"}}')

    with serve(script) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        code = main(["in.jsonl", "-q", "--no-progress", "-c", "1", "--max-outage", "1", "--max-attempts", "50"])
    err = capsys.readouterr().err
    assert code == 75, err  # stopped, resumable
    assert "the endpoint has answered HTTP 500 to every request since" in err and "unreachable" not in err
    assert len(read_jsonl(folder / "in.results.jsonl")) == 1
