"""Whose refusal, through the CLI: the endpoint's (a key rotated, a deployment deleted mid-run), or one line's.

The server is a scripted one on 127.0.0.1 (``tests/scripted.py``) with a state the test changes, as an
operator would: it answers until the change, then refuses every request the way Azure does. A refusal of
the key or the deployment is never a line's failure: the run stops (exit 2) with what it had answered
recorded, and the same command, once the endpoint is fixed, finishes the rest, each line exactly once.
Lines whose content is refused (the content filter, the model's own refusal) are that line's failure and
never stop the run, however many come first.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from asyncbatch.cli.main import main
from asyncbatch.live.attempts import AGREE
from asyncbatch.simulator import SimConfig
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl
from tests.scripted import Answer, Received, Server, completion, serve

CONCURRENCY = 8
DENIED = "Access denied due to invalid subscription key or wrong API endpoint."
ACCESS_DENIED = orjson.dumps({"error": {"code": "401", "message": DENIED}})
GONE = "The API deployment for this resource does not exist."
NO_DEPLOYMENT = orjson.dumps({"error": {"code": "DeploymentNotFound", "message": GONE}})
NO_MODEL = orjson.dumps({"error": {"code": "model_not_found", "message": "The model does not exist", "param": "model"}})


@dataclass
class Endpoint:
    """A deployment that works until ``change_after`` answers, then refuses: its key rotated, or deleted."""

    change_after: int
    change: str  # "rotate" or "delete"
    key: str = "old-key"
    deleted: bool = False
    gone: bytes = NO_DEPLOYMENT  # the 404's body once deleted
    answered: int = 0
    refused: int = 0
    ids: Iterator[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Received) -> Answer:
        with self.lock:
            if request.headers.get("api-key") != self.key:
                self.refused += 1
                return Answer(401, ACCESS_DENIED)
            if self.deleted:
                self.refused += 1
                return Answer(404, self.gone)
            self.answered += 1
            if self.answered == self.change_after:  # the change happens right after this answer
                if self.change == "rotate":
                    self.key = "new-key"
                else:
                    self.deleted = True
            return Answer(200, completion(f"answer to {request.prompt}"), request_id=f"req-{next(self.ids)}")


@contextmanager
def azure(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    with serve(endpoint) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "old-key")
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        yield server


def _run(tmp_path: Path, *args: str, quiet: bool = True) -> tuple[int, list[dict], list[dict]]:
    given = [str(tmp_path / "in.jsonl"), *["-q"] * quiet, "--concurrency", str(CONCURRENCY), "--backoff", "0.05"]
    code = main([*given, *args])
    return code, read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")


def _lines(tmp_path: Path, n: int) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])


@pytest.mark.parametrize(
    ("change", "gone", "said"),
    [
        ("rotate", NO_DEPLOYMENT, "the key was refused after 50 answers: was it rotated?"),
        ("delete", NO_DEPLOYMENT, "the deployment was not found after 50 answers: was it deleted or renamed?"),
        ("delete", NO_MODEL, "the deployment was not found after 50 answers"),  # its "param" names the model
    ],
    ids=["key-rotated", "deployment-deleted", "model-gone"],
)
def test_a_key_rotated_or_a_deployment_deleted_mid_run_stops_it_and_the_same_command_finishes_after_the_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: str,
    gone: bytes,
    said: str,
) -> None:
    _lines(tmp_path, 200)
    endpoint = Endpoint(change_after=50, change=change, gone=gone)
    with azure(endpoint, monkeypatch) as server:
        code, results, errors = _run(tmp_path)
        assert code == 2
        err = capsys.readouterr().err
        assert said in err
        assert errors == []  # no line recorded with the refusal: they wait for the resume
        assert len(results) == endpoint.answered == 50  # every answer recorded, and nothing else
        assert {r["response"]["request_id"] for r in results} == {s.request_id for s in server.sent}
        # stopped within a few refusals, not one per line left: the requests in flight, then AGREE in a row
        assert endpoint.refused <= 2 * CONCURRENCY + AGREE

        if change == "rotate":  # the fix: the new key
            monkeypatch.setenv("AZURE_OPENAI_API_KEY", "new-key")
        else:  # the fix: the deployment made again
            endpoint.deleted = False
        capsys.readouterr()
        code, results, errors = _run(tmp_path, "--log-format", "json", "--no-progress", quiet=False)
    assert (code, errors) == (0, [])
    assert sorted(r["line"] for r in results) == list(range(1, 201))  # each line exactly once
    assert len(server.sent) == 200  # and each paid for once
    (summary,) = [e for e in map(orjson.loads, capsys.readouterr().err.splitlines()) if e["event"] == "summary"]
    assert summary["resent"] == 0  # the refused lines were answered (401/404, unbilled), never in flight
    assert summary["resumed"] == 50


def test_a_pool_sets_aside_the_deployment_whose_key_was_rotated_and_the_run_finishes_on_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path, 120)
    east, west = Endpoint(change_after=20, change="rotate"), Endpoint(change_after=10**9, change="rotate")
    with serve(east) as a, serve(west) as b:
        entries = [
            f'[[deployments]]\nname = "{name}"\nendpoint = "{server.url}"\ndeployment = "dep"\napi_key_env = "KEY"\n'
            for name, server in (("east", a), ("west", b))
        ]
        (tmp_path / "pool.toml").write_text("\n".join(entries))
        monkeypatch.setenv("KEY", "old-key")
        code, results, errors = _run(tmp_path, "--deployments", str(tmp_path / "pool.toml"))
    assert (code, errors) == (0, [])
    assert sorted(r["line"] for r in results) == list(range(1, 121))
    assert {r["deployment"] for r in results[-20:]} == {"west"}
    assert "deployment east set aside: the key was refused after" in capsys.readouterr().err
    assert east.refused <= 2 * CONCURRENCY + AGREE


def test_a_pool_whose_every_deployment_was_refused_stops_resumably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path, 120)
    east, west = Endpoint(change_after=20, change="rotate"), Endpoint(change_after=20, change="delete")
    with serve(east) as a, serve(west) as b:
        entries = [
            f'[[deployments]]\nname = "{name}"\nendpoint = "{server.url}"\ndeployment = "dep"\napi_key_env = "KEY"\n'
            for name, server in (("east", a), ("west", b))
        ]
        (tmp_path / "pool.toml").write_text("\n".join(entries))
        monkeypatch.setenv("KEY", "old-key")
        code, results, errors = _run(tmp_path, "--deployments", str(tmp_path / "pool.toml"))
        assert (code, errors) == (2, [])
        assert "every deployment was set aside" in capsys.readouterr().err
        assert len(results) == east.answered + west.answered == 40
        monkeypatch.setenv("KEY", "new-key")  # east's new key; west is made again under the new key too
        west.key, west.deleted = "new-key", False
        code, results, errors = _run(tmp_path, "--deployments", str(tmp_path / "pool.toml"))
    assert (code, errors) == (0, [])
    assert sorted(r["line"] for r in results) == list(range(1, 121))


def test_content_filtered_lines_first_are_their_own_failures_and_the_good_lines_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulator_env(SimConfig(api_key="k", deployment="dep"), monkeypatch) as (_, simulator):
        simulator.config.script.update({f"filtered {i}": ["content-filter-400"] for i in range(40)})
        rows = [batch_line(f"f{i}", f"filtered {i}") for i in range(40)]
        rows += [batch_line(f"g{i}", f"good {i}") for i in range(20)]
        write_jsonl(tmp_path / "in.jsonl", rows)
        code, results, errors = _run(tmp_path)
    assert code == 1
    assert sorted(e["custom_id"] for e in errors) == sorted(f"f{i}" for i in range(40))
    assert {e["error"]["code"] for e in errors} == {"content_filter"}
    assert all(e["attempts"] == 1 for e in errors)  # asking again would not help
    assert sorted(r["custom_id"] for r in results) == sorted(f"g{i}" for i in range(20))


def test_a_content_refusal_answered_with_a_403_by_a_gateway_is_the_line_s_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flagged = orjson.dumps({"error": {"code": "content_filter", "message": "Your input was flagged"}})

    def script(request: Received) -> Answer:
        if request.prompt.startswith("flagged"):
            return Answer(403, flagged)
        return Answer(200, completion("fine"), request_id=f"id-{request.prompt}")

    with serve(script) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        rows = [batch_line(f"f{i}", f"flagged {i}") for i in range(25)] + [batch_line("ok", "fine")]
        write_jsonl(tmp_path / "in.jsonl", rows)
        code, results, errors = _run(tmp_path)
    assert (code, len(errors), len(results)) == (1, 25, 1)


def test_a_model_s_refusal_in_plain_chat_is_the_line_s_failure_with_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = orjson.loads(completion(None))
    refused["choices"][0]["message"]["refusal"] = "I cannot help with that request."

    def script(request: Received) -> Answer:
        if request.prompt.startswith("refuse"):
            return Answer(200, orjson.dumps(refused))
        return Answer(200, completion("fine"))

    with serve(script) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        rows = [batch_line(f"r{i}", f"refuse {i}") for i in range(25)] + [batch_line("ok", "fine")]
        write_jsonl(tmp_path / "in.jsonl", rows)
        code, results, errors = _run(tmp_path)
    assert code == 1 and [r["custom_id"] for r in results] == ["ok"]
    assert len(errors) == 25 and {e["error"]["code"] for e in errors} == {"refusal"}
    assert all("I cannot help with that request." in e["error"]["message"] for e in errors)
    assert all(e["attempts"] == 1 for e in errors)
